"""Benchmark: one noisy hardware write (`crossbar.write_update`) vs a plain `W - lr * grad`.

  .venv/bin/python benchmarks/device_write.py            # about 1 min on 2 CPU cores

Cases: (a) the crossbars of a conv4-64 network for 5-way Omniglot (kernels 3x3x1x64,
3x3x64x64 x3, dense 64x5: 111,488 weights) as a list of crossbars, (b) one 1024x1024 crossbar.
Every function is jitted and compiled first; then each round times every function (the median
of --repeats calls after a warm-up call, with `jax.block_until_ready`). Rounds are interleaved
so that a change of load on the shared cores hits all functions alike; the table gives the
median over rounds and the range. The 1-minute load average is printed per round.

Besides the required table (write, plain, ratio) it prints where the write's time goes:
  normal draw only      `jax.random.normal` of the same shapes (default key, threefry);
  unrolled threefry     the same functions compiled with the threefry hash unrolled: jax lowers
                        it on CPU as a 5-trip while loop (to save compile time), which keeps the
                        full counter arrays in memory between trips and stops XLA from fusing
                        the hash into its consumer. Bit-identical results (checked below);
  + one-branch incr.    also `device.pulse_increment` evaluating one _relax (the pulse's
                        polarity) instead of both: a proposed change to device.py, patched in
                        here only while tracing; bit-identical forward results (checked);
  fast bits             the write fed a key whose bit generator is a cheap counter hash
                        (profiling only: the floor that any faster bit generator could reach).
"""

import contextlib
import os
import statistics
import time

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
from absl import app, flags
from jax._src.random import threefry2x32  # private: its CPU and GPU lowering rules
from jax.interpreters import mlir

from roa_jax import crossbar, device

_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed calls per measurement (median taken).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved measurements per function.")
_SIGMA_W = flags.DEFINE_float("sigma_w", 1.0, "Write-noise level of the timed write (> 0).")

CASES = {
    "conv4-64 omniglot 5-way": [(3, 3, 1, 64), *[(3, 3, 64, 64)] * 3, (64, 5)],
    "1024x1024 crossbar": [(1024, 1024)],
}
LEARNING_RATE = 0.1


def hardware_write(key, xbars, dws, params, sigma_w):
    """One write of every crossbar (open-loop pulses, Eq. 7 noise); the new conductances."""
    keys = jax.random.split(key, len(xbars))
    return [
        crossbar.write_update(k, xb, dw, params, sigma_w)[0].g_pos
        for k, xb, dw in zip(keys, xbars, dws, strict=True)
    ]


def plain_update(weights, grads):
    return [w - LEARNING_RATE * g for w, g in zip(weights, grads, strict=True)]


def normal_draw(key, shapes):
    keys = jax.random.split(key, len(shapes))
    return [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]


# ----------------------------------------------------------------------------------------------
# Variants used to find where the time goes.


@contextlib.contextmanager
def unrolled_threefry():
    """Lowers threefry2x32 on CPU unrolled, as jax does on GPU (private jax API)."""
    prim = jex_random.threefry2x32_p
    mlir.register_lowering(prim, threefry2x32._threefry2x32_lowering_rule, platform="cpu")
    try:
        yield
    finally:
        mlir.register_lowering(prim, threefry2x32._threefry2x32_cpu_lowering_rule, platform="cpu")


def _one_branch_increment(w, n, params):
    """`device.pulse_increment` computing only the pulse's own polarity (same forward values)."""
    a_plus, a_minus = device.pulse_rates(params)
    up = n >= 0
    x, a = jnp.where(up, w, 1.0 - w), jnp.where(up, a_plus, a_minus)
    return jnp.where(up, 1.0, -1.0) * device._relax(x, a, params.window, jnp.where(up, n, -n))


@contextlib.contextmanager
def one_branch_increment():
    original = device.pulse_increment
    device.pulse_increment = _one_branch_increment
    try:
        yield
    finally:
        device.pulse_increment = original


