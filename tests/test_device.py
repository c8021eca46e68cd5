"""Physics invariants of the single-device model (roa_jax/device.py), and its parameter files."""

import json
import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from roa_jax import config, device, errors

PAPER = device.paper()


def _mid_g(params, shape=()):
    return jnp.full(shape, device.conductance(0.5, params))


class DeviceTest(parameterized.TestCase):
    def test_read_conductance_matches_current_model(self):
        g_min, g_max = device.conductance_range(PAPER)
        # MODEL.md 1: G_min ~ 0.49 uS, G_max ~ 137 uS for the Chang parameters at V_read = 0.1 V.
        np.testing.assert_allclose(g_min, 0.4877e-6, rtol=1e-3)
        np.testing.assert_allclose(g_max, 136.66e-6, rtol=1e-3)
        w = jnp.linspace(0, 1, 11)
        np.testing.assert_allclose(device.state(device.conductance(w, PAPER), PAPER), w, atol=1e-6)

    def test_paper_preset_pulse_counts(self):
        # About 30 potentiation pulses take w 0 -> 0.95, about 28 depression pulses 1 -> 0.05.
        n = jnp.arange(0, 60, dtype=jnp.float32)
        up = device.pulse_response(0.0, n, PAPER)
        down = device.pulse_response(1.0, -n, PAPER)
        self.assertEqual(int(jnp.argmax(up >= 0.95)), 30)
        self.assertEqual(int(jnp.argmax(down <= 0.05)), 28)

    @parameterized.parameters("paper", "soft_bounds", "linear_step", "ideal")
    def test_response_monotone_and_saturating(self, name):
        p = device.preset(name)
        n = jnp.linspace(0, 20 / min(device.pulse_rates(p)), 201)  # far past full range
        for w0 in (0.0, 0.3, 0.9):
            up = device.pulse_response(w0, n, p)
            down = device.pulse_response(w0, -n, p)
            self.assertTrue(bool(jnp.all(jnp.diff(up) >= 0)))
            self.assertTrue(bool(jnp.all(jnp.diff(down) <= 0)))
            np.testing.assert_allclose(up[-1], 1.0, atol=1e-6)  # saturates at the bounds
            np.testing.assert_allclose(down[-1], 0.0, atol=1e-6)

    def test_window_makes_steps_shrink_near_bounds(self):
        step = lambda w, n: abs(float(device.pulse_response(w, n, PAPER)) - w)
        self.assertGreater(step(0.1, 1.0), 5 * step(0.95, 1.0))
        self.assertGreater(step(0.9, -1.0), 5 * step(0.05, -1.0))
        linear = device.linear_step()
        lstep = lambda w, n: abs(float(device.pulse_response(w, n, linear)) - w)
        np.testing.assert_allclose(lstep(0.1, 1.0), lstep(0.8, 1.0), rtol=1e-4)

    def test_asymmetry_as_configured(self):
        a_plus, a_minus = device.pulse_rates(PAPER)
        np.testing.assert_allclose(a_minus / a_plus, 30 / 28, rtol=2e-3)
        # At w = 0.5 (window 1) the one-pulse steps are 0.5 (1 - exp(-a)) for each polarity.
        up, down = device.nominal_steps(PAPER)
        g_min, g_max = device.conductance_range(PAPER)
        np.testing.assert_allclose(up / (g_max - g_min), 0.5 * -np.expm1(-a_plus), rtol=1e-4)
        np.testing.assert_allclose(down / (g_max - g_min), 0.5 * -np.expm1(-a_minus), rtol=1e-4)
        sym = device.soft_bounds()
        np.testing.assert_allclose(*device.pulse_rates(sym), rtol=1e-6)

    def test_pulse_count_rounding_and_threshold(self):
        g = _mid_g(PAPER, (5,))
        up, down = device.nominal_steps(PAPER)
        dg = jnp.array([0.0, 0.49 * up, 0.51 * up, 3.2 * up, -2.7 * down])
        n = device.pulse_count(g, dg, PAPER, device.open_loop())
        np.testing.assert_array_equal(n, [0, 0, 1, 3, -3])
        capped = device.pulse_count(g, dg, PAPER, device.open_loop(max_pulses=2))
        np.testing.assert_array_equal(capped, [0, 0, 1, 2, -2])

    def test_model_inverse_is_more_accurate_than_open_loop(self):
        # Near the top of the range a wanted increase is under-delivered by the open-loop count.
        g_min, g_max = device.conductance_range(PAPER)
        g = jnp.full((50,), g_min + 0.8 * (g_max - g_min))
        dg = jnp.linspace(0.01, 0.15, 50) * (g_max - g_min)
        key = jax.random.PRNGKey(0)
        err = {}
        for name in ("open_loop", "model_inverse"):
            g_new, _ = device.write(key, g, dg, PAPER, 0.0, device.pulse_policy(name))
            err[name] = float(jnp.mean(jnp.abs(g_new - (g + dg))))
        self.assertLess(err["model_inverse"], 0.3 * err["open_loop"])

    def test_zero_update_zero_pulses_no_noise(self):
        g = jax.random.uniform(jax.random.PRNGKey(1), (1000,), minval=1e-6, maxval=1.3e-4)
        up, _ = device.nominal_steps(PAPER)
        dg = jnp.where(jnp.arange(1000) % 2 == 0, 0.0, 0.3 * up)  # zero or under half a step
        g_new, n = device.write(jax.random.PRNGKey(2), g, dg, PAPER, sigma_w=3.0)
        np.testing.assert_array_equal(n, 0.0)
        np.testing.assert_array_equal(g_new, g)

    def test_conductance_stays_in_bounds(self):
        keys = jax.random.split(jax.random.PRNGKey(3), 4)
        g_min, g_max = device.conductance_range(PAPER)
        g = jax.random.uniform(keys[0], (20000,), minval=g_min, maxval=g_max)
        dg = 2 * (g_max - g_min) * jax.random.normal(keys[1], (20000,))
        for policy in (device.open_loop(), device.model_inverse()):
            g_new, _ = device.write(keys[2], g, dg, PAPER, sigma_w=5.0, policy=policy)
            self.assertTrue(bool(jnp.all((g_new >= g_min) & (g_new <= g_max))))

    def test_straight_through_gradient_reaches_zero_pulse_devices(self):
        # An update under half a step writes nothing, yet d(g_new)/d(dg) is the slope of the
        # continuous response (straight-through), so hardware-aware meta-training can learn
        # to enlarge such updates.
        g = _mid_g(PAPER, (3,))
        up, _ = device.nominal_steps(PAPER)
        dg = jnp.array([0.0, 0.2, -0.2]) * up

        def total(dg):
            g_new, n = device.write(jax.random.PRNGKey(9), g, dg, PAPER, sigma_w=1.0)
            return jnp.sum(g_new), n

        grad, n = jax.grad(total, has_aux=True)(dg)
        np.testing.assert_array_equal(n, 0.0)
        np.testing.assert_allclose(grad, 1.0, rtol=0.1)

    @chex.variants(with_jit=True, without_jit=True)
    def test_write_jit_equals_no_jit(self):
        g = jnp.linspace(1e-5, 1.2e-4, 32)
        dg = jnp.linspace(-3e-5, 3e-5, 32)
        write = self.variant(lambda k, g, dg: device.write(k, g, dg, PAPER, 0.7))
        reference = device.write(jax.random.PRNGKey(6), g, dg, PAPER, 0.7)
        chex.assert_trees_all_close(write(jax.random.PRNGKey(6), g, dg), reference, rtol=1e-5)

    def test_vmap_over_sigma_policy_and_preset_equals_loop(self):
        key = jax.random.PRNGKey(7)
        g = jnp.linspace(1e-5, 1.2e-4, 16)
        dg = jnp.linspace(-2e-5, 2e-5, 16)
        sigmas = jnp.array([0.0, 0.5, 1.0, 3.0])
        out = jax.vmap(lambda s: device.write(key, g, dg, PAPER, s)[0])(sigmas)
        loop = jnp.stack([device.write(key, g, dg, PAPER, s)[0] for s in sigmas])
        chex.assert_trees_all_close(out, loop, rtol=1e-6)

        policies = [device.open_loop(), device.model_inverse(), device.open_loop(max_pulses=3)]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *policies)
        out = jax.vmap(lambda pol: device.write(key, g, dg, PAPER, 0.3, pol)[0])(stacked)
        loop = jnp.stack([device.write(key, g, dg, PAPER, 0.3, pol)[0] for pol in policies])
        chex.assert_trees_all_close(out, loop, rtol=1e-6)

        presets = [device.preset(n) for n in device.PRESETS]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *presets)
        out = jax.vmap(lambda p: device.write(key, g, dg, p, 0.3)[0])(stacked)
        loop = jnp.stack([device.write(key, g, dg, p, 0.3)[0] for p in presets])
        chex.assert_trees_all_close(out, loop, rtol=1e-6)

    def test_variation_is_per_device_and_keyed(self):
        p = device.sample_variation(jax.random.PRNGKey(8), PAPER, (1000,), spread=0.1)
        chex.assert_shape(p.alpha, (1000,))
        g_min, g_max = device.conductance_range(p)
        self.assertGreater(float(jnp.std(g_max) / jnp.mean(g_max)), 0.05)
        same = device.sample_variation(jax.random.PRNGKey(8), PAPER, (1000,), spread=0.1)
        chex.assert_trees_all_equal(p, same)
        none = device.sample_variation(jax.random.PRNGKey(8), PAPER, (3,), spread=0.0)
        np.testing.assert_allclose(none.alpha, PAPER.alpha)

    @parameterized.parameters(
        (dict(t_p=0.0), "t_p"),
        (dict(t_p=-1e-4), "t_p"),
        (dict(gamma=1e-9), "G_min"),
        (dict(v_reset=0.5), "v_reset"),
        (dict(window=1.5), "window"),
        (dict(noise_law=7.0), "noise_law must be one of 0..3"),
        (dict(noise_law=0.5), "noise_law"),
        (dict(noise_scale=-0.1), "noise_scale must be >= 0"),
    )
    def test_bad_parameters_raise(self, change, message):
        with self.assertRaisesRegex(ValueError, message):
            device.validate(PAPER._replace(**{k: jnp.float32(v) for k, v in change.items()}))

    def test_bad_noise_and_names_raise(self):
        device.validate_sigma_w(0.0)
        with pytest.raises(ValueError, match="sigma_w"):
            device.validate_sigma_w(-0.1)
        with pytest.raises(ValueError, match="pulse_policy"):
            device.pulse_policy("closed_loop")
        with pytest.raises(ValueError, match="preset"):
            device.preset("nope")
        for name in device.PRESETS:
            device.validate(device.preset(name))


