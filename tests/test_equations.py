"""Each paper equation of the device and crossbar model against an independent computation.

"Independent" means that a test computes the value it expects another way than roa_jax does,
written out here in float64 numpy / math from MODEL.md sections 1-2 and the preset's physical
constants (lam, eta1, eta2, v_set, v_reset, t_p, window): Eq. 1 by integrating the ODE with
RK4 rather than by its closed form, Eq. 2's numbers typed from MODEL.md, pulse counts, write
noise and crossbar currents from the formulas themselves. No expectation calls the function
under test or its helpers (`noise_std`, `pulse_rates`, `nominal_steps`, `conductance_range`,
`crossbar.reference`). Gradients are checked against float64 central differences of the
function, away from its kinks (rounding, clipping, n = 0).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roa_jax import crossbar, device, roa

PAPER = device.paper()

# MODEL.md 1: the Chang et al. current parameters and the read voltage of every preset.
ALPHA, BETA, GAMMA, DELTA, V_READ = 1e-6, 0.5, 8e-5, 1.7, 0.1
G_MIN = ALPHA * (1 - math.exp(-BETA * V_READ)) / V_READ  # Eq. 3 at w = 0, S
G_MAX = GAMMA * math.sinh(DELTA * V_READ) / V_READ  # Eq. 3 at w = 1, S
SPAN = G_MAX - G_MIN


def _drive(params, v):
    """lambda (exp(eta1 V) - exp(-eta2 V)) of Eq. 1, in 1/s, signed like V."""
    lam, eta1, eta2 = float(params.lam), float(params.eta1), float(params.eta2)
    return lam * (math.exp(eta1 * v) - math.exp(-eta2 * v))


def _rate(params, v):
    """Per-pulse rate a = |drive| t_p of the closed form (MODEL.md 1)."""
    return abs(_drive(params, v)) * float(params.t_p)


# Eq. 1: state dynamics.


def _rk4_per_pulse(params, v, w0, num_pulses, substeps=100):
    """w after 0, 1, ..., num_pulses pulses of amplitude v: RK4 on dw/dt = drive g(w).

    g(w) = 1 - s w potentiating, 1 - s (1 - w) depressing, s the window (MODEL.md 1 at s = 1).
    Returns [num_pulses + 1, len(w0)].
    """
    s, drive = float(params.window), _drive(params, v)
    window = (lambda w: 1 - s * w) if v > 0 else (lambda w: 1 - s * (1 - w))
    f = lambda w: drive * window(w)
    h = float(params.t_p) / substeps
    w = np.asarray(w0, np.float64)
    out = [w]
    for _ in range(num_pulses):
        for _ in range(substeps):
            k1 = f(w)
            k2 = f(w + h / 2 * k1)
            k3 = f(w + h / 2 * k2)
            k4 = f(w + h * k3)
            w = w + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(w)
    return np.stack(out)


# (preset, window or None for the preset's own, starting states of potentiation, pulses);
# depression starts from 1 - w0. A window under 1 lets the unclipped ODE leave [0, 1] (its
# fixed point is 1/s), so those cases stop short of the bounds, where the clip would act.
EQ1_CASES = [
    ("paper", None, (0.0, 0.37, 0.9, 1.0), 31),
    ("soft_bounds", None, (0.0, 0.5, 0.95), 31),
    ("paper", 0.5, (0.0, 0.2), 10),
    ("linear_step", None, (0.05, 0.3), 20),
    ("linear_step", 0.005, (0.05, 0.3), 20),
]


@pytest.mark.parametrize("name, window, w0, num_pulses", EQ1_CASES)
@pytest.mark.parametrize("polarity", [1, -1])
def test_eq1_closed_form_equals_integrated_ode(name, window, w0, num_pulses, polarity):
    params = device.preset(name)
    if window is not None:
        params = params._replace(window=jnp.float32(window))
    if polarity < 0:
        w0 = tuple(1.0 - w for w in w0)
    v = float(params.v_set if polarity > 0 else params.v_reset)
    expected = _rk4_per_pulse(params, v, w0, num_pulses)
    n = polarity * np.arange(num_pulses + 1, dtype=np.float32)
    got = device.pulse_response(jnp.asarray(w0)[None, :], jnp.asarray(n)[:, None], params)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    # The pulse-by-pulse reference integrates the same ODE.
    for i, w in enumerate(w0):
        loop = device.pulse_response_loop(jnp.float32(w), polarity * num_pulses, params)
        np.testing.assert_allclose(loop, expected[-1, i], atol=2e-6)


def test_eq1_paper_preset_has_the_stated_pulse_counts():
    # MODEL.md 1: ~30 pulses take w 0 -> 0.95 and ~28 take 1 -> 0.05 (a+ = ln 20 / 30 and
    # a- = ln 20 / 28, the preset's docstring); the RK4 trajectory crosses there too.
    up = _rk4_per_pulse(PAPER, float(PAPER.v_set), (0.0,), 40)[:, 0]
    down = _rk4_per_pulse(PAPER, float(PAPER.v_reset), (1.0,), 40)[:, 0]
    assert int(np.argmax(up >= 0.95)) == 30 and int(np.argmax(down <= 0.05)) == 28


# Eqs. 2-4: current and read conductance.


def test_eq2_current_by_hand():
    v = np.array([-1.0, -0.4, -0.1, 0.05, 0.1, 0.3, 1.0])[:, None]
    w = np.array([0.0, 0.2, 0.5, 0.85, 1.0])[None, :]
    expected = (1 - w) * ALPHA * (1 - np.exp(-BETA * v)) + w * GAMMA * np.sinh(DELTA * v)
    got = device.current(jnp.asarray(v, jnp.float32), jnp.asarray(w, jnp.float32), PAPER)
    np.testing.assert_allclose(got, expected, rtol=2e-6)


def test_eq3_eq4_read_conductance_and_state_by_hand():
    np.testing.assert_allclose(G_MIN, 0.4877e-6, rtol=1e-3)  # MODEL.md: G_min ~ 0.49 uS
    np.testing.assert_allclose(G_MAX, 136.66e-6, rtol=1e-3)  # MODEL.md: G_max ~ 137 uS
    np.testing.assert_allclose(device.conductance_range(PAPER), (G_MIN, G_MAX), rtol=2e-6)
    w = np.array([0.0, 0.1, 0.5, 0.77, 1.0])
    # G(w) = I(V_read, w) / V_read, Eq. 2 written at V_read.
    i_read = (1 - w) * ALPHA * (1 - math.exp(-BETA * V_READ)) + w * GAMMA * math.sinh(
        DELTA * V_READ
    )
    np.testing.assert_allclose(
        device.conductance(jnp.asarray(w), PAPER), i_read / V_READ, rtol=2e-6
    )
    g = np.array([G_MIN, 5e-6, 4e-5, 1e-4, G_MAX])
    np.testing.assert_allclose(device.state(jnp.asarray(g), PAPER), (g - G_MIN) / SPAN, atol=1e-6)


# Eqs. 5-6: pulse counts.


def _nominal_step(name, polarity):
    """One-pulse |dG| at w = 0.5 (S), from the closed form at the preset's window (0 or 1)."""
    p = device.preset(name)
    a = _rate(p, float(p.v_set if polarity > 0 else p.v_reset))
    return SPAN * (a if float(p.window) == 0 else 0.5 * -math.expm1(-a))


