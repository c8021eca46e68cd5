"""Where adapted weights live and how an update reaches them: exact, or crossbar writes.

A `Writer` is a pair-of-pure-functions object in the optax style:
`start(key, weights) -> state` puts the initial weights where they live, `read(state) ->
weights` returns the weights the network computes with, and `write(key, state, dw, normals=None)
-> state` applies an update; `draw(key, state)` returns the random numbers that `write(key,
state, ...)` would draw (None where it draws none), so that they can be drawn once, elsewhere,
and handed to `write` as `normals`. Weights are a flat dict {parameter path: array}
(`models.split`).

  - `software()`: exact arithmetic, theta <- theta + dw;
  - `crossbars(hw)`: every weight matrix on a crossbar of `hw.params` devices, programmed
    exactly (or by noisy write-verify), each update one open-loop (or model-inverse) noisy
    write, differentiable (MODEL.md 1-2), so the same inner loop serves meta-training,
    hardware-aware meta-training and ROA adaptation.

`Hardware` is the description of the crossbars a task adapts on, a pytree of arrays: the
device parameters (with their write-noise law), the noise level and the pulse policy are
traced inputs, so sweeping them neither recompiles nor needs special code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from roa_jax import crossbar, device


class Writer(NamedTuple):
    """Where the adapted weights live and how an update reaches them."""

    start: Callable[[Any, dict], Any]  # (key, weights) -> state
    read: Callable[[Any], dict]  # state -> weights the network computes with
    write: Callable[..., Any]  # (key, state, dw[, normals]) -> state
    draw: Callable[[Any, Any], Any] = lambda key, state: None  # (key, state) -> normals


class Hardware(NamedTuple):
    """The crossbars a task adapts on."""

    params: device.DeviceParams  # device physics and write-noise law
    sigma_w: jax.Array  # shape=(), dimensionless write-noise level (Eq. 7)
    policy: device.PulsePolicy  # how wanted changes become pulse counts (Eqs. 5-6)


def hardware(params: device.DeviceParams, sigma_w, policy: str = "open_loop") -> Hardware:
    """A `Hardware` from device parameters, a noise level and a pulse policy's name."""
    return Hardware(params, jnp.float32(sigma_w), device.pulse_policy(policy))


def software() -> Writer:
    """Exact arithmetic: theta <- theta + dw."""
    return Writer(
        start=lambda key, weights: weights,
        read=lambda state: state,
        write=lambda key, state, dw, normals=None: jax.tree.map(jnp.add, state, dw),
    )


def _keys(key, names) -> dict:
    """One key per name, assigned in sorted order (independent of dict order)."""
    names = sorted(names)
    return dict(zip(names, jax.random.split(key, len(names)), strict=True))


def crossbars(
    hw: Hardware,
    differential: bool = False,
    verify_tol: float | None = None,
    verify_iterations: int = 50,
) -> Writer:
    """Weights on crossbars of `hw.params` devices; each update one noisy write at `hw.sigma_w`.

    Args:
      hw: the crossbars' devices, noise level and pulse policy.
      differential: differential-pair mapping instead of one device around the midpoint.
      verify_tol: None programs the initial weights exactly (the paper's assumption [text]);
        a tolerance (weight units) programs them by noisy write-verify instead.
      verify_iterations: write-verify's iteration cap.
    """
    params, sigma_w, policy = hw

    def start(key, weights):
        if verify_tol is None:
            return {k: crossbar.program(w, params, differential) for k, w in weights.items()}
        # Write-verify from a blank (all-zero-weight) array to the targets.
        keys = _keys(key, weights)
        return {
            k: crossbar.write_verify(
                keys[k],
                crossbar.program(jnp.zeros_like(w), params, differential),
                w,
                params,
                sigma_w,
                policy,
                tol=verify_tol,
                max_iterations=verify_iterations,
            )[0]
            for k, w in weights.items()
        }

    def read(state):
        return {k: crossbar.weights(xb, params) for k, xb in state.items()}

    def write(key, state, dw, normals=None):
        keys = _keys(key, state)
        normals = dict.fromkeys(state) if normals is None else normals  # None: drawn from keys
        return {
            k: crossbar.write_update(keys[k], xb, dw[k], params, sigma_w, policy, normals[k])[0]
            for k, xb in state.items()
        }

    def draw(key, state):
        keys = _keys(key, state)
        return {k: crossbar.write_normals(keys[k], xb, params) for k, xb in state.items()}

    return Writer(start, read, write, draw)


def writer(hw: Hardware | None) -> Writer:
    """The inner-loop writer of `hw`: `software()` for None, else `crossbars(hw)`."""
    return software() if hw is None else crossbars(hw)