# Write-noise laws (Eq. 7 and the alternatives of NOISE_LAWS).


def _expected_std(law, dg, n, params, sigma_w):
    """The std each law states (device.py, NOISE_LAWS), in S, written out independently."""
    g_min, g_max = (float(g) for g in device.conductance_range(params))
    span, dg = g_max - g_min, abs(float(dg))
    return (
        float(params.noise_scale)
        * sigma_w
        * {
            "sqrt": math.sqrt(dg * span),
            "linear": dg,
            "per_pulse": dg / math.sqrt(abs(n)),
            "range": span,
        }[law]
    )


@pytest.mark.parametrize("law", device.NOISE_LAWS)
def test_each_law_has_its_stated_form(law):
    up, _ = device.nominal_steps(PAPER)
    params = device.with_noise(PAPER, law)
    for dg, n in ((up, 1), (4 * up, 4), (-9 * up, -9), (2 * up, 7), (1e-9, 3)):
        got = float(device.noise_std(jnp.float32(dg), float(n), params, 0.7))
        np.testing.assert_allclose(got, _expected_std(law, dg, n, params, 0.7), rtol=1e-5)
    std = lambda dg, n, p=params: float(device.noise_std(jnp.float32(dg), float(n), p, 0.7))
    form = {  # std(4 dG, n) / std(dG, n), and std(dG, 4 n) / std(dG, n)
        "sqrt": (2.0, 1.0),
        "linear": (4.0, 1.0),
        "per_pulse": (4.0, 0.5),
        "range": (1.0, 1.0),
    }[law]
    np.testing.assert_allclose(std(4 * up, 2) / std(up, 2), form[0], rtol=1e-5)
    np.testing.assert_allclose(std(up, 8) / std(up, 2), form[1], rtol=1e-5)
    np.testing.assert_allclose(std(-up, -2), std(up, 2), rtol=1e-6)  # polarity does not matter
    scaled = device.with_noise(PAPER, law, 2.5)
    np.testing.assert_allclose(std(up, 2, scaled), 2.5 * std(up, 2), rtol=1e-6)
    assert std(up, 2, device.with_noise(PAPER, law, 0.0)) == 0.0
    # Per-device parameters (variation) with one scalar change: one std per device.
    per_device = device.sample_variation(jax.random.PRNGKey(0), params, (3,), spread=0.1)
    chex.assert_shape(device.noise_std(jnp.float32(up), 2.0, per_device, 0.7), (3,))


