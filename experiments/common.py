"""What the binaries share: the data, evaluation and multi-process flags (defined and checked
once), `init_processes`, and `run`, which prints a user's mistake (`errors.UserError`) as one
line instead of a traceback.

Evaluation flags override the protocol of a scale (roa_jax/config.py `protocol`): each left
unset keeps the scale's value.
"""

import ast
import logging
import math
import os
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from roa_jax import batching, distributed, errors, rundir  # noqa: E402
from roa_jax import config as config_lib  # noqa: E402
from roa_jax.data import paths  # noqa: E402

ROOT = _ROOT
FLAGS = flags.FLAGS

# JAX logs at INFO that it found no TPU on every machine without one; a user's one-line error
# should not follow it.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

# Many hosts (roa_jax/distributed.py): unset, they come from JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES, JAX_PROCESS_ID, or JAX's own Slurm / Open MPI detection.
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 of a multi-process run (all hosts)."
)
flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process of a multi-process run, 0 .. n-1.")


def init_processes() -> None:
    """Joins a multi-process run per the flags above; first in main, before any JAX work.

    Afterwards every device of every process is visible, the evaluation's grid is split over
    them all, and only process 0 writes files (`distributed.is_main`).
    """
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


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
    """The finite numbers of list flag --`name`; a ConfigError naming the flag otherwise."""
    values = []
    for text in FLAGS[name].value:
        try:
            x = float(text)
        except ValueError:
            raise errors.ConfigError(
                f"--{name}={','.join(FLAGS[name].value)}: {text!r} is not a number."
            ) from None
        if not math.isfinite(x):
            raise errors.ConfigError(
                f"--{name}={','.join(FLAGS[name].value)}: {text!r} is not finite."
            )
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
        raise errors.RunFolderError(f"--{flag}={path}: no config.json there; meta-train it first.")
    if not rundir.finished(path):
        raise errors.RunFolderError(
            f"--{flag}={path}: its meta-training has not finished; rerun it first."
        )
    return path


def readme_markers(name: str) -> tuple[str, str]:
    """The markers around a README section that a binary generates."""
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def replace_readme_section(text: str, name: str, body: str) -> str:
    """`text` with the section between `name`'s markers (both present) replaced by `body`."""
    begin, end = readme_markers(name)
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{body}{end}{rest.split(end, 1)[1]}"


def _fail(message) -> None:
    """Exits with `message` as the one line `<binary>: error: <message>` on stderr."""
    print(f"{pathlib.Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(1)


def _unknown_field(error) -> str:
    """ "unknown config field 'nway'; Did you mean ..." from ml_collections' error, whose text is
    a KeyError's (quoted, its newline escaped)."""
    text = str(error.args[0] if error.args else error)
    if text[:1] in "'\"":
        try:
            text = ast.literal_eval(text)
        except (SyntaxError, ValueError):
            pass
    field, _, hint = str(text).partition("\n")
    return f"unknown config field {field}" + (f"; {' '.join(hint.split())}" if hint else "")


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag, config file or config field as one line naming it.

    absl ends a flag error with a line pointing at --helpshort, and ml_collections raises a
    missing config file only when the config is first read (a traceback, deep in main).
    """
    try:
        rest = FLAGS(argv)
    except flags.Error as e:  # e.g. "flag --task=bogus: value should be one of <...>"
        _fail(e)
    except OSError as e:  # a --config.<field> override of a config file that did not load
        _fail(f"--config: {str(e).strip().splitlines()[-1].strip()}")
    except (AttributeError, KeyError) as e:  # a --config.<field> the config does not have
        _fail(f"{_unknown_field(e)} (see the fields of Config in roa_jax/config.py).")
    for name in FLAGS:
        if config_flags.config_flags.is_config_flag(FLAGS[name]):
            try:
                getattr(FLAGS[name].value, "to_dict", None)
            except OSError as e:
                _fail(f"--{name}: {str(e).strip().splitlines()[-1].strip()}")
    return rest


def run(main) -> None:
    """`app.run(main)`, with a user's mistake as one line on stderr (exit status 1).

    Bad flags, configs, data files, device files, run folders and a diverging loss are raised
    by the checks as `errors.UserError`; set ROA_DEBUG=1 to see their tracebacks. Any other
    exception (a ValueError or OSError raised elsewhere included) is a bug or a fault of the
    machine and keeps its traceback. Flag parse errors (an unknown flag, a bad enum value, a
    missing config file, an unknown config field) are one line too.
    """

    def wrapped(argv):
        if len(argv) > 1:
            _fail(f"unexpected arguments {argv[1:]} (flags are --name=value).")
        cache = FLAGS.cache_dir if "cache_dir" in FLAGS else None
        batching.use_compile_cache(paths.cache_root(cache) / "jax")
        try:
            return main(argv)
        except errors.UserError as e:
            if os.environ.get("ROA_DEBUG"):
                raise
            _fail(e)

    app.run(wrapped, flags_parser=_parse_flags)
