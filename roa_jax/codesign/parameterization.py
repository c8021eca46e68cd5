"""The co-design variables (`Knobs`): a device and ROA's rho in unconstrained coordinates.

Every knob value is a physical device (given the base device's voltages, beta, delta and
noise law):

    a+ = exp(log_a_plus), a- = exp(log_a_minus)   per-pulse rates of Eq. 1, set through
                                                  lambda and eta2 (open-loop levels ~ 2 / a)
    window = sigmoid(logit_window)                the state window g(w) of Eq. 1, in (0, 1)
    G_min = exp(log_g_min)                        through alpha (Eq. 3)
    G_max = G_min + exp(log_g_span)               through gamma, so G_min < G_max always
    rho = exp(log_rho)                            ROA's relative learning rate (not the device)

The noise law and scale stay the base device's: they describe the write (Eq. 7), not a knob
of device engineering.

An invariant: the loss does not depend on G_min or on G_max - G_min. The crossbar maps weights
relative to (G_min, G_max) and subtracts the reference current (Eqs. 8-11), and every noise
law of Eq. 7 scales with the range, so the on/off ratio and the absolute conductances cancel
(their gradients are zero up to float32 rounding). They are knobs so that the sensitivity
shows this, and are held by default.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from roa_jax import device, errors


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
    """Raises DeviceError unless `params` are scalar, valid and have v_set = -v_reset.

    The knobs set the rates through lambda and eta2 in closed form, which needs pulses of one
    amplitude in both polarities (every preset: +-1 V).
    """
    device.validate(params)
    p = jax.tree.map(np.asarray, params)
    if any(np.shape(x) != () for x in p):
        raise errors.DeviceError(
            "co-design needs one device (scalar parameters), not per-device arrays."
        )
    if not np.isclose(p.v_set, -p.v_reset):
        raise errors.DeviceError(
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


def shifted(k: Knobs, name: str, h) -> Knobs:
    """`k` with knob `name` (one of NAMES) moved by `h` in knob units."""
    field = Knobs._fields[NAMES.index(name)]
    return k._replace(**{field: getattr(k, field) + h})


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
