"""A short ROA meta-training run on Omniglot 5-way 1-shot (about 3 min of training on 2 cores).

4 epochs x 100 first-order meta-steps of 8 tasks, 50 validation tasks per epoch; then
meta_train.py evaluates the best checkpoint with the quick protocol (origin, and ROA's one-step
hardware adaptation at each --sigma_w with rho chosen on the validation classes). The README's
main job is the whole comparison at this scale: `experiments/reproduce.py --scale=quick`.

Command:
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_quick.py \
      --workdir=runs/quick
"""

from roa_jax import config as config_lib


def get_config():
    cfg = config_lib.default()
    cfg.epochs = 4
    cfg.iterations_per_epoch = 100
    cfg.first_order_epochs = 4
    cfg.msl_epochs = 0
    cfg.val_tasks = 50
    return cfg
