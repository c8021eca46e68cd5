"""Conv4 (MAML++'s few-shot backbone) with its weight matrices on crossbars.

The network is a pure function of three parameter groups:

  - `weights`: the conv kernels and the dense head kernel, the matrices that live on crossbars
    (a conv kernel `[3, 3, c_in, c_out]` is a `(9 c_in, c_out)` crossbar read over patches);
  - `biases`: the head bias, in the digital periphery (updated exactly);
  - `bn`: batch-norm scale and offset per layer and per inner step (MAML++ BNWB), also digital.

Convolutions (`conv3x3`, a `lax.conv` with hand-written derivatives) run on the weights the
crossbar computes with; crossbar_test shows that equals the crossbar's patch-matrix MAC.
Batch norm uses the statistics of the batch it normalizes, per inner step (transductive, as
the MAML++ release evaluates).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

NUM_CONV = 4
_BN_EPS = 1e-5


class NetParams(NamedTuple):
    """Conv4 parameters, split by where they live in hardware."""

    weights: dict  # {'conv0'..'conv3': [3, 3, c_in, c_out], 'head': [features, n_way]}: crossbars
    biases: dict  # {'head': [n_way]}: digital periphery
    bn: dict  # {'conv0'..'conv3': {'scale', 'offset': [num_bn_steps, c_out]}}: digital, per step


def feature_size(image_size: int, width: int) -> int:
    """Flattened features after four 2x2 max-pools ('VALID', so 28 -> 14 -> 7 -> 3 -> 1)."""
    size = image_size
    for _ in range(NUM_CONV):
        size //= 2
    if size < 1:
        raise ValueError(f"image_size={image_size} is too small for {NUM_CONV} 2x2 max-pools.")
    return size * size * width


def init(key, n_way: int, image_shape, width: int = 64, num_bn_steps: int = 1) -> NetParams:
    """He-normal kernels, zero head bias, BN scale 1 and offset 0 for every step."""
    height, _, channels = image_shape
    keys = jax.random.split(key, NUM_CONV + 1)
    weights, bn = {}, {}
    c_in = channels
    for i in range(NUM_CONV):
        fan_in = 9 * c_in
        weights[f"conv{i}"] = jax.random.normal(keys[i], (3, 3, c_in, width)) * jnp.sqrt(
            2.0 / fan_in
        )
        bn[f"conv{i}"] = {
            "scale": jnp.ones((num_bn_steps, width)),
            "offset": jnp.zeros((num_bn_steps, width)),
        }
        c_in = width
    features = feature_size(height, width)
    weights["head"] = jax.random.normal(keys[-1], (features, n_way)) * jnp.sqrt(1.0 / features)
    return NetParams(weights, {"head": jnp.zeros((n_way,))}, bn)


def _batch_norm(x, scale, offset):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + _BN_EPS) * scale + offset


def _max_pool(x):
    """2x2 max-pool, stride 2, 'VALID' (an odd edge row/column is dropped).

    Written as a reshape and max rather than `lax.reduce_window`: the second derivative of
    reduce_window (select-and-scatter) is several times slower on XLA:CPU, and MAML
    differentiates through it twice.
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


@jax.custom_vjp
def conv3x3(x, w):
    """3x3 'SAME' stride-1 convolution, NHWC images x HWIO kernel -> NHWC.

    Mathematically `lax.conv_general_dilated`; its derivatives are written out so that every
    derivative of every order is again a forward NHWC convolution or the one filter-gradient
    convolution (`_filter_grad`): d/dx is the convolution with the flipped, transposed kernel,
    and the filter gradient's own derivatives are two forward convolutions. JAX's generic
    transpose rules instead give MAML's second derivatives convolutions in transposed layouts
    (batch innermost) that XLA:CPU runs several times slower; this measured 1.08-1.22x faster
    per second-order meta-step on 2 cores (BUILD_NOTES.md, "Speed: meta-step").
    """
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _flip_transpose(w):
    """The kernel whose convolution is the transpose of w's: spatially flipped, in <-> out."""
    return jnp.flip(w, (0, 1)).swapaxes(2, 3)


def _conv3x3_fwd(x, w):
    return conv3x3(x, w), (x, w)


def _conv3x3_bwd(res, g):
    x, w = res
    return conv3x3(g, _flip_transpose(w)), _filter_grad(x, g, w.shape)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _filter_grad(x, g, shape):
    """d<g, conv3x3(x, w)>/dw for a kernel of `shape` (XLA's filter-gradient convolution)."""
    return jax.vjp(lambda w: conv3x3.fun(x, w), jnp.zeros(shape, x.dtype))[1](g)[0]


def _filter_grad_fwd(x, g, shape):
    return _filter_grad(x, g, shape), (x, g)


def _filter_grad_bwd(shape, res, dw):
    x, g = res
    return conv3x3(g, _flip_transpose(dw)), conv3x3(x, dw)


_filter_grad.defvjp(_filter_grad_fwd, _filter_grad_bwd)


def apply(weights: dict, biases: dict, bn: dict, x, bn_step=0):
    """Logits of images `x` [batch, H, W, C], using the BN parameters of inner step `bn_step`."""
    for i in range(NUM_CONV):
        name = f"conv{i}"
        x = conv3x3(x, weights[name])
        x = _batch_norm(x, bn[name]["scale"][bn_step], bn[name]["offset"][bn_step])
        x = jax.nn.relu(x)
        x = _max_pool(x)
    x = x.reshape(x.shape[0], -1)
    return x @ weights["head"] + biases["head"]


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy against integer labels."""
    # A one-hot product, not a gather: its higher derivatives stay dense and cheap.
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1))


def accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