@pytest.mark.parametrize("name", ["paper", "linear_step"])
def test_eq5_open_loop_counts_by_hand(name):
    params = device.preset(name)
    up, down = _nominal_step(name, 1), _nominal_step(name, -1)
    # Wanted changes in nominal steps -> round(ratio); under half a step -> 0.
    wanted = [(0.0, 0), (0.49, 0), (0.51, 1), (3.2, 3), (7.7, 8), (-0.45, 0), (-2.7, -3)]
    wanted += [(-11.2, -11)]
    dg = np.array([r * (up if r >= 0 else down) for r, _ in wanted])
    counts = np.array([n for _, n in wanted], np.float32)
    for w in (0.1, 0.5, 0.9):  # open loop never reads the device: the state does not matter
        g = jnp.full(dg.shape, G_MIN + w * SPAN, jnp.float32)
        n = device.pulse_count(g, jnp.asarray(dg, jnp.float32), params, device.open_loop())
        np.testing.assert_array_equal(n, counts)
    capped = device.pulse_count(g, jnp.asarray(dg, jnp.float32), params, device.open_loop(5))
    np.testing.assert_array_equal(capped, np.clip(counts, -5, 5))


def test_eq5_model_inverse_counts_by_hand():
    a_plus, a_minus = _rate(PAPER, 1.0), _rate(PAPER, -1.0)
    moves = [(0.2, 0.6), (0.5, 0.93), (0.05, 0.3), (0.45, 0.47), (0.1, 0.97)]
    moves += [(0.8, 0.3), (0.6, 0.1), (0.3, 0.295)]
    w0, w_target = (np.array(x) for x in zip(*moves, strict=True))
    # Invert the closed form: 1 - w_t = (1 - w0) e^{-a+ n}, w_t = w0 e^{-a- |n|}.
    real = np.where(
        w_target > w0,
        np.log((1 - w0) / (1 - w_target)) / a_plus,
        -np.log(w0 / w_target) / a_minus,
    )
    assert np.all(np.abs(np.abs(real) % 1 - 0.5) > 0.1)  # no case rounds on a knife edge
    g = jnp.asarray(G_MIN + w0 * SPAN, jnp.float32)
    dg = jnp.asarray((w_target - w0) * SPAN, jnp.float32)
    n = device.pulse_count(g, dg, PAPER, device.model_inverse())
    np.testing.assert_array_equal(n, np.round(real))  # includes two under half a pulse -> 0
    capped = device.pulse_count(g, dg, PAPER, device.model_inverse(10))
    np.testing.assert_array_equal(capped, np.clip(np.round(real), -10, 10))


