"""A tiny ROA run on the embedded synthetic tasks: no data, about a minute on 2 CPU cores.

Command:
  python experiments/meta_train.py --config=experiments/configs/synthetic_smoke.py \
      --workdir=runs/synthetic_smoke --test_tasks=64
"""

from roa_jax.train import Config


def get_config() -> Config:
    return Config(
        dataset="synthetic",
        width=16,
        meta_batch_size=4,
        epochs=2,
        iterations_per_epoch=100,
        msl_epochs=0,
        first_order_epochs=1,
        val_tasks=64,
        log_every=25,
    )
