"""Conv4 pieces (roa_jax/models.py)."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from roa_jax import models


class Conv3x3Test(absltest.TestCase):
    def test_values_and_derivatives_up_to_third_order_equal_lax_conv(self):
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

            # conv3x3.fun: the same lax.conv with JAX's own derivative rules.
            reference = orders(models.conv3x3.fun)
            for ours, ref in zip(orders(models.conv3x3), reference, strict=True):
                np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)


if __name__ == "__main__":
    absltest.main()
