"""ROA for Omniglot 5-way 1-shot at CPU scale, stage 2: hardware-aware meta-training.

Starts from stage 1 (omniglot_5w1s_cpu_software.py: software pre-training, as the paper) and
meta-trains 10 more epochs x 100 meta-steps of 8 tasks, first order, with the inner step run
twice per task: through the differentiable hardware write of the `paper` device at
sigma_w = 0 (`hardware_inner`), and exactly. The meta-loss is the mean of the two query losses
(`exact_loss_weight=0.5`), so theta_0 and the LSLR rates learn to survive the 31-level
open-loop write while exact ("origin") adaptation stays good; validation scores the same mix.
Hardware-only fine-tuning (exact_loss_weight=0) left origin at 88.8 % on test, and a
software-only network lost ~10 points on the hardware write (BUILD_NOTES.md).
Paper/MAML++ protocol otherwise: 1150/50/423 classes, 15 queries, cosine meta-LR, k = 4.

Commands (stage 1, then this; the final evaluation runs 600 test tasks):
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu_software.py \
      --workdir=runs/omniglot_5w1s_cpu_software --test_tasks=0
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu.py \
      --workdir=runs/omniglot_5w1s_cpu

Expected result (measured, 2 cores; BUILD_NOTES.md, "Omniglot 5-way 1-shot, CPU scale"): 31 min
of training, then on 600 test tasks origin 95.6 +- 0.4 % and ROA's one hardware write at
sigma_w = 0 95.4 +- 0.4 %.
"""

import dataclasses

from experiments.configs.omniglot_5w1s_cpu_software import get_config as base_config
from roa_jax.train import Config


def get_config() -> Config:
    return dataclasses.replace(
        base_config(),
        hardware_inner=True,
        device="paper",
        train_sigma_w=0.0,
        exact_loss_weight=0.5,
        epochs=10,
        init_from="runs/omniglot_5w1s_cpu_software/best",
    )
