r"""ROA for miniImageNet 5-way 1-shot at paper scale: one inner step, MAML++ miniImageNet settings.

Software pre-training with the ROA constraint (k = 4, lambda_c = 0.1), then meta_train.py
evaluates the best-validation checkpoint on 600 test tasks: origin, and ROA's one-step
hardware adaptation at each --sigma_w with rho picked on the validation classes (the paper
found rho about 4 for miniImageNet at acceptable noise, hence --rhos around 4).

MAML++ miniImageNet release config (Antoniou et al. 2018, 5-way 1-shot): 84x84x3, conv4 with
48 filters (the ROA paper's text says 64), meta-batch 2, initial inner LR 0.01, second order
throughout, 100 epochs x 500 meta-steps, 600 validation tasks per epoch, 15 queries per class;
meta LR 1e-3 cosine-annealed to 1e-5. Classes: the standard Ravi & Larochelle split, 64/16/20
(the paper reports 64/12/24). Needs miniimagenet_{train,val,test}.zip and {train,val,test}.csv
in <data_dir>/miniimagenet/ (data_dir: --data_dir or env ROA_DATA_DIR); the train zip is not in
/work/shared/data yet, and the run stops at startup with an error naming it.

Command:
  python experiments/meta_train.py --config=experiments/configs/miniimagenet_5w1s.py \
      --workdir=runs/miniimagenet_5w1s --data_dir=/work/shared/data --rhos=1,2,4,8

Expected result: not run here (no train split, and too slow on CPU). Expected cost on this
machine (2 CPU cores shared with another training job, load average ~3.5): 3.2 s per
second-order meta-step of 2 tasks, 0.4 s per validation task, so ~44 h of meta-steps + ~7 h of
validation (100 x 600 tasks) + ~2.6 h of final evaluation (5 noise levels x 4 rhos) = ~54 h.
See BUILD_NOTES.md ("miniImageNet").
"""

import dataclasses

from roa_jax import reproduce
from roa_jax.train import Config


def get_config() -> Config:
    # The MAML++ miniImageNet settings (84x84x3, width 48, inner LR 0.01, meta-batch 2, second
    # order throughout) are the task's definition in roa_jax/reproduce.py; this adds the
    # paper-scale schedule of a single run.
    return dataclasses.replace(
        reproduce.TASKS["miniimagenet_5w1s"](),
        epochs=100,
        iterations_per_epoch=500,
        msl_epochs=0,  # one inner step: the multi-step loss has one term
        val_tasks=600,
    )
