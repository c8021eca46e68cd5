r"""Co-design: the device ROA needs, by gradients of its post-write loss (issue 14).

  python experiments/codesign.py --model=runs/reproduce/omniglot_5w1s_cpu/roa \
      --device=paper --sigma_w=0.5,1,2 --out_dir=results/codesign

For a meta-trained network (a meta_train.py run folder) and a starting device (--device, a
preset or a .json; its noise law and scale are kept), roa_jax/codesign/study.py `run_study`:
  1. picks the preset's rho per noise level on --val_tasks validation tasks (ROA's protocol);
  2. check: the straight-through gradient beside central differences of the exact write, on
     the preset and on the preset --check_granularity times finer (gradient_check.csv/.md);
  3. sensitivity: accuracy, loss and gradient along each knob around the preset
     (sensitivity.csv/.png);
  4. optimize: adam over --free knobs (and theta_0 with --joint) at each sigma_w, then the
     found devices beside the preset on --test_tasks test tasks with the exact write
     (optimization.csv/.png, devices/found_sigma*.json, comparison.md, results.json),
     beside the preset with rho alone optimized (the device's share of a gain).

Measured (the command above, 21 min on the shared 2-core machine; 60 adam steps of 12
validation tasks per noise level, 200 test tasks): ROA's test accuracy with the `paper` preset
at its validation rho (2) vs the device found at the same sigma_w: 69.4 -> 73.3 % at 0.5
(+3.9 +- 1.3, paired), 45.4 -> 45.4 % at 1 (+0.0 +- 1.9), 27.9 -> 38.9 % at 2 (+11.0 +- 2.0);
the found devices are asymmetric (RESET 5.8x finer at 0.5, 2.8x coarser at 2).
"""

import pathlib
import shlex
import sys
import time

import common
from absl import flags

from roa_jax import codesign, data, device, errors, rundir, train

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "runs/reproduce/omniglot_5w1s_cpu/roa", "meta_train.py run folder.")
flags.DEFINE_string(
    "device",
    "paper",
    f"Starting device: a preset ({', '.join(device.PRESETS)})"
    " or a .json params file; its noise law and scale stay fixed.",
)
flags.DEFINE_string("out_dir", "results/codesign", "Output folder.")
flags.DEFINE_list("sigma_w", ["0.5", "1", "2"], "Write-noise levels, each finite and >= 0.")
flags.DEFINE_list("rhos", ["0.5", "1", "2", "4"], "The preset's rho is picked among these.")
flags.DEFINE_list("parts", list(codesign.PARTS), f"Which of {codesign.PARTS} to run.")
flags.DEFINE_list("free", list(codesign.DEFAULT_FREE), f"Knobs optimized, of {codesign.NAMES}.")
flags.DEFINE_enum(
    "estimator",
    "fd",
    codesign.ESTIMATORS,
    "Gradient of the knobs: central differences of the exact write (fd) or straight-through (ste).",
)
flags.DEFINE_float("fd_step", 0.1, "Central-difference step in knob units (> 0).")
flags.DEFINE_bool(
    "joint", False, "Also optimize theta_0 (hardware-aware meta-training, on training tasks)."
)
for _field, _help in (
    ("val_tasks", "Validation tasks of the preset's rho choice."),
    ("test_tasks", "Test tasks of the final comparison."),
    ("check_tasks", "Validation tasks of the gradient check."),
    ("sensitivity_tasks", "Validation tasks of the sensitivity lines."),
    ("steps", "Optimizer steps per noise level."),
    ("tasks_per_step", "Tasks per optimizer step (>= 2)."),
    ("seed", "Seed of every task and noise draw."),
):
    flags.DEFINE_integer(_field, codesign.Study._field_defaults[_field], _help)
flags.DEFINE_float(
    "check_granularity",
    1000.0,
    "Second device of the check: the preset this many times finer (0: none).",
)
flags.DEFINE_float("lr", 0.1, "Adam step of the knobs (knob units: logs, logit).")
flags.DEFINE_float("meta_lr", 1e-4, "Adam step of theta_0 with --joint.")
common.define_data_flags()
_STUDY_FLAGS = (
    "val_tasks",
    "test_tasks",
    "check_tasks",
    "check_granularity",
    "sensitivity_tasks",
    "steps",
    "tasks_per_step",
    "lr",
    "meta_lr",
    "seed",
)


def main(argv):
    del argv
    rundir.quiet_orbax()
    study = codesign.check_study(
        codesign.Study(
            sigma_w=common.floats("sigma_w"),
            rhos=common.floats("rhos"),
            parts=tuple(FLAGS.parts),
            **{f: getattr(FLAGS, f) for f in _STUDY_FLAGS},
        )
    )
    try:
        base = codesign.check_base(device.preset(FLAGS.device))
    except errors.DeviceError as e:
        raise errors.DeviceError(f"--device={FLAGS.device}: {e}") from None
    cfg, meta = train.load_trained(common.check_run_folder("model", FLAGS.model))
    problem = codesign.Problem(
        train.build_model(cfg),
        free=tuple(FLAGS.free),
        joint=FLAGS.joint,
        estimator=FLAGS.estimator,
        fd_step=FLAGS.fd_step,
        constraint_k=cfg.constraint_k,
        constraint_lambda=cfg.constraint_lambda,
    )
    codesign.check_problem(problem)
    splits, norm = data.load_splits(cfg, FLAGS.data_dir, FLAGS.cache_dir)
    data.check_splits(cfg, splits)
    out = pathlib.Path(FLAGS.out_dir)
    start = time.time()
    log = lambda m: print(f"[{time.time() - start:6.0f} s] {m}", flush=True)
    results = codesign.run_study(study, problem, cfg, meta, splits, norm, base, out, log)
    command = "python experiments/codesign.py " + shlex.join(sys.argv[1:])
    seconds = {part: round(t) for part, t in results["seconds"].items()}
    (out / "command.txt").write_text(f"{command}\n{time.time() - start:.0f} s in all: {seconds}\n")
    log(f"done; wrote {out}")


if __name__ == "__main__":
    common.run(main)
