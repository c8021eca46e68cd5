r"""Meta-trains a network with MAML++ (+ the ROA constraint), then evaluates it on test classes.

  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu.py \
      --workdir=runs/omniglot_5w1s_cpu

Config files are Python files whose `get_config()` returns an ml_collections ConfigDict (see
roa_jax/config.py); their docstrings give the command and the expected result. Any field can
be overridden: `--config.n_way=10 --config.inner_lr=0.05`. Rerunning the same command resumes
from the last checkpoint. At the end the best-validation checkpoint is evaluated with the same
protocol, tasks and rho rule as experiments/reproduce.py (roa_jax/comparison.py): origin, and
the hardware adaptation at each --sigma_w with rho chosen per noise level on the validation
classes (--eval_scale and the other evaluation flags; --test_tasks=0 skips it). Results go
to <workdir>/evaluation/ (results.json, results.csv, table2.md).
"""

import pathlib

import common
from absl import flags, logging
from ml_collections import config_flags

from roa_jax import comparison, data, distributed, errors, figures, rundir, train
from roa_jax import config as config_lib

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with get_config().")
flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics).")
flags.DEFINE_integer("stop_after_steps", None, "Stop (with a checkpoint) after this many steps.")
common.define_data_flags()
common.define_protocol_flags("quick")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    common.init_processes()
    rundir.quiet_orbax()
    cfg = config_lib.build(_CONFIG.value)
    if FLAGS.stop_after_steps is not None and FLAGS.stop_after_steps < 1:
        raise errors.ConfigError(f"--stop_after_steps={FLAGS.stop_after_steps} must be >= 1.")
    if FLAGS.test_tasks is not None and FLAGS.test_tasks < 0:
        raise errors.ConfigError(
            f"--test_tasks={FLAGS.test_tasks} must be >= 0 (0: no evaluation)."
        )
    evaluate = FLAGS.test_tasks != 0
    proto = common.protocol() if evaluate else None
    workdir = pathlib.Path(FLAGS.workdir).expanduser().absolute()
    # Data first: a missing file or too few classes fails here, before any compile.
    splits, norm = data.load_splits(cfg, FLAGS.data_dir, FLAGS.cache_dir)
    data.check_splits(cfg, splits)
    logging.info("Config: %s", cfg)
    result = train.fit(cfg, workdir, FLAGS.data_dir, FLAGS.cache_dir, FLAGS.stop_after_steps)
    logging.info("Training done: %s", result)
    if evaluate and result["step"] == cfg.total_steps:
        trained = {comparison.model_name(cfg): train.load_trained(workdir)}
        out = workdir / "evaluation"
        results = comparison.evaluate(trained, splits, norm, proto, out, title=workdir.name)
        if not distributed.is_main():
            return  # process 0 writes the outputs
        comparison.save(results, out)
        (out / "table2.md").write_text(figures.table2(results))
        print((out / "table2.md").read_text())


if __name__ == "__main__":
    common.run(main)