# Eq. 7: write noise.


def _law_std(law, dg_actual, n, scale, sigma_w):
    """The std (S) each law of device.NOISE_LAWS states, written out."""
    dg = abs(dg_actual)
    unit = {
        "sqrt": math.sqrt(dg * SPAN),
        "linear": dg,
        "per_pulse": dg / math.sqrt(abs(n)),
        "range": SPAN,
    }[law]
    return scale * sigma_w * unit


@pytest.mark.parametrize("law", device.NOISE_LAWS)
def test_eq7_write_noise_statistics_by_hand(law):
    scale, per_group = 1.7, 60_000
    params = device.with_noise(PAPER, law, scale)
    up, down = _nominal_step("paper", 1), _nominal_step("paper", -1)
    a_plus, a_minus = _rate(PAPER, 1.0), _rate(PAPER, -1.0)
    # Groups of devices at w = 0.5: +4 and -3 nominal steps (pulsed), 0.3 step and 0 (not).
    counts = (4, -3, 0, 0)
    wanted = (4 * up, -3 * down, 0.3 * up, 0.0)
    dg_actual = (
        SPAN * 0.5 * -math.expm1(-4 * a_plus),  # 1 - (1 - w0) e^{-4 a+} - w0
        -SPAN * 0.5 * -math.expm1(-3 * a_minus),  # w0 e^{-3 a-} - w0
        0.0,
        0.0,
    )
    units = [
        _law_std(law, d, n, scale, 1.0) for d, n in zip(dg_actual[:2], counts[:2], strict=True)
    ]
    sigma_w = 2e-6 / max(units)  # the wider group has a 2 uS std: > 20 std from either bound
    g = np.full(4 * per_group, np.float32(G_MIN + 0.5 * SPAN))
    dg = np.repeat(np.array(wanted, np.float32), per_group)
    g_new, n = device.write(jax.random.PRNGKey(0), jnp.asarray(g), jnp.asarray(dg), params, sigma_w)
    g_new, n = np.asarray(g_new, np.float64), np.asarray(n)
    assert np.all((g_new > G_MIN) & (g_new < G_MAX))  # the clip never acts
    for i, (count, change) in enumerate(zip(counts, dg_actual, strict=True)):
        group = slice(i * per_group, (i + 1) * per_group)
        np.testing.assert_array_equal(n[group], count)
        if count == 0:  # no pulse: exactly no change, no noise
            np.testing.assert_array_equal(g_new[group], g[group])
            continue
        residual = g_new[group] - (g[group].astype(np.float64) + change)
        std = _law_std(law, change, count, scale, sigma_w)
        # Sampling errors: std / sqrt(N) on the mean, std / sqrt(2 N) relative on the std.
        np.testing.assert_allclose(np.mean(residual), 0.0, atol=5 * std / per_group**0.5 + 2e-11)
        np.testing.assert_allclose(np.std(residual), std, rtol=5 / (2 * per_group) ** 0.5)


