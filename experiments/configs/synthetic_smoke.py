"""A tiny ROA run on the embedded synthetic tasks: no data, about a minute on 2 CPU cores.

Command:
  python experiments/meta_train.py --config=experiments/configs/synthetic_smoke.py \
      --workdir=runs/synthetic_smoke --test_tasks=16 --offline_steps=0
"""

from roa_jax import config as config_lib


def get_config():
    cfg = config_lib.default()
    cfg.dataset = "synthetic"
    cfg.width = 16
    cfg.meta_batch_size = 4
    cfg.epochs = 2
    cfg.iterations_per_epoch = 100
    cfg.msl_epochs = 0
    cfg.first_order_epochs = 1
    cfg.val_tasks = 64
    cfg.log_every = 25
    return cfg