@pytest.mark.parametrize("law", device.NOISE_LAWS)
def test_zero_pulses_give_no_noise_under_every_law(law):
    params = device.with_noise(PAPER, law, 3.0)
    g = jax.random.uniform(jax.random.PRNGKey(1), (1000,), minval=1e-6, maxval=1.3e-4)
    up, _ = device.nominal_steps(params)
    dg = jnp.where(jnp.arange(1000) % 2 == 0, 0.0, 0.3 * up)  # zero or under half a step
    g_new, n = device.write(jax.random.PRNGKey(2), g, dg, params, sigma_w=3.0)
    np.testing.assert_array_equal(n, 0.0)
    np.testing.assert_array_equal(g_new, g)
    np.testing.assert_array_equal(device.noise_std(up, 0.0, params, 3.0), 0.0)
    np.testing.assert_array_equal(device.noise_std(0.0, 0.0, params, 3.0), 0.0)


def test_vmap_over_noise_laws_equals_loop():
    key = jax.random.PRNGKey(7)
    g = jnp.linspace(1e-5, 1.2e-4, 16)
    dg = jnp.linspace(-2e-5, 2e-5, 16)
    devices = [
        device.with_noise(PAPER, law, s)
        for law, s in zip(device.NOISE_LAWS, (1, 2, 3, 4), strict=True)
    ]
    devices.append(device.with_noise(device.soft_bounds(), "per_pulse", 0.5))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *devices)
    out = jax.vmap(lambda p: device.write(key, g, dg, p, 0.1)[0])(stacked)
    loop = jnp.stack([device.write(key, g, dg, p, 0.1)[0] for p in devices])
    chex.assert_trees_all_close(out, loop, rtol=1e-6)
    # The laws really differ (the test would pass trivially if noise_law were ignored).
    for i in range(1, len(device.NOISE_LAWS)):
        assert not np.allclose(loop[0], loop[i], rtol=1e-3)


