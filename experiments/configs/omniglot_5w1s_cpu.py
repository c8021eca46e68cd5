"""ROA meta-training for Omniglot 5-way 1-shot at CPU scale (conv4-64, one inner step).

Reduced from the paper's 100 epochs x 500 iterations to 30 epochs x 100 iterations of
meta-batch 8 (1/17 of the meta-steps), validating on 200 tasks per epoch, so that it fits
in about an hour on 2 CPU cores. Everything else is the paper/MAML++ protocol: 1150/50/423
classes, 15 queries, LSLR from 0.1, second order after epoch 10, cosine meta-LR 1e-3 -> 1e-5,
ROA constraint k = 4.

Command:
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu.py \
      --workdir=runs/omniglot_5w1s_cpu

Expected result: see BUILD_NOTES.md ("Omniglot 5-way 1-shot, CPU scale") for the measured
origin and ROA test accuracies of this exact command.
"""

from roa_jax.train import Config


def get_config() -> Config:
    return Config(
        dataset="omniglot",
        n_way=5,
        k_shot=1,
        n_query=15,
        width=64,
        num_inner_steps=1,
        inner_lr=0.1,
        meta_batch_size=8,
        epochs=30,
        iterations_per_epoch=100,
        first_order_epochs=10,
        msl_epochs=0,
        constraint_k=4.0,
        constraint_lambda=0.1,
        val_tasks=200,
    )
