"""What the binaries share: the data and evaluation flags (defined and checked once), and `run`,
which prints a user's mistake as one line instead of a traceback.

Evaluation flags override the protocol of a scale (roa_jax/config.py `protocol`): each left
unset keeps the scale's value.
"""

import math
import os
import pathlib
import sys
import traceback

from absl import app, flags

_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from roa_jax import config as config_lib  # noqa: E402
from roa_jax import rundir  # noqa: E402

ROOT = _ROOT
FLAGS = flags.FLAGS


def define_data_flags() -> None:
    flags.DEFINE_string(
        "data_dir",
        None,
        "Dataset root holding omniglot/, miniimagenet/ (default: env ROA_DATA_DIR, else tfds).",
    )
    flags.DEFINE_string(
        "cache_dir",
        None,
        "Cache of preprocessed data (default: env ROA_CACHE_DIR, else ~/.cache/roa_jax).",
    )


def define_protocol_flags(default_scale: str) -> None:
    """The evaluation protocol: a scale's, with any of its fields overridden by a flag."""
    flags.DEFINE_enum(
        "eval_scale", default_scale, config_lib.SCALES, "Protocol preset of the evaluation."
    )
    flags.DEFINE_list(
        "sigma_w", None, "Write-noise levels, each finite and >= 0 (default: the scale's)."
    )
    flags.DEFINE_list("rhos", None, "Relative learning rates searched on val; must include 1.")
    flags.DEFINE_integer("seeds", None, "Repeats; each draws its own test tasks and noise.")
    flags.DEFINE_integer(
        "test_tasks", None, "Test tasks per repeat (0 in meta_train.py: no evaluation)."
    )
    flags.DEFINE_integer("val_tasks", None, "Validation tasks of the rho search.")
    flags.DEFINE_integer(
        "offline_steps", None, "SGD steps of the offline baseline (0: leave it out)."
    )
    flags.DEFINE_string("eval_device", None, "Device preset or .json of the adaptation crossbars.")


def floats(name: str) -> tuple:
    """The finite numbers of list flag --`name`; a ValueError naming the flag otherwise."""
    values = []
    for text in FLAGS[name].value:
        try:
            x = float(text)
        except ValueError:
            raise ValueError(
                f"--{name}={','.join(FLAGS[name].value)}: {text!r} is not a number."
            ) from None
        if not math.isfinite(x):
            raise ValueError(f"--{name}={','.join(FLAGS[name].value)}: {text!r} is not finite.")
        values.append(x)
    return tuple(values)


def protocol(scale: str | None = None, task: str | None = None) -> config_lib.Protocol:
    """The validated protocol of `scale` (default --eval_scale) for `task`, with the flags'
    overrides."""
    proto = config_lib.protocol(scale or FLAGS.eval_scale, task)
    overrides = {}
    for name, field in (("sigma_w", "sigmas"), ("rhos", "rhos")):
        if FLAGS[name].value is not None:
            overrides[field] = floats(name)
    for name in ("seeds", "test_tasks", "val_tasks", "offline_steps"):
        if FLAGS[name].value is not None:
            overrides[name] = FLAGS[name].value
    if FLAGS.eval_device is not None:
        overrides["device"] = FLAGS.eval_device
    return config_lib.check_protocol(proto._replace(**overrides))


def check_run_folder(flag: str, path: str) -> str:
    """`path` if it is a meta_train.py run folder that finished training; else an error."""
    if not pathlib.Path(path, "config.json").exists():
        raise FileNotFoundError(f"--{flag}={path}: no config.json there; meta-train it first.")
    if not rundir.finished(path):
        raise ValueError(f"--{flag}={path}: its meta-training has not finished; rerun it first.")
    return path


def _ours(error: BaseException) -> bool:
    """Whether `error` was raised by a check of this project (not deep inside a library)."""
    frames = traceback.extract_tb(error.__traceback__)
    here = (str(_ROOT / "roa_jax"), str(_ROOT / "experiments"))
    return bool(frames) and frames[-1].filename.startswith(here)


def run(main) -> None:
    """`app.run(main)`, with the project's own errors as one line on stderr (exit status 1).

    Bad flags, configs, data files and checkpoints are raised by the checks as ValueError,
    OSError (FileNotFoundError, ConnectionError) or FloatingPointError (a non-finite loss);
    set ROA_DEBUG=1 to see their tracebacks. Any other exception keeps its traceback.
    """

    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        try:
            return main(argv)
        except (ValueError, OSError, FloatingPointError) as e:
            if os.environ.get("ROA_DEBUG") or not _ours(e):
                raise
            print(f"{pathlib.Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(wrapped)