# Eqs. 8-11: crossbar mapping and MAC.


def _hand_currents(x, g_pos, g_neg=None):
    """Column outputs in weight units: V = V_read x, I = V G, minus the reference, rescaled."""
    g_mid, g_half = (G_MAX + G_MIN) / 2, (G_MAX - G_MIN) / 2
    v = V_READ * np.asarray(x, np.float64)
    current = v @ g_pos
    if g_neg is None:
        return (current - g_mid * v.sum(-1, keepdims=True)) / (V_READ * g_half)
    return (current - v @ g_neg) / (V_READ * 2 * g_half)


@pytest.mark.parametrize("differential", [False, True])
def test_eq8_to_11_mac_by_hand(differential):
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (12, 5))
    x = rng.normal(size=(4, 12))
    g_mid, g_half = (G_MAX + G_MIN) / 2, (G_MAX - G_MIN) / 2
    g_pos, g_neg = g_mid + w * g_half, (g_mid - w * g_half if differential else None)
    xbar = crossbar.program(jnp.asarray(w, jnp.float32), PAPER, differential)
    np.testing.assert_allclose(xbar.g_pos, g_pos, atol=1e-7 * SPAN)  # float32
    if differential:
        np.testing.assert_allclose(xbar.g_neg, g_neg, atol=1e-7 * SPAN)
    expected = _hand_currents(x, g_pos, g_neg)
    np.testing.assert_allclose(expected, x @ w, rtol=1e-10, atol=1e-10)  # ideal: exactly x @ W
    got = crossbar.mac(jnp.asarray(x, jnp.float32), xbar, PAPER)
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_on_crossbar_by_hand(stride):
    rng = np.random.default_rng(1)
    kernel = rng.uniform(-1, 1, (3, 3, 2, 3))
    x = rng.normal(size=(1, 5, 5, 2))
    g = (G_MAX + G_MIN) / 2 + kernel * (G_MAX - G_MIN) / 2
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # SAME for a 3x3 kernel on 5x5
    size = (5 - 1) // stride + 1
    expected = np.zeros((1, size, size, 3))
    for i in range(size):
        for j in range(size):
            patch = padded[0, i * stride : i * stride + 3, j * stride : j * stride + 3, :]
            expected[0, i, j] = _hand_currents(patch.reshape(1, -1), g.reshape(-1, 3))[0]
    xbar = crossbar.program(jnp.asarray(kernel, jnp.float32), PAPER)
    got = crossbar.conv2d(jnp.asarray(x, jnp.float32), xbar, PAPER, stride=stride)
    np.testing.assert_allclose(got, expected, atol=5e-5)


# Eqs. 17-18: the regularization constraint.


