"""Crossbars: arrays of devices that hold a weight matrix as conductances (MODEL.md 2).

A crossbar's conductances have the shape of the weight they store; the last axis is the output
column, all other axes are flattened into input rows. A conv kernel `[kh, kw, c_in, c_out]` is
thus a `(kh*kw*c_in, c_out)` crossbar read over image patches, which is how crossbar arrays run
convolutions. Because the device physics is elementwise, writing a crossbar is `device.write`
on the whole array.

Two mappings [MODEL.md 2, chosen]:
  - single device around the midpoint: G = Gmid + W * Ghalf, W in [-1, 1] (the default);
  - differential pair: G+- = Gmid +- W * Ghalf, so W = (G+ - G-) / (Gbar_max - Gbar_min).
Both use the mean G_min and G_max of the devices [text], so they hold under variation too.

The devices are the paper's (`device.DeviceParams`) or one of aihwkit's technologies
(`technologies.TechParams`): then a "conductance" is aihwkit's device weight, the range
[G_min, G_max] the technology's mean bounds, and each array's devices, with their variation,
come from `technologies.chip`. The functions below hide the difference.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from roa_jax import device, errors, technologies


class Crossbar(NamedTuple):
    """Conductances (S) of one crossbar; the state that every write changes."""

    g_pos: jax.Array  # S, shape of the stored weight
    g_neg: jax.Array | None  # S, the pair partner for the differential mapping, else None
    # aihwkit's technologies only (else None): the write noise on each device's apparent
    # weight since its last pulse; it is read, but the next pulse moves g, not g + noise.
    noise_pos: jax.Array | None = None
    noise_neg: jax.Array | None = None


class WriteVerifyStats(NamedTuple):
    """What a write-verify programming cost and achieved."""

    pulses: jax.Array  # shape=(), total |pulse count| over all devices and iterations
    iterations: jax.Array  # shape=(), int32, write-read rounds used
    max_error: jax.Array  # shape=(), largest |W - target| left, weight units


def preset(name: str):
    """A crossbar's devices by name: one of aihwkit's technologies (`technologies.PRESETS`),
    else the paper's model (`device.preset`: its presets and `.json` parameter files)."""
    if name in technologies.PRESETS:
        return technologies.params(technologies.PRESETS[name])
    if name.endswith(".json") or name in device.PRESETS:
        return device.preset(name)
    raise errors.DeviceError(
        f"device preset {name!r} is not one of {sorted(device.PRESETS)} or aihwkit's "
        f"{sorted(technologies.PRESETS)}."
    )


def _is_technology(params) -> bool:
    return isinstance(params, technologies.TechParams)


def _bounds(params, shape, member: int):
    """Each device's (G_min, G_max) on an array of `shape` (`member` 1: a pair's partner)."""
    if _is_technology(params):
        h = technologies.chip(params, shape, member)
        return h.min_bound, h.max_bound  # aihwkit's set_weights clips the stored weight
    return device.conductance_range(params)


def _v_read(params):
    """The read voltage (V); a technology's weights are read at unit voltage."""
    return 1.0 if _is_technology(params) else params.v_read


def _write(key, g, dg, params, sigma_w, policy, member: int, noise, normals):
    """(g_new, noise_new, n) of one array's write: `device.write` (noise None) or a
    technology's."""
    if _is_technology(params):
        h = technologies.chip(params, jnp.shape(g), member)
        policy = device.open_loop() if policy is None else policy
        return technologies.write(key, g, dg, h, sigma_w, policy, noise)
    g_new, n = device.write(key, g, dg, params, sigma_w, policy, normals)
    return g_new, None, n


def _apparent(xbar: Crossbar):
    """(G+, G-) as read: with a technology's write noise where it has some."""

    def read(g, noise):
        return g if noise is None or g is None else g + noise

    return read(xbar.g_pos, xbar.noise_pos), read(xbar.g_neg, xbar.noise_neg)


def reference(params: device.DeviceParams):
    """(Gmid, Ghalf) in S from the mean G_min, G_max of the devices [text]."""
    if _is_technology(params):
        g_min, g_max = params.w_min, params.w_max
    else:
        g_min, g_max = device.conductance_range(params)
    g_min, g_max = jnp.mean(g_min), jnp.mean(g_max)
    return (g_max + g_min) / 2, (g_max - g_min) / 2


