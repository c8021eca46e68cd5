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
    """Batch norm with batch statistics and one scale/offset per inner step (MAML++ BNWB)."""

    num_steps: int

    @nn.compact
    def __call__(self, x, step: int):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (self.num_steps, c))
        offset = self.param("offset", nn.initializers.zeros, (self.num_steps, c))
        mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
        var = jnp.var(x, axis=tuple(range(x.ndim - 1)))
        t = min(step, self.num_steps - 1)  # steps beyond the meta-trained ones reuse the last set
        return (x - mean) * jax.lax.rsqrt(var + _BN_EPS) * scale[t] + offset[t]


def max_pool(x):
    """2x2 max-pool, stride 2, 'VALID' (an odd edge row/column is dropped).

    Written as a reshape and max rather than `lax.reduce_window`: the second derivative of
    reduce_window (select-and-scatter) is several times slower on XLA:CPU, and MAML
    differentiates through it twice.
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


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
            x = StepBatchNorm(self.num_bn_steps, name=f"bn{i}")(x, step)
            x = max_pool(jax.nn.relu(x))
        if x.shape[1] < 1:
            raise ValueError(f"images of {x.shape} are too small for {NUM_CONV} 2x2 max-pools.")
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
    raise ValueError(f"architecture={architecture!r} is not one of {ARCHITECTURES}.")


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy against integer labels."""
    # A one-hot product, not a gather: its higher derivatives stay dense and cheap.
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1))


def accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
