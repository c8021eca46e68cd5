r"""Calibrates the lost device reconstruction on Omniglot 5-way 1-shot against the paper's claims.

  python experiments/reproduce.py --task=omniglot_5w1s --scale=cpu --train_only
  python experiments/calibrate.py --runs=runs/reproduce/omniglot_5w1s_cpu \
      --out_dir=results/calibration

Takes the meta-trained networks of a reproduce.py run folder (roa, roa_wc and, if present,
five_step; pre-training is software, so no re-training), evaluates every reconstruction
(noise law x scale x granularity, roa_jax/calibration.py) on validation tasks, scores each
with the claims module and writes calibration.csv, calibration.md (claims by reconstruction),
calibration.json, calibration.png and adopted.md (--earlier's choice against this one's, claim
by claim, each judged there and here, and where the adopted `calibrated` preset ranks) and
summary.md (adopted.md and the best rows), which --readme puts into the README. Reruns reuse
the evaluated parts; --rescore scores the saved parts again without evaluating (after a change
of the claims module, whose verdicts are all computed from the saved accuracies).
"""

import json
import pathlib
import shlex
import sys

import common
from absl import flags, logging

from roa_jax import calibration, data, device, distributed, errors, rundir, train
from roa_jax import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", None, "reproduce.py run folder holding roa/, roa_wc/ (five_step/).")
flags.DEFINE_string("out_dir", "results/calibration", "Output folder.")
flags.DEFINE_list("laws", list(device.NOISE_LAWS), f"Noise laws, of {device.NOISE_LAWS}.")
flags.DEFINE_list("granularities", ["1", "3", "10"], "Pulse granularities relative to --base.")
flags.DEFINE_list("scales", None, "Noise scale factors of every law (default: each law's own).")
flags.DEFINE_string(
    "parts_dir",
    None,
    "Where the evaluated parts are saved and reused (default: --runs/calibration); give each "
    "grid its own.",
)
flags.DEFINE_string("base", "paper", "Device preset (or .json) the granularity refers to.")
flags.DEFINE_integer("top", 6, "Reconstructions of stage 1 that stage 2 evaluates with 5-step.")
flags.DEFINE_string(
    "earlier",
    None,
    "calibration.json of an earlier calibration (e.g. results/calibration/refine/"
    "calibration.json): its choice and verdicts go beside this run's in adopted.md.",
)
flags.DEFINE_string(
    "readme",
    None,
    "README whose `<!-- calibration <out_dir's name> -->` section gets summary.md "
    "(adopted.md and the best rows of calibration.md).",
)
flags.DEFINE_bool(
    "rescore",
    False,
    "Evaluate nothing: score the parts a finished run saved in --parts_dir again "
    "(after a change of the claims module).",
)
common.define_data_flags()
common.define_protocol_flags("cpu")
flags.mark_flags_as_required(["runs"])

# The calibration protocol [chosen]: the cpu noise levels and rhos, 40 validation tasks for
# the rho search and 40 others for the score (one repeat each), offline with 5 SGD steps.
_PROTOCOL = dict(seeds=1, test_tasks=40, val_tasks=40)


def main(argv):
    del argv
    common.init_processes()
    rundir.quiet_orbax()
    proto = common.protocol()
    if FLAGS["seeds"].using_default_value:
        proto = proto._replace(
            **{k: v for k, v in _PROTOCOL.items() if FLAGS[k].using_default_value}
        )
    unknown = set(FLAGS.laws) - set(device.NOISE_LAWS)
    if unknown:
        raise errors.ConfigError(
            f"--laws={','.join(FLAGS.laws)}: {sorted(unknown)} not in {device.NOISE_LAWS}."
        )
    granularities = common.floats("granularities")
    given = common.floats("scales") if FLAGS.scales else None
    scales = {law: given or calibration.DEFAULT_SCALES[law] for law in FLAGS.laws}
    recons = calibration.make_grid(scales, granularities)
    calibration.check(recons)
    base = device.validate(device.preset(FLAGS.base))
    folders = {m: pathlib.Path(FLAGS.runs, m) for m in config_lib.MODELS}
    for m in ("roa", "roa_wc"):
        common.check_run_folder(f"runs ({m}/)", str(folders[m]))
    trained = {m: train.load_trained(p) for m, p in folders.items() if rundir.finished(p)}
    cfg = trained["roa"][0]
    if (cfg.dataset, cfg.n_way, cfg.k_shot) != ("omniglot", 5, 1):
        raise errors.RunFolderError(
            f"--runs={FLAGS.runs}: calibrate on Omniglot 5-way 1-shot only (issue 10)."
        )
    earlier = None
    if FLAGS.earlier:
        try:
            earlier = json.loads(pathlib.Path(FLAGS.earlier).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise errors.RunFolderError(f"--earlier={FLAGS.earlier}: not readable ({e}).") from None
    section = f"calibration {pathlib.Path(FLAGS.out_dir).name}"  # the one --readme fills
    if FLAGS.readme:
        text = pathlib.Path(FLAGS.readme).read_text()
        if any(m not in text for m in common.readme_markers(section)):
            begin, end = common.readme_markers(section)
            raise errors.ConfigError(f"--readme={FLAGS.readme} has no {begin} ... {end} markers.")
    splits, norm = data.load_splits(cfg, FLAGS.data_dir, FLAGS.cache_dir)
    rundir.hold(FLAGS.out_dir)  # one calibrate.py per output folder, for the process's life
    logging.info("Calibrating %d reconstructions with %s.", len(recons), sorted(trained))
    records = calibration.calibrate(
        trained,
        splits["val"],
        norm,
        recons,
        proto,
        pathlib.Path(FLAGS.parts_dir or pathlib.Path(FLAGS.runs, "calibration")),
        base,
        FLAGS.top,
        FLAGS.rescore,
    )
    if not distributed.is_main():
        return  # process 0 writes the outputs
    command = "python experiments/calibrate.py " + shlex.join(sys.argv[1:])
    paths = calibration.write(records, FLAGS.out_dir, command, earlier)
    logging.info("Wrote %s", [str(p) for p in paths])
    if FLAGS.readme:
        readme = pathlib.Path(FLAGS.readme)
        body = (pathlib.Path(FLAGS.out_dir) / "summary.md").read_text()
        readme.write_text(common.replace_readme_section(readme.read_text(), section, body))
    print((pathlib.Path(FLAGS.out_dir) / "calibration.md").read_text())


if __name__ == "__main__":
    common.run(main)
