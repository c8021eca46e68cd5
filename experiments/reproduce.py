r"""Reproduces the paper for one task: meta-training, evaluation of every method, figures, table.

  python experiments/reproduce.py --task=omniglot_5w1s --scale=cpu

Meta-trains the models the comparison needs (ROA, ROA-WC = the MAML++ baseline's network, the
5-step online baseline; roa_jax/reproduce.py says what each scale reduces), evaluates ROA,
5-step, offline, ROA-WC, ROA-FLR, ROA-WC-FLR and origin over the noise x rho x seed grid with
rho chosen on the validation classes, and writes results.json, results.csv, figure3-6.png and
table2.md to --results_dir. Rerunning the same command resumes: finished meta-training runs
and evaluated parts are kept, an interrupted run continues from its last checkpoint.

Tasks: omniglot_5w1s, omniglot_10w1s, omniglot_20w1s, omniglot_20w1s_w128, miniimagenet_5w1s
(and synthetic_5w1s, the zero-setup demo). Scales: cpu (this 2-core machine: ~1.5 h for
omniglot_5w1s), paper (the paper's protocol: 100 epochs x 500 meta-steps, 600 tasks x 4
repeats), tiny (seconds; tests).
"""

import pathlib
import sys
import time

from absl import app, flags, logging

_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from roa_jax import figures, reproduce, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "omniglot_5w1s", f"One of {sorted(reproduce.TASKS)}.")
flags.DEFINE_enum("scale", "cpu", reproduce.SCALES, "Protocol scale.")
flags.DEFINE_string("workdir", None, "Run folders (default runs/reproduce/<task>_<scale>).")
flags.DEFINE_string("results_dir", None, "Outputs (default results/<task>_<scale>).")
flags.DEFINE_list("models", list(reproduce.MODELS), "Models to meta-train and compare.")
flags.DEFINE_string("data_dir", None, "Dataset root (default: env ROA_DATA_DIR, else download).")
flags.DEFINE_string("cache_dir", None, "Cache of preprocessed data (default ~/.cache/roa_jax).")


def main(argv):
    del argv
    train.quiet_orbax()
    start = time.time()
    name = f"{FLAGS.task}_{FLAGS.scale}"
    workdir = pathlib.Path(FLAGS.workdir or _ROOT / "runs" / "reproduce" / name)
    results_dir = pathlib.Path(FLAGS.results_dir or _ROOT / "results" / name)
    unknown = set(FLAGS.models) - set(reproduce.MODELS)
    if unknown or "roa" not in FLAGS.models:
        raise ValueError(f"--models={FLAGS.models}: choose from {reproduce.MODELS}, with 'roa'.")
    proto = reproduce.protocol(FLAGS.scale)
    reproduce.check_protocol(proto)
    configs = {
        m: train.validate_config(reproduce.model_config(FLAGS.task, m, FLAGS.scale))
        for m in FLAGS.models
    }
    # Data first: a missing file or too few classes fails here, before any compile.
    splits, norm = train.load_dataset(configs["roa"], FLAGS.data_dir, FLAGS.cache_dir)
    for cfg in configs.values():
        train.check_data(cfg, splits)
    for m, cfg in configs.items():
        logging.info("Meta-training %s (%d steps) in %s", m, cfg.total_steps, workdir / m)
        result = train.fit(cfg, workdir / m, FLAGS.data_dir, FLAGS.cache_dir)
        logging.info("%s: %s (%.1f min so far)", m, result, (time.time() - start) / 60)
    image_shape = splits["train"].shape[2:]
    models = reproduce.load_models({m: workdir / m for m in configs}, image_shape)
    results = reproduce.evaluate_models(
        models, splits, norm, proto, workdir / "evaluation", title=name
    )
    results["seconds"] = time.time() - start
    reproduce.save_results(results, results_dir)
    paths = figures.make_all(results, results_dir)
    logging.info("Wrote %s and results.json/csv in %.1f min.", paths, results["seconds"] / 60)
    print((results_dir / "table2.md").read_text())


if __name__ == "__main__":
    app.run(main)
