"""Co-design: gradients of ROA's post-write query loss with respect to the device (issue 14).

The loss is ROA's (MODEL.md 4): a meta-trained theta_0 programmed exactly onto crossbars, ONE
open-loop noisy write of the rho-scaled LSLR update of a task's support set, and the
cross-entropy of the task's queries on the written crossbars; averaged over tasks, each task
with its own noise draw. The device enters through the write only: programming is exact and
the read returns theta_0 whatever the device, so the support gradient does not depend on the
device, and the derivative of the query loss needs no second-order term of the network
(`maml.adapt(first_order=True)` is exact for the device).

Variables (`Knobs`), unconstrained, so that every value is a physical device:

    a+ = exp(log_a_plus), a- = exp(log_a_minus)   per-pulse rates of Eq. 1, set through
                                                  lambda and eta2 (open-loop levels ~ 2 / a)
    window = sigmoid(logit_window)                the state window g(w) of Eq. 1, in (0, 1)
    G_min = exp(log_g_min)                        through alpha (Eq. 3)
    G_max = G_min + exp(log_g_span)               through gamma, so G_min < G_max always
    rho = exp(log_rho)                            ROA's relative learning rate (not the device)

The noise law and scale stay the base device's: they describe the write (Eq. 7), not a knob
of device engineering.

Two gradient estimators of the same loss:
  - 'ste' (`task_gradients`): autodiff through `device.write`, whose pulse count is rounded
    with a straight-through gradient and whose noise is reparameterized (fixed normals);
  - 'fd' (`fd_gradients`): central differences of the EXACT write's loss in the knobs, with
    common random numbers (the same tasks and the same normals on both sides). The forward
    value of `device.write` is the exact write: the straight-through estimator changes
    gradients only.
The exact loss is piecewise smooth: with every pulse count fixed it is smooth in the rates,
the window and the noise, and it jumps where some device's count changes (a device that
starts receiving a pulse also starts receiving noise). The straight-through estimator replaces
the jumps by the derivative of a continuous count: the mean effect of the jumps where a
device's wanted change spans many steps, but not where most wanted changes are under half a
step and round to no write (ROA's updates on every device here); there it is biased, and
blind to the noise a newly written device gets. Averaged over ~1e5 devices per task and many
tasks the jumps are dense and small, so central differences over a few per cent of a knob are
the reference (`gradient_check`).

An invariant: the loss does not depend on G_min or on G_max - G_min. The crossbar maps weights
relative to (G_min, G_max) and subtracts the reference current (Eqs. 8-11), and every noise
law of Eq. 7 scales with the range, so the on/off ratio and the absolute conductances cancel
(their gradients are zero up to float32 rounding). They are knobs so that the sensitivity
shows this, and are held by default.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from roa_jax import batching, device, evaluation, maml, roa, writers
from roa_jax.data import episodes as episodes_lib


class Knobs(NamedTuple):
    """The co-design variables, unconstrained; each maps to a physical value."""

    log_a_plus: jax.Array  # shape=(), log of a+ (per SET pulse, dimensionless, Eq. 1)
    log_a_minus: jax.Array  # shape=(), log of a- (per RESET pulse)
    logit_window: jax.Array  # shape=(), logit of the state window in (0, 1)
    log_g_min: jax.Array  # shape=(), log of G_min / S
    log_g_span: jax.Array  # shape=(), log of (G_max - G_min) / S
    # Not a device knob: ROA tunes rho per noise level, and the best rho depends on the device
    # (a coarse device drops small updates), so the two are optimized together by default.
    log_rho: jax.Array  # shape=(), log of ROA's relative learning rate


# Short, physical names of the knobs (flags, tables), in the order of `Knobs`.
NAMES = ("a_plus", "a_minus", "window", "g_min", "g_span", "rho")
# The device knobs the loss depends on (see the invariant above), and rho.
DEFAULT_FREE = ("a_plus", "a_minus", "window", "rho")

# The window lives in [eps, 1 - eps] in knob space: the `paper` preset's window of exactly 1 is
# an infinite logit. 1 - 1e-3 changes its mid-range steps by 0.1 %.
_WINDOW_EPS = 1e-3


def check_base(params: device.DeviceParams) -> device.DeviceParams:
    """Raises ValueError unless `params` are scalar, valid and have v_set = -v_reset.

    The knobs set the rates through lambda and eta2 in closed form, which needs pulses of one
    amplitude in both polarities (every preset: +-1 V).
    """
    device.validate(params)
    p = jax.tree.map(np.asarray, params)
    if any(np.shape(x) != () for x in p):
        raise ValueError("co-design needs one device (scalar parameters), not per-device arrays.")
    if not np.isclose(p.v_set, -p.v_reset):
        raise ValueError(
            f"co-design needs v_set = -v_reset (the device has {float(p.v_set)} V and "
            f"{float(p.v_reset)} V): the rates are set through eta2 in closed form."
        )
    return params


def knobs(params: device.DeviceParams, rho=1.0) -> Knobs:
    """The knobs of a device (window clipped into [1e-3, 1 - 1e-3]) and of ROA's `rho`."""
    a_plus, a_minus = device.pulse_rates(params)
    g_min, g_max = device.conductance_range(params)
    window = jnp.clip(params.window, _WINDOW_EPS, 1.0 - _WINDOW_EPS)
    return Knobs(
        jnp.log(a_plus),
        jnp.log(a_minus),
        jnp.log(window) - jnp.log1p(-window),
        jnp.log(g_min),
        jnp.log(g_max - g_min),
        jnp.log(jnp.float32(rho)),
    )


