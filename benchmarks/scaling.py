r"""Sweep and meta-step throughput on 1, 2, 4, ... devices, as speed-up over 1 device.

  python benchmarks/scaling.py                        # every power of 2 up to all devices
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/scaling.py --width=8

The sweep: ROA's one-step hardware adaptation of a conv4 (paper device, open-loop writes) at
--points noise levels x --tasks tasks, its grid split over the devices (evaluation.sweep with a
mesh; each device maps its points with the backend's strategy). The meta-step: one second-order
MAML++ step of --meta_batch tasks, data parallel (distributed.data_parallel) from 2 devices
on. Prints seconds (median of --repeats after a warm-up compile), throughput, the speed-up
over 1 device measured in the same run, and the largest difference from the 1-device
numbers (accuracy; meta-loss). Omniglot-shaped random data; no dataset needed. Forced CPU
devices share the machine's cores: there the speed-up measures overhead, not scaling.
"""

import functools
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roa_jax import config, device, distributed, evaluation, maml, train  # noqa: E402
from roa_jax.data import episodes  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("devices", None, "Device counts (default 1, 2, 4, ... and all devices).")
flags.DEFINE_integer("points", 16, "Grid points (noise levels) of the sweep.")
flags.DEFINE_integer("tasks", 32, "Tasks per grid point.")
flags.DEFINE_integer("chunk", 8, "Tasks per point per compiled call.")
flags.DEFINE_integer("meta_batch", 16, "Tasks per meta-step (a multiple of every count).")
flags.DEFINE_integer("width", 64, "Conv filters.")
flags.DEFINE_integer("image_size", 28, "Image side.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).")


def _median_seconds(fn, repeats):
    fn()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _counts():
    if FLAGS.devices:
        return [int(n) for n in FLAGS.devices]
    total, counts = jax.device_count(), [1]
    while counts[-1] * 2 <= total:
        counts.append(counts[-1] * 2)
    return counts if counts[-1] == total else [*counts, total]


def main(argv):
    del argv
    counts = _counts()
    if max(counts) > jax.device_count():
        raise app.UsageError(f"--devices={counts}: only {jax.device_count()} devices.")
    size = FLAGS.image_size
    cfg = config.Config(
        width=FLAGS.width, image_size=size, meta_batch_size=FLAGS.meta_batch, n_query=15
    )
    meta = train.init_meta(cfg, (size, size, 1))
    images = jax.random.randint(jax.random.PRNGKey(1), (100, 20, size, size, 1), 0, 256)
    images = np.asarray(images, np.uint8)
    grid = evaluation.make_grid(np.linspace(0, 3, FLAGS.points), [1.0], [0])
    setting = evaluation.Setting(
        "adapt", train.build_model(cfg), 5, 1, 15, num_steps=1, chunk=FLAGS.chunk
    )
    paper = evaluation.stack([device.paper()])
    sweep_args = (jax.random.PRNGKey(2), meta, images, (0.0, 1.0), paper, grid)
    optimizer = train.make_optimizer(cfg)
    state = train.TrainState(meta, optimizer.init(meta), jnp.int32(0))
    msl_w = maml.msl_weights(1, 0, 0)
    step = functools.partial(train.train_step, optimizer=optimizer, first_order=False)
    print(
        f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es); conv4-{FLAGS.width}, {size}x{size}, 5-way 1-shot; "
        f"sweep {FLAGS.points} points x {FLAGS.tasks} tasks, meta-step {FLAGS.meta_batch} tasks"
    )
    rows, reference = [], {}
    for n in counts:
        mesh = distributed.mesh(devices=jax.devices()[:n])
        result = {}

        def sweep(mesh=mesh, result=result):
            result["sweep"] = evaluation.sweep(*sweep_args, FLAGS.tasks, setting, mesh=mesh)

        if n == 1:
            sample = jax.jit(episodes.sample_episodes, static_argnums=(2, 3, 4, 5))
            step_fn = jax.jit(functools.partial(step, objective=train.objective(cfg)))
        else:
            objective = train.objective(cfg)._replace(mesh=mesh)
            step_fn = distributed.data_parallel(functools.partial(step, objective=objective), mesh)
            sample = distributed.sampler(mesh)
        batch = sample(jax.random.PRNGKey(3), images, FLAGS.meta_batch, 5, 1, 15)
        start = state if n == 1 else distributed.replicate(state, mesh)  # once, as in fit

        def meta_step(step_fn=step_fn, batch=batch, start=start, result=result):
            _, metrics = step_fn(start, batch, jax.random.PRNGKey(4), msl_w, None)
            result["meta-step"] = float(metrics["loss"])

        for case, fn, work in (
            ("sweep", sweep, FLAGS.points * FLAGS.tasks),
            ("meta-step", meta_step, FLAGS.meta_batch),
        ):
            seconds = _median_seconds(fn, FLAGS.repeats)
            reference.setdefault(case, (seconds, result[case]))
            ref_seconds, ref_value = reference[case]
            diff = np.max(np.abs(np.asarray(result[case]) - ref_value))
            rows.append((case, n, seconds, work / seconds, ref_seconds / seconds, diff))
    header = ("case", "devices", "seconds", "tasks/s", "speed-up", "max diff")
    print(f"{header[0]:10s} " + " ".join(f"{h:>9s}" for h in header[1:]))
    for case, n, seconds, rate, speedup, diff in rows:
        print(f"{case:10s} {n:9d} {seconds:9.3f} {rate:9.1f} {speedup:9.2f} {diff:9.2g}")


if __name__ == "__main__":
    app.run(main)
