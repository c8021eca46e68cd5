"""What the loss looks like around a device: sensitivity lines and the gradient check.

Both hold the tasks and the noise normals fixed (common random numbers), so differences
between points are differences of the exact loss, and report task means with 95 % CIs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from roa_jax import device
from roa_jax.codesign.estimators import fd_gradients, task_gradients
from roa_jax.codesign.parameterization import NAMES, Knobs, knobs, shifted


def mean_ci(x) -> tuple[float, float]:
    """(mean, half-width of the 95 % normal confidence interval) of samples `x`."""
    x = np.asarray(x, np.float64).ravel()
    ci = 1.96 * np.std(x, ddof=1) / np.sqrt(x.size) if x.size > 1 else float("nan")
    return float(np.mean(x)), float(ci)


def mean_ci_fields(name: str, x) -> dict:
    """{name: mean, name_ci: 95 % CI half-width} of samples `x`, for a row."""
    mean, ci = mean_ci(x)
    return {name: mean, f"{name}_ci": ci}


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


def _levels(k: Knobs, t) -> Knobs:
    """Both rates divided by e^t: about e^t times the open-loop levels."""
    return shifted(shifted(k, "a_plus", -t), "a_minus", -t)


def _window_at_levels(k: Knobs, t) -> Knobs:
    """The window moved by t (logit), the rates adjusted to keep both mid-range steps."""
    up, down = _mid_steps(k)
    moved = shifted(k, "window", t)
    s = jax.nn.sigmoid(moved.logit_window)
    return moved._replace(
        log_a_plus=_log_rate_for_step(up, s), log_a_minus=_log_rate_for_step(down, s)
    )


def directions(base: device.DeviceParams) -> list[Direction]:
    """The default sensitivity lines around `base` [chosen].

    'levels' divides both rates by f (about f times the open-loop levels; t = ln f, f from
    1/4 to 10); 'a_plus', 'a_minus', 'rho' multiply one by e^t (t in [-1, 1]); 'window'
    moves the window through 0.01 ... 0.999 at fixed rates, which also changes the mid-range
    step; 'window_at_levels' does so with the rates adjusted to keep both mid-range steps
    (the nonlinearity alone); 'g_min', 'g_span' multiply by e^-1 and e (the invariant).
    """
    move = lambda name: lambda k, t: shifted(k, name, t)
    w0 = float(jax.nn.sigmoid(knobs(base).logit_window))
    logit = lambda w: math.log(w) - math.log1p(-w)
    windows = tuple(
        sorted({round(logit(w) - logit(w0), 6) for w in (0.01, 0.25, 0.5, 0.75, 0.9, 0.99, w0)})
    )
    logs = (-1.0, -0.5, 0.0, 0.5, 1.0)
    return [
        Direction(
            "levels",
            _levels,
            tuple(math.log(f) for f in (0.25, 0.5, 1.0, 2.0, 4.0, 10.0)),
            "open-loop levels / start's (both rates / f)",
        ),
        Direction("a_plus", move("a_plus"), logs, "a+ (per SET pulse)"),
        Direction("a_minus", move("a_minus"), logs, "a- (per RESET pulse)"),
        Direction("window", move("window"), windows, "state window (rates fixed)"),
        Direction(
            "window_at_levels", _window_at_levels, windows, "state window (mid-range steps fixed)"
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
                    **mean_ci_fields("loss", loss),
                    **mean_ci_fields("accuracy", acc),
                    **mean_ci_fields("grad_ste", directional(grad, d, k0, t)),
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
                **mean_ci_fields("ste", ste),
                **mean_ci_fields("fd", fd),
                **mean_ci_fields("diff", ste - fd),
                tasks=int(ste.size),
            )
        )
    return rows