def device_params(k: Knobs, base: device.DeviceParams) -> device.DeviceParams:
    """`base` with the rates, window and conductance range of `k` (differentiable in `k`).

    With V = v_set = -v_reset, a+ = lam t_p (e^(eta1 V) - e^(-eta2 V)) and a- = lam t_p
    (e^(eta2 V) - e^(-eta1 V)) (Eq. 1); eta2 = eta1 + ln(a-/a+) / V gives the ratio a-/a+ and
    lam then a+. eta2 stays > 0 (as `device.validate` wants) while a-/a+ > exp(-eta1 V)
    (0.05 for the presets). G_min and G_max are set through alpha and gamma (Eq. 3).
    """
    v = base.v_set
    eta2 = base.eta1 + (k.log_a_minus - k.log_a_plus) / v
    lam = jnp.exp(k.log_a_plus) / ((jnp.exp(base.eta1 * v) - jnp.exp(-eta2 * v)) * base.t_p)
    g_min = jnp.exp(k.log_g_min)
    g_max = g_min + jnp.exp(k.log_g_span)
    vr = base.v_read
    return base._replace(
        alpha=g_min * vr / -jnp.expm1(-base.beta * vr),
        gamma=g_max * vr / jnp.sinh(base.delta * vr),
        lam=lam,
        eta2=eta2,
        window=jax.nn.sigmoid(k.logit_window),
    )


def describe(params: device.DeviceParams) -> dict:
    """Physical summary of a device: rates, asymmetry, window, open-loop levels, G range.

    levels_up / levels_down: how many nominal (mid-range, open-loop) steps span the range,
    G_max - G_min over the one-pulse change at w = 0.5; one step is 2 / levels in weight
    units (W in [-1, 1]).
    """
    a_plus, a_minus = device.pulse_rates(params)
    g_min, g_max = device.conductance_range(params)
    step_up, step_down = device.nominal_steps(params)
    span = g_max - g_min
    values = dict(
        a_plus=a_plus,
        a_minus=a_minus,
        asymmetry=a_minus / a_plus,
        window=params.window,
        levels_up=span / step_up,
        levels_down=span / step_down,
        g_min=g_min,
        g_max=g_max,
        on_off=g_max / g_min,
    )
    return {name: float(x) for name, x in values.items()}


# The loss and its gradients, per task.


def _one_write(k: Knobs, meta, key, episode, base, sigma_w, policy, model):
    """(query loss, query accuracy) of one task after ROA's one write on the device of `k`."""
    hw = writers.Hardware(device_params(k, base), sigma_w, policy)
    rho = jnp.exp(k.log_rho)
    result = maml.adapt(key, model, meta, episode, 1, writers.crossbars(hw), rho, first_order=True)
    return result.loss[-1], result.accuracy[-1]


def _one_gradient(k: Knobs, meta, key, episode, base, sigma_w, policy, model, joint):
    """(loss, accuracy, d loss / d knobs, d loss / d meta or None) of one task."""
    fn = lambda kn, m: _one_write(kn, m, key, episode, base, sigma_w, policy, model)
    (loss, acc), grads = jax.value_and_grad(fn, (0, 1) if joint else 0, has_aux=True)(k, meta)
    g_knobs, g_meta = grads if joint else (grads, None)
    return loss, acc, g_knobs, g_meta


_one_write_jit = jax.jit(_one_write, static_argnames="model")
_one_gradient_jit = jax.jit(_one_gradient, static_argnames=("model", "joint"))


@functools.partial(jax.jit, static_argnames=("fn", "strategy", "static"))
def _batched(k, meta, keys, episodes, args, *, fn, strategy, static):
    one = lambda kk, ep: fn(k, meta, kk, ep, *args, *static)
    return batching.map_tasks(one, keys, episodes, strategy=strategy)


def _over_tasks(fn, fn_jit, static, k, meta, key, episodes, args, strategy):
    """fn on every task (noise keys as roa.adapt_tasks), results stacked on a leading axis.

    'loop' (the 'auto' choice on XLA:CPU, as `batching.default_grid_strategy`) is a Python
    loop of one-task programs: one program over 8 conv4-64 tasks ('unroll') took 5.8 min to
    compile on the loaded 2-core machine and ran no faster, and under `lax.map` ('map') the
    gradient ran 8x slower. The other strategies are one batched program.
    """
    strategy = batching.default_grid_strategy() if strategy == "auto" else strategy
    keys = jax.random.split(key, episodes.query_y.shape[0])
    if strategy != "loop":
        return _batched(k, meta, keys, episodes, args, fn=fn, strategy=strategy, static=static)
    outs = [
        fn_jit(k, meta, keys[i], jax.tree.map(lambda x, i=i: x[i], episodes), *args, *static)
        for i in range(keys.shape[0])
    ]
    return jax.tree.map(lambda *x: jnp.stack(x), *outs)


