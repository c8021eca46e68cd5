"""The device technologies of the literature: IBM aihwkit 1.2's pulsed device models in JAX.

aihwkit (github.com/IBM/aihwkit) models a device as a weight w in per-device bounds
[b_min, b_max] that every single pulse moves by a state-dependent step; its update is C++
outside autograd. Here each family's single-pulse rule is written once, for one device and
elementwise, as aihwkit 1.2.0 applies it (tests/data/aihwkit/NOTES.md cites every file and line
read); a bounded per-pulse scan applies a pulse count. The contract mirrors aihwkit's:

  Technology   the meta-parameters of a family or preset (aihwkit's `*Device` dataclass).
  populate     Technology -> Hidden: per-device parameters, with the device-to-device
               variation sampled once (aihwkit's `PulsedRPUDevice::populate`).
  pulse        one pulse (up or down) on devices at w, with cycle-to-cycle noise.
  pulse_train  a sequence of up/down pulses (aihwkit's response plots), the trace.
  apply_pulses a signed pulse count per device, as a write applies it.

`Hidden` is a pytree of floats whose `family` field selects the rule, so devices of different
families stack and `jax.vmap` sweeps devices x noise x rho in one compiled program. Weights are
in aihwkit's units (most presets span [-1, 1]); the write's noise `write_noise` is aihwkit's
`write_noise_std` times dw_min, redrawn after every pulse on the apparent weight.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

from roa_jax import device, errors

# The rules, by index into FAMILIES. SoftBounds is a LinearStep (aihwkit builds its
# SoftBoundsDevice as a LinearStepRPUDevice, rpu_linearstep_device.h:72-83).
FAMILIES = (
    "constant_step",
    "linear_step",
    "soft_bounds_reference",
    "exp_step",
    "pow_step",
    "piecewise_step",
)
# PiecewiseStep's nodes, padded to one length so that every device has the same pytree.
MAX_NODES = 16


@dataclasses.dataclass(frozen=True)
class Technology:
    """A device family's meta-parameters, named and defaulted as aihwkit 1.2's `PulsedDevice`
    and its subclasses (configs/devices.py; the line of each default in NOTES.md, section 2)."""

    family: str
    dw_min: float = 0.001  # mean step of one pulse, weight units
    dw_min_dtod: float = 0.3  # device-to-device spread of the step (relative)
    dw_min_dtod_log_normal: bool = False  # the step's gain exp(N) instead of 1 + N
    dw_min_std: float = 0.3  # cycle-to-cycle spread of each pulse's step (relative)
    up_down: float = 0.0  # up/down asymmetry: > 0 shrinks down steps, < 0 up steps
    up_down_dtod: float = 0.01  # device-to-device spread of the asymmetry
    w_max: float = 0.6  # mean upper bound, weight units
    w_min: float = -0.6  # mean lower bound
    w_max_dtod: float = 0.3  # relative spread of the bounds
    w_min_dtod: float = 0.3
    enforce_consistency: bool = True  # steps >= 0, b_min <= 0 <= b_max
    write_noise_std: float = 0.0  # apparent-weight noise after a pulse, in units of dw_min
    mult_noise: bool = True  # LinearStep-like: noise multiplies the whole step (else the scale)
    # LinearStep (gamma_* are aihwkit's ls_decrease_*):
    gamma_up: float = 0.0
    gamma_down: float = 0.0
    gamma_up_dtod: float = 0.05
    gamma_down_dtod: float = 0.05
    allow_increasing: bool = False
    mean_bound_reference: bool = True
    soft_bounds: bool = False  # SoftBoundsDevice: slopes from each device's own bounds
    # SoftBoundsReference:
    slope_up_dtod: float = 0.0
    slope_down_dtod: float = 0.0
    reference_mean: float = 0.0
    reference_std: float = 0.0
    subtract_symmetry_point: bool = False
    # ExpStep (aihwkit's A_up, A_down, gamma_up, gamma_down, a, b):
    es_A_up: float = 0.00081
    es_A_down: float = 0.36833
    es_gamma_up: float = 12.44625
    es_gamma_down: float = 12.78785
    es_a: float = 0.244
    es_b: float = 0.2425
    dw_min_std_add: float = 0.0
    dw_min_std_slope: float = 0.0
    # PowStep:
    pow_gamma: float = 1.0
    pow_gamma_dtod: float = 0.1
    pow_up_down: float = 0.0
    pow_up_down_dtod: float = 0.0
    # PiecewiseStep:
    piecewise_up: tuple = (1.0,)
    piecewise_down: tuple = (1.0,)


class Hidden(NamedTuple):
    """Per-device parameters of a populated array (aihwkit's hidden parameters), or one device's.

    Fields are floats (scalars or per-device arrays); the names follow aihwkit's
    `get_hidden_parameters`.
    """

    family: jax.Array  # index into FAMILIES
    max_bound: jax.Array  # upper bound b_max of the weight
    min_bound: jax.Array  # lower bound b_min (<= 0)
    dwmin_up: jax.Array  # up step scale (> 0)
    dwmin_down: jax.Array  # down step scale (> 0)
    slope_up: jax.Array  # LinearStep: up step = slope_up w + dwmin_up
    slope_down: jax.Array  # LinearStep: down step = slope_down w + dwmin_down
    reference: jax.Array  # SoftBoundsReference: the rule acts on w + reference
    gamma_up: jax.Array  # PowStep exponents
    gamma_down: jax.Array
    dw_min_std: jax.Array  # cycle-to-cycle spread of a pulse's step
    mult_noise: jax.Array  # 1: the spread multiplies the whole step; 0: only the scale
    write_noise: jax.Array  # std of the apparent weight's noise after a pulse, weight units
    es_A_up: jax.Array  # ExpStep
    es_A_down: jax.Array
    es_gamma_up: jax.Array
    es_gamma_down: jax.Array
    es_a: jax.Array
    es_b: jax.Array
    dw_min_std_add: jax.Array
    dw_min_std_slope: jax.Array
    piecewise_up: jax.Array  # shape=(MAX_NODES,) (leading axes under vmap)
    piecewise_down: jax.Array
    n_sections: jax.Array  # PiecewiseStep: nodes - 1
    granularity: jax.Array  # aihwkit's weight granularity: the open-loop policy's step


def check(tech: Technology) -> Technology:
    """Raises DeviceError naming the field if `tech` is not a device aihwkit would build."""
    if tech.family not in FAMILIES:
        raise errors.DeviceError(f"family {tech.family!r} is not one of {FAMILIES}.")
    for f in dataclasses.fields(tech):
        x = getattr(tech, f.name)
        values = x if isinstance(x, tuple) else (x,)
        if f.name != "family" and not all(math.isfinite(float(v)) for v in values):
            raise errors.DeviceError(f"{tech.family}: {f.name}={x} must be finite.")
    problems = [
        (tech.dw_min > 0, "dw_min must be > 0"),
        (tech.w_min <= 0 <= tech.w_max, "[w_min, w_max] must contain 0 (aihwkit populate)"),
        (tech.w_min < tech.w_max, "w_min must be < w_max"),
        (min(tech.dw_min_std, tech.dw_min_dtod, tech.write_noise_std) >= 0, "spreads >= 0"),
        (
            len(tech.piecewise_up) == len(tech.piecewise_down) <= MAX_NODES,
            f"piecewise_up and piecewise_down need the same length, at most {MAX_NODES}",
        ),
        (not tech.soft_bounds or tech.family == "linear_step", "soft_bounds is a linear_step"),
    ]
    for ok, message in problems:
        if not ok:
            raise errors.DeviceError(f"{tech.family}: {message}.")
    return tech


# A technology as a pytree of floats, so that technologies stack and `jax.vmap` sweeps them:
# every field of Technology (family as its index, flags as 0/1, the piecewise nodes padded to
# MAX_NODES), the number of piecewise sections, and the seed its devices are drawn from.
TechParams = NamedTuple(
    "TechParams",
    [(f.name, jax.Array) for f in dataclasses.fields(Technology)]
    + [("n_sections", jax.Array), ("seed", jax.Array)],
)
TechParams.__doc__ = "A Technology's parameters as float32 leaves (see `params`)."


def params(tech: Technology, seed: int = 0) -> TechParams:
    """`tech` (checked) as float leaves; its crossbars' devices are drawn from `seed`."""
    check(tech)

    def leaf(name, x):
        if name == "family":
            return jnp.float32(FAMILIES.index(x))
        if isinstance(x, tuple):  # piecewise nodes, padded with the last
            return jnp.asarray(list(x) + [x[-1]] * (MAX_NODES - len(x)), jnp.float32)
        return jnp.float32(x)

    values = {f.name: leaf(f.name, getattr(tech, f.name)) for f in dataclasses.fields(tech)}
    return TechParams(
        **values,
        n_sections=jnp.float32(len(tech.piecewise_up) - 1),
        seed=jnp.float32(seed),
    )


def _is(t: TechParams, family: str):
    return jnp.round(t.family) == FAMILIES.index(family)


def granularity(t: TechParams):
    """aihwkit's `calc_weight_granularity`: the mean step the open-loop pulse count divides by.

    ExpStep averages the down step at w = 0 with itself (aihwkit 1.2's rpu_expstep_device.h:44-54
    has `(dw_down + dw_down) / 2`); kept, since it sets aihwkit's pulse counts.
    """
    middle = jnp.take(t.piecewise_up, (t.n_sections + 1).astype(jnp.int32) // 2, axis=-1)
    y_down = jnp.maximum(1.0 - t.es_A_down * jnp.exp(-t.es_gamma_down * t.es_b), 0.0)
    exp_down = t.dw_min * (1.0 - jnp.maximum(t.up_down, 0.0)) * y_down
    return jnp.where(
        _is(t, "pow_step"),
        t.dw_min * 0.5**t.pow_gamma,
        jnp.where(
            _is(t, "piecewise_step"),
            t.dw_min * middle,
            jnp.where(_is(t, "exp_step") & (exp_down > 0), exp_down, t.dw_min),
        ),
    )


def _asymmetric(gain, r, up_down, scale):
    """aihwkit's one-sided asymmetry: up_down > 0 shrinks the down side, < 0 the up side."""
    up_bias = jnp.minimum(up_down, 0.0)
    down_bias = -jnp.maximum(up_down, 0.0)
    return (up_bias + gain + r) * scale, (down_bias + gain - r) * scale


def populate(key, t: TechParams, shape=()) -> Hidden:
    """Per-device parameters of `shape` devices, the device-to-device variation sampled once.

    Follows aihwkit's populate (rpu_pulsed_device.cpp:593-733, and each family's own; NOTES.md
    sections 1 and 3), with JAX's random numbers (aihwkit's cannot be reproduced bit for bit).
    Diffusion, drift, lifetime and corrupt devices are not modelled (off in every preset but the
    Capacitor's lifetime; BUILD_NOTES.md). Zero spreads give the nominal device.
    """
    keys = iter(jax.random.split(key, 11))  # one per gauss() below

    def gauss():
        return jax.random.normal(next(keys), shape)

    def flag(x):
        return x > 0.5

    max_bound = t.w_max * (1.0 + t.w_max_dtod * gauss())
    min_bound = t.w_min * (1.0 + t.w_min_dtod * gauss())
    xi = gauss()
    gain = jnp.where(
        flag(t.dw_min_dtod_log_normal), jnp.exp(t.dw_min_dtod * xi), 1.0 + t.dw_min_dtod * xi
    )
    scale_up, scale_down = _asymmetric(gain, t.up_down_dtod * gauss(), t.up_down, t.dw_min)
    consistent = flag(t.enforce_consistency)
    lo, hi = jnp.minimum(min_bound, max_bound), jnp.maximum(min_bound, max_bound)
    crossed = min_bound > max_bound
    mid = t.w_max + (t.w_min - t.w_max) / 2
    max_bound = jnp.where(consistent, jnp.abs(hi), jnp.where(crossed, mid, max_bound))
    min_bound = jnp.where(consistent, -jnp.abs(lo), jnp.where(crossed, mid, min_bound))
    scale_up = jnp.where(consistent, jnp.abs(scale_up), scale_up)
    scale_down = jnp.where(consistent, jnp.abs(scale_down), scale_down)

    # LinearStep (rpu_linearstep_device.cpp:31-73); SoftBounds has slope 1 at its own bounds.
    d_up = t.gamma_up + t.gamma_up_dtod * gauss()
    d_down = t.gamma_down + t.gamma_down_dtod * gauss()
    increasing = flag(t.allow_increasing)
    d_up = jnp.where(increasing, d_up, jnp.abs(d_up))
    d_down = jnp.where(increasing, d_down, jnp.abs(d_down))
    soft = flag(t.soft_bounds)
    d_up, d_down = jnp.where(soft, 1.0, d_up), jnp.where(soft, 1.0, d_down)
    mean_ref = flag(t.mean_bound_reference) & ~soft
    ref_up = jnp.where(mean_ref, t.w_max, max_bound)
    ref_down = jnp.where(mean_ref, t.w_min, min_bound)

    def slope(d, scale, ref):
        return jnp.where(ref != 0, -d * scale / jnp.where(ref != 0, ref, 1.0), 0.0)

    linear = _is(t, "linear_step")
    slope_up = jnp.where(linear, slope(d_up, scale_up, ref_up), 0.0)
    slope_down = jnp.where(linear, slope(d_down, scale_down, ref_down), 0.0)

    # SoftBoundsReference (rpu_softbounds_reference_device.cpp:27-67): the slopes' spread moves
    # each device's bounds; the reference (and its symmetry point) shifts the rule.
    sbr = _is(t, "soft_bounds_reference")
    inside = sbr & (max_bound > 0) & (min_bound < 0)
    safe_max = jnp.where(inside, max_bound, 1.0)
    safe_min = jnp.where(inside, min_bound, -1.0)
    cur_up = scale_up / safe_max * jnp.abs(1 + t.slope_up_dtod * gauss())
    cur_down = -scale_down / safe_min * jnp.abs(1 + t.slope_down_dtod * gauss())
    max_bound = jnp.where(inside, scale_up / cur_up, max_bound)
    min_bound = jnp.where(inside, -scale_down / cur_down, min_bound)
    symmetry = (scale_up - scale_down) / (
        scale_up / jnp.where(inside, max_bound, 1.0)
        - scale_down / jnp.where(inside, min_bound, -1.0)
    )
    reference = t.reference_mean + t.reference_std * gauss()
    reference = jnp.where(inside & flag(t.subtract_symmetry_point), reference + symmetry, reference)
    reference = jnp.where(sbr, reference, 0.0)

    # PowStep (rpu_powstep_device.cpp:27-49): the exponents get the same one-sided asymmetry.
    g_gain = 1.0 + t.pow_gamma_dtod * gauss()
    gamma_up, gamma_down = _asymmetric(
        g_gain, t.pow_up_down_dtod * gauss(), t.pow_up_down, t.pow_gamma
    )
    gamma_up = jnp.where(consistent, jnp.abs(gamma_up), gamma_up)
    gamma_down = jnp.where(consistent, jnp.abs(gamma_down), gamma_down)

    def full(x):
        return jnp.broadcast_to(jnp.asarray(x, jnp.float32), shape)

    return Hidden(
        family=full(t.family),
        max_bound=full(max_bound),
        min_bound=full(min_bound),
        dwmin_up=full(scale_up),
        dwmin_down=full(scale_down),
        slope_up=full(slope_up),
        slope_down=full(slope_down),
        reference=full(reference),
        gamma_up=full(gamma_up),
        gamma_down=full(gamma_down),
        dw_min_std=full(t.dw_min_std),
        mult_noise=full(t.mult_noise),
        write_noise=full(t.write_noise_std * t.dw_min),  # rpu_pulsed_device.h:104
        es_A_up=full(t.es_A_up),
        es_A_down=full(t.es_A_down),
        es_gamma_up=full(t.es_gamma_up),
        es_gamma_down=full(t.es_gamma_down),
        es_a=full(t.es_a),
        es_b=full(t.es_b),
        dw_min_std_add=full(t.dw_min_std_add),
        dw_min_std_slope=full(t.dw_min_std_slope),
        piecewise_up=t.piecewise_up,
        piecewise_down=t.piecewise_down,
        n_sections=full(t.n_sections),
        granularity=full(granularity(t)),
    )


def noise_free(hidden: Hidden) -> Hidden:
    """`hidden` with cycle-to-cycle and write noise off (aihwkit's `set_noise_free`)."""
    zero = jnp.zeros_like(hidden.dw_min_std)
    return hidden._replace(dw_min_std=zero, write_noise=zero)


# One pulse, for one device (elementwise).


def _safe_pow(x, g):
    """x ** g for x >= 0, 0 at x = 0, with finite gradients there."""
    pos = x > 0
    return jnp.where(pos, jnp.power(jnp.where(pos, x, 1.0), g), 0.0)


def _linear(up, h: Hidden):
    """(scale, slope) of the linear families' step, slope w + scale, for the pulse's polarity.

    LinearStep and SoftBoundsReference (NOTES.md 3.2-3.4): up slope_up w + dwmin_up, down
    slope_down w + dwmin_down; SoftBoundsReference's slopes come from its bounds, 1 - w / bound.
    """
    scale = jnp.where(up, h.dwmin_up, h.dwmin_down)
    sbr = jnp.round(h.family) == FAMILIES.index("soft_bounds_reference")
    bound = jnp.where(up, h.max_bound, h.min_bound)
    outward = jnp.where(up, bound > 0, bound < 0)
    sbr_slope = jnp.where(outward, -scale / jnp.where(outward, bound, 1.0), 0.0)
    return scale, jnp.where(sbr, sbr_slope, jnp.where(up, h.slope_up, h.slope_down))


def _step(w, up, h: Hidden):
    """Noise-free step size of one pulse at w (before the cycle-to-cycle noise; signed: a
    LinearStep beyond its reference steps backwards), and the factor the noise multiplies:
    (step, noise_scale), for every family; `family` selects."""
    scale, slope = _linear(up, h)
    linear = slope * w + scale
    # ExpStep (3.5): z = 2 w / (b_max - b_min) a + b.
    b_diff = h.max_bound - h.min_bound
    z = 2.0 * w / jnp.where(b_diff > 0, b_diff, 1.0) * h.es_a + h.es_b
    y = jnp.where(
        up,
        1.0 - h.es_A_up * jnp.exp(h.es_gamma_up * z),
        1.0 - h.es_A_down * jnp.exp(-h.es_gamma_down * z),
    )
    exp_step = jnp.where(b_diff > 0, jnp.maximum(y, 0.0) * scale, 0.0)
    # PowStep (3.6): up dwmin_up ((b_max - w) / range)^gamma_up, down from b_min.
    safe_range = jnp.where(b_diff != 0, b_diff, 1.0)
    frac = jnp.where(up, h.max_bound - w, w - h.min_bound) / safe_range
    pow_step = jnp.where(
        b_diff != 0, scale * _safe_pow(frac, jnp.where(up, h.gamma_up, h.gamma_down)), 0.0
    )
    # PiecewiseStep (3.7): linear interpolation between nodes spread over [b_min, b_max].
    w_scaled = jnp.maximum((w - h.min_bound) / safe_range * h.n_sections, 0.0)
    vec = jnp.where(jnp.asarray(up)[..., None], h.piecewise_up, h.piecewise_down)
    vec = jnp.broadcast_to(vec, jnp.shape(w_scaled) + (MAX_NODES,))
    sections = h.n_sections
    degenerate = (sections <= 0) | (h.max_bound <= h.min_bound)
    index = jnp.minimum(jnp.floor(w_scaled), sections - 1).astype(jnp.int32)
    index = jnp.where(degenerate, 0, index)
    t = jnp.where(degenerate, 0.0, jnp.minimum(w_scaled - index, 1.0))
    lo = jnp.take_along_axis(vec, index[..., None], axis=-1)[..., 0]
    hi = jnp.take_along_axis(vec, jnp.minimum(index + 1, MAX_NODES - 1)[..., None], axis=-1)[..., 0]
    piecewise = scale * ((1.0 - t) * lo + t * hi)
    steps = (scale, linear, linear, exp_step, pow_step, piecewise)
    family = jnp.round(h.family)
    step = sum(jnp.where(family == i, s, 0.0) for i, s in enumerate(steps))
    # The noise multiplies the whole step, except LinearStep-like devices with additive noise
    # (mult_noise off), where it multiplies only the scale.
    linear_like = (family == 1) | (family == 2)
    noise_scale = jnp.where(linear_like & (h.mult_noise < 0.5), scale, step)
    return step, noise_scale


def pulse(key, w, up, h: Hidden):
    """The persistent weight after one pulse on devices at `w`: up where `up`, else down.

    Cycle-to-cycle noise: the step times (1 + dw_min_std xi) (or the scale's share of it,
    additive noise), ExpStep's 'complex' noise dw_min_std (|step| + add + slope |w|) xi when
    add or slope is set; then each device's bounds clip. `key=None` gives the noise-free pulse.
    """
    shifted = w + h.reference  # SoftBoundsReference acts on w + reference (0 elsewhere)
    step, noise_scale = _step(shifted, up, h)
    sign = jnp.where(up, 1.0, -1.0)
    if key is not None:
        xi = jax.random.normal(key, jnp.shape(shifted * step), jnp.result_type(w))
        complex_noise = (
            (jnp.round(h.family) == FAMILIES.index("exp_step"))
            & (h.dw_min_std > 0)
            & ((h.dw_min_std_add != 0) | (h.dw_min_std_slope != 0))
        )
        plain = noise_scale * h.dw_min_std * xi
        complex_std = h.dw_min_std * (
            step + h.dw_min_std_add + h.dw_min_std_slope * jnp.abs(shifted)
        )
        step = step + jnp.where(complex_noise, complex_std * xi, plain)
    moved = jnp.clip(shifted + sign * step, h.min_bound, h.max_bound)
    return moved - h.reference


def pulse_train(key, w, directions, h: Hidden):
    """Weights after each pulse of `directions` (+1 up, -1 down; aihwkit's response plots):
    returns (apparent trace [len(directions), *w.shape], final persistent weight).

    With `key=None` every noise is off. Write noise is drawn afresh after each pulse on the
    apparent weight; the rule moves the persistent one (rpu_linearstep_device.cpp:134-136).
    """

    def body(w, step):
        i, d = step
        k_pulse, k_write = (
            (None, None) if key is None else jax.random.split(jax.random.fold_in(key, i))
        )
        w = pulse(k_pulse, w, d > 0, h)
        apparent = w if key is None else w + h.write_noise * jax.random.normal(k_write, w.shape)
        return w, apparent

    directions = jnp.asarray(directions, jnp.float32)
    w = jnp.asarray(w, jnp.float32)
    w, trace = jax.lax.scan(body, w, (jnp.arange(len(directions)), directions))
    return trace, w


def apply_pulses(key, w, n, h: Hidden, max_pulses: int | None = None):
    """Persistent weight after |n| pulses of sign(n) on each device, one pulse at a time.

    `max_pulses=None` loops to the largest |n| present (a while loop: forward only); an int is a
    scan of that many steps (static, so reverse-mode differentiates it, with respect to w and the
    device parameters), counts above it capped. `key=None`: noise-free.
    """
    w = jnp.asarray(w, jnp.float32)
    n = jnp.round(n)
    if max_pulses is not None:
        n = jnp.clip(n, -max_pulses, max_pulses)
    count, up = jnp.abs(n), n > 0

    if max_pulses is None:
        flat = _gather(h, w.shape, slice(None))
        return _pulses_from(key, w.ravel(), count.ravel(), up.ravel(), flat, 0).reshape(w.shape)

    def body(i, w):
        k = None if key is None else jax.random.fold_in(key, i)
        return jnp.where(i < count, pulse(k, w, up, h), w)

    return jax.lax.scan(lambda w, i: (body(i, w), None), w, jnp.arange(max_pulses))[0]


# A write's counts are heavy-tailed (most devices take a few pulses, a few take hundreds), so
# the loop runs on fewer devices as it goes: all of them up to the count that only the largest
# 1/_SHRINK exceed, then those only, and so on down to _SMALLEST devices.
_SHRINK, _SMALLEST = 4, 256


def _gather(h: Hidden, shape, index) -> Hidden:
    """The per-device fields of `h` (those of `shape`), flattened and indexed by `index`."""
    return Hidden(*(x.reshape(-1)[index] if jnp.shape(x) == shape else x for x in h))


def _pulses_from(key, w, count, up, h: Hidden, start):
    """Pulses start, ..., count - 1 on the flat devices `w`; pulse i draws its noise from
    fold_in(key, i), whichever devices take it, so each pulse's noise is fresh."""

    def body(i, w):
        k = None if key is None else jax.random.fold_in(key, i)
        return jnp.where(i < count, pulse(k, w, up, h), w)

    size = w.shape[0] // _SHRINK
    if size < _SMALLEST:
        return jax.lax.fori_loop(start, jnp.max(count).astype(jnp.int32), body, w)
    largest, index = jax.lax.top_k(count, size)
    bound = largest[-1].astype(jnp.int32)  # no device outside `index` takes more pulses
    w = jax.lax.fori_loop(start, bound, body, w)
    sub = _pulses_from(
        key,
        w[index],
        count[index],
        up[index],
        _gather(h, w.shape, index),
        jnp.maximum(start, bound),
    )
    return w.at[index].set(sub)


# Families with a closed form: a constant step, and the linear ones, whose step slope x + scale
# makes n pulses a geometric sequence.
_CLOSED_FORM = tuple(
    FAMILIES.index(f) for f in ("constant_step", "linear_step", "soft_bounds_reference")
)


def _closed_form(key, w, n, h: Hidden):
    """`apply_pulses` for the constant and linear families, without the loop.

    x = w + reference moves as x_{k+1} = x_k + s + a x_k (s = +-scale, a = +-slope for up and
    down pulses), so after n pulses x_n - x_0 = m_0 ((1 + a)^n - 1) / a with m_0 = s + a x_0:
    exact without noise. The cycle-to-cycle noise of each pulse propagates by (1 + a) per later
    pulse: a Gaussian of variance sigma^2 scale^2 sum_j (1 + a)^(2j) when only the scale is noisy
    (exact), sigma^2 m_0^2 n (1 + a)^(2(n - 1)) when the whole step is (to first order). The
    bounds clip once, at the end: the same as clipping after each pulse for a monotone sequence.
    """
    count, up = jnp.abs(n), n > 0
    sign = jnp.where(up, 1.0, -1.0)
    scale, slope = _linear(up, h)
    constant = jnp.round(h.family) == FAMILIES.index("constant_step")
    a = jnp.where(constant, 0.0, sign * slope)
    x0 = w + h.reference
    m0 = scale + a * x0 * sign  # the first step's size
    small = jnp.abs(a) < 1e-7
    safe_a = jnp.where(small, 1.0, a)
    log_growth = jnp.log1p(jnp.where(small, 0.0, jnp.maximum(a, -0.5)))  # see `response`
    geometric = jnp.where(small, count, jnp.expm1(count * log_growth) / safe_a)
    x = x0 + sign * m0 * geometric
    if key is not None:
        two = jnp.expm1(2 * log_growth)  # (1 + a)^2 - 1
        safe_two = jnp.where(small, 1.0, two)
        sum_squares = jnp.where(small, count, jnp.expm1(2 * count * log_growth) / safe_two)
        whole = h.mult_noise > 0.5
        var = jnp.where(
            whole | constant,
            m0**2 * count * jnp.exp(2 * (count - 1) * log_growth),
            scale**2 * sum_squares,
        )
        std = h.dw_min_std * jnp.sqrt(jnp.where(count > 0, var, 0.0))
        x = x + std * jax.random.normal(key, jnp.shape(x))
    return jnp.clip(x, h.min_bound, h.max_bound) - h.reference


def response(key, w, n, h: Hidden):
    """Weight after |n| pulses of sign(n) on each device: the closed form where the family has
    one (`_closed_form`), the per-pulse loop (`apply_pulses`) for the others; forward only."""
    _, slope = _linear(n > 0, h)
    # A step that overshoots past the fixed point (1 + a < 1/2, e.g. ReRam arrays' coarse
    # devices) oscillates: there, too, the loop.
    steady = jnp.where(n > 0, slope, -slope) > -0.5
    closed = jnp.isin(jnp.round(h.family), jnp.asarray(_CLOSED_FORM)) & steady
    k_closed, k_loop = (None, None) if key is None else jax.random.split(key)
    looped = apply_pulses(k_loop, w, jnp.where(closed, 0.0, n), h)
    return jnp.where(closed, _closed_form(k_closed, w, jnp.round(n), h), looped)


# Devices on a crossbar.


def chip(t: TechParams, shape, member: int = 0) -> Hidden:
    """The devices of one crossbar array of `shape`: drawn once from the technology's seed, the
    array's shape and `member` (1: a differential pair's partner array), so that every call
    returns the same devices (aihwkit's construction_seed), and no state carries them."""
    salt = zlib.crc32(repr((tuple(shape), member)).encode())
    key = jax.random.fold_in(jax.random.PRNGKey(t.seed.astype(jnp.int32)), salt)
    return populate(key, t, tuple(shape))


def write(key, w, dw, h: Hidden, sigma_w, policy: device.PulsePolicy, noise=None):
    """Writes a wanted change `dw` into devices at persistent weight `w` whose apparent weight
    is `w + noise`; returns (w_new, noise_new, n), all in weight units.

    The open-loop pulse count of aihwkit, n = round(dw / granularity) (capped and floored by
    `policy`'s max_pulses and min_pulses; its model_inverse is not offered here), applied
    with the device's cycle-to-cycle noise (`response`); then Eq. 7's noise at `sigma_w`
    (the sqrt law, on the change achieved, a change of the device itself), clipped to the
    bounds. A device given a pulse gets fresh write noise on its apparent weight (aihwkit's
    write_noise_std dw_min, rpu_linearstep_device.cpp:134-136); one given none keeps `noise`
    (None: 0). The pulse count and response pass gradients straight through (d w_new / d dw
    = 1), as a per-pulse
    loop has no useful derivative in an integer count.
    """
    n = device.rounded_count(dw / h.granularity, dw, policy)  # open loop, aihwkit's step
    k_pulses, k_eq7, k_write = jax.random.split(key, 3)
    frozen = jax.lax.stop_gradient
    pulsed = response(k_pulses, frozen(w), frozen(n), frozen(h))
    straight = w + n * h.granularity
    w_new = straight + frozen(pulsed - straight)
    span = h.max_bound - h.min_bound
    sigma = sigma_w * device.sqrt_law(pulsed - frozen(w), n, span)  # Eq. 7
    w_new = w_new + sigma * jax.random.normal(k_eq7, jnp.shape(w_new))
    w_new = jnp.clip(w_new + h.reference, h.min_bound, h.max_bound) - h.reference
    fresh = h.write_noise * jax.random.normal(k_write, jnp.shape(w_new))
    return w_new, jnp.where(n != 0, fresh, 0.0 if noise is None else noise), n


# aihwkit 1.2.0's presets (src/aihwkit/simulator/presets/devices.py: the class's line, then each
# field's) and its families at their defaults (configs/devices.py). Fields not listed keep the
# family's defaults. Not modelled: the Capacitor's lifetime (decay, L143-144) and the PCM's
# reset (L349-350), both outside one write; BUILD_NOTES.md.
PRESETS = {
    "aihwkit_constant_step": Technology("constant_step"),  # devices.py:337
    "aihwkit_linear_step": Technology("linear_step"),  # devices.py:373
    "aihwkit_soft_bounds": Technology(
        "linear_step", soft_bounds=True, mean_bound_reference=False
    ),  # :536
    "aihwkit_soft_bounds_reference": Technology(
        "soft_bounds_reference", mult_noise=False
    ),  # :683, :711
    "aihwkit_exp_step": Technology("exp_step"),  # devices.py:786
    "aihwkit_pow_step": Technology("pow_step"),  # devices.py:889
    # devices.py:1149 has one node ([1]); five nodes make the interpolation visible.
    "aihwkit_piecewise_step": Technology(
        "piecewise_step",
        piecewise_up=(0.2, 0.6, 1.0, 1.2, 0.8),
        piecewise_down=(1.0, 0.9, 0.7, 0.5, 0.3),
    ),
    # ReRamESPresetDevice(ExpStepDevice), L21: 32-54.
    "reram_es": Technology(
        "exp_step",
        dw_min=0.00135,  # L32
        up_down=0.259359,  # L33
        w_max=1.0,  # L35
        w_min=-1.0,  # L36
        es_a=-0.5,  # L38
        es_b=-0.5,  # L39
        es_gamma_up=5.0,  # L40
        es_gamma_down=5.0,  # L41
        es_A_up=-1.18445,  # L42
        es_A_down=-0.081404,  # L43
        dw_min_dtod=0.2,  # L46
        up_down_dtod=0.05,  # L47
        w_max_dtod=0.3,  # L49
        w_min_dtod=0.3,  # L50
        dw_min_std=5.0,  # L53
        write_noise_std=75.0,  # L54
    ),
    # ReRamSBPresetDevice(SoftBoundsReferenceDevice), L58: 72-89.
    "reram_sb": Technology(
        "soft_bounds_reference",
        dw_min=0.002,  # L72
        up_down=0.0,  # L73
        w_max=1.25,  # L75
        w_min=-0.75,  # L76
        mult_noise=False,  # L78
        dw_min_dtod=0.3,  # L81
        up_down_dtod=0.01,  # L82
        w_max_dtod=0.3 / 1.25,  # L84
        w_min_dtod=0.3 / 0.75,  # L85
        dw_min_std=3.75,  # L88
        write_noise_std=56.0,  # L89
    ),
    # CapacitorPresetDevice(LinearStepDevice), L93: 114-140.
    "capacitor": Technology(
        "linear_step",
        dw_min=0.005,  # L114
        up_down=0.0,  # L115
        w_max=1.0,  # L117
        w_min=-1.0,  # L118
        mult_noise=False,  # L120
        gamma_up=0.05,  # L122
        gamma_down=0.05,  # L123
        dw_min_dtod=0.1,  # L126
        up_down_dtod=0.06,  # L127
        w_max_dtod=0.07,  # L129
        w_min_dtod=0.07,  # L130
        gamma_up_dtod=0.01,  # L132
        gamma_down_dtod=0.01,  # L133
        dw_min_std=0.3,  # L136
        write_noise_std=0.0,  # L137
        mean_bound_reference=True,  # L140
    ),
    # EcRamPresetDevice(LinearStepDevice), L148: 159-185.
    "ecram": Technology(
        "linear_step",
        dw_min=0.002,  # L159
        up_down=0.0,  # L160
        w_max=1.1724,  # L162
        w_min=-0.8276,  # L163
        mult_noise=True,  # L165
        gamma_up=0.1153,  # L167
        gamma_down=0.5085,  # L168
        dw_min_dtod=0.1,  # L171
        up_down_dtod=0.01,  # L172
        w_max_dtod=0.05,  # L174
        w_min_dtod=0.05,  # L175
        gamma_up_dtod=0.05,  # L177
        gamma_down_dtod=0.05,  # L178
        dw_min_std=0.3,  # L181
        write_noise_std=0.0,  # L182
        mean_bound_reference=True,  # L185
    ),
    # EcRamMOPresetDevice(LinearStepDevice), L189: 198-224.
    "ecram_mo": Technology(
        "linear_step",
        dw_min=2.8214e-4,  # L198
        up_down=0.0,  # L199
        w_max=1.1714,  # L201
        w_min=-0.8286,  # L202
        mult_noise=True,  # L204
        gamma_up=0.4152,  # L206
        gamma_down=0.7342,  # L207
        dw_min_dtod=0.1,  # L210
        up_down_dtod=0.01,  # L211
        w_max_dtod=0.05,  # L213
        w_min_dtod=0.05,  # L214
        gamma_up_dtod=0.05,  # L216
        gamma_down_dtod=0.05,  # L217
        dw_min_std=2.0,  # L220
        write_noise_std=0.0,  # L221
        mean_bound_reference=True,  # L224
    ),
    # IdealizedPresetDevice(ConstantStepDevice), L228: 249-261.
    "idealized": Technology(
        "constant_step",
        dw_min=0.0002,  # L249
        dw_min_dtod=0.3,  # L250
        dw_min_std=0.3,  # L251
        up_down=0.0,  # L253
        up_down_dtod=0.0,  # L254
        w_max=1.0,  # L256
        w_min=-1.0,  # L257
        w_max_dtod=0.3,  # L260
        w_min_dtod=0.3,  # L261
    ),
    # GokmenVlasovPresetDevice(ConstantStepDevice), L265: 280-292.
    "gokmen_vlasov": Technology(
        "constant_step",
        dw_min=0.0016,  # L280
        dw_min_dtod=0.3,  # L281
        dw_min_std=0.3,  # L282
        up_down=0.0,  # L284
        up_down_dtod=0.01,  # L285
        w_max=1.0,  # L287
        w_min=-1.0,  # L288
        w_max_dtod=0.3,  # L291
        w_min_dtod=0.3,  # L292
    ),
    # PCMPresetDevice(ExpStepDevice), L296: 321-346.
    "pcm": Technology(
        "exp_step",
        dw_min=0.01,  # L321
        up_down=0.0,  # L322
        w_max=2.0,  # L324
        w_min=0.0,  # L325
        es_a=-1.0,  # L327
        es_b=0.0,  # L328
        es_gamma_up=2.5,  # L329
        es_gamma_down=2.5,  # L330
        es_A_up=-27.235,  # L331
        es_A_down=-2.235,  # L332
        dw_min_dtod=0.2,  # L335
        up_down_dtod=0.05,  # L336
        w_max_dtod=0.1,  # L338
        w_min_dtod=0.0,  # L339
        dw_min_std=0.6,  # L342
        dw_min_std_add=0.042,  # L343
        dw_min_std_slope=0.108,  # L344
        write_noise_std=0.0,  # L346
    ),
    # ReRamArrayOMPresetDevice(SoftBoundsReferenceDevice), L354: 383-409.
    "reram_array_om": Technology(
        "soft_bounds_reference",
        enforce_consistency=True,  # L383
        dw_min_dtod_log_normal=True,  # L384
        dw_min=0.0949,  # L386
        up_down=0.0,  # L387
        w_max=1.0,  # L389
        w_min=-1.0,  # L390
        mult_noise=False,  # L392
        dw_min_dtod=0.7829,  # L395
        up_down_dtod=0.01,  # L396
        w_max_dtod=0.3499,  # L398
        w_min_dtod=0.5695,  # L399
        dw_min_std=0.4158,  # L402
        write_noise_std=1.4113,  # L403
        subtract_symmetry_point=True,  # L408
        reference_std=0.05,  # L409
    ),
    # ReRamArrayHfO2PresetDevice(SoftBoundsReferenceDevice), L413: 442-468.
    "reram_array_hfo2": Technology(
        "soft_bounds_reference",
        enforce_consistency=True,  # L442
        dw_min_dtod_log_normal=True,  # L443
        dw_min=0.4622,  # L445
        up_down=0.0,  # L446
        w_max=1.0,  # L448
        w_min=-1.0,  # L449
        mult_noise=False,  # L451
        dw_min_dtod=0.7125,  # L454
        up_down_dtod=0.01,  # L455
        w_max_dtod=0.4295,  # L457
        w_min_dtod=0.5990,  # L458
        dw_min_std=0.2174,  # L461
        write_noise_std=0.5841,  # L462
        subtract_symmetry_point=True,  # L467
        reference_std=0.05,  # L468
    ),
}
