"""Stage 1 of the CPU-scale Omniglot 5-way 1-shot run: software pre-training (MAML++ + ROA).

ROA pre-trains in software with exact arithmetic [paper]. Reduced from 100 epochs x 500
iterations to 10 epochs x 100 meta-steps of 8 tasks, first order, 200 validation tasks per
epoch. Stage 2 (omniglot_5w1s_cpu.py) fine-tunes the result through the hardware write.

Command:
  python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_cpu_software.py \
      --workdir=runs/omniglot_5w1s_cpu_software

Expected result (measured, 2 cores; BUILD_NOTES.md, "Omniglot 5-way 1-shot, CPU scale"): 23 min,
best validation accuracy (exact adaptation, 200 tasks) 94.2 +- 0.7 %.
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
        epochs=10,
        iterations_per_epoch=100,
        first_order_epochs=10,
        msl_epochs=0,
        constraint_k=4.0,
        constraint_lambda=0.1,
        val_tasks=200,
    )
