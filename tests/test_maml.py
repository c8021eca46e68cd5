"""MAML++ for one task, exact or through crossbar writes (roa_jax/maml.py)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from roa_jax import crossbar, device, maml, models, writers
from roa_jax.data import episodes as episodes_lib
from roa_jax.data import synthetic

# A tiny conv4: 16x16 images, 3 filters; fast enough for float64 finite differences.
SHAPE = (16, 16, 1)
WIDTH = 3
N_WAY = 3


def _episode(seed=0):
    images = synthetic.synthetic_classes(seed, 10, 20, image_size=16)
    return episodes_lib.sample_episode(jax.random.PRNGKey(seed), images, N_WAY, 1, 4)


def _model(num_steps=1):
    return models.Conv4(N_WAY, WIDTH, num_bn_steps=num_steps + 1)


def _meta(num_steps=1, inner_lr=0.4, seed=0, placement=models.default_placement):
    example = jnp.zeros((1, *SHAPE))
    return maml.init(
        jax.random.PRNGKey(seed), _model(num_steps), example, num_steps, inner_lr, placement
    )


def _hardware(name, sigma_w):
    return writers.crossbars(writers.hardware(device.preset(name), sigma_w))


def _query_loss(model, params, ep, step):
    logits = model.apply({"params": params}, ep.query_x, step)
    return models.cross_entropy(logits, ep.query_y), models.accuracy(logits, ep.query_y)


def _hand_written_step(model, params, ep, lr, adapted=("kernel", "bias")):
    """theta_1 = theta_0 - lr * grad of the support loss, on the leaves named `adapted`."""

    def support_loss(p):
        return models.cross_entropy(model.apply({"params": p}, ep.support_x, 0), ep.support_y)

    grads = traverse_util.flatten_dict(jax.grad(support_loss)(params))
    flat = traverse_util.flatten_dict(params)
    new = {p: v - lr * grads[p] if p[-1] in adapted else v for p, v in flat.items()}
    return traverse_util.unflatten_dict(new)


def test_init_sets_every_lslr_rate_and_needs_a_crossbar():
    meta = _meta(num_steps=2, inner_lr=0.4)
    rates = traverse_util.flatten_dict(meta.lslr)
    adapted = [p for p in traverse_util.flatten_dict(meta.params) if p[-1] in ("kernel", "bias")]
    assert sorted(rates) == sorted(adapted)
    chex.assert_trees_all_equal(meta.lslr["head"]["bias"], jnp.full((2,), 0.4))
    with pytest.raises(ValueError, match="no parameter on crossbars"):
        _meta(placement=lambda path: models.DIGITAL)


def test_zero_inner_steps_is_the_plain_loss():
    meta, ep = _meta(num_steps=0), _episode()
    result = maml.adapt(jax.random.PRNGKey(1), _model(0), meta, ep, 0)
    loss, acc = _query_loss(_model(0), meta.params, ep, 0)
    chex.assert_shape(result.loss, (1,))
    chex.assert_trees_all_close(result.loss[0], loss)
    chex.assert_trees_all_close(result.accuracy[0], acc)


def test_one_step_matches_a_hand_written_update():
    meta, ep, model = _meta(), _episode(), _model()
    expected, _ = _query_loss(model, _hand_written_step(model, meta.params, ep, 0.4), ep, 1)
    result = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 1)
    chex.assert_trees_all_close(result.loss[0], expected, rtol=1e-5)
    assert abs(float(result.loss[0] - _query_loss(model, meta.params, ep, 1)[0])) > 1e-3
    # rho scales every inner learning rate.
    doubled = meta._replace(lslr=jax.tree.map(lambda r: 2 * r, meta.lslr))
    halved = maml.adapt(jax.random.PRNGKey(1), model, doubled, ep, 1, rho=0.5)
    chex.assert_trees_all_close(halved.loss, result.loss, rtol=1e-5)


def test_placement_routes_updates_through_the_writer():
    # A writer whose writes never arrive: only the leaves in the periphery adapt.
    stuck = writers.Writer(lambda key, w: w, lambda s: s, lambda key, s, dw: s)
    ep, model = _episode(), _model()
    meta = _meta()
    result = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 1, stuck)
    theta_1 = _hand_written_step(model, meta.params, ep, 0.4, adapted=("bias",))
    chex.assert_trees_all_close(result.loss[0], _query_loss(model, theta_1, ep, 1)[0], rtol=1e-5)
    # The head kernel moved to the periphery adapts exactly, past the stuck writer.
    head_digital = lambda p: models.DIGITAL if p[0] == "head" else models.default_placement(p)
    meta = _meta(placement=head_digital)
    result = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 1, stuck, placement=head_digital)
    theta_1 = traverse_util.unflatten_dict(
        {
            **traverse_util.flatten_dict(meta.params),
            **{
                p: v
                for p, v in traverse_util.flatten_dict(
                    _hand_written_step(model, meta.params, ep, 0.4)
                ).items()
                if p[0] == "head"
            },
        }
    )
    chex.assert_trees_all_close(result.loss[0], _query_loss(model, theta_1, ep, 1)[0], rtol=1e-5)


def test_second_order_meta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        model = _model(2)
        meta = jax.tree.map(lambda x: x.astype(jnp.float64), _meta(num_steps=2))
        ep = jax.tree.map(
            lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, _episode()
        )

        # Compiled once each: op by op, the float64 second-order gradient takes minutes.
        @functools.partial(jax.jit, static_argnames="first_order")
        def loss(meta, first_order=False):
            result = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 2, first_order=first_order)
            return jnp.sum(result.loss)

        grad = jax.jit(jax.grad(loss))(meta)
        grad_fo = jax.jit(jax.grad(lambda m: loss(m, True)))(meta)
        direction = jax.tree.map(
            lambda x: jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype), meta
        )
        # ReLU and max-pool kinks lie within 1e-5 of this point; float64 allows a tiny step.
        eps = 1e-7
        plus = loss(jax.tree.map(lambda m, d: m + eps * d, meta, direction))
        minus = loss(jax.tree.map(lambda m, d: m - eps * d, meta, direction))
        numeric = (plus - minus) / (2 * eps)
        dot = lambda g: sum(
            jnp.vdot(a, b)
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction), strict=True)
        )
        np.testing.assert_allclose(dot(grad), numeric, rtol=1e-5)
        # First order drops a real term: its directional derivative is off.
        assert abs(float(dot(grad_fo) - numeric)) > 1e-3 * abs(float(numeric))


def test_lslr_rates_receive_gradients():
    meta, ep, model = _meta(num_steps=2), _episode(), _model(2)
    # First order: the rates scale the gradient, so they get a meta-gradient even then.
    adapt = lambda m: maml.adapt(jax.random.PRNGKey(1), model, m, ep, 2, first_order=True)
    grad = jax.grad(lambda m: jnp.sum(adapt(m).loss))(meta)
    for path, rates in traverse_util.flatten_dict(grad.lslr).items():
        chex.assert_shape(rates, (2,))
        assert bool(jnp.all(jnp.abs(rates) > 0)), path


def test_ideal_device_hardware_adaptation_equals_software():
    meta, ep, model = _meta(inner_lr=0.1), _episode(), _model()
    # Crossbars hold weights in [-1, 1] (beyond, the device saturates): keep theta_0 and
    # theta_1 inside.
    meta = meta._replace(params=jax.tree.map(lambda w: jnp.clip(w, -0.5, 0.5), meta.params))
    software = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 1)
    hardware = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 1, _hardware("ideal", 0.0))
    chex.assert_trees_all_close(hardware, software, atol=2e-4)


def test_paper_device_adaptation_differs_and_noise_is_keyed():
    meta, ep, model = _meta(inner_lr=4.0), _episode(), _model()
    writer = _hardware("paper", 1.0)
    a = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 1, writer)
    b = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 1, writer)
    c = maml.adapt(jax.random.PRNGKey(2), model, meta, ep, 1, writer)
    software = maml.adapt(jax.random.PRNGKey(1), model, meta, ep, 1)
    chex.assert_trees_all_equal(a, b)
    assert float(a.loss[0]) != float(c.loss[0])
    assert abs(float(a.loss[0] - software.loss[0])) > 1e-3


def test_hardware_aware_meta_gradient_is_finite():
    meta, ep, model = _meta(inner_lr=2.0), _episode(), _model()
    writer = _hardware("paper", 0.5)
    loss = lambda m: maml.adapt(jax.random.PRNGKey(1), model, m, ep, 1, writer).loss[0]
    grad = jax.grad(loss)(meta)
    chex.assert_tree_all_finite(grad)
    assert float(jnp.sum(jnp.abs(grad.lslr["head"]["kernel"]))) > 0.0
    assert float(jnp.sum(jnp.abs(grad.params["conv0"]["kernel"]))) > 0.0


def test_msl_weights_anneal_to_the_last_step():
    chex.assert_trees_all_close(maml.msl_weights(5, 0, 10), jnp.full((5,), 0.2))
    end = maml.msl_weights(5, 10, 10)
    chex.assert_trees_all_close(end, jnp.array([0.006] * 4 + [1 - 0.024]), atol=1e-6)
    chex.assert_trees_all_close(maml.msl_weights(5, 50, 10), end)  # stays annealed
    for epoch in (0, 3, 10, 50):
        chex.assert_trees_all_close(jnp.sum(maml.msl_weights(5, epoch, 10)), 1.0, atol=1e-6)
    chex.assert_trees_all_equal(maml.msl_weights(3, 0, 0), jnp.array([0.0, 0.0, 1.0]))
    chex.assert_trees_all_equal(maml.msl_weights(1, 0, 10), jnp.array([1.0]))


def test_no_retracing_across_tasks_keys_rho_and_noise():
    meta, model = _meta(), _model()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def adapted_loss(meta, ep, key, rho, hw):
        return maml.adapt(key, model, meta, ep, 1, writers.crossbars(hw), rho).loss[0]

    losses = [
        adapted_loss(
            meta,
            _episode(i),
            jax.random.PRNGKey(i),
            jnp.float32(1.0 + i),
            writers.hardware(device.paper(), 0.5 * i),
        )
        for i in range(3)
    ]
    chex.assert_tree_all_finite(losses)
    assert len({float(x) for x in losses}) == 3


@pytest.mark.parametrize(
    ("preset", "differential"), [("paper", False), ("paper", True), ("pcm", False)]
)
def test_writes_with_their_noise_drawn_beforehand_give_the_same_numbers(preset, differential):
    # What the evaluation does: each task's write noise drawn once (maml.draw_normals), then
    # handed to adapt. The same losses bit for bit; other numbers change them (they are used).
    # aihwkit's PCM draws its own noise: nothing is drawn beforehand, and nothing changes.
    writer = writers.crossbars(
        writers.hardware(crossbar.preset(preset), 1.5), differential=differential
    )
    ep, model, meta = _episode(), _model(3), _meta(3)
    key = jax.random.PRNGKey(4)
    adapt = functools.partial(maml.adapt, key, model, meta, ep, 3, writer)
    drawn = maml.draw_normals(key, meta, 3, writer)
    here = adapt()
    np.testing.assert_array_equal(adapt(normals=drawn).loss, here.loss)
    other = adapt(normals=maml.draw_normals(jax.random.PRNGKey(5), meta, 3, writer)).loss
    assert np.array_equal(other, here.loss) == (preset == "pcm")
