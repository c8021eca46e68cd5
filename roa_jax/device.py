"""One memristor: current, read conductance, pulse response, pulse count and write noise.

Every function here is written for a single device and is elementwise, so it applies unchanged
to arrays of devices (a crossbar) and to `DeviceParams` whose leaves are per-device arrays
(device-to-device variation). Parameters are a pytree of floats: `jax.vmap` over a device
preset, a noise level or a pulse policy needs no special code.

Equation numbers refer to the paper as reconstructed in shared/paper/MODEL.md, section 1.

Conventions: `w` is the device state in [0, 1]; `g` a conductance in siemens (S); `v` a voltage
in volts (V); a pulse count `n` is signed, positive for potentiation (SET, conductance up) and
negative for depression (RESET, conductance down).
"""

from __future__ import annotations

import json
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from roa_jax import errors

# Smallest |dG| (in S) fed to a square root, so that gradients stay finite at dG = 0.
_TINY = 1e-30


class DeviceParams(NamedTuple):
    """Physics constants of one device (or of each device, when leaves are arrays)."""

    alpha: jax.Array  # A, Schottky prefactor (Eq. 2)
    beta: jax.Array  # 1/V, Schottky exponent (Eq. 2)
    gamma: jax.Array  # A, tunnelling prefactor (Eq. 2)
    delta: jax.Array  # 1/V, tunnelling exponent (Eq. 2)
    v_read: jax.Array  # V, read voltage; small enough not to disturb w (Eq. 3)
    lam: jax.Array  # 1/s, ion-hopping rate prefactor lambda (Eq. 1)
    eta1: jax.Array  # 1/V, barrier term for the positive exponential (Eq. 1)
    eta2: jax.Array  # 1/V, barrier term for the negative exponential (Eq. 1)
    v_set: jax.Array  # V (> 0), potentiation pulse amplitude
    v_reset: jax.Array  # V (< 0), depression pulse amplitude
    t_p: jax.Array  # s, pulse width
    window: jax.Array  # in [0, 1]: 1 = state window g(w) of Eq. 1 (nonlinear), 0 = linear steps
    # The write-noise law of Eq. 7 (whose exact scaling the paper lost) and its scale; both
    # floats, so one compiled sweep covers several laws (NOISE_LAWS, `noise_std`).
    noise_law: jax.Array = 0.0  # index into NOISE_LAWS; 0 = Eq. 7 as written (MODEL.md 1)
    noise_scale: jax.Array = 1.0  # dimensionless factor on the law's standard deviation


class PulsePolicy(NamedTuple):
    """How the write controller turns a wanted conductance change into a pulse count (Eq. 5).

    Both fields are floats so that a policy can be swept with `jax.vmap` like any parameter.
    """

    model_inverse: jax.Array  # 0 = open_loop (nominal step, no read), 1 = invert Eq. 1 at state
    max_pulses: jax.Array  # largest pulse count one write may apply (inf = no cap)
    min_pulses: jax.Array  # smallest count for a nonzero wanted change (0: small ones round to 0)


def open_loop(max_pulses: float = np.inf) -> PulsePolicy:
    """Nominal-step pulse counts, no read of the device (the paper's non-ideal update)."""
    return PulsePolicy(jnp.float32(0.0), jnp.float32(max_pulses), jnp.float32(0.0))


def model_inverse(max_pulses: float = np.inf) -> PulsePolicy:
    """Pulse counts from inverting the closed-form response at the device's current state."""
    return PulsePolicy(jnp.float32(1.0), jnp.float32(max_pulses), jnp.float32(0.0))


def pulse_policy(name: str, max_pulses: float = np.inf) -> PulsePolicy:
    """Policy by name, as used in configs: 'open_loop' or 'model_inverse'."""
    policies = {"open_loop": open_loop, "model_inverse": model_inverse}
    if name not in policies:
        raise errors.ConfigError(f"pulse_policy={name!r} is not one of {sorted(policies)}.")
    if not max_pulses > 0:
        raise errors.ConfigError(f"max_pulses={max_pulses} must be > 0 (use inf for no cap).")
    return policies[name](max_pulses)


# Presets.


def _params(**kw) -> DeviceParams:
    return DeviceParams(**{k: jnp.float32(v) for k, v in {**_LITERAL_NOISE, **kw}.items()})


