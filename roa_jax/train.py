"""Meta-training: configuration, the meta-step, evaluation, and the checkpointed loop.

`train_step(state, episodes, key, msl_w, ...) -> (state, metrics)` is a plain function that
the caller jits (flax-examples style). `fit` is the loop: it validates every epoch, keeps the
best-validation checkpoint, writes metrics as CSV and TensorBoard events, logs steps/s and
ETA, checkpoints with orbax and resumes after a kill with nothing lost: every random draw is
`fold_in(key, step)`, so a resumed run is the same computation as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from roa_jax import device, maml, roa
from roa_jax.data import episodes as episodes_lib

DATASETS = ("omniglot", "synthetic", "miniimagenet")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a meta-training run depends on. Frozen, so it can be a static jit argument."""

    dataset: str = "omniglot"  # one of DATASETS
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15  # query images per class
    image_size: int = 28
    rotations: bool = False  # MAML++ rotation augmentation of the training classes
    width: int = 64  # conv filters (128: the paper's wide variant)
    num_inner_steps: int = 1  # S: 1 for ROA, 5 for the online baseline
    inner_lr: float = 0.1  # initial LSLR rate
    meta_lr: float = 1e-3  # cosine-annealed to min_meta_lr
    min_meta_lr: float = 1e-5
    meta_batch_size: int = 8
    epochs: int = 100
    iterations_per_epoch: int = 500
    msl_epochs: int = 15  # multi-step-loss annealing epochs
    first_order_epochs: int = 10  # derivative-order annealing: first order before this epoch
    constraint_k: float = 4.0  # ROA constraint range [-1/k, 1/k]; k = 1 is ROA-WC
    constraint_lambda: float = 0.1  # lambda_c; 0 disables the constraint
    hardware_inner: bool = False  # meta-train through the differentiable hardware write
    # With hardware_inner: weight of the exact-update query loss beside the hardware one, so
    # theta_0 stays good for exact adaptation ("origin") while it learns to survive the write.
    exact_loss_weight: float = 0.0
    device: str = "paper"  # preset name or .json (hardware-aware meta-training)
    train_sigma_w: float = 0.0  # write noise of hardware-aware meta-training
    pulse_policy: str = "open_loop"
    val_tasks: int = 600
    eval_chunk: int = 8  # tasks per compiled evaluation batch
    seed: int = 0
    task_batching: str = "auto"  # see maml.map_tasks
    log_every: int = 50
    checkpoint_every: int = 250  # steps; also at every epoch end
    init_from: str = ""  # a best/ checkpoint to start theta_0 and LSLR from (fine-tuning)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iterations_per_epoch


def validate_config(cfg: Config) -> Config:
    """Raises ValueError naming the offending field (= flag) and its allowed range."""
    positive = (
        "n_way k_shot n_query image_size width meta_batch_size epochs iterations_per_epoch "
        "val_tasks eval_chunk log_every checkpoint_every"
    )
    for name in positive.split():
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1.")
    for name in ("inner_lr", "meta_lr", "min_meta_lr"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value} must be a finite number > 0.")
    if cfg.min_meta_lr > cfg.meta_lr:
        raise ValueError(f"min_meta_lr={cfg.min_meta_lr} must be <= meta_lr={cfg.meta_lr}.")
    if cfg.num_inner_steps < 0:
        raise ValueError(f"num_inner_steps={cfg.num_inner_steps} must be >= 0.")
    if cfg.constraint_k < 1:
        raise ValueError(f"constraint_k={cfg.constraint_k} must be >= 1 (k = 1: full range).")
    if not 0.0 <= cfg.exact_loss_weight <= 1.0:
        raise ValueError(f"exact_loss_weight={cfg.exact_loss_weight} must be in [0, 1].")
    if cfg.exact_loss_weight > 0 and not cfg.hardware_inner:
        raise ValueError("exact_loss_weight > 0 needs hardware_inner=True (else it is the loss).")
    if cfg.constraint_lambda < 0:
        raise ValueError(f"constraint_lambda={cfg.constraint_lambda} must be >= 0.")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"dataset={cfg.dataset!r} is not one of {DATASETS}.")
    if cfg.task_batching not in (*maml.TASK_BATCHING, "auto"):
        raise ValueError(f"task_batching={cfg.task_batching!r} is not one of {maml.TASK_BATCHING}.")
    if cfg.msl_epochs < 0 or cfg.first_order_epochs < 0:
        raise ValueError("msl_epochs and first_order_epochs must be >= 0.")
    device.validate_sigma_w(cfg.train_sigma_w)
    device.pulse_policy(cfg.pulse_policy)
    device.validate(device.preset(cfg.device))
    if cfg.init_from and not pathlib.Path(cfg.init_from).exists():
        raise FileNotFoundError(
            f"init_from={cfg.init_from!r}: no such checkpoint folder (a run's best/ folder)."
        )
    return cfg