def task_losses(k: Knobs, meta, key, episodes, base, sigma_w, policy, model, strategy="auto"):
    """Per-task (query loss [T], accuracy [T]) after the exact write on the device of `k`.

    Args:
      k: the knobs: the device (the rest of it from `base`) and rho.
      meta: meta-parameters (theta_0, LSLR).
      key: PRNG key; task t's write noise from `jax.random.split(key, T)[t]`, as in
        `roa.adapt_tasks`, so the accuracies are that function's on the same device.
      episodes: a batch of tasks (leading axis T).
      base: device parameters that the knobs leave unchanged (noise law, voltages, ...).
      sigma_w: write noise (Eq. 7), traced.
      policy: pulse policy (`device.open_loop()` for ROA).
      model: the network (static).
      strategy: 'auto', 'loop' (one-task programs), or a `batching.map_tasks` strategy.
    """
    args = (base, sigma_w, policy)
    return _over_tasks(_one_write, _one_write_jit, (model,), k, meta, key, episodes, args, strategy)


def task_gradients(
    k: Knobs, meta, key, episodes, base, sigma_w, policy, model, joint=False, strategy="auto"
):
    """Straight-through gradients per task (arguments as `task_losses`).

    Returns:
      (loss [T], accuracy [T], Knobs of d loss_t / d knob [T], meta-shaped d loss_t / d meta
      [T, ...] when `joint`, else None).
    """
    args = (base, sigma_w, policy)
    return _over_tasks(
        _one_gradient, _one_gradient_jit, (model, joint), k, meta, key, episodes, args, strategy
    )


def shifted(k: Knobs, name: str, h) -> Knobs:
    """`k` with knob `name` (one of NAMES) moved by `h` in knob units."""
    field = Knobs._fields[NAMES.index(name)]
    return k._replace(**{field: getattr(k, field) + h})


def fd_gradients(
    k: Knobs,
    meta,
    key,
    episodes,
    base,
    sigma_w,
    policy,
    model,
    names: Sequence[str] = NAMES,
    step: float = 0.05,
    strategy: str = "auto",
) -> dict:
    """Central differences of the exact loss per task: {name: [T] slopes in knob units}.

    (loss(k + step e) - loss(k - step e)) / (2 step) for each named knob, with the same tasks
    and noise normals on both sides (common random numbers).
    """
    out = {}
    for name in names:
        up, down = (
            task_losses(
                shifted(k, name, h), meta, key, episodes, base, sigma_w, policy, model, strategy
            )[0]
            for h in (step, -step)
        )
        out[name] = (up - down) / (2 * step)
    return out


# Optimization over the device and rho (optionally jointly with theta_0).


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
    # 'ste' is biased for the rates and rho (module docstring; BUILD_NOTES "Co-design").
    estimator: str = "fd"
    fd_step: float = 0.1  # central-difference step in knob units ('fd')
    constraint_k: float = 4.0  # ROA constraint on theta_0 when joint (Eqs. 17-18)
    constraint_lambda: float = 0.1
    strategy: str = "auto"  # tasks of a step, see `task_losses`


ESTIMATORS = ("ste", "fd")


def check_problem(problem: Problem) -> Problem:
    """Raises ValueError naming a bad knob name, estimator or step."""
    if not problem.free and not problem.joint:
        raise ValueError("free is empty and joint is off: nothing to optimize.")
    unknown = sorted(set(problem.free) - set(NAMES))
    if unknown:
        raise ValueError(f"free={','.join(problem.free)}: {unknown} are not among {NAMES}.")
    if problem.estimator not in ESTIMATORS:
        raise ValueError(f"estimator={problem.estimator!r} is not one of {ESTIMATORS}.")
    if not (math.isfinite(problem.fd_step) and problem.fd_step > 0):
        raise ValueError(f"fd_step={problem.fd_step} must be finite and > 0.")
    return problem


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


