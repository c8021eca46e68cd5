"""MAML++ inner loop, meta-gradients and hardware adaptation (roa_jax/maml.py, roa.py)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from roa_jax import device, maml, models, roa, train
from roa_jax.data import episodes as episodes_lib
from roa_jax.data import synthetic

# A tiny conv4: 16x16 images, 3 filters; fast enough for float64 finite differences.
SHAPE = (16, 16, 1)
WIDTH = 3


def _episode(seed=0, n_way=3):
    images = synthetic.synthetic_classes(seed, 10, 20, image_size=16)
    return episodes_lib.sample_episode(jax.random.PRNGKey(seed), images, n_way, 1, 4)


def _meta(num_steps=1, n_way=3, inner_lr=0.4, seed=0):
    return maml.init(jax.random.PRNGKey(seed), n_way, SHAPE, WIDTH, num_steps, inner_lr)


class InnerLoopTest(parameterized.TestCase):
    def test_zero_inner_steps_is_the_plain_loss(self):
        meta, ep = _meta(num_steps=0), _episode()
        result = maml.adapt(jax.random.PRNGKey(1), meta, ep, 0)
        logits = models.apply(meta.net.weights, meta.net.biases, meta.net.bn, ep.query_x, 0)
        chex.assert_trees_all_close(result.loss[0], models.cross_entropy(logits, ep.query_y))
        chex.assert_trees_all_close(result.accuracy[0], models.accuracy(logits, ep.query_y))

    def test_one_step_matches_hand_written_update(self):
        meta, ep = _meta(), _episode()
        net = meta.net

        def support_loss(weights, biases):
            logits = models.apply(weights, biases, net.bn, ep.support_x, 0)
            return models.cross_entropy(logits, ep.support_y)

        g_w, g_b = jax.grad(support_loss, argnums=(0, 1))(net.weights, net.biases)
        lr = 0.4
        weights = {k: w - lr * g_w[k] for k, w in net.weights.items()}
        biases = {"head": net.biases["head"] - lr * g_b["head"]}
        logits = models.apply(weights, biases, net.bn, ep.query_x, 1)
        expected = models.cross_entropy(logits, ep.query_y)
        result = maml.adapt(jax.random.PRNGKey(1), meta, ep, 1)
        chex.assert_trees_all_close(result.loss[0], expected, rtol=1e-5)
        # rho scales every inner learning rate.
        halved = maml.adapt(
            jax.random.PRNGKey(1),
            meta._replace(lslr=jax.tree.map(lambda r: 2 * r, meta.lslr)),
            ep,
            1,
            rho=0.5,
        )
        chex.assert_trees_all_close(halved.loss, result.loss, rtol=1e-5)

    def test_second_order_meta_gradient_matches_finite_differences(self):
        with jax.enable_x64(True):
            meta = jax.tree.map(lambda x: x.astype(jnp.float64), _meta(num_steps=2))
            ep = jax.tree.map(
                lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, _episode()
            )

            def loss(meta, first_order=False):
                return jnp.sum(
                    maml.adapt(jax.random.PRNGKey(1), meta, ep, 2, first_order=first_order).loss
                )

            grad = jax.grad(loss)(meta)
            grad_fo = jax.grad(lambda m: loss(m, True))(meta)
            direction = jax.tree.map(
                lambda x: jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype), meta
            )
            eps = 1e-5
            plus = loss(jax.tree.map(lambda m, d: m + eps * d, meta, direction))
            minus = loss(jax.tree.map(lambda m, d: m - eps * d, meta, direction))
            numeric = (plus - minus) / (2 * eps)
            dot = lambda g: sum(
                jnp.vdot(a, b)
                for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction), strict=True)
            )
            np.testing.assert_allclose(dot(grad), numeric, rtol=1e-5)
            # First order drops a real term: its directional derivative is off.
            self.assertGreater(abs(float(dot(grad_fo) - numeric)), 1e-3 * abs(float(numeric)))

    def test_lslr_rates_receive_gradients(self):
        meta, ep = _meta(num_steps=2), _episode()
        grad = jax.grad(lambda m: jnp.sum(maml.adapt(jax.random.PRNGKey(1), m, ep, 2).loss))(meta)
        for rates in jax.tree.leaves(grad.lslr):
            chex.assert_shape(rates, (2,))
            self.assertTrue(bool(jnp.all(jnp.abs(rates) > 0)))

    def test_ideal_device_hardware_adaptation_equals_software(self):
        meta, ep = _meta(num_steps=1), _episode()
        software = maml.adapt(jax.random.PRNGKey(1), meta, ep, 1)
        hardware = maml.adapt(
            jax.random.PRNGKey(1), meta, ep, 1, maml.hardware(device.ideal(), 0.0)
        )
        chex.assert_trees_all_close(hardware, software, atol=2e-4)

    def test_paper_device_adaptation_differs_and_noise_is_keyed(self):
        meta, ep = _meta(num_steps=1, inner_lr=4.0), _episode()
        writer = maml.hardware(device.paper(), 1.0)
        a = maml.adapt(jax.random.PRNGKey(1), meta, ep, 1, writer)
        b = maml.adapt(jax.random.PRNGKey(1), meta, ep, 1, writer)
        c = maml.adapt(jax.random.PRNGKey(2), meta, ep, 1, writer)
        chex.assert_trees_all_equal(a, b)
        self.assertNotEqual(float(a.loss[0]), float(c.loss[0]))

    def test_hardware_aware_meta_gradient_is_finite(self):
        meta, ep = _meta(num_steps=1, inner_lr=2.0), _episode()
        writer = maml.hardware(device.paper(), 0.5)
        grad = jax.grad(lambda m: maml.adapt(jax.random.PRNGKey(1), m, ep, 1, writer).loss[0])(meta)
        chex.assert_tree_all_finite(grad)
        self.assertGreater(float(jnp.sum(jnp.abs(grad.lslr["weights"]["head"]))), 0.0)

    def test_exact_loss_weight_mixes_exact_and_hardware_losses(self):
        meta = _meta(num_steps=1, inner_lr=2.0)
        episodes = jax.tree.map(lambda *x: jnp.stack(x), _episode(0), _episode(1))
        cfg = train.Config(
            n_way=3, num_inner_steps=1, constraint_lambda=0.0, task_batching="unroll"
        )
        hw = dataclasses.replace(cfg, hardware_inner=True, train_sigma_w=0.5)
        msl_w = jnp.ones((1,))
        key = jax.random.PRNGKey(4)
        loss = lambda c: float(train.meta_loss(meta, episodes, key, msl_w, c, False)[0])
        exact, hardware = loss(cfg), loss(hw)
        self.assertNotAlmostEqual(exact, hardware, places=4)
        self.assertAlmostEqual(loss(dataclasses.replace(hw, exact_loss_weight=1.0)), exact, 5)
        mixed = loss(dataclasses.replace(hw, exact_loss_weight=0.25))
        self.assertAlmostEqual(mixed, 0.75 * hardware + 0.25 * exact, 5)

    def test_validation_scores_the_same_mix_as_the_loss(self):
        images = synthetic.synthetic_classes(0, 10, 20, image_size=16)
        meta = _meta(num_steps=1, inner_lr=2.0)
        cfg = train.Config(
            n_way=3,
            k_shot=1,
            n_query=4,
            image_size=16,
            width=WIDTH,
            num_inner_steps=1,
            val_tasks=6,
            eval_chunk=3,
            task_batching="unroll",
            hardware_inner=True,
            train_sigma_w=0.5,
        )
        norm, key = (0.0, 1.0), jax.random.PRNGKey(5)
        hardware = train.validate(key, meta, images, cfg, norm)[0]
        exact = train.validate(
            key, meta, images, dataclasses.replace(cfg, exact_loss_weight=1.0), norm
        )[0]
        mixed = train.validate(
            key, meta, images, dataclasses.replace(cfg, exact_loss_weight=0.25), norm
        )[0]
        self.assertNotAlmostEqual(float(hardware), float(exact), places=4)
        self.assertAlmostEqual(float(mixed), 0.75 * float(hardware) + 0.25 * float(exact), 5)

    def test_write_verify_programming_reaches_tolerance(self):
        meta = _meta(num_steps=1)
        writer = maml.hardware(device.paper(), 0.02, verify_tol=0.05)
        state = writer.start(jax.random.PRNGKey(3), meta.net.weights)
        for name, w in writer.read(state).items():
            self.assertLessEqual(
                float(jnp.max(jnp.abs(w - jnp.clip(meta.net.weights[name], -1, 1)))), 0.05
            )

    @parameterized.parameters("vmap", "map")
    def test_task_batching_strategies_agree(self, strategy):
        meta = _meta()
        images = synthetic.synthetic_classes(0, 10, 20, image_size=16)
        batch = episodes_lib.sample_episodes(jax.random.PRNGKey(0), images, 3, 3, 1, 4)
        keys = jax.random.split(jax.random.PRNGKey(1), 3)
        fn = lambda k, ep: maml.adapt(k, meta, ep, 1).loss
        chex.assert_trees_all_close(
            maml.map_tasks(fn, keys, batch, strategy=strategy),
            maml.map_tasks(fn, keys, batch, strategy="unroll"),
            rtol=1e-4,
        )
        with pytest.raises(ValueError, match="task_batching"):
            maml.map_tasks(fn, keys, batch, strategy="grouped")

    def test_msl_weights_anneal_to_the_last_step(self):
        start = maml.msl_weights(5, 0, 10)
        chex.assert_trees_all_close(start, jnp.full((5,), 0.2))
        end = maml.msl_weights(5, 10, 10)
        chex.assert_trees_all_close(end, jnp.array([0.006] * 4 + [1 - 0.024]), atol=1e-6)
        for epoch in (0, 3, 10, 50):
            chex.assert_trees_all_close(jnp.sum(maml.msl_weights(5, epoch, 10)), 1.0, atol=1e-6)


class RoaTest(parameterized.TestCase):
    def test_constraint_zero_inside_positive_outside(self):
        inside = {"a": jnp.array([0.2, -0.25, 0.0])}
        outside = {"a": jnp.array([0.2, -0.35, 0.5])}
        self.assertEqual(float(roa.constraint(inside, 4.0)), 0.0)
        np.testing.assert_allclose(roa.constraint(outside, 4.0), 0.1**2 + 0.25**2, rtol=1e-5)
        self.assertEqual(float(roa.constraint(outside, 1.0)), 0.0)  # k = 1: full range (ROA-WC)

    def test_confidence_interval_on_a_known_sample(self):
        sample = np.array([0.0, 1.0] * 50)  # mean 0.5, sample std 0.50252
        mean, half = roa.confidence_interval(sample)
        np.testing.assert_allclose(mean, 0.5)
        np.testing.assert_allclose(half, 1.96 * 0.502519 / 10, rtol=1e-5)


class TrainStepTest(parameterized.TestCase):
    def test_no_retracing_across_steps(self):
        cfg = train.Config(
            dataset="synthetic", image_size=16, width=WIDTH, n_way=3, n_query=4, meta_batch_size=2
        )
        state = train.init_state(cfg, SHAPE)
        images = jnp.asarray(synthetic.synthetic_classes(0, 10, 20, image_size=16))
        step = jax.jit(
            chex.assert_max_traces(train.train_step, n=1), static_argnames=("cfg", "first_order")
        )
        msl = maml.msl_weights(1, 0, 0)
        for i in range(3):
            batch = train.sample_batch(jax.random.PRNGKey(i), images, 2, cfg, (0.0, 1.0))
            state, metrics = step(
                state, batch, jax.random.PRNGKey(i), msl, cfg=cfg, first_order=False
            )
        self.assertEqual(int(state.step), 3)
        chex.assert_tree_all_finite(metrics)