@pytest.mark.parametrize("k", [1.0, 4.0])
def test_eq17_18_constraint_by_hand(k):
    kernels = {"conv": [[0.1, -0.3, 0.9], [1.4, -2.0, 0.25]], "head": [[-0.26, 0.6], [0.0, -1.1]]}
    params = {
        "conv": {"kernel": jnp.array(kernels["conv"]), "bias": jnp.array([5.0, -3.0])},
        "norm": {"scale": jnp.array([2.0, -7.0]), "offset": jnp.array([4.0, 0.0])},
        "head": {"kernel": jnp.array(kernels["head"]), "bias": jnp.array([-9.0])},
    }
    # Only the kernels live on crossbars; biases and batch norm are left out.
    expected = sum(
        max(abs(t) - 1 / k, 0.0) ** 2 for rows in kernels.values() for row in rows for t in row
    )
    assert expected > 0
    np.testing.assert_allclose(roa.constraint(params, k), expected, rtol=2e-6)


# Gradients against float64 central differences, away from kinks.


def _f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _assert_grad_is_central_difference(loss, x, eps):
    """jax.grad of the scalar `loss` at `x`, coordinate by coordinate, in float64.

    The difference quotient carries a rounding error of about 1e-16 |loss| / eps.
    """
    x = np.asarray(x, np.float64)
    numeric = np.empty_like(x)
    for i in np.ndindex(x.shape):
        dx = np.zeros_like(x)
        dx[i] = eps
        numeric[i] = (loss(jnp.asarray(x + dx)) - loss(jnp.asarray(x - dx))) / (2 * eps)
    analytic = jax.grad(loss)(jnp.asarray(x))
    assert analytic.dtype == jnp.float64
    rounding = 1e-14 * abs(float(loss(jnp.asarray(x)))) / eps
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=rounding)


def _weighted(y):
    """A fixed, non-uniform cotangent, so every output's derivative counts."""
    return jnp.sum(y * jnp.linspace(1.0, 2.0, y.size).reshape(y.shape))


W_GRID = np.array([0.05, 0.3, 0.62, 0.9])
N_GRID = np.array([0.6, 4.0, -2.5, -13.0])  # no n = 0 (the polarity switch)


@pytest.mark.parametrize("fn", [device.pulse_increment, device.pulse_response])
@pytest.mark.parametrize("window", [1.0, 0.5, 0.005, 0.0])
def test_grad_of_pulse_response_in_n_and_w(fn, window):
    with jax.enable_x64(True):
        p = _f64(PAPER._replace(window=window))  # pulse_response is not clipped on these grids
        _assert_grad_is_central_difference(lambda n: _weighted(fn(W_GRID, n, p)), N_GRID, 1e-5)
        _assert_grad_is_central_difference(lambda w: _weighted(fn(w, N_GRID, p)), W_GRID, 1e-5)


def test_grad_of_current_and_conductance():
    with jax.enable_x64(True):
        p = _f64(PAPER)
        v = np.array([-0.9, -0.2, 0.1, 0.45, 1.0])
        scaled = lambda y: 1e5 * _weighted(y)  # currents are uA
        _assert_grad_is_central_difference(
            lambda v: scaled(device.current(v, W_GRID[:, None], p)), v, 1e-5
        )
        _assert_grad_is_central_difference(
            lambda w: scaled(device.current(v[:, None], w, p)), W_GRID, 1e-5
        )
        _assert_grad_is_central_difference(lambda w: scaled(device.conductance(w, p)), W_GRID, 1e-5)
        g = G_MIN + W_GRID * SPAN
        _assert_grad_is_central_difference(lambda g: _weighted(device.state(g, p)), g, 1e-9)