class Result(NamedTuple):
    """What `optimize` returns."""

    params: device.DeviceParams  # the device found
    rho: float  # ROA's rho found (the start's where rho is held)
    meta: maml.MetaParams  # theta_0 and LSLR (changed only when joint)
    history: list  # per step: {'step', 'loss', 'accuracy', grad_<knob>, 'rho', `describe`}


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
      `Result`; `params` pass `device.validate` (else a ValueError naming what left the
      physical range).
    """
    check_problem(problem)
    check_base(base)
    policy = device.open_loop() if policy is None else policy
    knob_opt = optax.adam(optax.cosine_decay_schedule(lr, num_steps, alpha=0.1))
    meta_opt = optax.adam(optax.cosine_decay_schedule(meta_lr, num_steps, alpha=0.1))

    @jax.jit
    def apply(state: State, g_knobs, g_meta):
        updates, opt_knobs = knob_opt.update(g_knobs, state.opt_knobs, state.knobs)
        k = optax.apply_updates(state.knobs, updates)
        meta, opt_meta = state.meta, state.opt_meta
        if g_meta is not None:
            updates, opt_meta = meta_opt.update(g_meta, opt_meta, meta)
            meta = optax.apply_updates(meta, updates)
        return State(k, meta, opt_knobs, opt_meta, state.step + 1)

    k0 = knobs(base, rho)
    state = State(k0, meta, knob_opt.init(k0), meta_opt.init(meta), jnp.int32(0))
    sample = jax.jit(episodes_lib.sample_episodes, static_argnums=(2, 3, 4, 5))
    mean, std = (jnp.asarray(x, jnp.float32) for x in norm)
    images = jax.device_put(images)
    sigma_w = jnp.float32(sigma_w)
    history = []
    for s in range(num_steps):
        k = jax.random.fold_in(key, s)
        batch = sample(jax.random.fold_in(k, 0), images, tasks_per_step, *episode_shape, mean, std)
        g_knobs, g_meta, metrics = gradient(
            state, batch, jax.random.fold_in(k, 1), base, sigma_w, policy, problem
        )
        row = {"step": s + 1, **metrics, "rho": float(jnp.exp(state.knobs.log_rho))}
        row.update(describe(device_params(state.knobs, base)))
        history.append(row)
        state = apply(state, g_knobs, None if g_meta is None else g_meta)
        if progress is not None:
            progress(s + 1, row)
    params = jax.device_get(device_params(state.knobs, base))
    try:
        device.validate(params)
    except ValueError as e:
        raise ValueError(f"the optimized device left the physical range: {e}") from e
    return Result(params, float(jnp.exp(state.knobs.log_rho)), state.meta, history)


# Reports: sensitivity lines and the gradient check.


class Direction(NamedTuple):
    """A line through the start in knob space, `at(k0, t)`, and how to show its points."""

    name: str
    at: Callable[[Knobs, jax.Array], Knobs]  # (start, t) -> knobs; at(k0, 0) = k0
    offsets: tuple  # the t values (0 is the start)
    label: str  # x-axis label


def _log_rate_for_step(step, window):
    """log a whose one pulse moves w = 1/2 by `step` (state units) at `window` (Eq. 1).

    Inverts step = (1/s - 1/2)(1 - exp(-a s)) of `device.pulse_increment` for s = window.
    """
    return jnp.log(-jnp.log1p(-step * window / (1.0 - 0.5 * window)) / window)


def _mid_steps(k: Knobs):
    """One-pulse state changes at w = 1/2 (up, down) of knobs `k` (the open-loop steps)."""
    s = jax.nn.sigmoid(k.logit_window)
    step = lambda log_a: (1.0 / s - 0.5) * -jnp.expm1(-jnp.exp(log_a) * s)
    return step(k.log_a_plus), step(k.log_a_minus)


def directions(base: device.DeviceParams) -> list[Direction]:
    """The default sensitivity lines around `base` [chosen].

    'levels' divides both rates by f (about f times the open-loop levels; t = ln f, f from
    1/4 to 10); 'a_plus', 'a_minus', 'rho' multiply one by e^t (t in [-1, 1]); 'window'
    moves the window through 0.01 ... 0.999 at fixed rates, which also changes the mid-range
    step; 'window_at_levels' does so with the rates adjusted to keep both mid-range steps
    (the nonlinearity alone); 'g_min', 'g_span' multiply by e^-1 and e (the invariant).
    """
    move = lambda name: lambda k, t: shifted(k, name, t)

    def levels(k, t):
        return shifted(shifted(k, "a_plus", -t), "a_minus", -t)

    def window_at_levels(k, t):
        up, down = _mid_steps(k)
        moved = shifted(k, "window", t)
        s = jax.nn.sigmoid(moved.logit_window)
        return moved._replace(
            log_a_plus=_log_rate_for_step(up, s), log_a_minus=_log_rate_for_step(down, s)
        )

    w0 = float(jax.nn.sigmoid(knobs(base).logit_window))
    logit = lambda w: math.log(w) - math.log1p(-w)
    windows = tuple(
        sorted({round(logit(w) - logit(w0), 6) for w in (0.01, 0.25, 0.5, 0.75, 0.9, 0.99, w0)})
    )
    logs = (-1.0, -0.5, 0.0, 0.5, 1.0)
    return [
        Direction(
            "levels",
            levels,
            tuple(math.log(f) for f in (0.25, 0.5, 1.0, 2.0, 4.0, 10.0)),
            "open-loop levels / start's (both rates / f)",
        ),
        Direction("a_plus", move("a_plus"), logs, "a+ (per SET pulse)"),
        Direction("a_minus", move("a_minus"), logs, "a- (per RESET pulse)"),
        Direction("window", move("window"), windows, "state window (rates fixed)"),
        Direction(
            "window_at_levels", window_at_levels, windows, "state window (mid-range steps fixed)"
        ),
        Direction("rho", move("rho"), logs, "rho"),
        Direction("g_min", move("g_min"), (-1.0, 0.0, 1.0), "G_min (S)"),
        Direction("g_span", move("g_span"), (-1.0, 0.0, 1.0), "G_max - G_min (S)"),
    ]


def physical_value(k: Knobs, d: Direction, k0: Knobs) -> float:
    """What the x axis of direction `d` shows at knobs `k`."""
    if d.name == "levels":
        return float(jnp.exp(k0.log_a_plus - k.log_a_plus))
    if d.name.startswith("window"):
        return float(jax.nn.sigmoid(k.logit_window))
    return float(jnp.exp(getattr(k, Knobs._fields[NAMES.index(d.name)])))


def directional(grad: Knobs, d: Direction, k0: Knobs, t):
    """d loss / d t along `d` at t, from the knob gradient (per task where leaves are [T])."""
    _, tangent = jax.jvp(lambda u: d.at(k0, u), (jnp.float32(t),), (jnp.float32(1.0),))
    return sum(g * u for g, u in zip(grad, tangent, strict=True))


def mean_ci(x) -> tuple[float, float]:
    """(mean, half-width of the 95 % normal confidence interval) of samples `x`."""
    x = np.asarray(x, np.float64).ravel()
    ci = 1.96 * np.std(x, ddof=1) / np.sqrt(x.size) if x.size > 1 else float("nan")
    return float(np.mean(x)), float(ci)


def _stats(name, x) -> dict:
    mean, ci = mean_ci(x)
    return {name: mean, f"{name}_ci": ci}


def sensitivity(
    key,
    k0: Knobs,
    meta,
    episodes,
    base,
    sigma_w,
    policy,
    model,
    dirs,
    strategy="auto",
    progress=None,
) -> list[dict]:
    """Loss, accuracy and the straight-through derivative along each direction around `k0`.

    Every point sees the same tasks and noise normals (common random numbers), so the slope
    between neighbouring points is a finite difference of the exact loss, to set beside the
    derivative. One row per (direction, offset): direction, offset, value (physical), loss,
    accuracy and grad_ste (d loss / d offset), each with a 95 % CI over tasks (`_ci`).
    """
    cache, rows = {}, []
    total = sum(len(d.offsets) for d in dirs)
    for d in dirs:
        for t in d.offsets:
            k = d.at(k0, jnp.float32(t))
            where = tuple(round(float(x), 6) for x in k)
            if where not in cache:
                cache[where] = task_gradients(
                    k, meta, key, episodes, base, sigma_w, policy, model, False, strategy
                )[:3]
            loss, acc, grad = cache[where]
            rows.append(
                dict(
                    direction=d.name,
                    offset=float(t),
                    value=physical_value(k, d, k0),
                    **_stats("loss", loss),
                    **_stats("accuracy", acc),
                    **_stats("grad_ste", directional(grad, d, k0, t)),
                )
            )
            if progress is not None:
                progress(len(rows), total)
    return rows


def gradient_check(
    key,
    k: Knobs,
    meta,
    episodes,
    base,
    sigma_w,
    policy,
    model,
    names=NAMES,
    step=0.05,
    strategy="auto",
) -> list[dict]:
    """The straight-through gradient beside central differences of the exact loss, per knob.

    One row per knob: both task means with 95 % CIs over tasks, and the per-task paired
    difference (ste - fd) with its CI; where that CI excludes 0 the straight-through gradient
    is biased for the expected loss (up to the O(step^2) error of the difference).
    """
    loss, _, grad, _ = task_gradients(
        k, meta, key, episodes, base, sigma_w, policy, model, False, strategy
    )
    slopes = fd_gradients(
        k, meta, key, episodes, base, sigma_w, policy, model, names, step, strategy
    )
    rows = []
    for name in names:
        ste, fd = np.asarray(grad[NAMES.index(name)]), np.asarray(slopes[name])
        rows.append(
            dict(
                knob=name,
                loss=float(np.mean(loss)),
                **_stats("ste", ste),
                **_stats("fd", fd),
                **_stats("diff", ste - fd),
                tasks=int(ste.size),
            )
        )
    return rows


def write_csv(path, rows: list[dict]) -> None:
    """Rows of dicts as a CSV (the union of their keys, in first-seen order)."""
    fields = list(dict.fromkeys(f for row in rows for f in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


# The study of experiments/codesign.py: rho of the preset, gradient check, sensitivity,
# optimization per noise level, and the found devices on test tasks.

PARTS = ("check", "sensitivity", "optimize")


class Study(NamedTuple):
    """What experiments/codesign.py runs; each field is the flag of the same name."""

    sigma_w: tuple  # write-noise levels; one optimization each
    rhos: tuple  # the preset's rho is chosen among these on validation tasks (ROA's protocol)
    parts: tuple = PARTS  # which of PARTS to run (the rho choice always runs)
    val_tasks: int = 50  # validation tasks of the preset's rho choice
    test_tasks: int = 200  # test tasks of the final comparison (one repeat)
    check_tasks: int = 24  # validation tasks of the gradient check
    check_granularity: float = 1000.0  # second device of the check: the preset this much
    #   finer (0: none)
    sensitivity_tasks: int = 12  # validation tasks of the sensitivity lines
    steps: int = 60  # optimizer steps per noise level
    tasks_per_step: int = 12  # validation tasks per step (fresh every step)
    lr: float = 0.1  # adam step in knob units
    meta_lr: float = 1e-4  # adam step of theta_0 (joint)
    seed: int = 0
    chunk: int = 8  # tasks per compiled call of the evaluation sweeps


def check_study(study: Study) -> Study:
    """Raises ValueError naming the flag that is out of range."""
    if not all(math.isfinite(s) and s >= 0 for s in study.sigma_w):
        raise ValueError(f"--sigma_w={','.join(map(str, study.sigma_w))}: each must be >= 0.")
    if not study.sigma_w:
        raise ValueError("--sigma_w must name at least one noise level.")
    if not study.rhos or not all(math.isfinite(r) and r > 0 for r in study.rhos):
        raise ValueError(f"--rhos={','.join(map(str, study.rhos))}: each must be finite, > 0.")
    unknown = sorted(set(study.parts) - set(PARTS))
    if unknown:
        raise ValueError(f"--parts: {unknown} are not among {PARTS}.")
    for name in ("val_tasks", "test_tasks", "check_tasks", "sensitivity_tasks", "steps"):
        if getattr(study, name) < 1:
            raise ValueError(f"--{name}={getattr(study, name)} must be >= 1.")
    if study.tasks_per_step < 2:
        raise ValueError(f"--tasks_per_step={study.tasks_per_step} must be >= 2.")
    if not study.check_granularity >= 0:
        raise ValueError(f"--check_granularity={study.check_granularity} must be >= 0.")
    for name in ("lr", "meta_lr"):
        value = getattr(study, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name}={value} must be finite and > 0.")
    return study


def _sample(key, images, num, cfg, norm):
    mean, std = (jnp.asarray(x, jnp.float32) for x in norm)
    sample = jax.jit(episodes_lib.sample_episodes, static_argnums=(2, 3, 4, 5))
    return sample(key, images, num, cfg.n_way, cfg.k_shot, cfg.n_query, mean, std)


def run_study(
    study: Study,
    problem: Problem,
    cfg,
    meta: maml.MetaParams,
    splits: dict,
    norm,
    base: device.DeviceParams,
    out_dir,
    log=print,
) -> dict:
    """Runs the study and writes its files to `out_dir`; returns the results (results.json).

    Tasks: the preset's rho is chosen on validation tasks from fold_in(PRNGKey(seed), 0) (as
    `comparison.evaluate`), the check and the sensitivity use validation tasks from fold_in(.,
    2), the optimization fresh validation tasks from fold_in(., 3) (training tasks when
    joint: theta_0 must not learn the validation classes), and the final comparison test tasks
    from fold_in(., 1), the same tasks and noise normals for every device (common random
    numbers, so differences are paired per task).
    """
    out = pathlib.Path(out_dir)
    (out / "devices").mkdir(parents=True, exist_ok=True)
    root = jax.random.PRNGKey(study.seed)
    policy = device.pulse_policy(cfg.pulse_policy)
    val = jax.device_put(splits["val"])
    setting = evaluation.Setting(
        "adapt", problem.model, cfg.n_way, cfg.k_shot, cfg.n_query, 1, study.chunk
    )
    seconds = {}
    results = {"study": study._asdict(), "problem": problem._replace(model=None)._asdict()}
    results["base"] = describe(base)

    # 1. ROA's rho for the preset, per noise level, on validation tasks.
    t0 = time.time()
    grid = evaluation.make_grid(study.sigma_w, study.rhos, [0])
    acc = evaluation.sweep(
        jax.random.fold_in(root, 0),
        meta,
        val,
        norm,
        evaluation.stack([base]),
        grid,
        study.val_tasks,
        setting,
        policy,
    )
    rho_rows = evaluation.summarize(acc, grid)
    rho_val = evaluation.best_rho(rho_rows)
    write_csv(
        out / "rho_val.csv",
        [{k: r[k] for k in ("sigma_w", "rho", "accuracy", "ci95")} for r in rho_rows],
    )
    results["preset_rho"] = {str(s): r for s, r in rho_val.items()}
    seconds["rho"] = time.time() - t0
    log(f"preset rho on validation: {rho_val} ({seconds['rho']:.0f} s)")

    check_key = jax.random.fold_in(root, 2)
    if "check" in study.parts:
        t0 = time.time()
        episodes = _sample(check_key, val, study.check_tasks, cfg, norm)
        devices = {"preset": base}
        if study.check_granularity > 0:
            devices[f"{study.check_granularity:g}x finer"] = device.with_granularity(
                base, study.check_granularity
            )
        rows = []
        for label, params in devices.items():
            for s in study.sigma_w:
                k = knobs(params, rho_val[float(np.float32(s))])
                for row in gradient_check(
                    jax.random.fold_in(check_key, 1),
                    k,
                    meta,
                    episodes,
                    params,
                    jnp.float32(s),
                    policy,
                    problem.model,
                    DEFAULT_FREE,
                    problem.fd_step,
                    problem.strategy,
                ):
                    rows.append({"device": label, "sigma_w": s, **row})
        write_csv(out / "gradient_check.csv", rows)
        (out / "gradient_check.md").write_text(check_markdown(rows, problem.fd_step))
        seconds["check"] = time.time() - t0
        log(f"gradient check: {len(rows)} rows ({seconds['check']:.0f} s)")

    if "sensitivity" in study.parts:
        t0 = time.time()
        episodes = _sample(check_key, val, study.sensitivity_tasks, cfg, norm)
        rows = []
        for s in study.sigma_w:
            k0 = knobs(base, rho_val[float(np.float32(s))])
            for row in sensitivity(
                jax.random.fold_in(check_key, 1),
                k0,
                meta,
                episodes,
                base,
                jnp.float32(s),
                policy,
                problem.model,
                directions(base),
                problem.strategy,
            ):
                rows.append({"sigma_w": s, **row})
            log(f"sensitivity at sigma_w={s} done ({time.time() - t0:.0f} s)")
        write_csv(out / "sensitivity.csv", rows)
        plot_sensitivity(rows, directions(base), out / "sensitivity.png")
        seconds["sensitivity"] = time.time() - t0

    if "optimize" in study.parts:
        t0 = time.time()
        images = splits["train"] if problem.joint else splits["val"]
        shape = (cfg.n_way, cfg.k_shot, cfg.n_query)
        # The baseline that separates the device's share of a gain from rho's: the preset
        # with rho alone optimized, on the same tasks.
        rho_only = "rho" in problem.free and set(problem.free) != {"rho"} and not problem.joint

        def run(s, prob, label):
            start = time.time()

            def progress(i, row):
                if i % 10 == 0 or i == 1:
                    log(
                        f"{label} sigma_w={s:g} step {i}: loss {row['loss']:.3f} acc "
                        f"{row['accuracy']:.3f} rho {row['rho']:.3g} levels "
                        f"{row['levels_up']:.1f}/{row['levels_down']:.1f} window "
                        f"{row['window']:.4f}"
                    )

            key = jax.random.fold_in(jax.random.fold_in(root, 3), int(round(1000 * s)))
            result = optimize(
                key,
                base,
                rho_val[float(np.float32(s))],
                meta,
                images,
                norm,
                shape,
                s,
                prob,
                study.steps,
                study.tasks_per_step,
                study.lr,
                study.meta_lr,
                policy,
                progress,
            )
            log(f"{label} sigma_w={s:g}: optimized in {time.time() - start:.0f} s")
            return result

        found, tuned, history = {}, {}, []
        for s in study.sigma_w:
            found[s] = run(s, problem, "device")
            history += [{"sigma_w": s, **row} for row in found[s].history]
            device.save_params(out / "devices" / f"found_sigma{s:g}.json", found[s].params)
            if rho_only:
                tuned[s] = run(s, problem._replace(free=("rho",)), "rho only").rho
        write_csv(out / "optimization.csv", history)
        plot_optimization(history, out / "optimization.png")
        seconds["optimize"] = time.time() - t0

        # The found devices beside the preset on test tasks, with the exact write: one sweep
        # per theta_0 (one in all unless joint), the same tasks and noise for every point.
        t0 = time.time()
        test = jax.device_put(splits["test"])
        stacked = evaluation.stack([base] + [found[s].params for s in study.sigma_w])
        # (theta_0's sigma_w or None for the trained one, device index, sigma_w, rho)
        points = []
        for s in study.sigma_w:
            points.append((None, 0, s, rho_val[float(np.float32(s))]))
            if rho_only:
                points.append((None, 0, s, tuned[s]))
            for j, f in enumerate(study.sigma_w, 1):
                if f == s or not problem.joint:
                    points.append((f if problem.joint else None, j, s, found[f].rho))
        acc = {}
        for theta in dict.fromkeys(p[0] for p in points):
            mine = [p for p in points if p[0] == theta]
            grid = evaluation.Grid(
                np.int32([p[1] for p in mine]),
                np.float32([p[2] for p in mine]),
                np.float32([p[3] for p in mine]),
                np.zeros(len(mine), np.int32),
            )
            use = meta if theta is None else found[theta].meta
            out_acc = evaluation.sweep(
                jax.random.fold_in(root, 1),
                use,
                test,
                norm,
                stacked,
                grid,
                study.test_tasks,
                setting,
                policy,
            )
            acc.update(dict(zip(mine, out_acc, strict=True)))
        rows = []
        for s in study.sigma_w:
            preset = acc[(None, 0, s, rho_val[float(np.float32(s))])]
            baseline = acc[(None, 0, s, tuned[s])] if rho_only else None
            for j, f in enumerate(study.sigma_w, 1):
                key = (f if problem.joint else None, j, s, found[f].rho)
                if key in acc:
                    rows.append(
                        _compare_row(f, s, preset, baseline, acc[key], rho_val, tuned, found[f])
                    )
        seconds["test"] = time.time() - t0
        results["comparison"] = rows
        results["found"] = {str(s): {"rho": r.rho, **describe(r.params)} for s, r in found.items()}
        (out / "comparison.md").write_text(comparison_markdown(results))
        log((out / "comparison.md").read_text())
    results["seconds"] = seconds
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return results


def _compare_row(optimized_at, sigma_w, preset_acc, tuned_acc, found_acc, rho_val, tuned, result):
    """One row of the comparison: per-task accuracies [T] of the three, gains paired."""
    row = dict(
        optimized_at=float(optimized_at),
        sigma_w=float(sigma_w),
        preset_rho=rho_val[float(np.float32(sigma_w))],
        **_stats("preset", preset_acc),
        found_rho=result.rho,
        **_stats("found", found_acc),
        **_stats("gain", np.asarray(found_acc) - np.asarray(preset_acc)),
        tasks=int(np.size(found_acc)),
    )
    if tuned_acc is not None:
        row.update(
            preset_tuned_rho=tuned[sigma_w],
            **_stats("preset_tuned", tuned_acc),
            **_stats("gain_over_tuned", np.asarray(found_acc) - np.asarray(tuned_acc)),
        )
    return row


def check_markdown(rows: list[dict], step: float) -> str:
    """The gradient check as a table: straight-through vs central differences per knob."""
    lines = [
        "Gradient check: d(query loss after ROA's one write)/d(knob), straight-through (ste) "
        f"vs central differences (fd, step {step:g} in knob units) of the exact write, with "
        "common random numbers; mean +- 95 % CI over tasks, and the paired difference "
        "(**bold**: its CI excludes 0, i.e. ste is biased there). Knobs: log a+, log a-, "
        "logit window, log rho.",
        "",
        "| device | sigma_w | knob | loss | ste | fd | ste - fd |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{r['diff']:+.3g} +- {r['diff_ci']:.2g}"
        if abs(r["diff"]) > r["diff_ci"]:
            diff = f"**{diff}**"
        lines.append(
            f"| {r['device']} | {r['sigma_w']:g} | {r['knob']} | {r['loss']:.3f} | "
            f"{r['ste']:+.3g} +- {r['ste_ci']:.2g} | {r['fd']:+.3g} +- {r['fd_ci']:.2g} | "
            f"{diff} |"
        )
    return "\n".join(lines) + "\n"


def comparison_markdown(results: dict) -> str:
    """The found devices against the preset on test tasks, and what changed."""
    rows = results["comparison"]
    tuned = "preset_tuned" in rows[0]
    pct = lambda r, name: f"{100 * r[name]:.1f} +- {100 * r[name + '_ci']:.1f}"
    gain = lambda r, name: f"{100 * r[name]:+.1f} +- {100 * r[name + '_ci']:.1f}"
    lines = [
        "Test accuracy (%) after ROA's one write: the preset at the rho ROA picks on "
        "validation, "
        + ("the preset with rho alone optimized, " if tuned else "")
        + "and the device (with rho) optimized at each sigma_w; mean +- 95 % CI over "
        f"{rows[0]['tasks']} test tasks (one set, common to every column), gains paired per "
        "task.",
        "",
        "| found at | evaluated at | preset (rho) | "
        + ("preset, rho tuned (rho) | " if tuned else "")
        + "found (rho) | gain |"
        + (" gain over rho-tuned |" if tuned else ""),
        "|---|---|---|---|---|" + ("---|---|" if tuned else ""),
    ]
    for r in rows:
        line = f"| {r['optimized_at']:g} | {r['sigma_w']:g} | "
        line += f"{pct(r, 'preset')} ({r['preset_rho']:g}) | "
        if tuned:
            line += f"{pct(r, 'preset_tuned')} ({r['preset_tuned_rho']:.2f}) | "
        line += f"{pct(r, 'found')} ({r['found_rho']:.2f}) | {gain(r, 'gain')} |"
        if tuned:
            line += f" {gain(r, 'gain_over_tuned')} |"
        lines.append(line)
    base = results["base"]
    lines += [
        "",
        "| device | rho | a+ | a- | a-/a+ | levels up / down | window |",
        "|---|---|---|---|---|---|---|",
        f"| preset | (val) | {base['a_plus']:.4f} | {base['a_minus']:.4f} | "
        f"{base['asymmetry']:.3f} | {base['levels_up']:.1f} / {base['levels_down']:.1f} | "
        f"{base['window']:.4f} |",
    ]
    for s, f in results["found"].items():
        lines.append(
            f"| found at sigma_w={float(s):g} | {f['rho']:.2f} | {f['a_plus']:.4f} | "
            f"{f['a_minus']:.4f} | {f['asymmetry']:.3f} | {f['levels_up']:.1f} / "
            f"{f['levels_down']:.1f} | {f['window']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot_sensitivity(rows: list[dict], dirs: list[Direction], path) -> None:
    """Accuracy (left) and loss with straight-through tangents (right) along each line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted({r["sigma_w"] for r in rows})
    fig, axes = plt.subplots(len(dirs), 2, figsize=(11, 2.6 * len(dirs)), squeeze=False)
    for i, d in enumerate(dirs):
        for s, color in zip(sigmas, plt.cm.viridis(np.linspace(0, 0.85, len(sigmas))), strict=True):
            line = sorted(
                (r for r in rows if r["direction"] == d.name and r["sigma_w"] == s),
                key=lambda r: r["offset"],
            )
            if not line:
                continue
            t = np.array([r["offset"] for r in line])
            acc = np.array([r["accuracy"] for r in line])
            loss = np.array([r["loss"] for r in line])
            axes[i, 0].plot(t, 100 * acc, "o-", color=color, label=f"sigma_w={s:g}")
            axes[i, 1].plot(t, loss, "o-", color=color)
            half = 0.15 * (t.max() - t.min())
            for tj, lj, r in zip(t, loss, line, strict=True):
                g = r["grad_ste"]
                axes[i, 1].plot(
                    [tj - half, tj + half],
                    [lj - g * half, lj + g * half],
                    "-",
                    color="crimson",
                    lw=1,
                )
            for ax in axes[i]:
                ax.axvline(0.0, color="gray", lw=0.5)
                ax.set_xticks(t, [f"{r['value']:.3g}" for r in line], fontsize=7)
        for ax in axes[i]:  # a flat line (the G range) at its scale, not float32 rounding's
            ax.ticklabel_format(axis="y", useOffset=False)
            low, high = ax.get_ylim()
            if high - low < 1e-3 * max(abs(low), abs(high)):
                mid = (low + high) / 2
                ax.set_ylim(mid - 0.05 * abs(mid), mid + 0.05 * abs(mid))
        axes[i, 0].set_ylabel(f"{d.name}\naccuracy (%)")
        axes[i, 1].set_ylabel("query loss")
        for ax in axes[i]:
            ax.set_xlabel(d.label, fontsize=8)
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].set_title("loss; red: straight-through slope at each point", fontsize=9)
    axes[0, 0].set_title("validation accuracy (exact write)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_optimization(history: list[dict], path) -> None:
    """Loss, accuracy and the device's levels, asymmetry, window and rho per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("loss", "query loss (batch)"),
        ("accuracy", "accuracy (batch)"),
        ("levels_up", "levels up"),
        ("levels_down", "levels down"),
        ("asymmetry", "a- / a+"),
        ("window", "window"),
        ("rho", "rho"),
    ]
    sigmas = sorted({r["sigma_w"] for r in history})
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3))
    for s, color in zip(sigmas, plt.cm.viridis(np.linspace(0, 0.85, len(sigmas))), strict=True):
        rows = [r for r in history if r["sigma_w"] == s]
        steps = [r["step"] for r in rows]
        for ax, (key, label) in zip(axes, panels, strict=True):
            y = np.array([r[key] for r in rows])
            if key in ("loss", "accuracy") and len(y) >= 5:  # and a 5-step running mean
                ax.plot(steps, y, color=color, alpha=0.25)
                y, steps_ = np.convolve(y, np.ones(5) / 5, mode="valid"), steps[2:-2]
            else:
                steps_ = steps
            ax.plot(steps_, y, color=color, label=f"sigma_w={s:g}")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
