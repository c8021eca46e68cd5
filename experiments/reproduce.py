r"""Reproduces the paper for one task: meta-training, evaluation of every method, figures, claims.

  python experiments/reproduce.py --task=omniglot_5w1s --scale=cpu

Meta-trains the models the comparison needs (ROA, ROA-WC = the MAML++ baseline's network, the
5-step online baseline; roa_jax/config.py says what each scale reduces), evaluates ROA,
5-step, offline, ROA-WC, ROA-FLR, ROA-WC-FLR and origin over the noise x rho x seed grid with
rho chosen on the validation classes (roa_jax/comparison.py), and writes results.json,
results.csv, figure3-6.png, table2.md and claims.md/.json to --results_dir. Rerunning the same
command resumes: finished meta-training runs and evaluated parts are kept, an interrupted run
continues from its last checkpoint; with --trained_dir both travel with the results, so a task
can be split over machines and sessions. --train_only stops after meta-training.

Tasks: roa_jax/tasks.py (omniglot_5w1s, omniglot_10w1s, omniglot_20w1s, omniglot_20w1s_w128,
miniimagenet_5w1s, and synthetic_5w1s, the zero-setup demo). Scales: quick (the README's main
job), cpu (this 2-core machine), cpu_long (cpu with 10x the meta-steps), paper (the paper's
protocol: 100 epochs x 500 meta-steps, 600 tasks x 4 repeats), tiny (seconds; tests). The
evaluation flags override the scale's protocol (e.g. --eval_device). Sweeps are split over all
devices; --data_parallel splits each meta-batch too (required with several processes, see
README).
"""

import dataclasses
import pathlib
import time

import common
from absl import flags, logging

from roa_jax import claims, comparison, data, distributed, errors, figures, rundir, tasks, train
from roa_jax import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", "omniglot_5w1s", sorted(tasks.TASKS), "The paper's task.")
flags.DEFINE_enum("scale", "cpu", config_lib.SCALES, "Scale of meta-training and evaluation.")
flags.DEFINE_string("workdir", None, "Run folders (default runs/reproduce/<task>_<scale>).")
flags.DEFINE_string("results_dir", None, "Outputs (default results/<task>_<scale>).")
flags.DEFINE_list("models", None, "Models to meta-train and compare (default: the task's).")
flags.DEFINE_string(
    "trained_dir",
    None,
    "Keep a copy of each meta-training run here (config, best model, metrics, latest "
    "checkpoint: a few MB each, renewed at every checkpoint), and start from it where "
    "--workdir has none, and save the "
    "evaluated parts here too (evaluation/parts): trained networks and a half-done "
    "evaluation that travel with the results (e.g. results/<task>_<scale>/trained).",
)
flags.DEFINE_bool("train_only", False, "Stop after meta-training (e.g. before a calibration).")
flags.DEFINE_bool(
    "data_parallel", False, "Meta-train data parallel over all devices (needed with processes)."
)
common.define_data_flags()
common.define_protocol_flags("cpu")


def main(argv):
    del argv
    common.init_processes()
    rundir.quiet_orbax()
    start = time.time()
    name = f"{FLAGS.task}_{FLAGS.scale}"
    workdir = pathlib.Path(FLAGS.workdir or common.ROOT / "runs" / "reproduce" / name)
    results_dir = pathlib.Path(FLAGS.results_dir or common.ROOT / "results" / name)
    models = FLAGS.models or tasks.TASKS[FLAGS.task].models
    unknown = set(models) - set(config_lib.MODELS)
    if unknown or "roa" not in models:
        raise errors.ConfigError(
            f"--models={models}: choose from {list(config_lib.MODELS)}, with roa."
        )
    scale = FLAGS.scale if FLAGS["eval_scale"].using_default_value else None
    proto = common.protocol(scale, FLAGS.task)
    configs = {
        m: dataclasses.replace(
            config_lib.model_config(FLAGS.task, m, FLAGS.scale), data_parallel=FLAGS.data_parallel
        )
        for m in models
    }
    # Data first: a missing file or too few classes fails here, before any compile.
    splits, norm = data.load_splits(configs["roa"], FLAGS.data_dir, FLAGS.cache_dir)
    for cfg in configs.values():
        data.check_splits(cfg, splits)
    rundir.hold(results_dir)  # one reproduce.py per results folder, for the process's life
    kept = pathlib.Path(FLAGS.trained_dir) if FLAGS.trained_dir else None
    for m, cfg in configs.items():
        if kept and distributed.is_main() and rundir.adopt(kept / m, workdir / m):
            logging.info("Took %s's run from %s.", m, kept / m)
        distributed.barrier("reproduce: runs adopted")
        logging.info("Meta-training %s (%d steps) in %s", m, cfg.total_steps, workdir / m)
        export_to = kept / m if kept else None  # after every checkpoint: nothing to cut by hand
        result = train.fit(cfg, workdir / m, FLAGS.data_dir, FLAGS.cache_dir, export_to=export_to)
        logging.info("%s: %s (%.1f min so far)", m, result, (time.time() - start) / 60)
        if kept and distributed.is_main() and not rundir.finished(kept / m):
            rundir.export(workdir / m, kept / m)  # finished before --trained_dir was given
    if FLAGS.train_only:
        return
    trained = {m: train.load_trained(workdir / m) for m in configs}
    eval_dir = (kept or workdir) / "evaluation"  # parts saved as evaluated: resumable
    results = comparison.evaluate(trained, splits, norm, proto, eval_dir, title=name)
    results = dataclasses.replace(results, seconds=time.time() - start)
    if not distributed.is_main():
        return  # process 0 writes the outputs
    comparison.save(results, results_dir)
    paths = figures.make_all(results, results_dir)
    claims.write(claims.evaluate(results, FLAGS.task), results_dir, title=name)
    logging.info(
        "Wrote %s, claims.md and results.json/csv in %.1f min.", paths, results.seconds / 60
    )
    print((results_dir / "table2.md").read_text())
    print((results_dir / "claims.md").read_text())


if __name__ == "__main__":
    common.run(main)
