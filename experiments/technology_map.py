r"""The technology map: ROA's one write on the device technologies of the literature (issue 34).

  python experiments/technology_map.py --runs=results/omniglot_5w1s_cpu_long/trained \
      --devices=results/codesign/devices/found_sigma1.json --out_dir=results/technologies

Takes the meta-trained Omniglot 5-way networks of a reproduce.py run folder (roa and
five_step; no re-training) and evaluates ROA's one write, the 5-step baseline, offline and
origin on every technology: aihwkit 1.2's presets (roa_jax/technologies.py, --technologies) in
one compiled sweep over devices x sigma_w x rho, then the paper's devices and any device
files (--devices: co-design's found devices, fitted devices) in a second. Each device keeps
its own published noise and variation; sigma_w adds Eq. 7's noise on top; rho is tuned on
validation tasks per device and sigma_w. Writes technologies.md, .csv, .json and .png to
--out_dir; the evaluated parts are saved under --out_dir/parts and reused on a rerun.
"""

import pathlib
import shlex
import sys

import common
from absl import flags, logging

from roa_jax import (
    comparison,
    crossbar,
    data,
    device,
    distributed,
    errors,
    rundir,
    technologies,
    technology_map,
    train,
)
from roa_jax import results as results_lib

FLAGS = flags.FLAGS
_PRESETS = [n for n in technologies.PRESETS if not n.startswith("aihwkit_")]
flags.DEFINE_string("runs", None, "reproduce.py run folder holding roa/ and five_step/.")
flags.DEFINE_list("technologies", _PRESETS, "aihwkit presets (roa_jax/technologies.py).")
flags.DEFINE_list(
    "devices", ["calibrated", "paper"], "Devices of the paper's model: presets or .json files."
)
flags.DEFINE_string("out_dir", "results/technologies", "Output folder.")
common.define_data_flags()
common.define_protocol_flags("cpu")
flags.mark_flags_as_required(["runs"])

# The map's protocol [chosen]: one repeat of 100 test tasks, rho searched on 40 validation
# tasks, three noise levels on top of each device's own.
_PROTOCOL = dict(seeds=1, test_tasks=100, val_tasks=40, sigmas=(0.0, 1.0, 2.0))


def _devices(names, allowed, flag) -> dict:
    """{name: validated parameters}; an error naming --`flag` for a name of the other kind."""
    out = {}
    for name in names:
        params = device.validate(crossbar.preset(name))
        if isinstance(params, technologies.TechParams) != allowed:
            kind = "an aihwkit technology" if allowed else "a device of the paper's model"
            raise errors.ConfigError(f"--{flag}={name}: not {kind}; move it to the other flag.")
        out[pathlib.Path(name).stem if name.endswith(".json") else name] = params
    return out


def main(argv):
    del argv
    common.init_processes()
    rundir.quiet_orbax()
    proto = common.protocol()
    flag_of = {"sigmas": "sigma_w"}
    proto = proto._replace(
        **{k: v for k, v in _PROTOCOL.items() if FLAGS[flag_of.get(k, k)].using_default_value}
    )
    groups = {
        "technologies": _devices(FLAGS.technologies, True, "technologies"),
        "devices": _devices(FLAGS.devices, False, "devices"),
    }
    models = {}
    for m in (results_lib.ROA_MODEL, results_lib.FIVE_STEP_MODEL):
        models[m] = pathlib.Path(common.check_run_folder(f"runs ({m}/)", f"{FLAGS.runs}/{m}"))
    trained = {m: train.load_trained(p) for m, p in models.items()}
    cfg = trained[results_lib.ROA_MODEL][0]
    if (cfg.dataset, cfg.n_way, cfg.k_shot) != ("omniglot", 5, 1):
        raise errors.RunFolderError(
            f"--runs={FLAGS.runs}: the map is drawn on Omniglot 5-way 1-shot networks."
        )
    splits, norm = data.load_splits(cfg, FLAGS.data_dir, FLAGS.cache_dir)
    out = pathlib.Path(FLAGS.out_dir)
    table = []
    for group, devices in groups.items():
        if not devices:
            continue
        logging.info("Evaluating %d %s: %s", len(devices), group, list(devices))
        results = comparison.evaluate(
            trained, splits, norm, proto, out / "parts" / group, group, devices=devices
        )
        for i, (label, params) in enumerate(devices.items()):
            table += technology_map.rows(results, i, label, params)
    if not distributed.is_main():
        return  # process 0 writes the outputs
    command = "python experiments/technology_map.py " + shlex.join(sys.argv[1:])
    paths = technology_map.write(table, out, command, chance=1.0 / cfg.n_way)
    logging.info("Wrote %s", [str(p) for p in paths])
    print(paths[0].read_text())


if __name__ == "__main__":
    common.run(main)