# The write-noise laws the paper's wording admits ("the variance of the noise is proportional
# to the range of conductance and to dG; sigma_w is a dimensionless standard deviation"), each
# a standard deviation (S) of the Gaussian added to a written device (MODEL.md 1, issue 10):
#   sqrt:      scale sigma_w sqrt(|dG| (G_max - G_min))   Eq. 7 as written (the literal reading)
#   linear:    scale sigma_w |dG|                         std proportional to the change
#   per_pulse: scale sigma_w |dG| / sqrt(|n|)             independent noise on each of the |n|
#              pulses, of std sigma_w times that pulse's step (|dG| / |n| on average)
#   range:     scale sigma_w (G_max - G_min)              any write, whatever its size
# dG is the noiseless (nonlinear) change and n the pulse count; a device with no pulse gets no
# noise under every law.
NOISE_LAWS = ("sqrt", "linear", "per_pulse", "range")
_LITERAL_NOISE = dict(noise_law=0.0, noise_scale=1.0)


def with_noise(params: DeviceParams, law: str, scale: float = 1.0) -> DeviceParams:
    """`params` with the write-noise law `law` (one of NOISE_LAWS) at `scale`."""
    if law not in NOISE_LAWS:
        raise errors.DeviceError(f"noise law {law!r} is not one of {NOISE_LAWS}.")
    if not (math.isfinite(scale) and scale >= 0):
        raise errors.DeviceError(f"noise scale={scale} must be finite and >= 0.")
    return params._replace(
        noise_law=jnp.float32(NOISE_LAWS.index(law)), noise_scale=jnp.float32(scale)
    )


def with_granularity(params: DeviceParams, factor: float) -> DeviceParams:
    """`params` with `factor` times as many pulses across the range (both rates / factor)."""
    if not (math.isfinite(factor) and factor > 0):
        raise errors.DeviceError(f"granularity factor={factor} must be finite and > 0.")
    return params._replace(lam=params.lam / factor)


# Chang et al. (2011) current parameters, as given in MODEL.md 1; not the paper's lost Table 1.
# With V_read = 0.1 V: G_min ~ 0.49 uS, G_max ~ 137 uS.
_CHANG = dict(alpha=1e-6, beta=0.5, gamma=8e-5, delta=1.7, v_read=0.1)
# Pulses: 1 V / -1 V, 100 us wide (the measured device used 100 us pulses [text]).
_PULSES = dict(eta1=3.0, v_set=1.0, v_reset=-1.0, t_p=1e-4)


def paper() -> DeviceParams:
    """The literal reading: the saturating, asymmetric device of the paper's Fig. 2B, Eq. 7 as
    MODEL.md writes it (the `sqrt` law at scale 1).

    lam and eta2 are chosen so that 30 potentiation pulses take w from 0 to 0.95 and 28
    depression pulses take w from 1 to 0.05 (a+ = ln 20 / 30, a- = ln 20 / 28).
    """
    return _params(**_CHANG, **_PULSES, lam=49.8613, eta2=3.069123, window=1.0)


def soft_bounds() -> DeviceParams:
    """A symmetric soft-bounds device with finer steps: about 300 pulses across the range."""
    return _params(**_CHANG, **_PULSES, lam=4.98613, eta2=3.0, window=1.0)


def linear_step() -> DeviceParams:
    """Quantized but linear and symmetric: 32 equal steps across the range, no saturation."""
    return _params(**_CHANG, **_PULSES, lam=15.597, eta2=3.0, window=0.0)


def ideal() -> DeviceParams:
    """Linear and fine-grained (1e6 steps): with sigma_w = 0 it reproduces exact SGD."""
    return _params(**_CHANG, **_PULSES, lam=4.99109e-4, eta2=3.0, window=0.0)


# The reconstruction calibrated on Omniglot 5-way 1-shot validation tasks against the paper's
# claims (results/calibration; BUILD_NOTES.md, "Write-noise laws and the calibration"): the
# best of 39 laws x scales x granularities and of the finer granularity grid between the two
# best of them, 6 of the 10 claims holding. Re-calibrated on the longer-trained networks
# (results/calibration_cpu_long, 52 reconstructions, stated claims only): tied best with 3x
# and 10x at 6 of 9 stated claims, so kept (BUILD_NOTES.md, "Claims as the paper states
# them, the re-calibration, the constraint").
CALIBRATED = dict(law="sqrt", scale=1.0, granularity=4.0)


def calibrated() -> DeviceParams:
    """The default of the reproduction: `paper` with 4x finer pulses (~120 open-loop levels
    across the window instead of ~30), Eq. 7's sqrt law at scale 1 (CALIBRATED)."""
    noisy = with_noise(paper(), CALIBRATED["law"], CALIBRATED["scale"])
    return with_granularity(noisy, CALIBRATED["granularity"])


