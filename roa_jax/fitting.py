"""Fitting the device model to measured pulse-response curves (MODEL.md 1, Eq. 1 closed form).

Data: the tidy CSV layout of shared/data/devices (README.txt there), one row per read:
`cycle, pulse_index, polarity, conductance_S`. A ramp is one (cycle, polarity) pair: a run of
identical pulses of one polarity, read after each pulse.

Model: a ramp starts in the state of its first read, w_0 = w(G_first) (Eq. 4); its read after
i more pulses is predicted as G(w_i) (Eq. 3) with w_i = `device.pulse_response(w_0, +-i)`, the
closed form of Eq. 1. Free parameters:

    G_min = exp(u_0)                   set through alpha (beta, v_read fixed),
    G_max = G_min + exp(u_1)           set through gamma (delta fixed), so G_min < G_max always,
    lam   = exp(u_2), eta2 = exp(u_3)  the pulse rates a+ and a- (eta1, voltages, t_p fixed),
    window in [0, 1]                   clipped back into [0, 1] after every step.

The loss is the mean squared error of all reads in units of the measured range (max - min of
the reads, a constant), minimized with optax adam under one jit (`lax.scan` over the steps).

Why the window is projected rather than a sigmoid: the best window of real and simulated data
usually lies ON a bound (1 for a device that saturates, 0 for the CrossSim ramps, whose SET steps
grow instead of shrinking), and near a bound it trades off against G_min and G_max along a flat
valley. A sigmoid reaches the bound only at infinity: on noise-free curves of a window-1 device
it left 0.15 % RMS error and G_min 7 % off after 1000 steps, where the projection fits to 1e-7.

What the data determine: with window 1 and ramps that saturate, all of G_min, G_max, a+, a-.
With window 0 (linear steps) only the steps in S, a (G_max - G_min); the bounds need only hold
every read, and the rates scale with 1 / (G_max - G_min). The CrossSim fit ends there: G_max
stays at the largest read (its start value), G_min at 1.38 mS, below every read (1.61 mS), where
the optimizer path left it.

Unitless data (a `conductance_norm` column, e.g. the aihwkit Gong et al. 2018 file) carry no
siemens. A free scale and offset would be exactly degenerate with G_min and G_max (a reading is
G_min + (G_max - G_min) w), so instead the reads are mapped affinely onto a conductance range
the caller gives (`norm_range`, in S: data min -> low end, data max -> high end); without one
they are rejected. The fitted rates and window are then the device's; its G range is in the
assumed units.
"""

from __future__ import annotations

import csv
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from roa_jax import device, errors

_COLUMNS = ("cycle", "pulse_index", "polarity")


class PulseCurves(NamedTuple):
    """Measured reads, one entry per read, grouped into ramps of one polarity."""

    ramp: np.ndarray  # int, index of the read's ramp (one per cycle and polarity), 0-based
    cycle: np.ndarray  # int, cycle number as in the file
    pulse_index: np.ndarray  # int, position of the read in its ramp, as in the file
    polarity: np.ndarray  # int, +1 potentiation (SET) ramp, -1 depression (RESET) ramp
    pulses: np.ndarray  # float, signed pulses since the ramp's first read (+ SET, - RESET)
    conductance: np.ndarray  # S, the read
    start: np.ndarray  # S, per ramp: its first read (the start state of the model)


class FitResult(NamedTuple):
    """What `fit` returns."""

    params: device.DeviceParams  # fitted parameters (pass `device.validate`)
    predicted: np.ndarray  # S, the fitted model's value of every read
    rms: float  # S, root-mean-square error over all reads
    rel_rms: float  # rms / (max - min of the reads)
    losses: np.ndarray  # mean squared error in units of the range, per adam step


