r"""Speed levers of issue 28 against their previous form, in one process, interleaved.

  python benchmarks/levers.py                      # all four
  python benchmarks/levers.py --levers=pool --repeats=7

- query: the 5-step Omniglot 5-way meta-step (8 tasks) querying after every inner step, as
  before, against after the last one only (`train.Objective.multi_step_loss=False`, what every
  scale without MSL annealing runs); first and second order; prints whether the updated
  meta-parameters are equal and each program's compile time.
- pool: `evaluation.sweep` (one task per program, 2 noise levels x 16 tasks) with the
  undifferentiated max-pool as XLA's reduce-window, as before, against the strided maxima
  (`models._signed_max_pool`); origin, ROA (1 write) and 5-step; prints whether the
  accuracies are equal.
- noise: the same sweep over the main job's 5 noise levels x 4 rhos (16 tasks), ROA and 5-step,
  each point drawing its tasks' write noise in its own program, as before, against drawn once
  per repeat with the tasks (`evaluation.draw_normals`); prints whether the accuracies are equal.
- threads: two 5-step sweeps (4 noise levels x 16 tasks, other tasks each) one after the other
  against the same two at once from two Python threads, and the cores each way keeps busy
  (process CPU time / wall time): what is left to gain by running parts side by side.
Random conv4 networks (--width filters, meta_step.py's flag) and Omniglot-shaped random
images; no dataset needed. Medians of --repeats (meta_step.py's flag)
interleaved rounds after a warm-up (benchmarks/meta_step.py explains why interleaved).
"""

import functools
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import meta_step  # noqa: E402
from roa_jax import device, evaluation, maml, models, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "levers", ["query", "pool", "noise", "threads"], "Levers to time: query, pool, noise, threads."
)


def query_lever():
    cfg, meta, batch = meta_step._setup("omniglot_5w", 5, "unroll")
    optimizer = train.make_optimizer(cfg)
    state = train.TrainState(meta, optimizer.init(meta), jnp.int32(0))
    args = (state, batch, jax.random.PRNGKey(1), maml.msl_weights(5, 0, 0), None)
    fns, outs, compiles = {}, {}, {}
    for first_order in (True, False):
        for every_step in (True, False):
            objective = train.objective(cfg)._replace(multi_step_loss=every_step)
            step = functools.partial(
                train.train_step, objective=objective, optimizer=optimizer, first_order=first_order
            )
            start = time.perf_counter()
            compiled = jax.jit(step).lower(*args).compile()
            key = (first_order, every_step)
            compiles[key] = time.perf_counter() - start
            outs[key] = compiled(*args)[0].meta
            fns[key] = lambda c=compiled: jax.block_until_ready(c(*args))
    t = meta_step._median_times(fns, FLAGS.repeats)
    for first_order in (True, False):
        every, last = (first_order, True), (first_order, False)
        equal = all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(outs[every]), jax.tree.leaves(outs[last]), strict=True)
        )
        print(
            f"query, 5-step meta-step, {'first' if first_order else 'second'} order: every step "
            f"{t[every]:.3f} s, last only {t[last]:.3f} s, {t[every] / t[last]:.2f}x; compile "
            f"{compiles[every]:.0f} / {compiles[last]:.0f} s; meta-parameters equal: {equal}"
        )


