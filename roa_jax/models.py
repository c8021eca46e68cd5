"""Networks as flax modules, and the rule that says which parameters live on crossbars.

A network is any flax module called as `module.apply({'params': params}, x, step)`, where
`step` is the inner-loop step (MAML++ keeps per-step batch-norm weights; a network without
them ignores it). Its parameters are split by where they live in hardware, by a `Placement`
rule over parameter paths:

  - CROSSBAR: weight matrices held as conductances and written by pulses (a conv kernel
    `[kh, kw, c_in, c_out]` is a `(kh*kw*c_in, c_out)` crossbar read over patches);
  - DIGITAL: adapted in the inner loop, exactly, in the digital periphery (biases);
  - FROZEN: meta-learned in the outer loop but not adapted (MAML++'s per-step BN weights).

`default_placement` puts every `kernel` on crossbars, every `bias` in the periphery and the
rest (BN scale and offset) frozen; pass another rule to `maml.init` to change it. `Conv4` is
MAML++'s few-shot backbone; `MLP` is a second architecture, to show that any flax module can
be meta-trained and adapted on crossbars.

Convolutions (`conv3x3`, a `lax.conv` with hand-written derivatives) run on the weights the
crossbar computes with; tests/test_crossbar.py shows that equals the crossbar's patch MAC.
Batch norm uses the statistics of the batch it normalizes, per inner step (transductive, as
the MAML++ release evaluates).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from roa_jax import errors

NUM_CONV = 4
_BN_EPS = 1e-5

CROSSBAR, DIGITAL, FROZEN = "crossbar", "digital", "frozen"
Placement = Callable[[tuple], str]  # parameter path (a tuple of names) -> CROSSBAR/DIGITAL/FROZEN


def default_placement(path: tuple) -> str:
    """Kernels on crossbars, biases in the digital periphery, everything else frozen."""
    name = path[-1]
    return CROSSBAR if name == "kernel" else DIGITAL if name == "bias" else FROZEN


def split(params: dict, placement: Placement = default_placement) -> dict:
    """{CROSSBAR, DIGITAL, FROZEN: {path: array}}: the params' leaves by where they live."""
    groups = {CROSSBAR: {}, DIGITAL: {}, FROZEN: {}}
    for path, leaf in traverse_util.flatten_dict(params).items():
        where = placement(path)
        if where not in groups:
            raise ValueError(f"placement{path} = {where!r} is not one of {sorted(groups)}.")
        groups[where][path] = leaf
    return groups


def merge(*flat: dict) -> dict:
    """The params tree of flat {path: array} dicts (the inverse of `split`)."""
    return traverse_util.unflatten_dict({k: v for part in flat for k, v in part.items()})


@jax.custom_vjp
def conv3x3(x, w):
    """3x3 'SAME' stride-1 convolution, NHWC images x HWIO kernel -> NHWC.

    Mathematically `lax.conv_general_dilated` (`_lax_conv`); its derivatives are written out
    so that every derivative of every order is again a forward NHWC convolution or the one
    filter-gradient convolution (`_filter_grad`): d/dx is the convolution with the flipped,
    transposed kernel, and the filter gradient's own derivatives are two forward convolutions.
    JAX's generic transpose rules instead give MAML's second derivatives convolutions in
    transposed layouts (batch innermost) that XLA:CPU runs several times slower; this measured
    1.08-1.22x faster per second-order meta-step on 2 cores (BUILD_NOTES.md, "Speed:
    meta-step"). Which library runs the convolutions is `batching.configure_xla`'s choice.
    """
    return _lax_conv(x, w)


def _lax_conv(x, w):
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
    return jax.vjp(lambda w: _lax_conv(x, w), jnp.zeros(shape, x.dtype))[1](g)[0]


def _filter_grad_fwd(x, g, shape):
    return _filter_grad(x, g, shape), (x, g)