def load_curves(path: str, norm_range: tuple[float, float] | None = None) -> PulseCurves:
    """Reads a tidy pulse-response CSV (see the module docstring).

    Args:
      path: CSV with columns cycle, pulse_index, polarity and conductance_S (or
        conductance_norm, unitless).
      norm_range: (G_low, G_high) in S onto which unitless `conductance_norm` reads are mapped;
        required for such files, ignored for `conductance_S`.

    Returns:
      `PulseCurves`, reads sorted by ramp and pulse index.

    Raises:
      DataError: `path` does not exist, missing columns, no rows, bad values, or unitless
        data without `norm_range`.
    """
    if not os.path.isfile(path):
        raise errors.DataError(f"pulse-response CSV {path} does not exist.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    value_column = next((c for c in ("conductance_S", "conductance_norm") if c in header), None)
    missing = [c for c in _COLUMNS if c not in header]
    if missing or value_column is None:
        raise errors.DataError(
            f"{path}: columns {header} lack {missing or ['conductance_S']}; expected "
            f"{list(_COLUMNS) + ['conductance_S']} (or conductance_norm, unitless)."
        )
    if not rows:
        raise errors.DataError(f"{path}: no data rows.")
    try:
        cycle = np.array([int(r["cycle"]) for r in rows])
        index = np.array([int(r["pulse_index"]) for r in rows])
        polarity = np.array([int(r["polarity"]) for r in rows])
        value = np.array([float(r[value_column]) for r in rows])
    except (TypeError, ValueError) as e:
        raise errors.DataError(f"{path}: a value is not a number ({e}).") from e
    if not np.all(np.isin(polarity, (-1, 1))):
        raise errors.DataError(f"{path}: polarity must be +1 or -1, got {sorted(set(polarity))}.")
    if not np.all(np.isfinite(value)) or np.any(index < 0):
        raise errors.DataError(f"{path}: {value_column} must be finite and pulse_index >= 0.")
    if value_column == "conductance_norm":
        if norm_range is None:
            raise errors.DataError(
                f"{path} holds unitless conductance_norm values: give norm_range=(G_low, G_high) "
                "in S to map its min and max onto (the fitted G range is then assumed)."
            )
        low, high = norm_range
        if not 0 < low < high:
            raise errors.ConfigError(
                f"norm_range={norm_range} must satisfy 0 < G_low < G_high (S)."
            )
        value = low + (value - value.min()) / np.ptp(value) * (high - low)
    elif np.any(value <= 0):
        raise errors.DataError(f"{path}: conductance_S must be > 0.")
    return _group(cycle, index, polarity, value)


def _group(cycle, index, polarity, conductance) -> PulseCurves:
    """Sorts reads by (cycle, polarity +1 first, pulse_index) and numbers the ramps."""
    order = np.lexsort((index, -polarity, cycle))
    cycle, index, polarity, conductance = (x[order] for x in (cycle, index, polarity, conductance))
    new_ramp = np.r_[True, (cycle[1:] != cycle[:-1]) | (polarity[1:] != polarity[:-1])]
    ramp = np.cumsum(new_ramp) - 1
    first = np.flatnonzero(new_ramp)
    pulses = polarity * (index - index[first][ramp])
    return PulseCurves(
        ramp, cycle, index, polarity, pulses.astype(np.float32), conductance, conductance[first]
    )


def curves_from_arrays(cycle, pulse_index, polarity, conductance) -> PulseCurves:
    """`PulseCurves` from in-memory columns (same meaning as the CSV's)."""
    return _group(*(np.asarray(x) for x in (cycle, pulse_index, polarity, conductance)))


def predict(params: device.DeviceParams, curves: PulseCurves):
    """Model value (S) of every read: `device.pulse_response` from its ramp's first read."""
    w_start = device.state(jnp.asarray(curves.start), params)[curves.ramp]
    w = device.pulse_response(w_start, jnp.asarray(curves.pulses), params)
    return device.conductance(w, params)


class _Free(NamedTuple):
    """The fit variables: logs, and the window itself (see the module docstring)."""

    log_g_min: jax.Array  # log of G_min / S
    log_span: jax.Array  # log of (G_max - G_min) / S
    log_lam: jax.Array  # log of lambda / (1/s)
    log_eta2: jax.Array  # log of eta2 / (1/V)
    window: jax.Array  # in [0, 1], projected back after every step


def _to_params(free: _Free, base: device.DeviceParams) -> device.DeviceParams:
    g_min = jnp.exp(free.log_g_min)
    g_max = g_min + jnp.exp(free.log_span)
    v = base.v_read
    # Eq. 3 at w = 0 and w = 1, solved for the prefactors.
    alpha = g_min * v / -jnp.expm1(-base.beta * v)
    gamma = g_max * v / jnp.sinh(base.delta * v)
    return base._replace(
        alpha=alpha,
        gamma=gamma,
        lam=jnp.exp(free.log_lam),
        eta2=jnp.exp(free.log_eta2),
        window=free.window,
    )


def _rates(lam, eta2, base: device.DeviceParams):
    """(a+, a-) of Eq. 1 for numpy arrays lam, eta2 (float64), the rest from `base`."""
    eta1, t_p = float(base.eta1), float(base.t_p)

    def rate(v):
        return lam * np.abs(np.exp(eta1 * v) - np.exp(-eta2 * v)) * t_p

    return rate(float(base.v_set)), rate(float(base.v_reset))


def rates_to_params(a_plus, a_minus, base: device.DeviceParams):
    """(lam, eta2) giving pulse rates (a+, a-), with eta1, voltages and t_p from `base`.

    eta2 sets the ratio a-/a+ (searched on a log grid, then refined) and lam the scale. A ratio
    outside what eta2 in [1e-3, 30] 1/V reaches is clipped to the nearest reachable one.
    """
    ratio = a_minus / a_plus

    def ratio_at(eta2):
        up, down = _rates(1.0, eta2, base)
        return down / up

    grid = np.geomspace(1e-3, 30.0, 4001)
    best = grid[np.argmin(np.abs(np.log(ratio_at(grid) / ratio)))]
    fine = np.linspace(best * 0.997, best * 1.003, 601)
    eta2 = fine[np.argmin(np.abs(np.log(ratio_at(fine) / ratio)))]
    lam = a_plus / _rates(1.0, eta2, base)[0]
    return float(lam), float(eta2)


def initial_guess(curves: PulseCurves, base: device.DeviceParams) -> device.DeviceParams:
    """Data-driven start: G range from the extremes of the reads, window 1/2, and the rates
    from the mean state change per pulse of each polarity."""
    g_min, g_max = float(np.min(curves.conductance)), float(np.max(curves.conductance))
    span = g_max - g_min
    change = curves.conductance - curves.start[curves.ramp]
    rates = []
    for sign in (1.0, -1.0):
        moved = np.sign(curves.pulses) == sign
        if not np.any(moved):
            rates.append(None)
            continue
        per_pulse = np.abs(change[moved]) / np.abs(curves.pulses[moved]) / span
        rates.append(max(float(np.mean(per_pulse)), 1e-6))
    # A file with one polarity only: take the other rate equal.
    a_plus = rates[0] if rates[0] is not None else rates[1]
    a_minus = rates[1] if rates[1] is not None else rates[0]
    lam, eta2 = rates_to_params(a_plus, a_minus, base)
    free = _Free(
        *(jnp.float32(x) for x in (np.log(g_min), np.log(span), np.log(lam), np.log(eta2), 0.5))
    )
    return _to_params(free, base)


def _to_free(params: device.DeviceParams) -> _Free:
    g_min, g_max = device.conductance_range(params)
    return _Free(
        jnp.log(g_min),
        jnp.log(g_max - g_min),
        jnp.log(params.lam),
        jnp.log(params.eta2),
        jnp.clip(params.window, 0.0, 1.0),
    )


def fit(
    curves: PulseCurves,
    base: device.DeviceParams,
    num_steps: int = 400,
    learning_rate: float = 0.05,
    init: device.DeviceParams | None = None,
) -> FitResult:
    """Fits G_min, G_max, the pulse rates and the window of `base` to measured `curves`.

    Args:
      curves: the measured reads (`load_curves`).
      base: device whose beta, delta, v_read, eta1, v_set, v_reset and t_p are kept.
      num_steps: adam steps (a cosine schedule decays the rate to 1 % of `learning_rate`).
      learning_rate: adam step size on the variables (logs, and the window itself).
      init: starting parameters; default `initial_guess(curves, base)`.

    Returns:
      `FitResult`; `params` pass `device.validate`.
    """
    if num_steps < 1:
        raise errors.ConfigError(f"num_steps={num_steps} must be >= 1.")
    if not learning_rate > 0:
        raise errors.ConfigError(f"learning_rate={learning_rate} must be > 0.")
    base = jax.tree.map(jnp.float32, base)
    init = initial_guess(curves, base) if init is None else jax.tree.map(jnp.float32, init)
    scale = float(np.ptp(curves.conductance)) or float(np.max(curves.conductance))
    data = jax.tree.map(jnp.asarray, curves)
    target = jnp.asarray(curves.conductance / scale, jnp.float32)

    def loss_fn(free):
        predicted = predict(_to_params(free, base), data) / scale
        return jnp.mean((predicted - target) ** 2)

    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.01)
    optimizer = optax.adam(schedule)

    @jax.jit
    def run(free):
        def step(carry, _):
            free, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(free)
            updates, opt_state = optimizer.update(grads, opt_state, free)
            free = optax.apply_updates(free, updates)
            free = free._replace(window=jnp.clip(free.window, 0.0, 1.0))
            return (free, opt_state), loss

        (free, _), losses = jax.lax.scan(step, (free, optimizer.init(free)), length=num_steps)
        return free, losses

    free, losses = run(_to_free(init))
    params = jax.device_get(_to_params(free, base))
    device.validate(params)
    predicted = np.asarray(jax.jit(predict)(params, data), np.float64)
    rms = float(np.sqrt(np.mean((predicted - curves.conductance) ** 2)))
    return FitResult(params, predicted, rms, rms / scale, np.asarray(losses))