@pytest.mark.parametrize("law", device.NOISE_LAWS)
def test_gradients_through_write_are_finite_under_every_law(law):
    # At the kinks (bounds, dG = 0, zero pulses), where no difference quotient applies; away
    # from them tests/test_equations.py checks the values against central differences.
    params = device.with_noise(PAPER, law, 1.0)
    g_min, g_max = device.conductance_range(params)
    up, _ = device.nominal_steps(params)
    # Mid range, and at both bounds pushed outward (pulses but dG_actual = 0), and dG = 0.
    g = jnp.concatenate([jnp.linspace(1e-5, 1.2e-4, 61), jnp.stack([g_max, g_min, g_max])])
    dg = jnp.concatenate([jnp.linspace(-5, 5, 61) * up, jnp.stack([3 * up, -3 * up, 0 * up])])

    def loss(g, dg):
        g_new, n = device.write(jax.random.PRNGKey(5), g, dg, params, sigma_w=1.0)
        return jnp.sum(g_new**2) * 1e8, n

    grads, n = jax.grad(loss, argnums=(0, 1), has_aux=True)(g, dg)
    np.testing.assert_array_equal(n[-3:], [3.0, -3.0, 0.0])
    np.testing.assert_array_equal(n[30], 0.0)  # dG = 0 in the sweep
    chex.assert_tree_all_finite(grads)
    std_grad = jax.grad(lambda d: device.noise_std(d, 2.0, params, 1.0))(0.0)
    chex.assert_tree_all_finite(std_grad)


def test_with_noise_and_with_granularity_reject_bad_input():
    for law, scale, message in (
        ("cubic", 1.0, "noise law 'cubic'"),
        ("sqrt", -1.0, "noise scale"),
        ("sqrt", float("nan"), "noise scale"),
        ("linear", float("inf"), "noise scale"),
    ):
        with pytest.raises(ValueError, match=message):
            device.with_noise(PAPER, law, scale)
    for factor in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="granularity factor"):
            device.with_granularity(PAPER, factor)
    p = device.with_noise(PAPER, "range", 0.5)
    assert float(p.noise_law) == device.NOISE_LAWS.index("range") and float(p.noise_scale) == 0.5
    device.validate(p)


def test_granularity_multiplies_the_pulses_across_the_range():
    n = jnp.arange(0, 700, dtype=jnp.float32)
    for factor in (1, 10):
        fine = device.with_granularity(PAPER, factor)
        up = int(jnp.argmax(device.pulse_response(0.0, n, fine) >= 0.95))
        down = int(jnp.argmax(device.pulse_response(1.0, -n, fine) <= 0.05))
        assert abs(up - 30 * factor) <= factor // 2 and abs(down - 28 * factor) <= factor // 2
        # The nominal step shrinks with the rates (one pulse is a 1/factor-th of a step).
        np.testing.assert_allclose(
            device.nominal_steps(fine)[0], device.nominal_steps(PAPER)[0] / factor, rtol=0.05
        )


# Parameter files (save_params, load_params, preset of a .json).