PRESETS = {
    "calibrated": calibrated,
    "paper": paper,
    "soft_bounds": soft_bounds,
    "linear_step": linear_step,
    "ideal": ideal,
}


def preset(name: str) -> DeviceParams:
    """A device preset of the paper's model by name (one of `PRESETS`), or the parameters saved
    in a `.json` file; `crossbar.preset` also knows aihwkit's technologies.

    A name ending in `.json` is read with `load_params` (e.g. a fitted device).
    """
    if name.endswith(".json"):
        if not os.path.isfile(name):
            raise errors.DeviceError(f"device parameter file {name!r} does not exist.")
        return load_params(name)
    if name not in PRESETS:
        raise errors.DeviceError(f"device preset {name!r} is not one of {sorted(PRESETS)}.")
    return PRESETS[name]()


def validate(params: DeviceParams) -> DeviceParams:
    """Raises DeviceError if `params` are unphysical; returns them unchanged.

    Call it on concrete (not traced) parameters, at startup. A technology (aihwkit's device
    models, `technologies.TechParams`) was checked when it was built and passes unchanged.
    """
    if not isinstance(params, DeviceParams):
        return params
    p = jax.tree.map(np.asarray, params)
    checks = [
        (p.t_p > 0, "t_p (pulse width, s) must be > 0"),
        (p.v_read > 0, "v_read (V) must be > 0"),
        (p.v_set > 0, "v_set (V) must be > 0"),
        (p.v_reset < 0, "v_reset (V) must be < 0"),
        (p.lam > 0, "lam (1/s) must be > 0"),
        ((p.window >= 0) & (p.window <= 1), "window must be in [0, 1]"),
    ]
    for name in ("alpha", "beta", "gamma", "delta", "eta1", "eta2"):
        checks.append((getattr(p, name) > 0, f"{name} must be > 0"))
    for ok, message in checks:
        if not np.all(ok):
            raise errors.DeviceError(f"Invalid device parameters: {message}.")
    checks.append(
        (
            np.isin(p.noise_law, np.arange(len(NOISE_LAWS))),
            f"noise_law must be one of 0..{len(NOISE_LAWS) - 1} ({', '.join(NOISE_LAWS)})",
        )
    )
    checks.append((p.noise_scale >= 0, "noise_scale must be >= 0"))
    for ok, message in checks[-2:]:
        if not np.all(ok):
            raise errors.DeviceError(f"Invalid device parameters: {message}.")
    g_min, g_max = conductance(0.0, p), conductance(1.0, p)
    if not np.all(g_min < g_max):
        raise errors.DeviceError(
            f"Invalid device parameters: G_min ({np.min(g_min):.3g} S) must be < G_max "
            f"({np.max(g_max):.3g} S); adjust alpha/beta (G_min) or gamma/delta (G_max)."
        )
    return params


def validate_sigma_w(sigma_w) -> None:
    """Raises ConfigError for a negative or non-finite write-noise level."""
    s = np.asarray(sigma_w)
    if not (np.all(np.isfinite(s)) and np.all(s >= 0)):
        raise errors.ConfigError(
            f"sigma_w={sigma_w} must be finite and >= 0 (dimensionless, Eq. 7)."
        )


# Physics for one device.


def current(v, w, params: DeviceParams):
    """Current (A) through the device at voltage `v` (V) and state `w` (Eq. 2)."""
    p = params
    schottky = p.alpha * (1.0 - jnp.exp(-p.beta * v))
    tunnelling = p.gamma * jnp.sinh(p.delta * v)
    return (1.0 - w) * schottky + w * tunnelling


def conductance(w, params: DeviceParams):
    """Read conductance (S) at state `w` (Eq. 3); linear in w."""
    return current(params.v_read, w, params) / params.v_read


def conductance_range(params: DeviceParams):
    """(G_min, G_max) in S: the read conductance at w = 0 and w = 1."""
    return conductance(0.0, params), conductance(1.0, params)


def state(g, params: DeviceParams):
    """State w of a device read at conductance `g` (S) (Eq. 4)."""
    g_min, g_max = conductance_range(params)
    return (g - g_min) / (g_max - g_min)


def pulse_rates(params: DeviceParams):
    """(a+, a-): the per-pulse rates of Eq. 1, a = lambda |exp(eta1 V) - exp(-eta2 V)| t_p."""
    p = params

    def rate(v):
        return p.lam * jnp.abs(jnp.exp(p.eta1 * v) - jnp.exp(-p.eta2 * v)) * p.t_p

    return rate(p.v_set), rate(p.v_reset)


