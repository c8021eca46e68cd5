"""Benchmark: one noisy hardware write (the inner loop's `writers.crossbars(hw).write`) vs a plain
`W - lr * grad`.

  .venv/bin/python benchmarks/device_write.py            # about 1 min on 2 CPU cores

Cases: (a) the crossbars of a conv4-64 network for 5-way Omniglot (kernels 3x3x1x64,
3x3x64x64 x3, dense 64x5: 111,488 weights) as a dict of crossbars, (b) one 1024x1024 crossbar.
Every function is jitted and compiled first; then each round times every function (the median
of --repeats calls after a warm-up call, with `jax.block_until_ready`). Rounds are interleaved
so that a change of load on the shared cores hits all functions alike; the table gives the
median over rounds and the range. The 1-minute load average is printed per round.

Besides the table (write, plain, ratio) it times `jax.random.normal` of the same shapes alone
(default threefry key): on XLA:CPU that draw by itself costs ~30x a plain update of 1M
weights, the floor under the write's ratio (BUILD_NOTES.md). JAX lowers threefry on XLA:CPU as
a rolled loop of its 5 rounds (compiles faster); the write and the draw are also timed with the
rounds unrolled (JAX's lowering on other backends: the same bits, checked), the lever that
BUILD_NOTES.md ("Speed: the meta-step near the machine's limit") measured and did not keep.
"""

import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from timing import median_ms

from roa_jax import crossbar, device, writers

_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed calls per measurement (median taken).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved measurements per function.")
_SIGMA_W = flags.DEFINE_float("sigma_w", 1.0, "Write-noise level of the timed write (> 0).")

CASES = {
    "conv4-64 omniglot 5-way": [(3, 3, 1, 64), *[(3, 3, 64, 64)] * 3, (64, 5)],
    "1024x1024 crossbar": [(1024, 1024)],
}
LEARNING_RATE = 0.1


def hardware_write(key, xbars, dws, hw):
    """One write of every crossbar (open-loop pulses, Eq. 7 noise); the new crossbars."""
    return writers.crossbars(hw).write(key, xbars, dws)


def plain_update(weights, grads):
    return jax.tree.map(lambda w, g: w - LEARNING_RATE * g, weights, grads)


def normal_draw(key, shapes):
    keys = jax.random.split(key, len(shapes))
    return [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]


def threefry_lowering(unrolled: bool):
    """Lowers threefry on XLA:CPU with its rounds unrolled, or as JAX's rolled loop (its CPU
    default), for the programs compiled afterwards. JAX's private rules: jax 0.10 only."""
    from jax._src.random import threefry2x32 as threefry
    from jax.interpreters import mlir

    rule = threefry._threefry2x32_lowering_rule
    if not unrolled:
        rule = threefry._threefry2x32_cpu_lowering_rule
    mlir.register_lowering(threefry.threefry2x32_p, rule, platform="cpu")


def _problem(shapes, params):
    """{layer: weights}, {layer: gradients} and {layer: crossbar} of one case."""
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    weights, grads = {}, {}
    for i, (key, shape) in enumerate(zip(keys, shapes, strict=True)):
        k_w, k_g = jax.random.split(key)
        weights[i] = jax.random.uniform(k_w, shape, minval=-0.5, maxval=0.5)
        grads[i] = 0.5 * jax.random.normal(k_g, shape)
    return weights, grads, {i: crossbar.program(w, params) for i, w in weights.items()}


def _compiled(case, params, sigma_w):
    """[(name, fn, args)] for one case, every fn already compiled."""
    shapes = CASES[case]
    weights, grads, xbars = _problem(shapes, params)
    dws = {i: -LEARNING_RATE * g for i, g in grads.items()}
    key = jax.random.PRNGKey(1)
    write_args = (key, xbars, dws, writers.hardware(params, sigma_w))
    functions = [
        ("write", hardware_write, write_args),
        ("plain", plain_update, (weights, grads)),
        ("normal draw only", lambda k: normal_draw(k, shapes), (key,)),
    ]
    # A new jit of each function per lowering, so that neither reuses the other's program.
    variants = [(name, jax.jit(fn).lower(*args).compile(), args) for name, fn, args in functions]
    threefry_lowering(unrolled=True)
    for (name, fn, args), (_, rolled, _) in zip(functions[::2], variants[::2], strict=True):
        unrolled = jax.jit(lambda *a, fn=fn: fn(*a)).lower(*args).compile()
        variants.append((f"{name}, threefry unrolled", unrolled, args))
        same = all(jax.tree.leaves(jax.tree.map(np.array_equal, rolled(*args), unrolled(*args))))
        print(f"  {case}, {name}: the unrolled threefry gives the same bits: {same}")
    threefry_lowering(unrolled=False)
    return variants


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _REPEATS.value < 1 or _ROUNDS.value < 1:
        raise app.UsageError("--repeats and --rounds must be >= 1.")
    if not _SIGMA_W.value > 0:
        raise app.UsageError(f"--sigma_w={_SIGMA_W.value} must be > 0 (a noisy write).")
    params = device.paper()
    cores = len(os.sched_getaffinity(0))
    dev = jax.devices()[0]
    print(
        f"jax {jax.__version__}, device {dev} ({dev.device_kind}), {cores} cores; paper device, "
        f"open_loop, sigma_w={_SIGMA_W.value}"
    )
    compiled = {}
    for case, shapes in CASES.items():
        weights = sum(int(jnp.prod(jnp.array(s))) for s in shapes)
        compiled[case] = _compiled(case, params, _SIGMA_W.value)
        print(f"  {case}: {weights:,} weights")
    times = {}
    for i in range(_ROUNDS.value):
        load = os.getloadavg()[0]
        for case, variants in compiled.items():
            for name, fn, args in variants:
                times.setdefault((case, name), []).append(median_ms(fn, args, _REPEATS.value))
        print(f"round {i + 1}: load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")

    def stat(case, name):
        values = times[case, name]
        return statistics.median(values), min(values), max(values)

    rounds = (
        f"median over {_ROUNDS.value} rounds (min..max) of the median of {_REPEATS.value} calls"
    )
    print(f"\n{rounds}\n{'case':26s} {'write ms':>22s} {'plain ms':>22s}  ratio")
    for case in CASES:
        (w, w_lo, w_hi), (p, p_lo, p_hi) = stat(case, "write"), stat(case, "plain")
        print(
            f"{case:26s} {w:7.3f} ({w_lo:6.3f}..{w_hi:6.3f}) {p:7.3f} ({p_lo:5.3f}..{p_hi:5.3f})"
            f" {w / p:6.1f}"
        )
    print("\nwhere the write's time goes: ms (min..max), and / plain of the same round")
    for case, variants in compiled.items():
        plain = times[case, "plain"]
        for name, _, _ in variants:
            t, lo, hi = stat(case, name)
            ratio = statistics.median(a / b for a, b in zip(times[case, name], plain, strict=True))
            print(f"  {case:24s} {name:36s} {t:7.3f} ({lo:6.3f}..{hi:6.3f}) {ratio:6.1f}x")


if __name__ == "__main__":
    app.run(main)
