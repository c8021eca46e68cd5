r"""Meta-trains a conv4 with MAML++ (+ the ROA constraint), then evaluates it on test classes.

  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu.py \
      --workdir=runs/omniglot_5w1s_cpu

Config files are Python files whose `get_config()` returns a `roa_jax.train.Config`; their
docstrings give the command and the expected result. `--set name=value` overrides a field.
Rerunning the same command resumes from the last checkpoint. At the end the best-validation
checkpoint is evaluated on `--test_tasks` test tasks: the ideal "origin" (exact adaptation)
and ROA's one-step hardware adaptation at each `--sigma_w` on the `--eval_device` crossbars,
with rho picked from `--rhos` on the validation classes. Results go to <workdir>/test.json.
"""

import dataclasses
import importlib.util
import json
import pathlib
import sys
import time

from absl import app, flags, logging

_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from roa_jax import train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Path of a config file with get_config().", required=True)
flags.DEFINE_multi_string("set", [], "Config override name=value; repeatable.")
flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics).", required=True)
flags.DEFINE_string("data_dir", None, "Dataset root (default: env ROA_DATA_DIR, else download).")
flags.DEFINE_string("cache_dir", None, "Cache of preprocessed data (default ~/.cache/roa_jax).")
flags.DEFINE_integer("stop_after_steps", None, "Stop (with a checkpoint) after this many steps.")
flags.DEFINE_integer("test_tasks", 600, "Test tasks of the final evaluation (0: skip it).")
flags.DEFINE_string("eval_device", "paper", "Device preset or .json for ROA evaluation.")
flags.DEFINE_list(
    "sigma_w", ["0", "0.5", "1", "2", "3"], "Write-noise levels of the final ROA evaluation."
)
flags.DEFINE_list("rhos", ["0.5", "1", "2", "4"], "Relative learning rates searched on val.")


def load_config(path: str, overrides) -> train.Config:
    """Config from a file plus name=value overrides, validated; errors name the flag."""
    file = pathlib.Path(path)
    if not file.exists():
        raise FileNotFoundError(f"--config={path}: no such file (see experiments/configs/).")
    spec = importlib.util.spec_from_file_location("roa_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    fields = {f.name: f.type for f in dataclasses.fields(train.Config)}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(
                f"--set={item!r}: expected name=value with name one of {sorted(fields)}."
            )
        kind = type(getattr(cfg, name))
        if kind is bool:
            parsed = value.lower() in ("1", "true", "yes")
        else:
            try:
                parsed = kind(value)
            except ValueError as e:
                raise ValueError(
                    f"--set={item!r}: {value!r} is not a valid {kind.__name__}."
                ) from e
        cfg = dataclasses.replace(cfg, **{name: parsed})
    return train.validate_config(cfg)


def main(argv):
    del argv  # Unused.
    train.quiet_orbax()
    cfg = load_config(FLAGS.config, FLAGS.set)
    rhos = [float(r) for r in FLAGS.rhos]
    sigmas = [float(s) for s in FLAGS.sigma_w]
    if any(r <= 0 for r in rhos) or any(s < 0 for s in sigmas) or FLAGS.test_tasks < 0:
        raise ValueError("--rhos must be > 0, --sigma_w >= 0 and --test_tasks >= 0.")
    from roa_jax import device

    device.validate(device.preset(FLAGS.eval_device))
    workdir = train.resolve_workdir(FLAGS.workdir)
    logging.info("Config: %s", cfg)
    start = time.time()
    result = train.fit(cfg, workdir, FLAGS.data_dir, FLAGS.cache_dir, FLAGS.stop_after_steps)
    result["train_seconds"] = time.time() - start
    logging.info("Training done: %s", result)
    if FLAGS.test_tasks and result["step"] == cfg.total_steps:
        test = train.final_evaluation(
            cfg,
            workdir,
            FLAGS.data_dir,
            FLAGS.cache_dir,
            FLAGS.test_tasks,
            device.preset(FLAGS.eval_device),
            sigmas,
            rhos,
        )
        result.update(test)
        pathlib.Path(workdir, "test.json").write_text(json.dumps(result, indent=1))
        logging.info("Test: %s", json.dumps(test))
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