def _relax(x, a, s, n):
    """Increment x_n - x_0 of dx/dn = a (1 - s x) after n >= 0 pulses, for any window s in [0, 1].

    x_n - x_0 = (1/s - x_0) (1 - exp(-a s n)). For s near 0 the 1/s form cancels badly, so there
    it is written (1 - s x_0) a n (1 - exp(-a s n)) / (a s n), which is exactly a n at s = 0.
    Returning the increment (not x_n) keeps one-pulse steps exact in float32 even for the
    fine-grained `ideal` device, and the branch depends on s only, so it is monotone in n.
    """
    k = a * n
    saturating = s >= 0.01
    s_sat = jnp.where(saturating, s, 1.0)
    inc_sat = (1.0 / s_sat - x) * -jnp.expm1(-k * s_sat)
    s_lin = jnp.where(saturating, 0.0, s)
    ks = k * s_lin
    safe = jnp.where(ks > 1e-6, ks, 1.0)
    gain = jnp.where(ks > 1e-6, -jnp.expm1(-safe) / safe, 1.0 - 0.5 * ks)
    inc_lin = (1.0 - s_lin * x) * k * gain
    return jnp.where(saturating, inc_sat, inc_lin)


def pulse_increment(w, n, params: DeviceParams):
    """Change of state, w_n - w, after `n` identical pulses from state `w` (Eq. 1, closed form).

    With window = 1, potentiation gives w_n = 1 - (1 - w) exp(-a+ n) and depression
    w_n = w exp(-a- |n|): steps shrink near the bounds (nonlinear) and a+ != a- (asymmetric).
    With window = 0 every pulse moves w by a+ or a-. `n` may be fractional (used by the
    straight-through gradient); the cost does not depend on |n|. Not clipped: see
    `pulse_response`.
    """
    a_plus, a_minus = pulse_rates(params)
    up = n >= 0
    # Depression is potentiation of 1 - w at the depression rate. Only the pulse's own
    # polarity is computed (one transcendental per device, not two).
    x, a = jnp.where(up, w, 1.0 - w), jnp.where(up, a_plus, a_minus)
    return jnp.where(up, 1.0, -1.0) * _relax(x, a, params.window, jnp.where(up, n, -n))


def pulse_response(w, n, params: DeviceParams):
    """State after `n` identical pulses from state `w`, clipped to [0, 1] (Eq. 1)."""
    return jnp.clip(w + pulse_increment(w, n, params), 0.0, 1.0)


def pulse_response_loop(w, n: int, params: DeviceParams):
    """Reference for `pulse_response`: applies |n| single pulses one after another."""
    sign = 1.0 if n >= 0 else -1.0
    for _ in range(abs(int(n))):
        w = pulse_response(w, sign, params)
    return w


def nominal_steps(params: DeviceParams):
    """(dG+, dG-) in S: the one-pulse conductance changes at w = 0.5 (open-loop step, Eq. 5)."""
    g_min, g_max = conductance_range(params)
    span = g_max - g_min
    return span * pulse_increment(0.5, 1.0, params), -span * pulse_increment(0.5, -1.0, params)


def _inverse_pulses(w, w_target, params: DeviceParams):
    """Real-valued pulse count that takes `w` to `w_target` under Eq. 1 (model inverse)."""
    a_plus, a_minus = pulse_rates(params)
    s = params.window

    def count(x, x_target, a):
        # Invert _relax: n = log((1 - s x) / (1 - s x_t)) / (a s), or (x_t - x) / a at s = 0.
        num = jnp.maximum(1.0 - s * x, 1e-12)
        den = jnp.maximum(1.0 - s * x_target, 1e-12)
        safe_s = jnp.where(s > 1e-6, s, 1.0)
        return jnp.where(s > 1e-6, jnp.log(num / den) / (a * safe_s), (x_target - x) / a)

    up = count(w, jnp.minimum(w_target, 1.0 - 1e-6), a_plus)
    down = count(1.0 - w, jnp.minimum(1.0 - w_target, 1.0 - 1e-6), a_minus)
    return jnp.where(w_target >= w, up, -down)


