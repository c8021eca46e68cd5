"""Stage 1 of the CPU-scale Omniglot 5-way 1-shot run: software pre-training (MAML++ + ROA).

ROA pre-trains in software with exact arithmetic [paper]. Reduced from 100 epochs x 500
iterations to 10 epochs x 100 meta-steps of 8 tasks, first order, 200 validation tasks per
epoch. Stage 2 (omniglot_5w1s_cpu.py) fine-tunes the result through the hardware write.

Command:
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu_software.py \
      --workdir=runs/omniglot_5w1s_cpu_software --test_tasks=0

Expected result: BUILD_NOTES.md, "Hardware-aware meta-training".
"""

from roa_jax import config as config_lib


def get_config():
    cfg = config_lib.default()
    cfg.epochs = 10
    cfg.iterations_per_epoch = 100
    cfg.first_order_epochs = 10
    cfg.msl_epochs = 0
    cfg.val_tasks = 200
    return cfg
