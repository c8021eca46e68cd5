"""Networks and the placement rule (roa_jax/models.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from roa_jax import models


def _shapes(params):
    return {"/".join(p): v.shape for p, v in traverse_util.flatten_dict(params).items()}


def _conv4_params(width=8, num_bn_steps=2, image_size=28):
    x = jnp.zeros((1, image_size, image_size, 1))
    return models.Conv4(5, width, num_bn_steps).init(jax.random.PRNGKey(0), x)["params"]


def test_conv3x3_values_and_derivatives_up_to_third_order_equal_lax_conv():
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(keys[0], (2, 5, 6, 3), jnp.float64)
        w = jax.random.normal(keys[1], (3, 3, 3, 4), jnp.float64)
        q = jax.random.normal(keys[2], (2, 5, 6, 3), jnp.float64)

        def orders(conv):
            # A MAML-shaped chain: an inner gradient step on w, a loss on another batch,
            # differentiated once more (third order in w), and the input gradient.
            inner = lambda w: jnp.sum(jnp.tanh(conv(x, w)) ** 2)
            outer = lambda w: jnp.sum(jnp.sin(conv(q, w - 0.1 * jax.grad(inner)(w))))
            third = lambda w: jnp.sum(jnp.cos(jax.grad(outer)(w)))
            grad_x = jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, w)) ** 2))(x)
            return conv(x, w), jax.grad(outer)(w), jax.grad(third)(w), grad_x

        # _lax_conv: the same lax.conv with JAX's own derivative rules.
        reference = orders(models._lax_conv)
        for ours, ref in zip(orders(models.conv3x3), reference, strict=True):
            np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)


def test_conv4_parameters_and_initialization():
    params = _conv4_params(width=8, num_bn_steps=2)
    expected = {"head/kernel": (8, 5), "head/bias": (5,)}  # 28 -> 14 -> 7 -> 3 -> 1 pixels
    for i in range(models.NUM_CONV):
        expected[f"conv{i}/kernel"] = (3, 3, 1 if i == 0 else 8, 8)
        expected[f"bn{i}/scale"] = expected[f"bn{i}/offset"] = (2, 8)
    assert _shapes(params) == expected
    chex.assert_trees_all_equal(params["bn0"]["scale"], jnp.ones((2, 8)))
    chex.assert_trees_all_equal(params["bn0"]["offset"], jnp.zeros((2, 8)))
    chex.assert_trees_all_equal(params["head"]["bias"], jnp.zeros(5))
    # He-normal: std sqrt(2 / fan_in), fan_in = 3 * 3 * 8 (576 samples: within ~15 %).
    np.testing.assert_allclose(jnp.std(params["conv1"]["kernel"]), np.sqrt(2 / 72), rtol=0.15)


def test_mlp_parameters_and_output():
    model = models.MLP(5, (16, 8), num_bn_steps=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 12, 12, 1))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert _shapes(params) == {
        "dense0/kernel": (144, 16),
        "bn0/scale": (3, 16),
        "bn0/offset": (3, 16),
        "dense1/kernel": (16, 8),
        "bn1/scale": (3, 8),
        "bn1/offset": (3, 8),
        "head/kernel": (8, 5),
        "head/bias": (5,),
    }
    # The forward pass written out by hand.
    h = x.reshape(4, -1)
    for i in range(2):
        h = h @ params[f"dense{i}"]["kernel"]
        h = jax.nn.relu((h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5))
    expected = h @ params["head"]["kernel"] + params["head"]["bias"]
    chex.assert_trees_all_close(model.apply({"params": params}, x, 0), expected, atol=1e-5)


def test_step_batch_norm_uses_the_set_of_its_step():
    bn = models.StepBatchNorm(num_steps=2)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (64, 3))
    params = {"scale": jnp.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]), "offset": jnp.ones((2, 3))}
    params["offset"] = params["offset"].at[1].set(-1.0)
    for step, t in ((0, 0), (1, 1), (5, 1)):  # steps beyond the sets reuse the last
        y = bn.apply({"params": params}, x, step)
        chex.assert_trees_all_close(y.mean(0), params["offset"][t], atol=1e-5)
        chex.assert_trees_all_close(y.std(0), params["scale"][t], rtol=1e-4)


def test_max_pool_equals_reduce_window_and_drops_the_odd_edge():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
    window = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    chex.assert_shape(window, (2, 3, 3, 3))
    chex.assert_trees_all_equal(models.max_pool(x), window)


def _plain_bn_relu_pool(x, scale, offset):
    """The block written plainly: batch norm, ReLU, then a max-pool with JAX's own rules."""
    mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
    y = jax.nn.relu((x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + offset)
    b, h, w, c = y.shape
    y = y[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return jnp.max(y, axis=(2, 4))


def _block_inputs(dtype, shape=(3, 7, 6, 4)):
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(keys[0], shape, dtype)
    # Ties, as in Omniglot's blank background: a constant patch and a repeated column.
    x = x.at[0, :4, :4].set(0.7).at[1, :, 2].set(x[1, :, 3])
    # Both signs. (At a scale of exactly 0 the block's derivative in the scale has a kink: the
    # plain block averages the window, batch_norm_relu_pool takes its maximum.)
    scale = jnp.array([1.5, -0.8, 0.3, 2.0], dtype)
    offset = jax.random.normal(keys[1], (4,), dtype)
    return x, scale, offset, jax.random.normal(keys[2], (3, 3, 3, 4), dtype)


def test_batch_norm_relu_pool_equals_the_plain_block_bit_for_bit():
    x, scale, offset, _ = _block_inputs(jnp.float32)
    fast = jax.jit(models.batch_norm_relu_pool)(x, scale, offset)
    chex.assert_trees_all_equal(fast, jax.jit(_plain_bn_relu_pool)(x, scale, offset))
    # The min-pool branch is taken where the scale is negative: not the max of x there.
    assert not np.allclose(models.max_pool(x)[..., 1], models._signed_max_pool(x, -1.0)[..., 1])


def test_batch_norm_relu_pool_derivatives_up_to_second_order_equal_the_plain_block():
    with jax.enable_x64(True):
        x, scale, offset, q = _block_inputs(jnp.float64)

        def orders(block):
            # MAML-shaped: a gradient in x and in the BN weights, then the gradient of a loss
            # of that gradient (second order), ties and both signs of scale included.
            loss = lambda x, s, o: jnp.sum(jnp.sin(block(x, s, o)) * q)
            first = jax.grad(loss, argnums=(0, 1, 2))(x, scale, offset)
            second = jax.grad(lambda x: jnp.sum(jnp.cos(jax.grad(loss)(x, scale, offset))))(x)
            return block(x, scale, offset), first, second

        for ours, ref in zip(
            orders(models.batch_norm_relu_pool), orders(_plain_bn_relu_pool), strict=True
        ):
            chex.assert_trees_all_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_conv4_meta_gradient_equals_the_plain_network():
    """The whole network's second-order MAML gradient: fast block against the plain one."""
    model = models.Conv4(5, 8, 2)
    x = jax.random.normal(jax.random.PRNGKey(2), (10, 28, 28, 1)).at[:, :6].set(0.0)
    params = model.init(jax.random.PRNGKey(3), x)["params"]
    labels = jnp.arange(10) % 5

    def meta_gradient(block):
        def loss(p, step):
            with _patched(models, "batch_norm_relu_pool", block):
                return models.cross_entropy(model.apply({"params": p}, x, step), labels)

        adapted = lambda p: jax.tree.map(lambda a, g: a - 0.4 * g, p, jax.grad(loss)(p, 0))
        return jax.grad(lambda p: loss(adapted(p), 1))(params)

    chex.assert_trees_all_close(
        meta_gradient(models.batch_norm_relu_pool),
        meta_gradient(_plain_bn_relu_pool),
        rtol=2e-4,
        atol=1e-6,
    )


class _patched:
    """Sets module.name to value for the duration of a with block."""

    def __init__(self, module, name, value):
        self.module, self.name, self.value = module, name, value

    def __enter__(self):
        self.saved = getattr(self.module, self.name)
        setattr(self.module, self.name, self.value)

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.saved)


def test_cross_entropy_and_accuracy():
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    labels = jnp.array([0, 1, 2, 3, 0, 1])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    chex.assert_trees_all_close(models.cross_entropy(logits, labels), expected, rtol=1e-6)
    assert float(models.accuracy(jnp.eye(4)[jnp.array([0, 1, 1, 3])], jnp.arange(4))) == 0.75


def test_default_placement_split_and_merge_round_trip():
    params = _conv4_params()
    groups = models.split(params)
    names = lambda where: sorted("/".join(p) for p in groups[where])
    assert names(models.CROSSBAR) == sorted([f"conv{i}/kernel" for i in range(4)] + ["head/kernel"])
    assert names(models.DIGITAL) == ["head/bias"]
    assert names(models.FROZEN) == sorted(
        f"bn{i}/{n}" for i in range(4) for n in ("offset", "scale")
    )
    merged = models.merge(*groups.values())
    chex.assert_trees_all_equal_structs(merged, params)
    chex.assert_trees_all_equal(merged, params)


def test_custom_placement_rule():
    # The head in the digital periphery, the first conv frozen (not adapted).
    def placement(path):
        if path[0] == "head":
            return models.DIGITAL
        if path[0] == "conv0":
            return models.FROZEN
        return models.default_placement(path)

    groups = models.split(_conv4_params(), placement)
    assert sorted(groups[models.DIGITAL]) == [("head", "bias"), ("head", "kernel")]
    assert ("conv0", "kernel") in groups[models.FROZEN]
    assert sorted(groups[models.CROSSBAR]) == [(f"conv{i}", "kernel") for i in (1, 2, 3)]
    with pytest.raises(ValueError, match=r"placement\('head', 'bias'\) = 'gpu'"):
        models.split(_conv4_params(), lambda path: "gpu" if path[-1] == "bias" else "frozen")


def test_build():
    conv4 = models.build("conv4", 10, 8, 3)
    assert conv4 == models.Conv4(10, 8, 3)
    mlp = models.build("mlp", 5, 8, 2)
    assert mlp == models.MLP(5, (32, 16), 2)
    with pytest.raises(ValueError, match=r"architecture='resnet' is not one of \('conv4', 'mlp'\)"):
        models.build("resnet", 5, 8, 2)
    # 8x8 images vanish after four 2x2 max-pools.
    with pytest.raises(ValueError, match="too small"):
        models.Conv4(5, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