def program(weights, params: device.DeviceParams, differential: bool = False) -> Crossbar:
    """Exact mapping of `weights` (clipped to [-1, 1]) to conductances (Eq. 8).

    This is the zero-deviation result the paper assumes of write-verify; `write_verify` does it
    for real.
    """
    g_mid, g_half = reference(params)
    w = jnp.clip(weights, -1.0, 1.0)
    shape = jnp.shape(weights)
    g_pos = jnp.clip(g_mid + w * g_half, *_bounds(params, shape, 0))
    g_neg = None
    if differential:
        # Both devices start around the midpoint, so either can move both ways on an update.
        g_neg = jnp.clip(g_mid - w * g_half, *_bounds(params, shape, 1))
    if not _is_technology(params):
        return Crossbar(g_pos, g_neg)
    # Programmed without write noise (the paper's exact programming [text]).
    quiet = None if g_neg is None else jnp.zeros_like(g_neg)
    return Crossbar(g_pos, g_neg, jnp.zeros_like(g_pos), quiet)


def weights(xbar: Crossbar, params: device.DeviceParams):
    """The weights a crossbar computes with: the inverse of `program`."""
    g_mid, g_half = reference(params)
    g_pos, g_neg = _apparent(xbar)
    if g_neg is not None:
        return (g_pos - g_neg) / (2 * g_half)
    return (g_pos - g_mid) / g_half


def _read_noise_std(xbar: Crossbar, read_noise):
    """Std of one device read, in weight units, for per-device noise read_noise*(G_max-G_min)."""
    # One device: read_noise * 2 Ghalf / Ghalf; a pair has two independent devices over 2 Ghalf.
    return 2.0 * read_noise if xbar.g_neg is None else jnp.sqrt(2.0) * read_noise


def mac(x, xbar: Crossbar, params: device.DeviceParams, key=None, read_noise=0.0):
    """Multiply-accumulate on the crossbar: `x @ W` computed with voltages and currents (Eqs. 9-11).

    Inputs become voltages V = V_read x, the columns sum currents I = V @ G (Ohm, Kirchhoff), and
    the periphery subtracts the reference current Gmid * sum(V) (or the partner column's current)
    and rescales. Without read noise this equals `x @ weights(xbar)`.

    Args:
      x: inputs, [..., n_in] with n_in the product of all but the last axis of the crossbar.
      xbar: the crossbar.
      params: device parameters.
      key: PRNG key, needed when read_noise > 0.
      read_noise: per-device read fluctuation, as a fraction of G_max - G_min, fresh per read.

    Returns:
      [..., n_out] outputs in weight units.
    """
    g_mid, g_half = reference(params)
    n_out = xbar.g_pos.shape[-1]
    v_read = _v_read(params)
    v = v_read * x
    g_pos, g_neg = _apparent(xbar)
    current = v @ g_pos.reshape(-1, n_out)
    if g_neg is None:
        current = current - g_mid * jnp.sum(v, axis=-1, keepdims=True)
        scale = v_read * g_half
    else:
        current = current - v @ g_neg.reshape(-1, n_out)
        scale = v_read * 2 * g_half
    y = current / scale
    if key is not None:
        # Independent per-device read noise sums to a Gaussian with std ~ ||x|| per output.
        norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
        y = y + _read_noise_std(xbar, read_noise) * norm * jax.random.normal(key, y.shape, y.dtype)
    return y


def conv2d(x, xbar: Crossbar, params: device.DeviceParams, stride=1, padding="SAME", **noise):
    """A conv whose kernel `[kh, kw, c_in, c_out]` lives on a crossbar, run as patches @ G.

    `x` is NHWC. Each output pixel's receptive field is one input vector of the crossbar.
    """
    kh, kw, c_in, _ = xbar.g_pos.shape
    patches = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    # conv_general_dilated_patches orders the patch features as (c_in, kh, kw); put the
    # crossbar's rows in that order.
    rows_first = jax.tree.map(lambda g: jnp.transpose(g, (2, 0, 1, 3)), xbar)
    return mac(patches, rows_first, params, **noise)


