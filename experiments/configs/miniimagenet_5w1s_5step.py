r"""The 5-step online baseline for miniImageNet 5-way 1-shot at paper scale (MAML++ settings).

Pre-trained for five inner steps (the paper pre-trains each scheme for itself), then
meta_train.py adapts each test task with five noisy hardware writes at each --sigma_w, rho
picked on the validation classes. The same data, network and settings as
miniimagenet_5w1s.py (see there), but num_inner_steps=5 with the MAML++ multi-step loss
annealed over the first 15 epochs. The ROA constraint (k = 4) is kept, so that the two runs
differ only in the number of inner steps (the paper does not say whether its 5-step network
was constrained; set --set=constraint_lambda=0 for plain MAML++).

Command:
  python experiments/meta_train.py --config=experiments/configs/miniimagenet_5w1s_5step.py \
      --workdir=runs/miniimagenet_5w1s_5step --data_dir=/work/shared/data --rhos=1,2,4,8

Expected result: not run here (no train split, and far too slow on CPU). Expected cost on this
machine (2 CPU cores shared with another training job, load average ~3.5): 38 s per
second-order meta-step of 4 tasks measured, so ~19 s for 2 (estimated), ~264 h of meta-steps +
~12 h of validation (0.73 s per task) + ~3 h of final evaluation = ~11-12 days; run it on an
accelerator. See BUILD_NOTES.md ("miniImageNet").
"""

import dataclasses

from experiments.configs.miniimagenet_5w1s import get_config as base_config
from roa_jax.train import Config


def get_config() -> Config:
    return dataclasses.replace(
        base_config(),
        num_inner_steps=5,
        msl_epochs=15,
    )
