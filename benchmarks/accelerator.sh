#!/usr/bin/env bash
# The accelerator check, in under 10 minutes on a GPU machine (each stage has a time limit):
#   1. the meta-step time per task shape (Omniglot 5-way and 20-way, miniImageNet):
#      benchmarks/meta_step.py, conv4-64, vmap (the accelerator default) against unroll;
#      the evaluation sweep's per-task accuracies, vmap against the loop (equal: issue 31);
#   2. sweep and meta-step throughput at 1 and all devices: benchmarks/scaling.py;
#   3. a short full-scale Omniglot run: meta_train.py with conv4-64, 28x28, 5-way 1-shot,
#      data parallel over all devices, $EPOCHS x $STEPS meta-steps (second order after the
#      first epoch), 600 validation tasks per epoch, then the evaluation at 4 noise levels x
#      the paper's rhos on 600 validation and 600 test tasks.
#
#   bash benchmarks/accelerator.sh [workdir]      # default runs/accelerator (replaced)
#
# Omniglot from $ROA_DATA_DIR/omniglot (or shared/data/omniglot); without it, synthetic
# tasks of the same shape. EPOCHS, STEPS, TASKS, WIDTH, POINTS (of the sweep) override the
# sizes (a CPU smoke test: EPOCHS=1 STEPS=2 TASKS=8 WIDTH=8 POINTS=4, about 8 min on 2 cores).
set -uo pipefail
cd "$(dirname "$0")/.."
workdir=${1:-runs/accelerator}
epochs=${EPOCHS:-2} steps=${STEPS:-100} tasks=${TASKS:-600} width=${WIDTH:-64}
points=${POINTS:-16}

devices=$(python -c 'import jax; print(jax.device_count())')
python -c 'import jax; print("jax", jax.__version__, jax.devices())'
batch=$(((8 + devices - 1) / devices * devices)) # 8 tasks, or a multiple of the devices

echo "== 1. meta-step (benchmarks/meta_step.py)"
timeout 240 python benchmarks/meta_step.py --notorch --noreference --inner_steps=1 \
  --strategies=vmap,unroll --width="$width" --repeats=5 || echo "meta_step.py: failed or timed out"

echo "== 1b. the accelerator's sweep (vmap) against the loop of single-point programs (benchmarks/sweep.py)"
timeout 120 python benchmarks/sweep.py --tasks=96 --levels=4 --width="$width" \
  --strategies=vmap,loop || echo "sweep.py: failed or timed out"

echo "== 2. scaling over 1 and $devices devices (benchmarks/scaling.py)"
counts=1
[ "$devices" -gt 1 ] && counts="1,$devices"
timeout 150 python benchmarks/scaling.py --devices="$counts" --width="$width" --points="$points" \
  --meta_batch="$(((16 + devices - 1) / devices * devices))" || echo "scaling.py: failed or timed out"

echo "== 3. short full-scale Omniglot run (experiments/meta_train.py) in $workdir"
data=${ROA_DATA_DIR:-shared/data}
dataset=(--config.dataset=omniglot --data_dir="$data")
if [ ! -d "$data/omniglot" ]; then
  echo "no $data/omniglot: synthetic tasks of the Omniglot shape instead"
  dataset=(--config.dataset=synthetic)
fi
parallel=False
[ "$devices" -gt 1 ] && parallel=True
rm -rf "$workdir"
start=$(date +%s)
timeout 270 python experiments/meta_train.py --config=experiments/configs/omniglot_5w1s_quick.py \
  --workdir="$workdir" "${dataset[@]}" --config.width="$width" \
  --config.epochs="$epochs" --config.iterations_per_epoch="$steps" \
  --config.first_order_epochs=1 --config.val_tasks="$tasks" --config.log_every=25 \
  --config.meta_batch_size="$batch" --config.data_parallel="$parallel" \
  --eval_scale=paper --seeds=1 --sigma_w=0,1,2,3 --val_tasks="$tasks" --test_tasks="$tasks" \
  || echo "meta_train.py: failed or timed out"
echo "meta_train.py: $(($(date +%s) - start)) s; steps/s in $workdir/train.csv"
