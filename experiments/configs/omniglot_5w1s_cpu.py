"""ROA for Omniglot 5-way 1-shot at CPU scale, stage 2: hardware-aware meta-training.

Starts from stage 1 (omniglot_5w1s_cpu_software.py: software pre-training, as the paper) and
meta-trains 10 more epochs x 100 meta-steps of 8 tasks, first order, with the inner step run
twice per task: through the differentiable hardware write of the `paper` device at
sigma_w = 0 (`hardware_inner`), and exactly. The meta-loss is the mean of the two query losses
(`exact_loss_weight=0.5`), so theta_0 and the LSLR rates learn to survive the open-loop write
while exact ("origin") adaptation stays good; validation scores the same mix.

Commands (stage 1, then this; the final evaluation uses the cpu protocol):
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu_software.py \
      --workdir=runs/omniglot_5w1s_cpu_software --test_tasks=0
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu.py \
      --workdir=runs/omniglot_5w1s_cpu --eval_scale=cpu --offline_steps=0 --eval_device=paper

Expected result (2026-12-02): origin 92.9 %, ROA 91.9 % at sigma_w 0, 48.3 % at 2 (BUILD_NOTES.md,
"Omniglot 5-way 1-shot, CPU scale").
"""

from experiments.configs import omniglot_5w1s_cpu_software


def get_config():
    cfg = omniglot_5w1s_cpu_software.get_config()
    cfg.hardware_inner = True
    cfg.device = "paper"
    cfg.train_sigma_w = 0.0
    cfg.exact_loss_weight = 0.5
    cfg.init_from = "runs/omniglot_5w1s_cpu_software/best"
    return cfg
