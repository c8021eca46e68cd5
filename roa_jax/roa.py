"""ROA: the constraint on theta_0, the relative learning rate, and one-step hardware adaptation.

Paper sections "ROA", "Regularization Constraint" and "Learning Rate Adjustment" (MODEL.md 4):
meta-train in software with `lambda_c * R(theta)` added to the meta-loss, program theta_0 onto
crossbars, then adapt to a new task with ONE noisy hardware write whose inner learning rates
are scaled by `rho`, and evaluate the query set on the noisy crossbars.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from roa_jax import device, maml


def constraint(weights: dict, constraint_k: float):
    """R(theta) = sum(relu(|theta| - 1/k)^2) over the crossbar weights (Eqs. 17-18).

    Zero while every weight is inside [-1/k, 1/k]; k = 1 is the full weight range (ROA-WC).
    """
    bound = 1.0 / constraint_k
    return sum(jnp.sum(jax.nn.relu(jnp.abs(w) - bound) ** 2) for w in jax.tree.leaves(weights))


class Hardware(NamedTuple):
    """The crossbars a task adapts on. A pytree of arrays: noise level, device parameters and
    pulse policy are traced inputs, so sweeping them neither recompiles nor needs special code.
    """

    params: device.DeviceParams
    sigma_w: jax.Array  # shape=(), dimensionless write noise (Eq. 7)
    policy: device.PulsePolicy


def hardware(params: device.DeviceParams, sigma_w, policy: str = "open_loop") -> Hardware:
    return Hardware(params, jnp.float32(sigma_w), device.pulse_policy(policy))


def writer(hw: Hardware | None) -> maml.Writer | None:
    """The inner-loop writer for `hw`; None (exact arithmetic) for None."""
    return None if hw is None else maml.hardware(hw.params, hw.sigma_w, hw.policy)


def evaluate_tasks(
    key,
    meta: maml.MetaParams,
    episodes,
    num_steps: int,
    hw: Hardware | None = None,
    rho=1.0,
    task_batching: str = "auto",
):
    """Adapts theta_0 to each task with `num_steps` updates on `hw`; query accuracy per task.

    `hw=None` is the ideal "origin" (exact arithmetic); a `Hardware` gives ROA (one step) or
    the online baseline (several steps). Each task gets its own noise key.
    """
    keys = jax.random.split(key, episodes.query_y.shape[0])

    def one(k, episode):
        return maml.adapt(k, meta, episode, num_steps, writer(hw), rho).accuracy[-1]

    return maml.map_tasks(one, keys, episodes, strategy=task_batching)


def confidence_interval(accuracies):
    """(mean, half-width of the 95 % normal confidence interval) of per-task accuracies."""
    acc = jnp.asarray(accuracies, jnp.float32)
    n = acc.shape[0]
    return jnp.mean(acc), 1.96 * jnp.std(acc, ddof=1) / jnp.sqrt(n)
