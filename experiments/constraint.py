r"""Explains the ROA constraint (issue 32): a k x lambda sweep and where the weights sit.

  python experiments/constraint.py --scale=cpu --out_dir=results/constraint \
      --trained=results/omniglot_5w1s_cpu_long/trained

Meta-trains the Omniglot 5-way ROA network at --scale for every k of --ks and lambda of
--lambdas, and the ROA-WC reference (k = 1), in --workdir (resumable: finished runs are kept,
interrupted ones continue). Each is evaluated on VALIDATION classes (rho chosen on 100
validation tasks, scored on 100 others, as calibrate.py) at sigma_w 0, 2 and 3 with
--eval_device, and scored on ROA - ROA-WC at high noise, paired per task
(roa_jax/constraint_study.py). The share of each layer's |W| beyond 1/k and near the device's
ends is measured for the sweep's k = 4, lambda = 0.1 network (ROA at --scale), ROA-WC, the
networks of --trained (a folder holding roa/ and roa_wc/, e.g. the cpu_long ones), and fresh
He-normal and xavier-uniform kernels. Writes sweep.csv, shares.csv, constraint.md,
constraint.json and constraint.png to --out_dir.
"""

import pathlib
import shlex
import sys

import common
from absl import flags, logging

from roa_jax import comparison, constraint_study, data, distributed, roa, rundir, train
from roa_jax import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_enum("scale", "cpu", ("tiny", "quick", "cpu"), "Meta-training scale of the sweep.")
flags.DEFINE_list("ks", [f"{k:g}" for k in constraint_study.KS], "Constraint ranges k (>= 1).")
flags.DEFINE_list(
    "lambdas", [f"{x:g}" for x in constraint_study.LAMBDAS], "Constraint weights lambda (> 0)."
)
flags.DEFINE_string("workdir", None, "Run folders (default runs/constraint_<scale>).")
flags.DEFINE_string("out_dir", "results/constraint", "Output folder.")
flags.DEFINE_string("trained", None, "A folder with roa/ and roa_wc/ runs to measure too.")
flags.DEFINE_bool("train_only", False, "Stop after meta-training.")
common.define_data_flags()
common.define_protocol_flags("cpu")


def _protocol() -> config_lib.Protocol:
    """The scale's protocol with constraint_study.PROTOCOL, each field a flag can override."""
    flag_of = {"sigmas": "sigma_w"}
    chosen = {
        field: value
        for field, value in constraint_study.PROTOCOL.items()
        if FLAGS[flag_of.get(field, field)].using_default_value
    }
    return config_lib.check_protocol(common.protocol()._replace(**chosen))


def main(argv):
    del argv
    common.init_processes()
    rundir.quiet_orbax()
    proto = _protocol()
    settings = [(k, lam) for k in common.floats("ks") for lam in common.floats("lambdas")]
    configs = {
        constraint_study.name(k, lam): constraint_study.config(FLAGS.scale, k, lam)
        for k, lam in settings
    }
    configs["roa_wc"] = config_lib.model_config(constraint_study.TASK, "roa_wc", FLAGS.scale)
    workdir = pathlib.Path(FLAGS.workdir or common.ROOT / "runs" / f"constraint_{FLAGS.scale}")
    trained_dir = FLAGS.trained and pathlib.Path(FLAGS.trained)
    if trained_dir:
        for m in ("roa", "roa_wc"):
            common.check_run_folder(f"trained ({m}/)", str(trained_dir / m))
    splits, norm = data.load_splits(configs["roa_wc"], FLAGS.data_dir, FLAGS.cache_dir)
    data.check_splits(configs["roa_wc"], splits)
    rundir.hold(FLAGS.out_dir)
    for run, cfg in configs.items():
        logging.info("Meta-training %s (%d steps) in %s", run, cfg.total_steps, workdir / run)
        train.fit(cfg, workdir / run, FLAGS.data_dir, FLAGS.cache_dir)
    if FLAGS.train_only:
        return
    trained = {run: train.load_trained(workdir / run) for run in configs}
    val = {"val": splits["val"], "test": splits["val"]}
    evaluate = lambda models_, where: comparison.evaluate(  # noqa: E731
        models_, val, norm, proto, workdir / "evaluation" / where, "constraint"
    )
    reference = evaluate({"roa_wc": trained["roa_wc"]}, "roa_wc")
    records = []
    for k, lam in settings:
        run = constraint_study.name(k, lam)
        results = comparison.merge(evaluate({"roa": trained[run]}, run), reference)
        records.append(constraint_study.score(results, k, lam))
        logging.info("%s: %s", run, records[-1])
    if not distributed.is_main():
        return
    shares = _shares(trained, trained_dir)
    command = "python experiments/constraint.py " + shlex.join(sys.argv[1:])
    paths = constraint_study.write(records, shares, FLAGS.out_dir, command)
    logging.info("Wrote %s", [str(p) for p in paths])
    print((pathlib.Path(FLAGS.out_dir) / "constraint.md").read_text())


def _shares(trained: dict, trained_dir) -> dict:
    """{network: per-layer weight shares}: ROA-WC and the initializations against 1/4."""
    nets = {}
    own = constraint_study.name(4.0, 0.1)
    if own in trained:
        nets[f"ROA ({FLAGS.scale})"] = trained[own]
    nets[f"ROA-WC ({FLAGS.scale})"] = trained["roa_wc"]
    if trained_dir:
        for m, label in (("roa", "ROA"), ("roa_wc", "ROA-WC")):
            nets[f"{label} ({trained_dir.parent.name})"] = train.load_trained(trained_dir / m)
    shares = {
        label: roa.weight_shares(meta.params, max(cfg.constraint_k, 4.0))
        for label, (cfg, meta) in nets.items()
    }
    meta = trained["roa_wc"][1]
    for label, by_layer in constraint_study.init_shares(meta.params, 4.0).items():
        shares[f"init: {label}"] = by_layer
    return shares


if __name__ == "__main__":
    common.run(main)