def _odd_params():
    """Float32 values whose float64 repr has many digits, and a non-default noise law."""
    return device.with_noise(
        PAPER._replace(
            lam=jnp.float32(1.0 / 3.0), window=jnp.float32(0.1), alpha=jnp.float32(7e-7)
        ),
        "per_pulse",
        1.0 / 3.0,
    )


@pytest.mark.parametrize("name", [*device.PRESETS, "odd"])
def test_save_load_round_trip_is_exact(tmp_path, name):
    params = _odd_params() if name == "odd" else device.preset(name)
    path = str(tmp_path / f"{name}.json")
    device.save_params(path, params)
    with open(path) as f:
        assert json.load(f)["format"] == "roa_jax.DeviceParams/1"
    for loaded in (device.load_params(path), device.preset(path)):
        chex.assert_trees_all_equal(loaded, params)
        chex.assert_trees_all_equal_dtypes(loaded, params)
    # And the device behaves identically.
    g, dg = jnp.linspace(1e-5, 1.2e-4, 8), jnp.linspace(-2e-5, 2e-5, 8)
    chex.assert_trees_all_equal(
        device.write(jax.random.PRNGKey(0), g, dg, device.preset(path), 0.5),
        device.write(jax.random.PRNGKey(0), g, dg, params, 0.5),
    )


def _saved(tmp_path, change):
    values = {"format": "roa_jax.DeviceParams/1"}
    values.update({k: float(v) for k, v in PAPER._asdict().items()})
    change(values)
    path = tmp_path / "params.json"
    path.write_text(json.dumps(values))
    return str(path)


def test_file_from_before_the_noise_fields_loads_with_the_literal_law(tmp_path):
    def drop_noise_fields(values):
        del values["noise_law"], values["noise_scale"]

    path = _saved(tmp_path, drop_noise_fields)
    assert "noise_law" not in json.loads(pathlib.Path(path).read_text())
    loaded = device.load_params(path)
    assert float(loaded.noise_law) == 0.0 and float(loaded.noise_scale) == 1.0
    chex.assert_trees_all_equal(loaded, PAPER)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: v.pop("lam"), r"missing fields \['lam'\]"),
        (lambda v: v.update(colour=1.0), r"unknown fields \['colour'\]"),
        (lambda v: v.update(t_p=float("nan")), "t_p=nan is not a finite float32 number"),
        (lambda v: v.update(gamma="big"), "gamma='big' is not a finite"),
        (lambda v: v.update(alpha=1e300), "alpha=1e[+]?300 is not a finite float32"),
        (lambda v: v.update(window=True), "window=True is not a finite"),
        (lambda v: v.update(format="other/2"), "'format'"),
        (lambda v: v.update(window=2.0), "window must be in"),
        (lambda v: v.update(gamma=1e-9), "G_min"),
        (lambda v: v.update(noise_law=7.0), "noise_law must be one of"),
        (lambda v: v.update(noise_scale=-1.0), "noise_scale must be >= 0"),
    ],
)
def test_load_params_rejects_bad_files(tmp_path, change, message):
    path = _saved(tmp_path, change)
    with pytest.raises(ValueError, match=message) as error:
        device.load_params(path)
    assert path in str(error.value)


def test_load_params_rejects_corrupt_json_and_missing_file(tmp_path):
    path = tmp_path / "corrupt.json"
    path.write_text('{"format": "roa_jax.DeviceParams/1", "alpha": 1e-6,')
    with pytest.raises(ValueError, match="corrupt.json: not valid JSON"):
        device.load_params(str(path))
    with pytest.raises(errors.DeviceError, match="absent.json"):
        device.preset(str(tmp_path / "absent.json"))
    with pytest.raises(ValueError, match="window"):
        device.save_params(str(tmp_path / "x.json"), PAPER._replace(window=jnp.float32(np.inf)))


def test_calibrated_preset_is_the_paper_device_with_the_calibrated_reconstruction():
    cal, base = device.calibrated(), device.paper()
    chosen = device.CALIBRATED
    assert device.NOISE_LAWS[int(cal.noise_law)] == chosen["law"]
    assert float(cal.noise_scale) == chosen["scale"]
    expected = device.with_granularity(
        device.with_noise(base, chosen["law"], chosen["scale"]), chosen["granularity"]
    )
    chex.assert_trees_all_close(cal, expected)
    # Finer pulses: the same full-range change takes `granularity` times as many pulses.
    np.testing.assert_allclose(cal.lam, base.lam / chosen["granularity"], rtol=1e-6)
    chex.assert_trees_all_close(device.preset("calibrated"), cal)
    # It is the reproduction's default; the literal reading stays the `paper` preset.
    assert config.Protocol((0.0,), (1.0,), 1, 1, 1).device == "calibrated"