def _eval_lever(name, forms, grid, kinds=(("origin", 1), ("adapt", 1), ("adapt", 5))):
    """`evaluation.sweep` (one task per program, `grid`'s points x 16 tasks) of origin, ROA
    (1 write) and 5-step under each of `forms` ({form: a function that puts it in place}, the
    previous form first, the library's own last, which stays in place)."""
    images = jax.random.randint(jax.random.PRNGKey(1), (100, 20, 28, 28, 1), 0, 256)
    images = images.astype(jnp.uint8)
    devices = evaluation.stack([device.calibrated()])
    fns, accs, tasks = {}, {}, 16 * len(grid.seed)
    try:
        for kind, steps in kinds:
            model = models.build("conv4", 5, FLAGS.width, steps + 1)
            meta = maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, 28, 28, 1)), steps, 0.1)
            for tag, (form, put) in enumerate(forms.items()):
                put()
                # Settings differ (an unused field) so that each form compiles its own program.
                setting = evaluation.Setting(
                    kind, model, 5, 1, 15, num_steps=steps, chunk=8, offline_lr=tag
                )
                run = functools.partial(
                    evaluation.sweep,
                    jax.random.PRNGKey(2), meta, images, (0.0, 1.0), devices, grid, 16, setting,
                    strategy="loop",
                )  # fmt: skip
                accs[(kind, steps, form)] = run()  # compiles under this form
                fns[(kind, steps, form)] = run
    finally:
        list(forms.values())[-1]()
    t = meta_step._median_times(fns, FLAGS.repeats)
    old, new = list(forms)
    for kind, steps in kinds:
        a, b = (kind, steps, old), (kind, steps, new)
        per_task = lambda x: 1000 * t[x] / tasks  # noqa: E731
        print(
            f"{name}, eval {kind} {steps} step(s): {old} {per_task(a):.1f} ms per task, "
            f"{new} {per_task(b):.1f}, {t[a] / t[b]:.2f}x; accuracies equal: "
            f"{np.array_equal(accs[a], accs[b])}"
        )


def pool_lever():
    def put(pool):
        return lambda: setattr(models, "_signed_max_pool", pool)

    forms = {"reduce-window": put(models._pool_for_grad), "strided": put(models._signed_max_pool)}
    _eval_lever("pool", forms, evaluation.make_grid([0.5, 1.0], [1.0], [0]))


def noise_lever():
    def put(draw):
        return lambda: setattr(evaluation, "draw_normals", draw)

    forms = {"per point": put(lambda *args: None), "per repeat": put(evaluation.draw_normals)}
    grid = evaluation.make_grid([0.0, 0.5, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 4.0], [0])
    _eval_lever("noise", forms, grid, kinds=(("adapt", 1), ("adapt", 5)))


def threads_lever():
    images = jax.random.randint(jax.random.PRNGKey(1), (100, 20, 28, 28, 1), 0, 256)
    images = images.astype(jnp.uint8)
    model = models.build("conv4", 5, FLAGS.width, 6)
    meta = maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, 28, 28, 1)), 5, 0.1)
    setting = evaluation.Setting("adapt", model, 5, 1, 15, num_steps=5, chunk=8)
    grid = evaluation.make_grid([0.5, 1.0, 2.0, 3.0], [1.0], [0])
    devices = evaluation.stack([device.calibrated()])

    def sweep(seed, out):
        key = jax.random.PRNGKey(seed)
        out[seed] = evaluation.sweep(key, meta, images, (0.0, 1.0), devices, grid, 16, setting)

    def serial(out):
        for seed in (2, 3):
            sweep(seed, out)

    def side_by_side(out):
        workers = [threading.Thread(target=sweep, args=(seed, out)) for seed in (2, 3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    outs, cores = {}, {}
    for form in (serial, side_by_side):
        outs[form.__name__] = {}
        form(outs[form.__name__])  # compiles
        wall, cpu = time.perf_counter(), time.process_time()
        form({})
        cores[form.__name__] = (time.process_time() - cpu) / (time.perf_counter() - wall)
    fns = {form.__name__: functools.partial(form, {}) for form in (serial, side_by_side)}
    t = meta_step._median_times(fns, FLAGS.repeats)
    equal = all(np.array_equal(outs["serial"][s], outs["side_by_side"][s]) for s in (2, 3))
    print(
        f"threads, two 5-step sweeps: one after the other {t['serial']:.2f} s "
        f"({cores['serial']:.2f} cores busy), side by side {t['side_by_side']:.2f} s "
        f"({cores['side_by_side']:.2f} cores), {t['serial'] / t['side_by_side']:.2f}x; "
        f"accuracies equal: {equal}"
    )


def main(argv):
    del argv
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    if "query" in FLAGS.levers:
        query_lever()
    if "pool" in FLAGS.levers:
        pool_lever()
    if "noise" in FLAGS.levers:
        noise_lever()
    if "threads" in FLAGS.levers:
        threads_lever()


if __name__ == "__main__":
    app.run(main)