def _pair_keys(key, xbar: Crossbar):
    """The keys of a write's arrays: one, or a pair's (G+, G-)."""
    return (key,) if xbar.g_neg is None else tuple(jax.random.split(key))


def write_normals(key, xbar: Crossbar, params):
    """The standard normals `write_update(key, xbar, ...)` draws for its write noise, one array
    per device array (a tuple); None for a technology's crossbar, which draws its own."""
    if _is_technology(params):
        return None
    shape, dtype = jnp.shape(xbar.g_pos), jnp.result_type(xbar.g_pos)
    return tuple(device.standard_normals(k, shape, dtype) for k in _pair_keys(key, xbar))


def write_update(key, xbar: Crossbar, dw, params, sigma_w, policy=None, normals=None):
    """Hardware write of a weight update `dw`: dW -> pulses -> response -> noise (MODEL.md 1-2).

    Differentiable in `xbar` and `dw` (straight-through rounding, reparameterized noise), so a
    meta-learning outer loop can differentiate through it. A differential pair splits the update
    into +dG on G+ and -dG on G-. `normals`: the noise's standard normals drawn beforehand
    (`write_normals(key, xbar, params)`: the same numbers); None draws them from `key`.

    Returns:
      (new crossbar, signed pulse counts with the shape of `dw`, summed over a pair).
    """
    _, g_half = reference(params)
    keys = _pair_keys(key, xbar)
    normals = (None,) * len(keys) if normals is None else normals
    if xbar.g_neg is None:
        (k,), (z,) = keys, normals
        g, noise, n = _write(
            k, xbar.g_pos, dw * g_half, params, sigma_w, policy, 0, xbar.noise_pos, z
        )
        return Crossbar(g, None, noise), n
    (k_pos, k_neg), (z_pos, z_neg) = keys, normals
    g_pos, noise_pos, n_pos = _write(
        k_pos, xbar.g_pos, dw * g_half, params, sigma_w, policy, 0, xbar.noise_pos, z_pos
    )
    g_neg, noise_neg, n_neg = _write(
        k_neg, xbar.g_neg, -dw * g_half, params, sigma_w, policy, 1, xbar.noise_neg, z_neg
    )
    return Crossbar(g_pos, g_neg, noise_pos, noise_neg), jnp.abs(n_pos) + jnp.abs(n_neg)


def write_verify(
    key, xbar: Crossbar, target, params, sigma_w, policy=None, tol=1e-2, max_iterations=50
):
    """Programs `target` weights by iterative write-verify [text]: read, write, repeat.

    Each round reads every device, writes the remaining error into those further than `tol`
    (weight units) from their target, with pulse rounding and write noise, until all are within
    `tol` or `max_iterations` rounds were used. Targets are clipped to [-1, 1]. A `tol` under
    half the device's local step may not be reachable; the cap then ends the loop.

    Returns:
      (crossbar, WriteVerifyStats).
    """
    target = jnp.clip(target, -1.0, 1.0)
    # A device out of tolerance gets at least one pulse: a wanted change under half a step
    # would otherwise round to zero pulses and stall the loop.
    policy = (device.open_loop() if policy is None else policy)._replace(min_pulses=jnp.float32(1))

    def error(xb):
        return target - weights(xb, params)

    def cond(carry):
        xb, stats = carry
        return (stats.iterations < max_iterations) & (stats.max_error > tol)

    def body(carry):
        xb, stats = carry
        err = error(xb)
        dw = jnp.where(jnp.abs(err) > tol, err, 0.0)
        xb, n = write_update(
            jax.random.fold_in(key, stats.iterations), xb, dw, params, sigma_w, policy
        )
        return xb, WriteVerifyStats(
            pulses=stats.pulses + jnp.sum(jnp.abs(n)),
            iterations=stats.iterations + 1,
            max_error=jnp.max(jnp.abs(error(xb))),
        )

    start = WriteVerifyStats(jnp.float32(0.0), jnp.int32(0), jnp.max(jnp.abs(error(xbar))))
    return jax.lax.while_loop(cond, body, (xbar, start))
