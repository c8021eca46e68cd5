"""Crossbar mapping, MAC, hardware write and write-verify (roa_jax/crossbar.py)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from roa_jax import crossbar, device, errors, technologies

PAPER = device.paper()
IDEAL = device.ideal()


def _weights(key, shape, scale=0.5):
    return scale * jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)


class CrossbarTest(parameterized.TestCase):
    @parameterized.parameters(False, True)
    def test_mapping_round_trips(self, differential):
        w = _weights(jax.random.PRNGKey(0), (30, 20), scale=1.0)
        xbar = crossbar.program(w, PAPER, differential)
        chex.assert_trees_all_close(crossbar.weights(xbar, PAPER), w, atol=2e-6)
        g_min, g_max = device.conductance_range(PAPER)
        for g in (xbar.g_pos, xbar.g_neg) if differential else (xbar.g_pos,):
            self.assertTrue(bool(jnp.all((g >= g_min) & (g <= g_max))))
        # Out-of-range weights clip to the device range.
        clipped = crossbar.weights(
            crossbar.program(jnp.array([[3.0, -2.0]]), PAPER, differential), PAPER
        )
        chex.assert_trees_all_close(clipped, jnp.array([[1.0, -1.0]]), atol=1e-6)

    @parameterized.parameters(False, True)
    def test_ideal_mac_equals_matmul(self, differential):
        k1, k2 = jax.random.split(jax.random.PRNGKey(1))
        w = _weights(k1, (64, 10))
        x = jax.random.normal(k2, (8, 64))
        xbar = crossbar.program(w, PAPER, differential)
        chex.assert_trees_all_close(crossbar.mac(x, xbar, PAPER), x @ w, atol=2e-5, rtol=1e-5)

    def test_read_noise_has_the_stated_spread(self):
        w = _weights(jax.random.PRNGKey(2), (64, 1))
        xbar = crossbar.program(w, PAPER)
        x = jnp.ones((20000, 64))
        y = crossbar.mac(x, xbar, PAPER, key=jax.random.PRNGKey(3), read_noise=0.01)
        # Each device fluctuates by 0.01 (G_max - G_min) = 0.02 in weight units; 64 of them add up.
        chex.assert_trees_all_close(jnp.std(y), 0.02 * 8.0, rtol=0.03)

    def test_conv_on_crossbar_equals_lax_conv(self):
        k1, k2 = jax.random.split(jax.random.PRNGKey(4))
        kernel = _weights(k1, (3, 3, 4, 6))
        x = jax.random.normal(k2, (2, 9, 9, 4))
        xbar = crossbar.program(kernel, PAPER)
        expected = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        chex.assert_trees_all_close(crossbar.conv2d(x, xbar, PAPER), expected, atol=1e-4, rtol=1e-4)

    @parameterized.parameters(False, True)
    def test_ideal_device_reproduces_sgd(self, differential):
        k1, k2 = jax.random.split(jax.random.PRNGKey(5))
        w = _weights(k1, (40, 40))
        dw = -0.05 * jax.random.normal(k2, (40, 40))
        xbar = crossbar.program(w, IDEAL, differential)
        new, n = crossbar.write_update(jax.random.PRNGKey(6), xbar, dw, IDEAL, sigma_w=0.0)
        # 1e6 levels across the range: rounding error under one level (2e-6 in weight units).
        chex.assert_trees_all_close(crossbar.weights(new, IDEAL), w + dw, atol=3e-6)
        self.assertGreater(float(jnp.mean(jnp.abs(n))), 1000)

    def test_paper_device_update_is_nonideal(self):
        w = _weights(jax.random.PRNGKey(7), (40, 40), scale=0.9)
        dw = jnp.full((40, 40), 0.2)
        xbar = crossbar.program(w, PAPER)
        new, _ = crossbar.write_update(jax.random.PRNGKey(8), xbar, dw, PAPER, sigma_w=0.0)
        got = crossbar.weights(new, PAPER) - w
        # Quantized (multiples of roughly a nominal step) and state-dependent: not equal to dw.
        self.assertGreater(float(jnp.max(jnp.abs(got - dw))), 0.05)
        self.assertGreater(float(jnp.std(got)), 0.01)

    def test_gradients_through_hardware_write(self):
        # In w the loss is smooth (the open-loop counts of dw = -lr sign(w) do not depend on w,
        # and the noise is reparameterized by a fixed key): its gradient is the float64 central
        # difference. In lr the rounding passes a straight-through gradient, which no difference
        # quotient sees; it only has to be there.
        with jax.enable_x64(True):
            params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), PAPER)
            w = _weights(jax.random.PRNGKey(9), (16, 8)).astype(jnp.float64)
            x = jax.random.normal(jax.random.PRNGKey(10), (4, 16), jnp.float64)

            def loss(w, lr):
                xbar = crossbar.program(w, params)
                dw = -lr * jnp.sign(w)
                new, _ = crossbar.write_update(jax.random.PRNGKey(11), xbar, dw, params, 0.5)
                return jnp.sum(crossbar.mac(x, new, params) ** 2)

            g_w, g_lr = jax.grad(loss, argnums=(0, 1))(w, 0.1)
            direction = jax.random.normal(jax.random.PRNGKey(12), w.shape, jnp.float64)
            eps = 1e-6
            numeric = (loss(w + eps * direction, 0.1) - loss(w - eps * direction, 0.1)) / (2 * eps)
            np.testing.assert_allclose(jnp.vdot(g_w, direction), numeric, rtol=1e-6)
            self.assertTrue(bool(jnp.isfinite(g_lr)) and float(jnp.abs(g_lr)) > 0.0)

    @parameterized.product(
        sigma_w=(0.0, 0.1), differential=(False, True), policy=("open_loop", "model_inverse")
    )
    def test_write_verify_converges_and_reports_cost(self, sigma_w, differential, policy):
        k1, k2 = jax.random.split(jax.random.PRNGKey(12))
        target = _weights(k1, (32, 32), scale=0.9)
        start = crossbar.program(jnp.zeros_like(target), PAPER, differential)
        tol = 0.05
        policy = device.pulse_policy(policy)
        xbar, stats = crossbar.write_verify(k2, start, target, PAPER, sigma_w, policy, tol=tol)
        err = jnp.max(jnp.abs(crossbar.weights(xbar, PAPER) - target))
        self.assertLessEqual(float(err), tol)
        np.testing.assert_allclose(stats.max_error, err, rtol=1e-6)
        self.assertGreaterEqual(int(stats.iterations), 1)
        self.assertLess(int(stats.iterations), 50)
        self.assertGreater(float(stats.pulses), 32 * 32)

    def test_write_verify_stops_at_iteration_cap(self):
        target = _weights(jax.random.PRNGKey(13), (16, 16), scale=0.9)
        start = crossbar.program(jnp.zeros_like(target), PAPER)
        _, stats = crossbar.write_verify(
            jax.random.PRNGKey(14), start, target, PAPER, sigma_w=0.5, tol=1e-4, max_iterations=3
        )
        self.assertEqual(int(stats.iterations), 3)
        self.assertGreater(float(stats.max_error), 1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_write_update_jit_equals_no_jit(self):
        w = _weights(jax.random.PRNGKey(15), (8, 8))
        dw = 0.1 * jax.random.normal(jax.random.PRNGKey(16), (8, 8))
        xbar = crossbar.program(w, PAPER)
        f = self.variant(lambda k, xb, dw: crossbar.write_update(k, xb, dw, PAPER, 0.8))
        ref = crossbar.write_update(jax.random.PRNGKey(17), xbar, dw, PAPER, 0.8)
        chex.assert_trees_all_close(f(jax.random.PRNGKey(17), xbar, dw), ref, rtol=1e-5)

    def test_vmap_over_sigma_equals_loop(self):
        w = _weights(jax.random.PRNGKey(18), (8, 8))
        dw = 0.1 * jax.random.normal(jax.random.PRNGKey(19), (8, 8))
        xbar = crossbar.program(w, PAPER)
        sigmas = jnp.array([0.0, 0.3, 1.0, 3.0])
        write = lambda s: crossbar.write_update(jax.random.PRNGKey(20), xbar, dw, PAPER, s)[0]
        chex.assert_trees_all_close(
            jax.vmap(write)(sigmas), jax.tree.map(lambda *x: jnp.stack(x), *map(write, sigmas))
        )


def _technology(name, **changes):
    """An aihwkit preset as crossbar parameters, with `changes` (e.g. its noise off)."""
    return technologies.params(dataclasses.replace(technologies.PRESETS[name], **changes))


_SPREADLESS = dict(dw_min_dtod=0.0, up_down_dtod=0.0, w_max_dtod=0.0, w_min_dtod=0.0)
_QUIET = dict(dw_min_std=0.0, write_noise_std=0.0)


class TechnologyCrossbarTest(parameterized.TestCase):
    """aihwkit's device technologies on a crossbar: same mapping, MAC and write interface."""

    @parameterized.parameters(False, True)
    def test_mapping_round_trips_and_clips_to_each_device(self, differential):
        w = _weights(jax.random.PRNGKey(0), (30, 20), scale=1.0)
        nominal = _technology("ecram", **_SPREADLESS)
        xbar = crossbar.program(w, nominal, differential)
        chex.assert_trees_all_close(crossbar.weights(xbar, nominal), w, atol=2e-6)
        # With device-to-device variation, each device holds what its own bounds allow.
        varied = crossbar.preset("reram_es")
        g = crossbar.program(w, varied, differential).g_pos
        h = technologies.chip(varied, w.shape)
        self.assertTrue(bool(jnp.all((g >= h.min_bound) & (g <= h.max_bound))))
        self.assertGreater(float(jnp.mean(g == h.max_bound) + jnp.mean(g == h.min_bound)), 0.0)

    def test_chip_is_the_same_devices_at_every_call(self):
        p = crossbar.preset("ecram")
        chex.assert_trees_all_equal(technologies.chip(p, (4, 5)), technologies.chip(p, (4, 5)))
        partner = technologies.chip(p, (4, 5), member=1)
        self.assertFalse(bool(jnp.all(partner.max_bound == technologies.chip(p, (4, 5)).max_bound)))

    def test_quiet_constant_step_write_is_sgd_to_a_step(self):
        p = _technology("gokmen_vlasov", **_SPREADLESS, **_QUIET)
        w = _weights(jax.random.PRNGKey(1), (40, 10))
        dw = 0.05 * jax.random.normal(jax.random.PRNGKey(2), w.shape)
        xbar, n = crossbar.write_update(jax.random.PRNGKey(3), crossbar.program(w, p), dw, p, 0.0)
        step = 0.0016 / 1.0  # dw_min over Ghalf (bounds +-1)
        chex.assert_trees_all_close(n, jnp.round(dw / step))
        np.testing.assert_allclose(crossbar.weights(xbar, p), w + n * step, atol=1e-5)

    def test_write_gradient_is_straight_through(self):
        p = crossbar.preset("reram_es")
        w = _weights(jax.random.PRNGKey(1), (8, 6))
        xbar = crossbar.program(w, p)

        def loss(dw):
            new, _ = crossbar.write_update(jax.random.PRNGKey(3), xbar, dw, p, 0.5)
            return jnp.sum(crossbar.weights(new, p))

        dw = 0.01 * jnp.ones_like(w)
        grad = jax.grad(loss)(dw)
        # One through every device the write left inside its bounds (the bounds clip).
        g = crossbar.write_update(jax.random.PRNGKey(3), xbar, dw, p, 0.5)[0].g_pos
        h = technologies.chip(p, w.shape)
        inside = (g > h.min_bound) & (g < h.max_bound)
        self.assertGreater(float(jnp.mean(inside)), 0.8)
        np.testing.assert_allclose(jnp.where(inside, grad, 1.0), jnp.ones_like(w), rtol=1e-5)

    def test_vmap_over_technologies_equals_loop(self):
        names = ["reram_es", "ecram", "gokmen_vlasov", "pcm", "reram_array_om"]
        w = _weights(jax.random.PRNGKey(1), (16, 8))
        dw = 0.05 * jax.random.normal(jax.random.PRNGKey(2), w.shape)

        def adapted(p, sigma_w):
            new, _ = crossbar.write_update(
                jax.random.PRNGKey(3), crossbar.program(w, p), dw, p, sigma_w
            )
            return crossbar.weights(new, p)

        presets = [crossbar.preset(n) for n in names]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *presets)
        swept = jax.jit(jax.vmap(adapted, in_axes=(0, None)))(stacked, 0.5)
        for i, p in enumerate(presets):
            np.testing.assert_allclose(swept[i], adapted(p, 0.5), atol=1e-5, err_msg=names[i])

    def test_technology_presets_by_name(self):
        self.assertIsInstance(crossbar.preset("reram_sb"), technologies.TechParams)
        with self.assertRaisesRegex(errors.DeviceError, "aihwkit's"):
            crossbar.preset("reram")

    def test_write_noise_sits_on_the_apparent_weight_and_does_not_accumulate(self):
        # A linear device with write noise: +dw then -dw returns the persistent weight exactly,
        # and what is read carries one write's noise, not two (aihwkit's persistent weight).
        p = _technology(
            "aihwkit_linear_step",
            **{**_SPREADLESS, **_QUIET, "write_noise_std": 5.0},
            gamma_up=0.0,
            gamma_down=0.0,
            gamma_up_dtod=0.0,
            gamma_down_dtod=0.0,
        )
        w = _weights(jax.random.PRNGKey(1), (200, 100))
        xbar = crossbar.program(w, p)
        dw = jnp.full(w.shape, 0.01)
        once, _ = crossbar.write_update(jax.random.PRNGKey(2), xbar, dw, p, 0.0)
        twice, _ = crossbar.write_update(jax.random.PRNGKey(3), once, -dw, p, 0.0)
        np.testing.assert_allclose(twice.g_pos, xbar.g_pos, atol=1e-6)
        _, g_half = crossbar.reference(p)
        expected = 5.0 * 0.001 / float(g_half)  # write_noise_std dw_min, in weight units
        read = crossbar.weights(twice, p) - w
        np.testing.assert_allclose(float(jnp.std(read)), expected, rtol=0.03)
        # A device given no pulse keeps its noise: a zero update changes nothing read.
        same, n = crossbar.write_update(jax.random.PRNGKey(4), twice, jnp.zeros_like(w), p, 0.0)
        self.assertEqual(float(jnp.sum(jnp.abs(n))), 0.0)
        chex.assert_trees_all_close(crossbar.weights(same, p), crossbar.weights(twice, p))