def load_dataset(cfg: Config, data_dir: str | None = None, cache_dir: str | None = None):
    """{'train', 'val', 'test'} -> uint8 class arrays, plus per-channel (mean, std)."""
    if cfg.dataset == "omniglot":
        from roa_jax.data import omniglot

        splits = omniglot.load_omniglot(
            data_dir, cfg.image_size, seed=cfg.seed, rotations=cfg.rotations, cache_dir=cache_dir
        )
        return splits, (0.0, 1.0)
    if cfg.dataset == "synthetic":
        from roa_jax.data import synthetic

        return synthetic.load_synthetic(seed=cfg.seed, image_size=cfg.image_size), (0.0, 1.0)
    from roa_jax.data import miniimagenet

    splits = miniimagenet.load_miniimagenet(data_dir, cache_dir=cache_dir)
    return splits, (miniimagenet.MEAN, miniimagenet.STD)


def check_data(cfg: Config, splits: dict) -> None:
    """Every split can supply the configured episodes, and images have the configured size."""
    for split, images in splits.items():
        num_classes, num_instances, height, width, _ = images.shape
        episodes_lib.check_episode_config(
            num_classes, num_instances, cfg.n_way, cfg.k_shot, cfg.n_query, split
        )
        if (height, width) != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"image_size={cfg.image_size} does not match the {split!r} images "
                f"({height}x{width})."
            )


# ----------------------------------------------------------------------------------------------
# The meta-step.


class TrainState(NamedTuple):
    meta: maml.MetaParams
    opt_state: Any  # optax state
    step: jax.Array  # shape=(), int32: meta-steps done


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """Adam with the meta-LR cosine-annealed from meta_lr to min_meta_lr (MAML++)."""
    schedule = optax.cosine_decay_schedule(
        cfg.meta_lr, cfg.total_steps, alpha=cfg.min_meta_lr / cfg.meta_lr
    )
    return optax.adam(schedule)


def train_hardware(cfg: Config) -> roa.Hardware | None:
    """Crossbars of the inner loop in meta-training: None (exact), or with hardware_inner the
    configured device, noise and pulse policy (hardware-aware meta-training)."""
    if not cfg.hardware_inner:
        return None
    return roa.hardware(device.preset(cfg.device), cfg.train_sigma_w, cfg.pulse_policy)


def init_state(cfg: Config, image_shape) -> TrainState:
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0)
    meta = maml.init(key, cfg.n_way, image_shape, cfg.width, cfg.num_inner_steps, cfg.inner_lr)
    return TrainState(meta, make_optimizer(cfg).init(meta), jnp.int32(0))


def meta_loss(meta, episodes, key, msl_w, cfg: Config, first_order: bool):
    """MAML++ meta-loss of a batch of tasks plus the ROA constraint on theta_0."""
    keys = jax.random.split(key, episodes.query_y.shape[0])
    writer = roa.writer(train_hardware(cfg))

    def task(k, episode):
        result = maml.adapt(k, meta, episode, cfg.num_inner_steps, writer, first_order=first_order)
        loss = jnp.sum(msl_w * result.loss)
        if cfg.exact_loss_weight > 0:
            exact = maml.adapt(k, meta, episode, cfg.num_inner_steps, first_order=first_order)
            w = cfg.exact_loss_weight
            loss = (1 - w) * loss + w * jnp.sum(msl_w * exact.loss)
        return loss, result.accuracy[-1]

    losses, accs = maml.map_tasks(task, keys, episodes, strategy=cfg.task_batching)
    penalty = roa.constraint(meta.net.weights, cfg.constraint_k)
    loss = jnp.mean(losses) + cfg.constraint_lambda * penalty
    return loss, {"loss": jnp.mean(losses), "accuracy": jnp.mean(accs), "constraint": penalty}


def train_step(state: TrainState, episodes, key, msl_w, cfg: Config, first_order: bool):
    """One meta-step: (state, batch of episodes, key) -> (state, metrics). The caller jits."""
    grads, metrics = jax.grad(meta_loss, has_aux=True)(
        state.meta, episodes, key, msl_w, cfg, first_order
    )
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.meta)
    meta = optax.apply_updates(state.meta, updates)
    return TrainState(meta, opt_state, state.step + 1), metrics


