"""The 5-step online baseline for miniImageNet 5-way 1-shot at paper scale (MAML++ settings).

Pre-trained for five inner steps (the paper pre-trains each scheme for itself): the settings of
miniimagenet_5w1s.py with num_inner_steps=5 and the MAML++ multi-step loss annealed over the
first 15 epochs. The ROA constraint (k = 4) is kept, so that the two runs differ only in the
number of inner steps (set --config.constraint_lambda=0 for plain MAML++).

Command:
  python experiments/meta_train.py --config=experiments/configs/miniimagenet_5w1s_5step.py \
      --workdir=runs/miniimagenet_5w1s_5step --eval_scale=paper --rhos=1,2,4,8

Expected cost on the project's 2-core CPU: about 11-12 days (BUILD_NOTES.md, "miniImageNet");
run it on an accelerator.
"""

from experiments.configs import miniimagenet_5w1s


def get_config():
    cfg = miniimagenet_5w1s.get_config()
    cfg.num_inner_steps = 5
    cfg.msl_epochs = 15
    return cfg