@pytest.mark.parametrize("law", device.NOISE_LAWS)
def test_grad_of_noise_std_and_write(law):
    with jax.enable_x64(True):
        p = _f64(device.with_noise(PAPER, law, 1.3))
        dg = np.array([-2e-5, -3e-6, 3e-6, 2e-5])  # away from dG = 0
        n = jnp.array([-5.0, -1.0, 1.0, 5.0])
        _assert_grad_is_central_difference(
            lambda d: 1e6 * _weighted(device.noise_std(d, n, p, 0.7)), dg, 1e-12
        )
        # write: the noise is reparameterized (fixed key), so g_new is smooth in g and sigma_w
        # while the (open-loop) counts stay put. Mid range, noise a few uS: no clip acts.
        g = G_MIN + np.array([0.3, 0.45, 0.55, 0.7]) * SPAN
        wanted = jnp.asarray([2.3, -3.6, 5.2, -1.3]) * 0.05 * SPAN
        key, sigma_w = jax.random.PRNGKey(3), {"range": 0.01}.get(law, 0.1)
        new = lambda g, s: device.write(key, g, wanted, p, s)[0]
        assert np.all((new(g, sigma_w) > G_MIN) & (new(g, sigma_w) < G_MAX))
        _assert_grad_is_central_difference(lambda g: 1e4 * _weighted(new(g, sigma_w)), g, 1e-12)
        _assert_grad_is_central_difference(lambda s: 1e4 * _weighted(new(g, s)), sigma_w, 1e-4)


def test_grad_of_write_straight_through_in_dg_by_hand():
    # Rounding passes d/d(dG) straight through: dn/d(dG) = 1 / step, and then
    # g_new = g + dG(n) + sigma(dG(n)) z, with the sqrt law (Eq. 7) and z the fixed noise draw.
    with jax.enable_x64(True):
        p = _f64(PAPER)
        w0 = np.array([0.3, 0.45, 0.55, 0.7])
        g = G_MIN + w0 * SPAN
        ratio = np.array([2.3, 5.2, -3.6, -1.3])  # wanted change in nominal steps
        up, down = _nominal_step("paper", 1), _nominal_step("paper", -1)
        dg = ratio * np.where(ratio > 0, up, down)
        key, sigma_w = jax.random.PRNGKey(4), 0.6
        g_new, n = device.write(key, jnp.asarray(g), jnp.asarray(dg), p, sigma_w)
        np.testing.assert_array_equal(n, np.round(ratio))
        assert np.all((g_new > G_MIN) & (g_new < G_MAX))  # the clip does not act
        a_plus, a_minus = _rate(PAPER, 1.0), _rate(PAPER, -1.0)
        n = np.round(ratio)
        # dG(n) and its slope in n, from the closed form.
        change = np.where(n > 0, SPAN * (1 - w0) * -np.expm1(-a_plus * n), 0.0)
        change = np.where(n < 0, -SPAN * w0 * -np.expm1(a_minus * n), change)
        slope = np.where(n > 0, SPAN * (1 - w0) * a_plus * np.exp(-a_plus * n), 0.0)
        slope = np.where(n < 0, SPAN * w0 * a_minus * np.exp(a_minus * n), slope)
        sigma = sigma_w * np.sqrt(np.abs(change) * SPAN)
        z = (np.asarray(g_new) - g - change) / sigma
        dsigma = sigma_w * np.sqrt(SPAN) * np.sign(change) / (2 * np.sqrt(np.abs(change)))
        expected = (1 + dsigma * z) * slope / np.where(ratio > 0, up, down)
        got = jax.grad(lambda d: jnp.sum(device.write(key, jnp.asarray(g), d, p, sigma_w)[0]))(
            jnp.asarray(dg)
        )
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("differential", [False, True])
def test_grad_of_mac(differential):
    with jax.enable_x64(True):
        p = _f64(PAPER)
        rng = np.random.default_rng(2)
        w = rng.uniform(-0.8, 0.8, (3, 2))
        x = rng.normal(size=(2, 3))
        xbar = _f64(crossbar.program(jnp.asarray(w), p, differential))
        _assert_grad_is_central_difference(lambda x: _weighted(crossbar.mac(x, xbar, p)), x, 1e-3)
        partner = xbar.g_neg
        _assert_grad_is_central_difference(
            lambda g: 1e-4 * _weighted(crossbar.mac(x, crossbar.Crossbar(g, partner), p)),
            xbar.g_pos,
            1e-9,
        )