def _round_ste(x):
    """round(x) forward; identity gradient (straight-through estimator)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def pulse_count(g, dg, params: DeviceParams, policy: PulsePolicy):
    """Signed integer pulse count for a wanted change `dg` (S) of a device at `g` (S) (Eqs. 5-6).

    open_loop: n = round(dg / nominal step of dg's polarity); model_inverse: the closed form
    inverted at the device's state, rounded. Changes under half a step give 0 pulses (unless
    the policy sets min_pulses), and counts are capped at max_pulses. The count
    is returned as a float with a straight-through gradient, so that d(n)/d(dg) is defined.
    """
    step_up, step_down = nominal_steps(params)
    n_open = jnp.where(dg >= 0, dg / step_up, dg / step_down)
    w_target = jnp.clip(state(g + dg, params), 0.0, 1.0)
    n_inverse = _inverse_pulses(state(g, params), w_target, params)
    return rounded_count(jnp.where(policy.model_inverse > 0.5, n_inverse, n_open), dg, policy)


def rounded_count(n, dg, policy: PulsePolicy):
    """A real pulse count `n` for a wanted change `dg`, as the write applies it: capped at the
    policy's max_pulses, rounded (straight-through), at least min_pulses where dg != 0."""
    n = _round_ste(jnp.clip(n, -policy.max_pulses, policy.max_pulses))
    floor = jnp.where(dg != 0, policy.min_pulses, 0.0)
    return jnp.where(jnp.abs(n) < floor, jnp.sign(dg) * floor, n)


def standard_normals(key, shape, dtype=jnp.float32):
    """The standard normals of a write's noise (Eq. 7), drawn from `key` for a write of `shape`."""
    return jax.random.normal(key, shape, dtype=dtype)


def write(
    key, g, dg, params: DeviceParams, sigma_w, policy: PulsePolicy | None = None, normals=None
):
    """Writes a wanted change `dg` (S) into a device at conductance `g` (S); returns (g_new, n).

    dG -> pulse count (Eqs. 5-6) -> nonlinear response (Eq. 1) -> write noise (Eq. 7):

        G_new = clip(G_0 + dG_actual + N(0, sigma^2), G_min, G_max),
        sigma = sigma_w * sqrt(|dG_actual| * (G_max - G_min))   (the 'sqrt' law; `noise_std`
                                                                 gives the others).

    A device given no pulse changes not at all and gets no noise. Differentiable in `g` and
    `dg`: the rounding passes gradients straight through and the noise is reparameterized.

    Args:
      key: PRNG key for the write noise.
      g: current conductance(s), S.
      dg: wanted change(s), S; same shape as `g` or broadcastable.
      params: device parameters (scalars or per-device arrays).
      sigma_w: dimensionless write-noise level, >= 0.
      policy: pulse policy; default `open_loop()`.
      normals: the noise's standard normals, drawn beforehand (`standard_normals(key, ...)`
        with the write's shape); None draws them from `key`.

    Returns:
      (g_new, n): new conductances (S) and the signed pulse counts applied.
    """
    policy = open_loop() if policy is None else policy
    n = pulse_count(g, dg, params, policy)
    g_min, g_max = conductance_range(params)
    w = state(g, params)
    # The Eq. 1 change, computed as an increment so that small steps keep their precision.
    dg_actual = (g_max - g_min) * (jnp.clip(w + pulse_increment(w, n, params), 0.0, 1.0) - w)
    g_pulsed = g + dg_actual
    sigma = noise_std(dg_actual, n, params, sigma_w)  # Eq. 7
    if normals is None:
        normals = standard_normals(key, jnp.shape(sigma), jnp.result_type(g))
    noise = sigma * normals
    # No `where(pulsed, ..., g)`: a device with n = 0 already gets dG_actual = 0 and no noise,
    # and leaving it out keeps the straight-through gradient d(g_new)/d(dg) for devices whose
    # update rounded to zero pulses.
    g_new = jnp.clip(g_pulsed + noise, g_min, g_max)
    return g_new, n


def noise_std(dg_actual, n, params: DeviceParams, sigma_w):
    """Standard deviation (S) of the write noise of a change `dg_actual` (S) by `n` pulses.

    Eq. 7 under the device's `noise_law` (NOISE_LAWS) times its `noise_scale`; 0 where n = 0.
    Every law's value is a smooth function of dG away from dG = 0, and the square roots are
    guarded (double `where`), so gradients stay finite.
    """
    g_min, g_max = conductance_range(params)
    span = g_max - g_min
    pulsed = n != 0
    magnitude = jnp.where(pulsed, jnp.abs(dg_actual) + _TINY, 1.0)
    pulses = jnp.where(pulsed, jnp.abs(n), 1.0)
    laws = (
        sqrt_law(dg_actual, n, span),  # sqrt (Eq. 7 as written)
        magnitude,  # linear
        magnitude / jnp.sqrt(pulses),  # per_pulse
        span + jnp.zeros_like(magnitude),  # range (broadcast both ways: per-device params)
    )
    law = jnp.round(params.noise_law)
    std = sum(jnp.where(law == i, x, 0.0) for i, x in enumerate(laws))
    return jnp.where(pulsed, params.noise_scale * sigma_w * std, 0.0)


