"""Benchmark: one write on the technologies without a closed form (a pulse at a time), the loop
that goes on with fewer devices as they finish (`technologies.apply_pulses`) against pulsing
every device up to the largest count (what the loop did before; a scan of that many steps).

  .venv/bin/python benchmarks/technology_write.py        # about 2 min on 2 CPU cores

The crossbars of a conv4-64 network for 5-way Omniglot (111,488 weights) take one write each.
Counts are heavy-tailed like a trained network's first update: |Student-t| (2 degrees of
freedom) times --scale, capped at 600 pulses, near those of ROA's write at rho 4 on the
cpu_long 5-way network on reram_es (quantiles 50 / 87.5 / 98.4 / 99.8 % / max: 6 / 38 / 97 /
172 / 587 pulses, measured with roa.write_pulses on 4 validation tasks); the counts' quantiles
are printed. Rounds are interleaved (both variants per round, median of --repeats calls each)
so that a change of load hits both alike; the table gives the median over rounds and the range.
"""

import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from timing import median_ms

from roa_jax import technologies

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median taken).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved measurements per variant.")
_SCALE = flags.DEFINE_float("scale", 7.0, "Pulses per unit of the Student-t draw (> 0).")
_TECHNOLOGIES = flags.DEFINE_list(
    "technologies", ["reram_es", "pcm"], "Technologies of technologies.PRESETS."
)

_CAP = 600
SHAPES = [(3, 3, 1, 64), *[(3, 3, 64, 64)] * 3, (64, 5)]


def _problem(name):
    """(key, [w], [n], [devices]) of one write of every layer on technology `name`."""
    t = technologies.params(technologies.PRESETS[name])
    ws, ns, hs = [], [], []
    for i, shape in enumerate(SHAPES):
        h = technologies.chip(t, shape)
        k_w, k_n = jax.random.split(jax.random.PRNGKey(i))
        ws.append(h.min_bound + jax.random.uniform(k_w, shape) * (h.max_bound - h.min_bound))
        ns.append(jnp.round(jnp.clip(_SCALE.value * jax.random.t(k_n, 2.0, shape), -_CAP, _CAP)))
        hs.append(h)
    return jax.random.PRNGKey(7), ws, ns, hs


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _REPEATS.value < 1 or _ROUNDS.value < 1 or not _SCALE.value > 0:
        raise app.UsageError("--repeats and --rounds must be >= 1, --scale > 0.")
    unknown = [n for n in _TECHNOLOGIES.value if n not in technologies.PRESETS]
    if unknown:
        raise app.UsageError(f"--technologies: {unknown} not in {sorted(technologies.PRESETS)}.")
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}, {dev.device_kind}, {len(os.sched_getaffinity(0))} cores")
    variants = {}
    for name in _TECHNOLOGIES.value:
        key, ws, ns, hs = _problem(name)
        counts = np.abs(np.concatenate([np.ravel(n) for n in ns]))
        q = np.percentile(counts, [50, 87.5, 98.4, 99.8, 100])
        print(f"  {name}: |pulses| 50/87.5/98.4/99.8/100 %: {' / '.join(f'{x:.0f}' for x in q)}")
        largest = int(counts.max())
        shrinking = jax.jit(
            lambda k, ws, ns, hs: [
                technologies.apply_pulses(k, w, n, h) for w, n, h in zip(ws, ns, hs, strict=True)
            ]
        )
        every = jax.jit(
            lambda k, ws, ns, hs, m=largest: [
                technologies.apply_pulses(k, w, n, h, m) for w, n, h in zip(ws, ns, hs, strict=True)
            ]
        )
        variants[name] = {"shrinking": (shrinking, (key, ws, ns, hs))}
        variants[name]["every device"] = (every, (key, ws, ns, hs))
    times = {}
    for i in range(_ROUNDS.value):
        for name, by in variants.items():
            for variant, (fn, args) in by.items():
                times.setdefault((name, variant), []).append(median_ms(fn, args, _REPEATS.value))
        print(f"round {i + 1}: load average {os.getloadavg()[0]:.2f}")
    print(f"\n{'technology':18s} {'shrinking ms':>24s} {'every device ms':>24s}  speed-up")
    for name in variants:
        cells = []
        for variant in ("shrinking", "every device"):
            values = times[name, variant]
            cells.append(
                f"{statistics.median(values):8.1f} ({min(values):6.1f}..{max(values):6.1f})"
            )
        ratio = statistics.median(
            b / a
            for a, b in zip(times[name, "shrinking"], times[name, "every device"], strict=True)
        )
        print(f"{name:18s} {cells[0]:>24s} {cells[1]:>24s} {ratio:8.1f}x")


if __name__ == "__main__":
    app.run(main)
