r"""Evaluates meta-trained checkpoints: every method of the paper over noise x rho x seed.

  python experiments/evaluate.py --roa=runs/reproduce/omniglot_5w1s_cpu/roa \
      --roa_wc=runs/reproduce/omniglot_5w1s_cpu/roa_wc \
      --five_step=runs/reproduce/omniglot_5w1s_cpu/five_step --out_dir=results/my_eval

Each --<model> is a meta_train.py run folder (config.json and best/). ROA and ROA-FLR come from
--roa, ROA-WC and ROA-WC-FLR (the MAML++ baseline) from --roa_wc, the online baseline from
--five_step; offline needs no checkpoint. The protocol is reproduce.py's
(roa_jax/comparison.py): rho chosen per noise level on --val_tasks validation tasks, then
--seeds repeats of --test_tasks test tasks. Writes results.json, results.csv, figure3-6.png
and table2.md to --out_dir; parts already evaluated with the same settings are reused.
"""

import pathlib

import common
from absl import flags

from roa_jax import comparison, data, distributed, figures, rundir, train
from roa_jax import config as config_lib

FLAGS = flags.FLAGS
for _model in config_lib.MODELS:
    flags.DEFINE_string(_model, None, f"Run folder of the {_model!r} model.")
flags.DEFINE_string("out_dir", None, "Output folder.")
flags.DEFINE_string("title", "", "Title of the figures (default: the out_dir name).")
common.define_data_flags()
common.define_protocol_flags("cpu")
flags.mark_flags_as_required(["roa", "out_dir"])


def main(argv):
    del argv
    common.init_processes()
    proto = common.protocol()
    folders = {m: getattr(FLAGS, m) for m in config_lib.MODELS if getattr(FLAGS, m)}
    configs = {
        m: (rundir.read_config(common.check_run_folder(m, p)), None) for m, p in folders.items()
    }
    comparison.check_same_tasks(configs)  # before any checkpoint is read
    trained = {m: train.load_trained(path) for m, path in folders.items()}
    splits, norm = data.load_splits(trained["roa"][0], FLAGS.data_dir, FLAGS.cache_dir)
    out = pathlib.Path(FLAGS.out_dir)
    results = comparison.evaluate(trained, splits, norm, proto, out, title=FLAGS.title or out.name)
    if not distributed.is_main():
        return  # process 0 writes the outputs
    comparison.save(results, out)
    figures.make_all(results, out)
    print((out / "table2.md").read_text())


if __name__ == "__main__":
    common.run(main)
