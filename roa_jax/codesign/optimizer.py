"""Adam over the device and rho (optionally jointly with theta_0), fresh tasks every step.

`Problem` says what moves and how its gradient is estimated; `gradient` is the mean post-write
query loss's gradient on one batch of tasks; `optimize` runs the steps and returns the device
found (`Result`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from roa_jax import device, errors, maml, roa
from roa_jax.codesign.estimators import ESTIMATORS, fd_gradients, task_gradients, task_losses
from roa_jax.codesign.parameterization import (
    DEFAULT_FREE,
    NAMES,
    Knobs,
    check_base,
    describe,
    device_params,
    knobs,
)
from roa_jax.data import episodes as episodes_lib


class State(NamedTuple):
    """Co-design optimizer state."""

    knobs: Knobs  # the device and rho
    meta: maml.MetaParams  # theta_0 and LSLR (changed only when joint)
    opt_knobs: optax.OptState  # adam state of the knobs
    opt_meta: optax.OptState  # adam state of theta_0 (unused unless joint)
    step: jax.Array  # shape=(), int32: steps done


class Problem(NamedTuple):
    """What is optimized, apart from the tasks and the hardware."""

    model: nn.Module
    free: tuple = DEFAULT_FREE  # names of the knobs that move (NAMES); the others are held
    joint: bool = False  # also optimize theta_0 and LSLR (hardware-aware meta-training)
    # The knobs' gradient, 'fd' or 'ste' (theta_0's is always ste): on the `paper` device
    # 'ste' is biased for the rates and rho (estimators.py; BUILD_NOTES "Co-design").
    estimator: str = "fd"
    fd_step: float = 0.1  # central-difference step in knob units ('fd')
    constraint_k: float = 4.0  # ROA constraint on theta_0 when joint (Eqs. 17-18)
    constraint_lambda: float = 0.1
    strategy: str = "auto"  # tasks of a step, see `estimators.task_losses`


class Result(NamedTuple):
    """What `optimize` returns."""

    params: device.DeviceParams  # the device found
    rho: float  # ROA's rho found (the start's where rho is held)
    meta: maml.MetaParams  # theta_0 and LSLR (changed only when joint)
    history: list  # per step: {'step', 'loss', 'accuracy', grad_<knob>, 'rho', `describe`}


def check_problem(problem: Problem) -> Problem:
    """Raises ConfigError naming a bad knob name, estimator or step."""
    if not problem.free and not problem.joint:
        raise errors.ConfigError("free is empty and joint is off: nothing to optimize.")
    unknown = sorted(set(problem.free) - set(NAMES))
    if unknown:
        raise errors.ConfigError(f"free={','.join(problem.free)}: {unknown} are not among {NAMES}.")
    if problem.estimator not in ESTIMATORS:
        raise errors.ConfigError(f"estimator={problem.estimator!r} is not one of {ESTIMATORS}.")
    if not (math.isfinite(problem.fd_step) and problem.fd_step > 0):
        raise errors.ConfigError(f"fd_step={problem.fd_step} must be finite and > 0.")
    return problem


_sample_jit = jax.jit(episodes_lib.sample_episodes, static_argnums=(2, 3, 4, 5))


def sample_tasks(key, images, norm, num_tasks: int, episode_shape: tuple):
    """`num_tasks` episodes of `episode_shape` (n_way, k_shot, n_query), normalized by `norm`."""
    mean, std = (jnp.asarray(x, jnp.float32) for x in norm)
    return _sample_jit(key, images, num_tasks, *episode_shape, mean, std)


def gradient(state: State, episodes, key, base, sigma_w, policy, problem: Problem):
    """(d loss / d knobs, d loss / d meta or None, metrics) of the mean post-write query loss.

    Held knobs get a zero gradient; joint adds the ROA constraint's gradient on theta_0.
    """
    p = problem
    args = (state.knobs, state.meta, key, episodes, base, sigma_w, policy, p.model)
    if p.estimator == "fd" and not p.joint:
        # No autodiff at all: the exact loss at the start and at +-fd_step on each free knob.
        loss, acc = task_losses(*args, p.strategy)
        g_knobs, g_meta = jax.tree.map(jnp.zeros_like, state.knobs), None
    else:
        loss, acc, g_knobs, g_meta = task_gradients(*args, p.joint, p.strategy)
        g_knobs = jax.tree.map(lambda g: jnp.mean(g, axis=0), g_knobs)
    if p.estimator == "fd":
        slopes = fd_gradients(*args, p.free, p.fd_step, p.strategy)
        fields = {Knobs._fields[NAMES.index(n)]: jnp.mean(x) for n, x in slopes.items()}
        g_knobs = g_knobs._replace(**fields)
    g_knobs = Knobs(*(g * (n in p.free) for g, n in zip(g_knobs, NAMES, strict=True)))
    if p.joint:
        g_meta = jax.tree.map(lambda g: jnp.mean(g, axis=0), g_meta)
        penalty = lambda m: p.constraint_lambda * roa.constraint(m.params, p.constraint_k)
        g_meta = jax.tree.map(jnp.add, g_meta, jax.grad(penalty)(state.meta))
    metrics = {"loss": float(jnp.mean(loss)), "accuracy": float(jnp.mean(acc))}
    metrics.update({f"grad_{n}": float(g) for n, g in zip(NAMES, g_knobs, strict=True)})
    return g_knobs, g_meta, metrics


def _adam(num_steps: int, lr: float, meta_lr: float):
    """(init, update): adam on the knobs (`lr`) and on theta_0 (`meta_lr`), each
    cosine-decayed to 10 % over `num_steps`; update(state, g_knobs, g_meta or None)."""
    knob_opt = optax.adam(optax.cosine_decay_schedule(lr, num_steps, alpha=0.1))
    meta_opt = optax.adam(optax.cosine_decay_schedule(meta_lr, num_steps, alpha=0.1))

    def init(k: Knobs, meta) -> State:
        return State(k, meta, knob_opt.init(k), meta_opt.init(meta), jnp.int32(0))

    @jax.jit
    def update(state: State, g_knobs, g_meta) -> State:
        updates, opt_knobs = knob_opt.update(g_knobs, state.opt_knobs, state.knobs)
        k = optax.apply_updates(state.knobs, updates)
        meta, opt_meta = state.meta, state.opt_meta
        if g_meta is not None:
            updates, opt_meta = meta_opt.update(g_meta, opt_meta, meta)
            meta = optax.apply_updates(meta, updates)
        return State(k, meta, opt_knobs, opt_meta, state.step + 1)

    return init, update


def optimize(
    key,
    base: device.DeviceParams,
    rho: float,
    meta: maml.MetaParams,
    images,
    norm,
    episode_shape: tuple,
    sigma_w: float,
    problem: Problem,
    num_steps: int,
    tasks_per_step: int,
    lr: float = 0.05,
    meta_lr: float = 1e-4,
    policy: device.PulsePolicy | None = None,
    progress=None,
) -> Result:
    """Adam over the free knobs (and theta_0 when joint), fresh tasks at every step.

    Args:
      key: PRNG key; step s draws its tasks from fold_in(fold_in(key, s), 0) and its noise
        from fold_in(., 1).
      base: the device to start from; its noise law and scale, voltages, beta and delta stay.
      rho: ROA's relative learning rate to start from.
      meta: meta-trained theta_0 and LSLR.
      images: uint8 class array of the split the tasks come from.
      norm: per-channel (mean, std).
      episode_shape: (n_way, k_shot, n_query).
      sigma_w: write noise of the adaptation write.
      problem: what moves, and the gradient estimator.
      num_steps: optimizer steps.
      tasks_per_step: tasks per step.
      lr: adam step in knob units (logs, logit), cosine-decayed to 10 %.
      meta_lr: adam step of theta_0 when joint, cosine-decayed to 10 %.
      policy: pulse policy; default open_loop.
      progress: optional callable(step, history row).

    Returns:
      `Result`; `params` pass `device.validate` (else a DeviceError naming what left the
      physical range).
    """
    check_problem(problem)
    check_base(base)
    policy = device.open_loop() if policy is None else policy
    init, update = _adam(num_steps, lr, meta_lr)
    state = init(knobs(base, rho), meta)
    images = jax.device_put(images)
    sigma_w = jnp.float32(sigma_w)
    history = []
    for s in range(num_steps):
        k = jax.random.fold_in(key, s)
        batch = sample_tasks(jax.random.fold_in(k, 0), images, norm, tasks_per_step, episode_shape)
        g_knobs, g_meta, metrics = gradient(
            state, batch, jax.random.fold_in(k, 1), base, sigma_w, policy, problem
        )
        row = {"step": s + 1, **metrics, "rho": float(jnp.exp(state.knobs.log_rho))}
        row.update(describe(device_params(state.knobs, base)))
        history.append(row)
        state = update(state, g_knobs, g_meta)
        if progress is not None:
            progress(s + 1, row)
    params = jax.device_get(device_params(state.knobs, base))
    try:
        device.validate(params)
    except errors.DeviceError as e:
        raise errors.DeviceError(f"the optimized device left the physical range: {e}") from e
    return Result(params, float(jnp.exp(state.knobs.log_rho)), state.meta, history)
