r"""How many crossbar devices ROA's one write pulses, per rho, for a meta-trained network.

  python experiments/write_stats.py --run=results/miniimagenet_5w1s_cpu/trained/roa \
      --rhos=0.5,1,2,4,8 --tasks=16 --out=results/miniimagenet_5w1s_cpu/write_stats.json

On --tasks tasks of --split, theta_0 of --run (a meta_train.py run folder) is programmed onto
crossbars of --device and the first inner update, scaled by each rho, becomes pulse counts
(`roa.write_pulses`); a wanted change under half a pulse step writes nothing. Prints, per rho,
the share of devices that get at least one pulse (mean over tasks, and per weight matrix) and
the mean |pulses| of a pulsed device, the device's nominal step in weight units, and theta_0's
own query accuracy (what a write of no pulse leaves); --out also writes them as JSON.
"""

import json
import pathlib

import common
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from roa_jax import crossbar, data, device, errors, evaluation, roa, train, writers

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Run folder of a meta-trained model (config.json, best/).")
flags.DEFINE_list("rhos", ["0.5", "1", "2", "4", "8"], "Relative learning rates, each > 0.")
flags.DEFINE_integer("tasks", 16, "Tasks drawn from --split, >= 1.")
flags.DEFINE_enum("split", "val", ["val", "test"], "Split the tasks are drawn from.")
flags.DEFINE_string("device", "calibrated", "Device preset or .json of the crossbars.")
flags.DEFINE_string("out", None, "JSON file to write (optional).")
common.define_data_flags()
flags.mark_flags_as_required(["run"])


def main(argv):
    del argv
    rhos = common.floats("rhos")
    if not rhos or min(rhos) <= 0:
        raise errors.ConfigError(f"--rhos={','.join(FLAGS.rhos)}: each must be > 0.")
    if FLAGS.tasks < 1:
        raise errors.ConfigError(f"--tasks={FLAGS.tasks}: draw at least 1 task.")
    params = device.preset(FLAGS.device)
    cfg, meta = train.load_trained(common.check_run_folder("run", FLAGS.run))
    splits, norm = data.load_splits(cfg, FLAGS.data_dir, FLAGS.cache_dir)
    model = train.build_model(cfg)
    shape = (FLAGS.tasks, cfg.n_way, cfg.k_shot, cfg.n_query)
    images = jax.device_put(splits[FLAGS.split])
    episodes, keys = evaluation.draw_tasks(jax.random.PRNGKey(0), images, norm, 0, 0, shape)
    theta_0 = roa.adapt_each(keys, model, meta, episodes, 0)
    hw = writers.hardware(params, 0.0)
    _, g_half = crossbar.reference(params)
    step = [float(jnp.mean(s) / g_half) for s in device.nominal_steps(params)]

    @jax.jit
    def pulses(rho):
        one = lambda episode: roa.write_pulses(model, meta, episode, hw, rho)
        return jax.lax.map(one, episodes)  # {path: [tasks, ...]}

    summary = {
        "run": FLAGS.run,
        "split": FLAGS.split,
        "tasks": FLAGS.tasks,
        "device": FLAGS.device,
        "nominal_step_weight_units": {"up": step[0], "down": step[1]},
        "theta_0_accuracy": float(jnp.mean(theta_0)),
        "rhos": [],
    }
    for rho in rhos:
        counts = {"/".join(p): np.asarray(n) for p, n in pulses(jnp.float32(rho)).items()}
        flat = np.concatenate([n.reshape(FLAGS.tasks, -1) for n in counts.values()], axis=1)
        pulsed = flat > 0
        summary["rhos"].append(
            {
                "rho": rho,
                "devices": flat.shape[1],
                "pulsed_share": float(pulsed.mean()),
                "pulsed_share_per_task": pulsed.mean(axis=1).tolist(),
                "pulses_per_pulsed_device": float(flat.sum() / max(pulsed.sum(), 1)),
                "pulsed_share_per_matrix": {p: float((n > 0).mean()) for p, n in counts.items()},
            }
        )
    matrices = list(summary["rhos"][0]["pulsed_share_per_matrix"])
    print(f"{FLAGS.run}: {FLAGS.tasks} {FLAGS.split} tasks on '{FLAGS.device}' devices; theta_0")
    print(f"(no write) query accuracy {summary['theta_0_accuracy']:.3f}; a nominal step is")
    print(f"{step[0]:.4f} up, {step[1]:.4f} down in weight units (0 pulses under half of it).\n")
    print("| rho | devices pulsed (%) | pulses per pulsed device | " + " | ".join(matrices) + " |")
    print("|---" * (3 + len(matrices)) + "|")
    for row in summary["rhos"]:
        shares = " | ".join(f"{100 * s:.2f}" for s in row["pulsed_share_per_matrix"].values())
        print(
            f"| {row['rho']:g} | {100 * row['pulsed_share']:.3f} of {row['devices']} | "
            f"{row['pulses_per_pulsed_device']:.2f} | {shares} |"
        )
    if FLAGS.out:
        out = pathlib.Path(FLAGS.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    common.run(main)