def sqrt_law(dg_actual, n, span):
    """sqrt(|dG| span), Eq. 7's factor as written; 0 where no pulse was given or nothing moved.

    A pulsed device that did not move (at a bound, pushed further) has no noise; its square root
    is taken at 1, not at ~0, where its derivative would blow up (double `where`).
    """
    moved = (n != 0) & (dg_actual != 0)
    magnitude = jnp.where(moved, jnp.abs(dg_actual) + _TINY, 1.0)
    return jnp.where(moved, jnp.sqrt(magnitude * span), 0.0)


# Device-to-device variation (off in the paper reproduction).


def sample_variation(key, params: DeviceParams, shape, spread: float) -> DeviceParams:
    """Per-device parameters with log-normal device-to-device variation (sampled once).

    G_min (through alpha), G_max (through gamma) and both pulse rates (through lambda) are each
    multiplied by an independent exp(N(0, spread^2)) per device. spread = 0 returns arrays of
    the nominal values.
    """
    if not spread >= 0:
        raise errors.DeviceError(f"variation spread={spread} must be >= 0.")
    k_alpha, k_gamma, k_lam = jax.random.split(key, 3)

    def scaled(k, x):
        return x * jnp.exp(spread * jax.random.normal(k, shape))

    per_device = jax.tree.map(lambda x: jnp.broadcast_to(x, shape), params)
    return per_device._replace(
        alpha=scaled(k_alpha, params.alpha),
        gamma=scaled(k_gamma, params.gamma),
        lam=scaled(k_lam, params.lam),
    )


# Saving and loading parameters.

PARAMS_FORMAT = "roa_jax.DeviceParams/1"


def save_params(path, params: DeviceParams) -> None:
    """Writes scalar `params` to `path` as JSON: one number per field, plus 'format'.

    Float32 values are written as the float64 numbers they equal, so `load_params` returns
    them exactly.
    """
    values = {"format": PARAMS_FORMAT}
    for name, x in params._asdict().items():
        x = np.asarray(x)
        if x.shape != () or not np.isfinite(x):
            raise errors.DeviceError(f"save_params: field {name}={x} must be a finite scalar.")
        values[name] = float(x)
    with open(path, "w") as f:
        json.dump(values, f, indent=2)
        f.write("\n")


def load_params(path) -> DeviceParams:
    """Reads parameters written by `save_params`; raises DeviceError naming `path` if bad.

    The file must hold every `DeviceParams` field as a finite number and nothing else but
    'format' (= PARAMS_FORMAT); the result must pass `validate`.
    """
    try:
        with open(path) as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.DeviceError(f"device parameter file {path}: not valid JSON ({e}).") from e
    if not isinstance(values, dict) or values.get("format") != PARAMS_FORMAT:
        raise errors.DeviceError(
            f"device parameter file {path}: expected a JSON object with "
            f"'format': {PARAMS_FORMAT!r}."
        )
    fields = set(DeviceParams._fields)
    values = {**_LITERAL_NOISE, **values}  # files saved before the noise law was a field
    problems = []
    if missing := sorted(fields - set(values)):
        problems.append(f"missing fields {missing}")
    if unknown := sorted(set(values) - fields - {"format"}):
        problems.append(f"unknown fields {unknown}")
    if problems:
        raise errors.DeviceError(f"device parameter file {path}: {', '.join(problems)}.")
    for name in DeviceParams._fields:
        x = values[name]
        number = isinstance(x, (int, float)) and not isinstance(x, bool)
        if not (number and math.isfinite(x) and abs(x) <= float(np.finfo(np.float32).max)):
            raise errors.DeviceError(
                f"device parameter file {path}: {name}={x!r} is not a finite float32 number."
            )
    params = DeviceParams(**{name: jnp.float32(values[name]) for name in DeviceParams._fields})
    try:
        return validate(params)
    except errors.DeviceError as e:
        raise errors.DeviceError(f"device parameter file {path}: {e}") from e
