"""Meta-training: the meta-step and the checkpointed loop.

`train_step(state, episodes, key, msl_w, hw, objective=..., optimizer=..., first_order=...)
-> (state, metrics)` is a plain function that the caller jits (flax-examples style); the
optimizer, the network and the training hardware are built once, outside, from the `Config`.
`fit` is the loop: it validates every epoch, keeps the best-validation checkpoint, writes
metrics as CSV and TensorBoard events, logs steps/s and ETA, checkpoints with orbax and resumes
after a kill with nothing lost: every random draw is `fold_in(key, step)`, so a resumed run is
the same computation as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl import logging

from roa_jax import (
    batching,
    crossbar,
    data,
    device,
    distributed,
    errors,
    evaluation,
    maml,
    models,
    roa,
    rundir,
    writers,
)
from roa_jax.config import Config
from roa_jax.data import episodes as episodes_lib


class TrainState(NamedTuple):
    meta: maml.MetaParams
    opt_state: Any  # optax state
    step: jax.Array  # shape=(), int32: meta-steps done


class Objective(NamedTuple):
    """What the meta-loss is, apart from the data and the hardware. Hashable (static)."""

    model: nn.Module
    num_inner_steps: int
    multi_step_loss: bool = True  # False: msl_w is (0, ..., 0, 1), only the last query computed
    exact_loss_weight: float = 0.0  # with hardware: weight of the exact-update query loss
    constraint_k: float = 4.0
    constraint_lambda: float = 0.1
    task_batching: str = "auto"
    mesh: Any = None  # data parallel: a jax.sharding.Mesh whose devices split the tasks


def build_model(cfg: Config) -> nn.Module:
    """The network of `cfg`, with one BN set per inner step and one for theta_0 (MAML++)."""
    return models.build(cfg.architecture, cfg.n_way, cfg.width, cfg.num_inner_steps + 1)


def objective(cfg: Config) -> Objective:
    return Objective(
        build_model(cfg),
        cfg.num_inner_steps,
        cfg.msl_epochs > 0 and cfg.num_inner_steps > 1,
        cfg.exact_loss_weight,
        cfg.constraint_k,
        cfg.constraint_lambda,
        cfg.task_batching,
    )


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """Adam with the meta-LR cosine-annealed from meta_lr to min_meta_lr (MAML++)."""
    schedule = optax.cosine_decay_schedule(
        cfg.meta_lr, cfg.total_steps, alpha=cfg.min_meta_lr / cfg.meta_lr
    )
    return optax.adam(schedule)


def training_hardware(cfg: Config) -> writers.Hardware | None:
    """Crossbars of the inner loop in meta-training: None (exact), or with hardware_inner the
    configured device, noise and pulse policy (hardware-aware meta-training)."""
    if not cfg.hardware_inner:
        return None
    return writers.hardware(crossbar.preset(cfg.device), cfg.train_sigma_w, cfg.pulse_policy)


def init_meta(cfg: Config, image_shape) -> maml.MetaParams:
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0)
    example = jnp.zeros((1, *image_shape), jnp.float32)
    return maml.init(key, build_model(cfg), example, cfg.num_inner_steps, cfg.inner_lr)


def meta_loss(meta, episodes, key, msl_w, hw, objective: Objective, first_order: bool):
    """MAML++ meta-loss of a batch of tasks plus the ROA constraint on theta_0."""
    o = objective
    keys = jax.random.split(key, episodes.query_y.shape[0])
    writer = writers.writer(hw)

    # Without MSL the weights are (0, ..., 0, 1): only the last step's query is computed.
    weights = msl_w if o.multi_step_loss else msl_w[-1:]

    def task(k, episode):
        adapt = functools.partial(
            maml.adapt,
            k,
            o.model,
            meta,
            episode,
            o.num_inner_steps,
            first_order=first_order,
            every_step=o.multi_step_loss,
        )
        result = adapt(writer)
        loss = jnp.sum(weights * result.loss)
        if hw is not None and o.exact_loss_weight > 0:
            w = o.exact_loss_weight
            loss = (1 - w) * loss + w * jnp.sum(weights * adapt(None).loss)
        return loss, result.accuracy[-1]

    losses, accs = batching.map_tasks(task, keys, episodes, strategy=o.task_batching, mesh=o.mesh)
    penalty = roa.constraint(meta.params, o.constraint_k)
    loss = jnp.mean(losses) + o.constraint_lambda * penalty
    return loss, {"loss": jnp.mean(losses), "accuracy": jnp.mean(accs), "constraint": penalty}


def train_step(
    state: TrainState,
    episodes,
    key,
    msl_w,
    hw,
    *,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    first_order: bool,
):
    """One meta-step: (state, batch of episodes, key) -> (state, metrics). The caller jits."""
    grads, metrics = jax.grad(meta_loss, has_aux=True)(
        state.meta, episodes, key, msl_w, hw, objective, first_order
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.meta)
    meta = optax.apply_updates(state.meta, updates)
    return TrainState(meta, opt_state, state.step + 1), metrics


def first_order_at(cfg: Config, epoch: int) -> bool:
    """Derivative-order annealing: first order before `first_order_epochs`."""
    return cfg.num_inner_steps > 0 and epoch < cfg.first_order_epochs


_sample_jit = jax.jit(
    episodes_lib.sample_episodes, static_argnames=("num_tasks", "n_way", "k_shot", "n_query")
)


def validate(key, meta, images, norm, cfg: Config):
    """(mean, ci95) of the validation score, which measures what the run optimizes.

    Exact adaptation; with hardware_inner the same hardware write as the inner loop, mixed per
    task with the exact adaptation's accuracy by `exact_loss_weight` (so the best checkpoint is
    the best for the meta-loss's own mix). Tasks from `key` through the evaluation engine.
    """
    hw = training_hardware(cfg)
    params = crossbar.preset(cfg.device)
    grid = evaluation.make_grid([0.0 if hw is None else cfg.train_sigma_w], [1.0], [0])

    def score(kind):
        setting = evaluation.Setting(
            kind,
            build_model(cfg),
            cfg.n_way,
            cfg.k_shot,
            cfg.n_query,
            cfg.num_inner_steps,
            cfg.eval_chunk,
            task_batching=cfg.task_batching,
        )
        policy = device.pulse_policy(cfg.pulse_policy)
        stacked = evaluation.stack([params])
        return evaluation.sweep(
            key, meta, images, norm, stacked, grid, cfg.val_tasks, setting, policy
        )[0]

    accs = score("origin" if hw is None else "adapt")
    w = cfg.exact_loss_weight
    if hw is not None and w > 0:
        exact = score("origin")
        logging.info("validation: hardware %.4f, exact %.4f", accs.mean(), exact.mean())
        accs = (1 - w) * accs + w * exact
    return evaluation.confidence_interval(accs)


def load_trained(path) -> tuple[Config, maml.MetaParams]:
    """(config, best meta-parameters) of a meta_train.py run folder."""
    cfg = rundir.read_config(path)
    ch = 3 if cfg.dataset == "miniimagenet" else 1
    target = init_meta(cfg, (cfg.image_size, cfg.image_size, ch))
    return cfg, rundir.load_best(rundir.Workdir(path).best, target)


# The meta-loss is a cross-entropy over n_way classes: uniform guessing scores ln(n_way), where
# training starts, and it falls from there. A logged meta-loss above this many times ln(n_way)
# (16 nats at 5-way) is a network far worse than guessing: the mark of an inner or meta learning
# rate that blew up (inner_lr=1e6 reaches 7.7e6 by step 50), not of noise in a healthy run.
DIVERGED = 10.0


def check_loss(metrics: dict, step: int, cfg: Config, workdir: rundir.Workdir) -> None:
    """Raises DivergenceError (a FloatingPointError), naming the likely flags, on a non-finite
    or diverged loss."""
    limit = DIVERGED * math.log(cfg.n_way)
    finite = all(math.isfinite(v) for v in metrics.values())
    if finite and metrics["loss"] <= limit:
        return
    what = "diverged" if finite else "non-finite"
    raise errors.DivergenceError(
        f"meta-loss {what} at step {step} ({metrics['loss']:.4g}; the limit is "
        f"{DIVERGED:g} x ln(n_way) = {limit:.3g}): lower --config.inner_lr "
        f"({cfg.inner_lr:g}) or --config.meta_lr ({cfg.meta_lr:g}). The last checkpoint "
        f"(step {rundir.latest_step(workdir.path)}) is in {workdir.checkpoints}."
    )


def fit(
    cfg: Config, workdir, data_dir=None, cache_dir=None, stop_after_steps=None, export_to=None
) -> dict:
    """Meta-trains per `cfg` in `workdir`, resuming from its latest sound checkpoint.

    Args:
      cfg: validated configuration.
      workdir: run folder.
      data_dir: dataset root (else env ROA_DATA_DIR, else tfds download).
      cache_dir: cache for preprocessed data.
      stop_after_steps: stop (with a checkpoint) after this many steps in total; for tests of
        resumption and for splitting long runs.
      export_to: a folder that gets a copy of the run (`rundir.export`) after every
        checkpoint, so that a run cut at any time resumes elsewhere from its last checkpoint.

    Returns:
      {'best_val_accuracy', 'best_step', 'step'}.

    Raises:
      rundir.FolderInUse: another process is writing `workdir`.
      errors.DivergenceError: the meta-loss diverged (`check_loss`).
    """
    workdir = rundir.Workdir(workdir)
    with rundir.lock(workdir.path):
        return _fit(cfg, workdir, data_dir, cache_dir, stop_after_steps, export_to)


def _fit(cfg, workdir, data_dir, cache_dir, stop_after_steps, export_to) -> dict:
    mesh = distributed.training_mesh(cfg.data_parallel, cfg.meta_batch_size)
    rundir.claim(workdir, cfg)
    splits, norm = data.load_splits(cfg, data_dir, cache_dir)
    data.check_splits(cfg, splits)
    train_images = jax.device_put(splits["train"])
    val_images = jax.device_put(splits["val"])

    optimizer = make_optimizer(cfg)
    checkpoints = rundir.Checkpoints(workdir)
    state, best = _resume(cfg, workdir, checkpoints, optimizer, splits["train"].shape[2:])
    start = int(state.step)
    logs = _Logs(workdir, start)

    base = jax.random.PRNGKey(cfg.seed)
    train_key, val_key = jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)
    hw = training_hardware(cfg)
    meta_step = functools.partial(
        train_step, objective=objective(cfg)._replace(mesh=mesh), optimizer=optimizer
    )
    step_fn, sample = jax.jit(meta_step, static_argnames="first_order"), _sample_jit
    if mesh is not None:  # data parallel: tasks sharded over the devices, state replicated
        step_fn, sample = distributed.data_parallel(meta_step, mesh), distributed.sampler(mesh)
        state, train_images = distributed.replicate((state, splits["train"]), mesh)
    norm_j = tuple(jnp.asarray(x, jnp.float32) for x in norm)
    shape = dict(n_way=cfg.n_way, k_shot=cfg.k_shot, n_query=cfg.n_query)

    end = cfg.total_steps if stop_after_steps is None else min(cfg.total_steps, stop_after_steps)
    for step in range(start, end):
        epoch = step // cfg.iterations_per_epoch
        k = jax.random.fold_in(train_key, step)
        batch = sample(
            jax.random.fold_in(k, 0),
            train_images,
            cfg.meta_batch_size,
            **shape,
            mean=norm_j[0],
            std=norm_j[1],
        )
        msl_w = maml.msl_weights(max(cfg.num_inner_steps, 1), epoch, cfg.msl_epochs)
        state, metrics = step_fn(
            state,
            batch,
            jax.random.fold_in(k, 1),
            msl_w,
            hw,
            first_order=first_order_at(cfg, epoch),
        )
        logs.stepped()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.total_steps:
            metrics = {name: float(v) for name, v in metrics.items()}
            check_loss(metrics, step + 1, cfg, workdir)
            logs.train(step + 1, end, epoch, metrics)
        epoch_end = (step + 1) % cfg.iterations_per_epoch == 0
        if epoch_end:
            mean, ci = validate(val_key, distributed.local(state.meta), val_images, norm, cfg)
            logs.validation(step + 1, epoch, mean, ci)
            if mean > best.get("val_accuracy", -1.0):
                best = {"val_accuracy": mean, "ci95": ci, "step": step + 1, "epoch": epoch}
                rundir.save_best(workdir, state.meta, best)
        if epoch_end or (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            checkpoints.save(step + 1, state)
            if export_to is not None and distributed.is_main():
                rundir.export(workdir.path, export_to)
    return {
        "best_val_accuracy": best.get("val_accuracy"),
        "best_step": best.get("step"),
        "step": int(state.step),
    }


def _resume(cfg, workdir, checkpoints, optimizer, image_shape) -> tuple[TrainState, dict]:
    """The state to go on from (the latest sound checkpoint, else a fresh start) and the best
    validation record so far (forgotten where it is newer than that checkpoint)."""
    meta = init_meta(cfg, image_shape)
    if cfg.init_from:
        meta = rundir.load_best(cfg.init_from, meta)
    state = checkpoints.restore_latest(TrainState(meta, optimizer.init(meta), jnp.int32(0)))
    if int(state.step):
        logging.info("Resumed from %s at step %d.", workdir.checkpoints, int(state.step))
    best = rundir.read_best(workdir)
    return state, {} if best.get("step", -1) > int(state.step) else best


class _Logs:
    """A run's progress: log lines with rate and ETA, train.csv, val.csv and TensorBoard."""

    def __init__(self, workdir: rundir.Workdir, start: int):
        fields = ["step", "epoch", "loss", "accuracy", "constraint", "steps_per_s"]
        self._train = rundir.Csv(workdir.train_csv, fields, start)
        self._val = rundir.Csv(workdir.val_csv, ["step", "epoch", "accuracy", "ci95"], start)
        self._board = rundir.TensorBoard(workdir.tensorboard)
        self._t0, self._steps = time.time(), 0

    def stepped(self) -> None:
        self._steps += 1

    def train(self, step: int, end: int, epoch: int, metrics: dict) -> None:
        rate = self._steps / (time.time() - self._t0)
        logging.info(
            "step %d/%d epoch %d loss %.4f acc %.3f | %.2f steps/s, ETA %.0f min",
            step,
            end,
            epoch,
            metrics["loss"],
            metrics["accuracy"],
            rate,
            (end - step) / rate / 60,
        )
        self._train.write({"step": step, "epoch": epoch, **metrics, "steps_per_s": rate})
        self._board.scalars(step, {f"train/{n}": v for n, v in metrics.items()})
        self._t0, self._steps = time.time(), 0

    def validation(self, step: int, epoch: int, mean: float, ci: float) -> None:
        logging.info("epoch %d validation accuracy %.4f +- %.4f", epoch, mean, ci)
        self._val.write({"step": step, "epoch": epoch, "accuracy": mean, "ci95": ci})
        self._board.scalars(step, {"val/accuracy": mean})
        self._t0 = time.time()  # the rate counts meta-steps, not validation