def _hash32(x):
    """A 32-bit integer hash (two xorshift-multiply rounds); uint32 in, uint32 out."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _fast_bits(key, bit_width, shape):
    """Counter-hash random bits: hash(hash(i ^ k0) + k1) for flat index i. Profiling only."""
    if bit_width != 32:
        raise NotImplementedError("fast bits: 32-bit draws only")
    size = 1
    for d in shape:
        size *= d
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _hash32(_hash32(counter ^ key[0]) + key[1])


FAST_BITS = jex_random.define_prng_impl(
    key_shape=(2,),
    seed=lambda seed: jnp.stack([jnp.uint32(seed), _hash32(jnp.uint32(seed) + 1)]),
    split=lambda key, shape: _fast_bits(key, 32, (*shape, 2)),
    random_bits=_fast_bits,
    fold_in=lambda key, data: _hash32(key ^ jnp.uint32(data)),
    name="fast_counter_hash",
    tag="fch",
)


# ----------------------------------------------------------------------------------------------


def _problem(shapes, params):
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    weights, grads = [], []
    for key, shape in zip(keys, shapes, strict=True):
        k_w, k_g = jax.random.split(key)
        weights.append(jax.random.uniform(k_w, shape, minval=-0.5, maxval=0.5))
        grads.append(0.5 * jax.random.normal(k_g, shape))
    return weights, grads, [crossbar.program(w, params) for w in weights]


def _compiled(case, params, sigma_w):
    """[(name, fn, args)] for one case, every fn already compiled (lowering fixed)."""
    shapes = CASES[case]
    weights, grads, xbars = _problem(shapes, params)
    dws = [-LEARNING_RATE * g for g in grads]
    key = jax.random.PRNGKey(1)
    write_args = (key, xbars, dws, params, sigma_w)
    # A fresh function object per variant, so that no jit or lowering cache is shared.
    variants = [
        ("write", jax.jit(lambda *a: hardware_write(*a)), write_args),
        ("plain", jax.jit(lambda *a: plain_update(*a)), (weights, grads)),
        ("normal draw only", jax.jit(lambda k: normal_draw(k, shapes)), (key,)),
    ]
    for _, fn, args in variants:
        jax.block_until_ready(fn(*args))
    extra = [
        ("unrolled threefry: write", write_args, [unrolled_threefry]),
        ("unrolled threefry: normal draw", (key,), [unrolled_threefry]),
        ("  + one-branch incr.: write", write_args, [unrolled_threefry, one_branch_increment]),
        ("fast bits: write", (jax.random.key(1, impl=FAST_BITS), *write_args[1:]), []),
    ]
    for name, args, contexts in extra:
        body = (lambda k: normal_draw(k, shapes)) if "normal" in name else hardware_write
        fn = jax.jit(lambda *a, body=body: body(*a))
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context())
            jax.block_until_ready(fn(*args))  # compiles under the variant
        variants.append((name, fn, args))
    # The variants that claim identical results must have them.
    reference = variants[0][1](*write_args)
    for name, fn, args in variants:
        if name in ("unrolled threefry: write", "  + one-branch incr.: write"):
            same = all(bool(jnp.all(a == b)) for a, b in zip(fn(*args), reference, strict=True))
            if not same:
                raise AssertionError(f"{case}: {name.strip()} changed the written conductances.")
    return variants


def _median_ms(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


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
        compiled[case] = _compiled(case, params, jnp.float32(_SIGMA_W.value))
        print(f"  {case}: {weights:,} weights; unrolled variants are bit-identical")
    times = {}
    for i in range(_ROUNDS.value):
        load = os.getloadavg()[0]
        for case, variants in compiled.items():
            for name, fn, args in variants:
                times.setdefault((case, name), []).append(_median_ms(fn, args, _REPEATS.value))
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
            print(f"  {case:24s} {name:31s} {t:7.3f} ({lo:6.3f}..{hi:6.3f}) {ratio:6.1f}x")


if __name__ == "__main__":
    app.run(main)
