r"""A noise sweep as one compiled program against the same work as a Python loop over levels.

  python benchmarks/sweep.py                       # 8 noise levels x 600 tasks, conv4-64
  python benchmarks/sweep.py --tasks=96 --strategies=map,vmap,loop

Evaluates ROA's one-step hardware adaptation (paper device, open-loop writes) of a conv4 on
Omniglot-shaped random tasks at --levels noise levels in [0, 3], --tasks tasks per level, with
each strategy of evaluation.sweep: 'unroll', 'vmap' and 'map' (the whole grid in one
compiled program per chunk of tasks), 'loop' (one compiled program per level, called from
Python: the reference) and 'auto' (the backend's default: loop on XLA:CPU, vmap on accelerators).
Prints seconds (after a warm-up compile of each), the ratio loop / strategy (> 1: faster
than the loop), the largest per-task accuracy difference against the loop and how many of
the tasks differ (0 on every backend: the sweep runs in full float32, batching.sweep_precision).
No dataset needed.
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roa_jax import batching, device, evaluation, maml, models  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("levels", 8, "Noise levels.")
flags.DEFINE_integer("tasks", 600, "Tasks per level.")
flags.DEFINE_integer("chunk", 8, "Tasks per compiled call and level.")
flags.DEFINE_integer("width", 64, "Conv filters.")
flags.DEFINE_list("strategies", ["unroll", "map", "vmap", "loop"], "Strategies to time.")


def main(argv):
    del argv
    model = models.build("conv4", 5, FLAGS.width, 2)  # one BN set per step and for theta_0
    meta = maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, 28, 28, 1)), 1, 0.1)
    images = jax.random.randint(jax.random.PRNGKey(1), (100, 20, 28, 28, 1), 0, 256)
    images = images.astype(jnp.uint8)
    grid = evaluation.make_grid(np.linspace(0, 3, FLAGS.levels), [1.0], [0])
    setting = evaluation.Setting("adapt", model, n_way=5, k_shot=1, n_query=15, chunk=FLAGS.chunk)
    devices = evaluation.stack([device.paper()])
    args = (jax.random.PRNGKey(2), meta, images, (0.0, 1.0), devices, grid)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; {FLAGS.levels} noise levels x "
        f"{FLAGS.tasks} tasks, conv4-{FLAGS.width}, 5-way 1-shot, one hardware write; "
        f"auto = {batching.default_grid_strategy()}"
    )
    times, results = {}, {}
    for strategy in FLAGS.strategies:
        evaluation.sweep(*args, FLAGS.chunk, setting, strategy=strategy)  # compile
        start = time.perf_counter()
        results[strategy] = evaluation.sweep(*args, FLAGS.tasks, setting, strategy=strategy)
        times[strategy] = time.perf_counter() - start
    reference = times.get("loop", float("nan"))
    print(
        f"{'strategy':10s} {'seconds':>8s} {'loop/this':>9s} {'max |acc - loop|':>17s} "
        f"{'tasks differing':>16s}"
    )
    for strategy, seconds in times.items():
        diff = np.abs(results[strategy] - results.get("loop", np.nan))
        print(
            f"{strategy:10s} {seconds:8.2f} {reference / seconds:9.2f} {diff.max():17.4f} "
            f"{np.sum(diff > 1e-6):7d} of {diff.size:6d}"
        )


if __name__ == "__main__":
    app.run(main)
