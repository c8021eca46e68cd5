"""ROA for miniImageNet 5-way 1-shot at paper scale: one inner step, MAML++ miniImageNet settings.

Software pre-training with the ROA constraint (k = 4, lambda_c = 0.1), then meta_train.py
evaluates the best-validation checkpoint with the paper protocol (the paper found rho about 4
for miniImageNet at acceptable noise). The task's settings (MAML++'s 84x84x3, meta-batch 2,
inner LR 0.01, second order throughout; 64 filters, as the ROA paper's text says) are
tasks.TASKS['miniimagenet_5w1s']; this adds the paper-scale schedule of a single run. Classes:
the standard Ravi & Larochelle split, 64/16/20 (the paper reports 64/12/24), read from
$ROA_DATA_DIR/miniimagenet/ (README, "Data").

Command:
  python experiments/meta_train.py --config=experiments/configs/miniimagenet_5w1s.py \
      --workdir=runs/miniimagenet_5w1s --eval_scale=paper --rhos=1,2,4,8

Expected cost on the project's 2-core CPU: about 54 h (BUILD_NOTES.md, "miniImageNet"); the
CPU-scale comparison is `experiments/reproduce.py --task=miniimagenet_5w1s --scale=cpu`.
"""

from roa_jax import config as config_lib
from roa_jax import tasks


def get_config():
    cfg = config_lib.default()
    cfg.update(tasks.TASKS["miniimagenet_5w1s"].overrides)
    cfg.epochs = 100
    cfg.iterations_per_epoch = 500
    cfg.msl_epochs = 0  # one inner step: the multi-step loss has one term
    cfg.val_tasks = 600
    return cfg
