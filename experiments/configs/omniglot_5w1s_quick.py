"""A short ROA run on Omniglot 5-way 1-shot: the README's main job (12 min on 2 cores).

3 epochs x 100 meta-steps of 8 tasks, first order throughout, 100 validation tasks per epoch;
then meta_train.py evaluates the best checkpoint on 600 test tasks: origin, and ROA's one-step
hardware adaptation (paper device, open-loop pulses) at each --sigma_w with rho from val.

Command:
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_quick.py \
      --workdir=runs/quick

Expected result: see BUILD_NOTES.md ("Main job") for the measured numbers of this command.
"""

from roa_jax.train import Config


def get_config() -> Config:
    return Config(
        dataset="omniglot",
        width=64,
        num_inner_steps=1,
        meta_batch_size=8,
        epochs=3,
        iterations_per_epoch=100,
        first_order_epochs=3,
        msl_epochs=0,
        val_tasks=100,
    )
