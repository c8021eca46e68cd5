r"""Evaluates meta-trained checkpoints: every method of the paper over noise x rho x seed.

  python experiments/evaluate.py --roa=runs/reproduce/omniglot_5w1s_cpu/roa \
      --roa_wc=runs/reproduce/omniglot_5w1s_cpu/roa_wc \
      --five_step=runs/reproduce/omniglot_5w1s_cpu/five_step --out_dir=results/my_eval

Each --<model> is a meta_train.py run folder (config.json and best/). ROA and ROA-FLR come from
--roa, ROA-WC and ROA-WC-FLR (the MAML++ baseline) from --roa_wc, the online baseline from
--five_step; offline needs no checkpoint. rho is chosen per noise level on --val_tasks
validation tasks, then the test tasks (--test_tasks per repeat, --seeds repeats) are
evaluated; the whole grid runs as one compiled program per chunk of tasks. Writes
results.json, results.csv, figure3-6.png and table2.md to --out_dir; parts already evaluated
with the same settings are reused (rerun to resume).
"""

import pathlib
import sys

from absl import app, flags

_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from roa_jax import figures, reproduce, train  # noqa: E402

FLAGS = flags.FLAGS
for _model in reproduce.MODELS:
    flags.DEFINE_string(_model, None, f"Run folder of the {_model!r} model.")
flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
flags.DEFINE_list("sigma_w", [str(s) for s in reproduce.PAPER_SIGMAS], "Write-noise levels.")
flags.DEFINE_list("rhos", ["0.5", "1", "2", "4"], "Relative learning rates (must include 1).")
flags.DEFINE_integer("seeds", 4, "Repeats; each draws its own tasks and noise.")
flags.DEFINE_integer("test_tasks", 600, "Test tasks per repeat.")
flags.DEFINE_integer("val_tasks", 600, "Validation tasks of the rho search.")
flags.DEFINE_integer("offline_steps", 5, "SGD steps of the offline network.")
flags.DEFINE_string("eval_device", "paper", "Device preset or .json.")
flags.DEFINE_string("title", "", "Title of the figures (default: the out_dir name).")
flags.DEFINE_string("data_dir", None, "Dataset root (default: env ROA_DATA_DIR, else download).")
flags.DEFINE_string("cache_dir", None, "Cache of preprocessed data (default ~/.cache/roa_jax).")


def main(argv):
    del argv
    workdirs = {m: getattr(FLAGS, m) for m in reproduce.MODELS if getattr(FLAGS, m)}
    if "roa" not in workdirs:
        raise ValueError("--roa is required (the ROA run folder).")
    proto = reproduce.Protocol(
        sigmas=tuple(float(s) for s in FLAGS.sigma_w),
        rhos=tuple(float(r) for r in FLAGS.rhos),
        seeds=FLAGS.seeds,
        test_tasks=FLAGS.test_tasks,
        val_tasks=FLAGS.val_tasks,
        offline_steps=FLAGS.offline_steps,
        eval_device=FLAGS.eval_device,
    )
    reproduce.check_protocol(proto)
    for m, path in workdirs.items():
        if not train.Workdir(path).best.exists():
            raise FileNotFoundError(f"--{m}={path}: no best/ checkpoint; meta-train it first.")
    cfg = reproduce.load_config(workdirs["roa"])
    splits, norm = train.load_dataset(cfg, FLAGS.data_dir, FLAGS.cache_dir)
    models = reproduce.load_models(workdirs, splits["train"].shape[2:])
    reproduce.check_same_tasks(models)
    out = pathlib.Path(FLAGS.out_dir)
    results = reproduce.evaluate_models(
        models, splits, norm, proto, out, title=FLAGS.title or out.name
    )
    reproduce.save_results(results, out)
    figures.make_all(results, out)
    print((out / "table2.md").read_text())


if __name__ == "__main__":
    app.run(main)
