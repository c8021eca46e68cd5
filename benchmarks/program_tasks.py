r"""Tasks per compiled call of the loop strategy: compile and run time, 1- and 5-step adaptation.

  python benchmarks/program_tasks.py                  # 1 and 5 writes, 1 / 2 / 8 tasks per call
  python benchmarks/program_tasks.py --steps=5 --program_tasks=1,8 --tasks=64

evaluation.sweep's loop strategy (the XLA:CPU default) calls one compiled program per grid
point and `Setting.program_tasks` tasks, which it unrolls. For each number of inner steps
(ROA: one hardware write; the online baseline: five) and each value, prints the first call's
seconds (compile + one call) and the seconds of --tasks tasks at --points grid points after
it, with the ratio against one task per call measured in the same run. Conv4-64 on
Omniglot-shaped random tasks, the calibrated device; no dataset needed.
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roa_jax import device, evaluation, maml, models  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("steps", ["1", "5"], "Inner steps (hardware writes) of the adaptation.")
flags.DEFINE_list("program_tasks", ["1", "2", "8"], "Tasks per compiled call to time.")
flags.DEFINE_integer("tasks", 32, "Tasks per grid point of the timed sweep.")
flags.DEFINE_integer("points", 2, "Grid points (noise levels) of the timed sweep.")


def main(argv):
    del argv
    images = jax.random.randint(jax.random.PRNGKey(1), (100, 20, 28, 28, 1), 0, 256)
    images = images.astype(jnp.uint8)
    grid = evaluation.make_grid(np.linspace(0.5, 1.0, FLAGS.points), [1.0], [0])
    one = evaluation.make_grid([0.5], [1.0], [0])  # the first call: one point, one chunk
    devices = evaluation.stack([device.calibrated()])
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; conv4-64, 5-way 1-shot, "
        f"chunks of 8 tasks, {FLAGS.points} points x {FLAGS.tasks} tasks"
    )
    print(f"{'steps':>5s} {'tasks/call':>10s} {'first call s':>12s} {'sweep s':>8s} {'vs 1':>6s}")
    for steps in (int(s) for s in FLAGS.steps):
        model = models.build("conv4", 5, 64, steps + 1)
        meta = maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, 28, 28, 1)), steps, 0.1)
        base = evaluation.Setting("adapt", model, 5, 1, 15, num_steps=steps, chunk=8)
        args = (jax.random.PRNGKey(2), meta, images, (0.0, 1.0), devices)
        reference = None
        for n in (int(t) for t in FLAGS.program_tasks):
            setting = base._replace(program_tasks=n)
            start = time.perf_counter()
            evaluation.sweep(*args, one, 8, setting, strategy="loop")
            first = time.perf_counter() - start
            start = time.perf_counter()
            evaluation.sweep(*args, grid, FLAGS.tasks, setting, strategy="loop")
            seconds = time.perf_counter() - start
            reference = seconds if n == 1 or reference is None else reference
            print(f"{steps:5d} {n:10d} {first:12.1f} {seconds:8.2f} {seconds / reference:6.2f}")


if __name__ == "__main__":
    app.run(main)