def first_order_at(cfg: Config, epoch: int) -> bool:
    """Derivative-order annealing: first order before `first_order_epochs`."""
    return cfg.num_inner_steps > 0 and epoch < cfg.first_order_epochs


# ----------------------------------------------------------------------------------------------
# Evaluation.


def sample_batch(key, images, num_tasks, cfg: Config, norm):
    return episodes_lib.sample_episodes(
        key, images, num_tasks, cfg.n_way, cfg.k_shot, cfg.n_query, *norm
    )


def evaluate(key, meta, images, num_tasks, cfg: Config, norm, hw=None, rho=1.0, num_steps=None):
    """Per-task query accuracy over `num_tasks` tasks drawn with `key` (chunks of eval_chunk).

    The same key gives the same tasks, so methods evaluated with one key see the same tasks.
    """
    num_steps = cfg.num_inner_steps if num_steps is None else num_steps
    norm = tuple(jnp.asarray(x, jnp.float32) for x in norm)
    accs = []
    for i in range(math.ceil(num_tasks / cfg.eval_chunk)):
        k = jax.random.fold_in(key, i)
        batch = _sample_jit(jax.random.fold_in(k, 0), images, cfg.eval_chunk, cfg, norm)
        accs.append(
            np.asarray(
                _evaluate_jit(
                    jax.random.fold_in(k, 1), meta, batch, num_steps, hw, rho, cfg.task_batching
                )
            )
        )
    return np.concatenate(accs)[:num_tasks]


_evaluate_jit = jax.jit(roa.evaluate_tasks, static_argnames=("num_steps", "task_batching"))
_sample_jit = jax.jit(sample_batch, static_argnames=("num_tasks", "cfg"))


# ----------------------------------------------------------------------------------------------
# The loop.


class Workdir:
    """Files of one run: checkpoints/, best/, train.csv, val.csv, tb/, config.json."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name):
        return (
            self.path
            / {
                "checkpoints": "checkpoints",
                "best": "best",
                "train_csv": "train.csv",
                "val_csv": "val.csv",
                "tensorboard": "tb",
                "config_json": "config.json",
                "best_json": "best.json",
            }[name]
        )


def _check_config_matches(workdir: Workdir, cfg: Config) -> None:
    saved = workdir.config_json
    if saved.exists():
        # A field added to Config after the run started counts at its default value.
        old = {**dataclasses.asdict(Config()), **json.loads(saved.read_text())}
        new = dataclasses.asdict(cfg)
        diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v and k != "epochs"}
        if diff:
            raise ValueError(
                f"{workdir.path} holds a run with a different config {diff}; use a new --workdir "
                "or the same settings to resume."
            )
    saved.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))


class _Csv:
    """Appends rows to a CSV; on resume drops rows from steps after the restored checkpoint."""

    def __init__(self, path, fields, keep_until_step):
        self.path, self.fields = pathlib.Path(path), fields
        rows = []
        if self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)
        self.rows = rows

    def write(self, row):
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)
        self.rows.append(row)


class _TensorBoard:
    """TensorBoard event files through tf.summary (TensorFlow is already a tfds dependency).

    Uses the low-level `tf.summary.write` with the scalars plugin's metadata, so that the
    `tensorboard` package itself is only needed to view the files, not to write them.
    """

    def __init__(self, path):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        tf.config.set_visible_devices([], "GPU")
        self._tf = tf
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        self._writer = tf.summary.create_file_writer(str(path))

    def scalars(self, step, values: dict):
        tf = self._tf
        with self._writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.write(name, tf.constant(float(value)), metadata=self._metadata)
        self._writer.flush()


class _DropOrbaxInfo:
    """absl-handler filter: orbax logs several INFO lines per save; keep its warnings."""

    def filter(self, record):
        return record.levelno > 20 or "/orbax/" not in record.pathname


def quiet_orbax() -> None:
    """Called by binaries: hides orbax's per-save INFO lines from the log."""
    logging.get_absl_handler().addFilter(_DropOrbaxInfo())


def _checkpoint_manager(workdir: Workdir):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        workdir.checkpoints.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2)
    )


def restore_latest(workdir: Workdir, state: TrainState) -> TrainState:
    """The latest checkpoint in `workdir`, or `state` if there is none."""
    import orbax.checkpoint as ocp

    manager = _checkpoint_manager(workdir)
    step = manager.latest_step()
    if step is None:
        return state
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(state))
    except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
        raise ValueError(
            f"Checkpoint {workdir.checkpoints}/{step} could not be restored ({type(e).__name__}: "
            f"{e}). Delete that folder to resume from the previous one, or use a new --workdir."
        ) from e