def _filter_grad_bwd(shape, res, dw):
    x, g = res
    return conv3x3(g, _flip_transpose(dw)), conv3x3(x, dw)


_filter_grad.defvjp(_filter_grad_fwd, _filter_grad_bwd)


# He-normal (not truncated): kernels start as N(0, 2 / fan_in).
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class Conv3x3(nn.Module):
    """A bias-free 3x3 'SAME' convolution through `conv3x3` (BN's offset plays the bias)."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _he_normal, (3, 3, x.shape[-1], self.features))
        return conv3x3(x, kernel)


class StepBatchNorm(nn.Module):
    """Batch norm with batch statistics and one scale/offset per inner step (MAML++ BNWB).

    With `relu_pool`, returns `max_pool(relu(bn(x)))` computed as `batch_norm_relu_pool`.
    """

    num_steps: int

    @nn.compact
    def __call__(self, x, step: int, relu_pool: bool = False):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (self.num_steps, c))
        offset = self.param("offset", nn.initializers.zeros, (self.num_steps, c))
        t = min(step, self.num_steps - 1)  # steps beyond the meta-trained ones reuse the last set
        if relu_pool:
            return batch_norm_relu_pool(x, scale[t], offset[t])
        mean, var = _moments(x)
        return (x - mean) * jax.lax.rsqrt(var + _BN_EPS) * scale[t] + offset[t]


def _moments(x):
    """Per-channel mean and (biased) variance over every axis but the last."""
    axes = tuple(range(x.ndim - 1))
    return jnp.mean(x, axis=axes), jnp.var(x, axis=axes)


def batch_norm_relu_pool(x, scale, offset):
    """`max_pool(relu(bn(x)))` with batch statistics, pooling before the normalization.

    Per channel, relu((x - mean) * rsqrt(var + eps) * scale + offset) is a monotone function
    of x (rising for scale >= 0, falling below), and so is each of its float roundings: the
    window's maximum of it is its value at the window's maximum of x (minimum, for a negative
    scale), bit for bit. The normalization then runs on the pooled quarter of the activations,
    and the backward pass touches the full-size ones in fewer, simpler loops (BUILD_NOTES.md,
    "Speed: the meta-step near the machine's limit"). Ties share the gradient as in `jnp.max`;
    only at a scale of exactly 0, where the block has a kink in the scale, its derivative there
    is the window maximum's rather than the average that `jnp.max` of the plain block gives.
    """
    mean, var = _moments(x)
    sign = jax.lax.stop_gradient(jnp.where(scale >= 0, 1.0, -1.0).astype(x.dtype))
    pooled = _signed_max_pool(x, sign)
    return jax.nn.relu((pooled - mean) * jax.lax.rsqrt(var + _BN_EPS) * scale + offset)


def max_pool(x):
    """2x2 max-pool, stride 2, 'VALID' (an odd edge row/column is dropped)."""
    return _signed_max_pool(x, jnp.ones(x.shape[-1], x.dtype))


def _windows(x):
    """x cropped to even height and width, viewed as [b, h/2, 2, w/2, 2, c] windows."""
    b, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _signed_max_pool(x, sign):
    """sign * max-pool(sign * x) for a per-channel sign of +-1: max-pool where it is 1,
    min-pool where it is -1.

    Undifferentiated (an evaluation's query pass), the maxima of the four strided quarters,
    which XLA fuses into the pass that reads them. Differentiated, `_pool_for_grad`: the same
    values from XLA's reduce-window, in a pass of its own (fused maxima were re-read by the
    layout copy feeding the next filter gradient, BUILD_NOTES.md "Speed: the meta-step near
    the machine's limit"), and the derivative written out (`_pool_bwd`).
    """
    quarters = [_windows(x * sign)[:, :, i, :, j] for i in (0, 1) for j in (0, 1)]
    return functools.reduce(jnp.maximum, quarters) * sign


@jax.custom_vjp
def _pool_for_grad(x, sign):
    """`_signed_max_pool` as XLA's reduce-window, with `_pool_bwd` as its derivative."""
    window = (1, 2, 2, 1)
    return jax.lax.reduce_window(x * sign, -jnp.inf, jax.lax.max, window, window, "VALID") * sign


def _pool_fwd(x, sign):
    pooled = _pool_for_grad(x, sign)
    return pooled, (x, pooled)


def _pool_bwd(res, g):
    """Each window's gradient to the elements equal to its result, shared among ties (the
    derivative of `jnp.max`), rather than reduce-window's own rule (select-and-scatter, whose
    second derivative is several times slower on XLA:CPU) or the reduction's (a float mask
    and a count over the full-size input). A linear map of `g`: MAML differentiates it again,
    and `_pool_fwd` calls `_pool_for_grad`, so every order keeps this rule."""
    x, pooled = res
    b, h, w, c = x.shape
    winners = _windows(x) == pooled[:, :, None, :, None, :]
    # Ties counted from the four quarters (elementwise: one fused loop, not a reduction).
    ties = [winners[:, :, i, :, j].astype(x.dtype) for i in (0, 1) for j in (0, 1)]
    share = g / functools.reduce(jnp.add, ties)
    dx = jnp.where(winners, share[:, :, None, :, None, :], 0.0)
    dx = dx.reshape(b, h // 2 * 2, w // 2 * 2, c)
    dx = jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    return dx, jnp.zeros_like(pooled[0, 0, 0])


_signed_max_pool.defvjp(_pool_fwd, _pool_bwd)
_pool_for_grad.defvjp(_pool_fwd, _pool_bwd)


def _head(n_way: int):
    # N(0, 1 / fan_in) kernel, zero bias.
    return nn.Dense(
        n_way, kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"), name="head"
    )


class Conv4(nn.Module):
    """MAML++'s conv4: four [3x3 conv, per-step BN, ReLU, 2x2 max-pool] blocks, a dense head.

    Parameters: conv{i}/kernel and head/kernel (crossbars), head/bias (periphery),
    bn{i}/scale and offset `[num_bn_steps, width]` (frozen).
    """

    n_way: int
    width: int = 64
    num_bn_steps: int = 1

    @nn.compact
    def __call__(self, x, step: int = 0):
        for i in range(NUM_CONV):
            x = Conv3x3(self.width, name=f"conv{i}")(x)
            x = StepBatchNorm(self.num_bn_steps, name=f"bn{i}")(x, step, relu_pool=True)
        if x.shape[1] < 1:
            raise errors.ConfigError(
                f"images of {x.shape} are too small for {NUM_CONV} 2x2 max-pools."
            )
        return _head(self.n_way)(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
    """A dense network on flattened images: hidden layers with per-step BN and ReLU, a head."""

    n_way: int
    hidden: Sequence[int] = (256, 128)
    num_bn_steps: int = 1

    @nn.compact
    def __call__(self, x, step: int = 0):
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, use_bias=False, kernel_init=_he_normal, name=f"dense{i}")(x)
            x = jax.nn.relu(StepBatchNorm(self.num_bn_steps, name=f"bn{i}")(x, step))
        return _head(self.n_way)(x)


ARCHITECTURES = ("conv4", "mlp")


def build(architecture: str, n_way: int, width: int, num_bn_steps: int) -> nn.Module:
    """The network of a config: 'conv4' (`width` filters) or 'mlp' (hidden 4*width, 2*width)."""
    if architecture == "conv4":
        return Conv4(n_way, width, num_bn_steps)
    if architecture == "mlp":
        return MLP(n_way, (4 * width, 2 * width), num_bn_steps)
    raise errors.ConfigError(f"architecture={architecture!r} is not one of {ARCHITECTURES}.")


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy against integer labels."""
    # A one-hot product, not a gather: its higher derivatives stay dense and cheap.
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1))


def accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
