"""Physics invariants of the single-device model (roa_jax/device.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from roa_jax import device

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

    @parameterized.parameters("paper", "soft_bounds", "linear_step")
    def test_closed_form_equals_pulse_loop(self, name):
        p = device.preset(name)
        for w0 in (0.0, 0.37, 1.0):
            for n in (1, 7, 25, -1, -9, -31):
                np.testing.assert_allclose(
                    device.pulse_response(w0, float(n), p),
                    device.pulse_response_loop(jnp.float32(w0), n, p),
                    atol=2e-6,
                )

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

    def test_write_noise_std_matches_eq7(self):
        # 100k devices at mid-range, each given the same 4-pulse increase: the spread of the
        # written conductance must be the Eq. 7 sigma within 3 %.
        shape = (100_000,)
        g = _mid_g(PAPER, shape)
        up, _ = device.nominal_steps(PAPER)
        sigma_w = 0.05
        g_new, n = device.write(jax.random.PRNGKey(4), g, jnp.full(shape, 4 * up), PAPER, sigma_w)
        np.testing.assert_array_equal(n, 4.0)
        g_clean, _ = device.write(jax.random.PRNGKey(4), g, jnp.full(shape, 4 * up), PAPER, 0.0)
        expected = device.write_noise_std(g_clean[0] - g[0], PAPER, sigma_w)
        chex.assert_trees_all_close(jnp.std(g_new - g_clean), expected, rtol=0.03)
        chex.assert_trees_all_close(jnp.mean(g_new - g_clean), 0.0, atol=0.02 * expected)

    def test_gradients_through_write_are_finite_and_nonzero(self):
        g = jnp.linspace(1e-5, 1.2e-4, 64)
        up, _ = device.nominal_steps(PAPER)
        dg = jnp.linspace(-5, 5, 64) * up  # includes zero-pulse devices

        def loss(g, dg):
            g_new, _ = device.write(jax.random.PRNGKey(5), g, dg, PAPER, sigma_w=1.0)
            return jnp.sum(g_new**2) * 1e8

        grads = jax.grad(loss, argnums=(0, 1))(g, dg)
        chex.assert_tree_all_finite(grads)
        self.assertGreater(float(jnp.sum(jnp.abs(grads[1]))), 0.0)

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