def load_meta(path, cfg: Config, image_shape) -> maml.MetaParams:
    """Meta-parameters saved by `fit` under `path` (a workdir's best/ folder)."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}: run experiments/meta_train.py first.")
    target = init_state(cfg, image_shape).meta
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"Checkpoint {path} could not be restored ({type(e).__name__}: {e})."
        ) from e


def _save_best(workdir: Workdir, meta, record: dict) -> None:
    import shutil

    import orbax.checkpoint as ocp

    tmp = workdir.path / "best.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp.absolute(), meta)
    checkpointer.wait_until_finished()
    if workdir.best.exists():
        shutil.rmtree(workdir.best)
    tmp.rename(workdir.best)
    workdir.best_json.write_text(json.dumps(record, indent=1))


def fit(cfg: Config, workdir, data_dir=None, cache_dir=None, stop_after_steps=None) -> dict:
    """Meta-trains per `cfg` in `workdir`, resuming from its latest checkpoint.

    Args:
      cfg: validated configuration.
      workdir: run folder.
      data_dir: dataset root (else env ROA_DATA_DIR, else tfds download).
      cache_dir: cache for preprocessed data.
      stop_after_steps: stop (with a checkpoint) after this many steps in total; for tests of
        resumption and for splitting long runs.

    Returns:
      {'best_val_accuracy', 'best_step', 'step'}.
    """
    workdir = Workdir(workdir)
    _check_config_matches(workdir, cfg)
    splits, norm = load_dataset(cfg, data_dir, cache_dir)
    check_data(cfg, splits)
    train_images = jax.device_put(splits["train"])
    val_images = jax.device_put(splits["val"])
    image_shape = splits["train"].shape[2:]

    state = init_state(cfg, image_shape)
    if cfg.init_from:
        meta = load_meta(cfg.init_from, cfg, image_shape)
        state = TrainState(meta, make_optimizer(cfg).init(meta), state.step)
    state = restore_latest(workdir, state)
    start = int(state.step)
    if start:
        logging.info("Resumed from %s at step %d.", workdir.checkpoints, start)
    best = json.loads(workdir.best_json.read_text()) if workdir.best_json.exists() else {}
    if best.get("step", -1) > start:
        best = {}
    train_log = _Csv(
        workdir.train_csv, ["step", "epoch", "loss", "accuracy", "constraint", "steps_per_s"], start
    )
    val_log = _Csv(workdir.val_csv, ["step", "epoch", "accuracy", "ci95"], start)
    tensorboard = _TensorBoard(workdir.tensorboard)
    manager = _checkpoint_manager(workdir)

    base = jax.random.PRNGKey(cfg.seed)
    train_key, val_key = jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)
    step_fn = jax.jit(train_step, static_argnames=("cfg", "first_order"))
    norm = tuple(jnp.asarray(x, jnp.float32) for x in norm)

    def save(state):
        import orbax.checkpoint as ocp

        manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()

    end = cfg.total_steps if stop_after_steps is None else min(cfg.total_steps, stop_after_steps)
    t0, done_since_log, last_metrics = time.time(), 0, None
    for step in range(start, end):
        epoch = step // cfg.iterations_per_epoch
        k = jax.random.fold_in(train_key, step)
        batch = _sample_jit(jax.random.fold_in(k, 0), train_images, cfg.meta_batch_size, cfg, norm)
        msl_w = maml.msl_weights(max(cfg.num_inner_steps, 1), epoch, cfg.msl_epochs)
        state, last_metrics = step_fn(
            state,
            batch,
            jax.random.fold_in(k, 1),
            msl_w,
            cfg=cfg,
            first_order=first_order_at(cfg, epoch),
        )
        done_since_log += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.total_steps:
            metrics = {k: float(v) for k, v in last_metrics.items()}
            if not all(math.isfinite(v) for v in metrics.values()):
                raise FloatingPointError(
                    f"Non-finite meta-loss at step {step + 1}: {metrics}. Lower meta_lr or "
                    "inner_lr; "
                    f"the last good checkpoint is in {workdir.checkpoints}."
                )
            rate = done_since_log / (time.time() - t0)
            eta = (end - step - 1) / rate
            logging.info(
                "step %d/%d epoch %d loss %.4f acc %.3f | %.2f steps/s, ETA %.0f min",
                step + 1,
                end,
                epoch,
                metrics["loss"],
                metrics["accuracy"],
                rate,
                eta / 60,
            )
            train_log.write({"step": step + 1, "epoch": epoch, **metrics, "steps_per_s": rate})
            tensorboard.scalars(step + 1, {f"train/{k}": v for k, v in metrics.items()})
            t0, done_since_log = time.time(), 0
        epoch_end = (step + 1) % cfg.iterations_per_epoch == 0
        if epoch_end:
            mean, ci = validate(val_key, state.meta, val_images, cfg, norm)
            logging.info("epoch %d validation accuracy %.4f +- %.4f", epoch, mean, ci)
            val_log.write(
                {"step": step + 1, "epoch": epoch, "accuracy": float(mean), "ci95": float(ci)}
            )
            tensorboard.scalars(step + 1, {"val/accuracy": float(mean)})
            if float(mean) > best.get("val_accuracy", -1.0):
                best = {
                    "val_accuracy": float(mean),
                    "ci95": float(ci),
                    "step": step + 1,
                    "epoch": epoch,
                }
                _save_best(workdir, state.meta, best)
            t0 = time.time()
        if epoch_end or (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            save(state)
    return {
        "best_val_accuracy": best.get("val_accuracy"),
        "best_step": best.get("step"),
        "step": int(state.step),
    }


def validate(key, meta, images, cfg: Config, norm):
    """(mean, ci95) of the validation score, which measures what the run optimizes.

    Exact adaptation; with hardware_inner the same hardware write as the inner loop, mixed per
    task with the exact adaptation's accuracy by `exact_loss_weight` (so the best checkpoint is
    the best for the meta-loss's own mix).
    """
    accs = evaluate(key, meta, images, cfg.val_tasks, cfg, norm, train_hardware(cfg))
    w = cfg.exact_loss_weight
    if w > 0:
        exact = evaluate(key, meta, images, cfg.val_tasks, cfg, norm)
        logging.info(
            "validation: hardware %.4f, exact %.4f", float(np.mean(accs)), float(np.mean(exact))
        )
        accs = (1 - w) * accs + w * exact
    return roa.confidence_interval(accs)


def resolve_workdir(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def final_evaluation(
    cfg: Config, workdir, data_dir, cache_dir, num_tasks, device_params, sigmas, rhos
) -> dict:
    """Test accuracy of the best checkpoint: origin, and ROA's hardware adaptation per noise level.

    For each sigma_w, rho is chosen on the validation classes (never on test) at that noise
    level; ROA-FLR (rho = 1) is reported beside it. Every method sees the same test tasks.
    """
    splits, norm = load_dataset(cfg, data_dir, cache_dir)
    image_shape = splits["train"].shape[2:]
    meta = load_meta(Workdir(workdir).best, cfg, image_shape)
    val, test = jax.device_put(splits["val"]), jax.device_put(splits["test"])
    base = jax.random.PRNGKey(cfg.seed)
    val_key, test_key = jax.random.fold_in(base, 2), jax.random.fold_in(base, 3)
    origin = roa.confidence_interval(evaluate(test_key, meta, test, num_tasks, cfg, norm))
    result = {
        "test_tasks": num_tasks,
        "origin_accuracy": float(origin[0]),
        "origin_ci95": float(origin[1]),
        "hardware": [],
    }
    for sigma_w in sigmas:
        hw = roa.hardware(device_params, sigma_w, cfg.pulse_policy)
        val_by_rho = {
            rho: float(np.mean(evaluate(val_key, meta, val, cfg.val_tasks, cfg, norm, hw, rho)))
            for rho in rhos
        }
        best_rho = max(val_by_rho, key=val_by_rho.get)
        tuned = roa.confidence_interval(
            evaluate(test_key, meta, test, num_tasks, cfg, norm, hw, best_rho)
        )
        flr = roa.confidence_interval(evaluate(test_key, meta, test, num_tasks, cfg, norm, hw, 1.0))
        result["hardware"].append(
            {
                "sigma_w": sigma_w,
                "val_accuracy_by_rho": {str(k): v for k, v in val_by_rho.items()},
                "best_rho": best_rho,
                "roa_accuracy": float(tuned[0]),
                "roa_ci95": float(tuned[1]),
                "roa_flr_accuracy": float(flr[0]),
                "roa_flr_ci95": float(flr[1]),
            }
        )
        logging.info("sigma_w=%g: %s", sigma_w, result["hardware"][-1])
    return result
