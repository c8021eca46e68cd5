"""MAML++ for ONE task on a flax network, with an inner update that is exact or a hardware write.

MAML (Finn et al. 2017) with the MAML++ changes (Antoniou et al. 2018): per-parameter per-step
learnable inner learning rates (LSLR), per-step batch-norm weights (BNWB, in the network),
multi-step loss (MSL) with annealing, derivative-order annealing (first order early). Cosine
meta-LR annealing is the optimizer's schedule (train.py).

The network's parameters are split by a placement rule (models.py): crossbar weights are
adapted through a `writers.Writer` (exact, or pulses with noise on crossbars), digital ones
(biases) exactly, frozen ones (BN) not at all. Everything here is written for one task;
`batching.map_tasks` lifts it over a batch of tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from roa_jax import models, writers
from roa_jax.data.episodes import Episode


class MetaParams(NamedTuple):
    """Everything the outer loop learns."""

    params: dict  # flax params of the initial network theta_0
    lslr: dict  # params-shaped tree of the adapted (crossbar and digital) leaves: [S] inner LRs


def init(
    key,
    model: nn.Module,
    example_x,
    num_inner_steps: int,
    inner_lr: float,
    placement: models.Placement = models.default_placement,
) -> MetaParams:
    """theta_0 = `model.init` on `example_x` [batch, ...], every LSLR rate at `inner_lr`."""
    params = model.init(key, example_x)["params"]
    groups = models.split(params, placement)
    adapted = {**groups[models.CROSSBAR], **groups[models.DIGITAL]}
    if not groups[models.CROSSBAR]:
        raise ValueError("The placement puts no parameter on crossbars: nothing to write.")
    rates = {p: jnp.full((num_inner_steps,), inner_lr, jnp.float32) for p in adapted}
    return MetaParams(params, models.merge(rates))


class TaskResult(NamedTuple):
    """Query metrics of one task after each inner step (or after the last one only)."""

    loss: jax.Array  # [num_steps] query loss after step 1..S ([1]: theta_0 itself when S = 0)
    accuracy: jax.Array  # [num_steps] query accuracy, same steps


def adapt(
    key,
    model: nn.Module,
    meta: MetaParams,
    episode: Episode,
    num_steps: int,
    writer: writers.Writer | None = None,
    rho=1.0,
    first_order: bool = False,
    placement: models.Placement = models.default_placement,
    every_step: bool = True,
    normals=None,
) -> TaskResult:
    """Inner loop on one task's support set; returns the query metrics after every step.

    Step t computes the support loss of theta_t (BN set t), its gradient, and the update
    dw = -rho * lr[param, t] * grad: crossbar weights get it through `writer`, digital ones
    exactly. `rho` is ROA's relative learning rate (1 in meta-training). Steps beyond the
    meta-trained number reuse the last LSLR rate and BN set.

    Args:
      key: PRNG key for the writes (noise) and the initial programming.
      model: the flax network.
      meta: meta-parameters.
      episode: one task (no leading task axis).
      num_steps: number of inner updates S >= 0 (static).
      writer: how crossbar updates are applied; default `writers.software()`.
      rho: multiplier of all inner learning rates.
      first_order: drop second-order terms (gradients are not differentiated through).
      placement: which parameters live on crossbars (as at `init`).
      every_step: query after every update (the multi-step loss needs them); False queries
        after the last update only, which is all a one-step loss or an evaluation reads. A
        query pass costs more than a support step (75 against 5 images on 5-way), and a zero
        weight of the multi-step loss does not remove its pass from the gradient.
      normals: the writes' random numbers drawn beforehand (`draw_normals`, the same
        numbers); None draws each write's from its key.

    Returns:
      TaskResult of the query set after each of the S updates ([1]: after the last one when
      not `every_step`; theta_0 alone when S = 0).
    """
    writer = writers.software() if writer is None else writer
    groups = models.split(meta.params, placement)
    frozen = groups[models.FROZEN]

    def query(on_crossbars, digital, t):
        params = models.merge(frozen, on_crossbars, digital)
        out = model.apply({"params": params}, episode.query_x, t)
        return models.cross_entropy(out, episode.query_y), models.accuracy(out, episode.query_y)

    k_start, step_keys = write_keys(key, num_steps)
    state = writer.start(k_start, groups[models.CROSSBAR])
    digital = groups[models.DIGITAL]
    if num_steps == 0:
        loss, acc = query(writer.read(state), digital, 0)
        return TaskResult(loss[None], acc[None])

    losses, accs = [], []
    for t in range(num_steps):
        on_crossbars = writer.read(state)
        step = inner_update(
            model, meta, episode, on_crossbars, digital, t, rho, first_order, placement
        )
        dw = {p: step[p] for p in on_crossbars}
        drawn = () if normals is None else (normals[t],)  # a writer may take 3 arguments
        state = writer.write(step_keys[t], state, dw, *drawn)
        digital = {p: b + step[p] for p, b in digital.items()}
        if every_step or t + 1 == num_steps:
            loss, acc = query(writer.read(state), digital, t + 1)
            losses.append(loss)
            accs.append(acc)
    return TaskResult(jnp.stack(losses), jnp.stack(accs))


def write_keys(key, num_steps: int):
    """(key of the initial programming, [key of each write]) of `adapt(key, ...)`."""
    k_start, k_write = jax.random.split(key)
    return k_start, [jax.random.fold_in(k_write, t) for t in range(num_steps)]


def draw_normals(
    key,
    meta: MetaParams,
    num_steps: int,
    writer: writers.Writer,
    placement: models.Placement = models.default_placement,
):
    """The random numbers of the writes of `adapt(key, ...)` on `writer`, one per write:
    drawn once and handed to `adapt` as `normals`, the same numbers as drawn there."""
    k_start, step_keys = write_keys(key, num_steps)
    # Only the state's structure and shapes are read: XLA drops the programming's arithmetic.
    state = writer.start(k_start, models.split(meta.params, placement)[models.CROSSBAR])
    return [writer.draw(k, state) for k in step_keys]


def inner_update(
    model: nn.Module,
    meta: MetaParams,
    episode: Episode,
    on_crossbars: dict,
    digital: dict,
    t: int,
    rho=1.0,
    first_order: bool = False,
    placement: models.Placement = models.default_placement,
) -> dict:
    """Update dw = -rho * lr[param, t] * grad of inner step t, {path: dw} of the adapted leaves.

    The gradient is the support loss's at the weights `on_crossbars` (as the network reads
    them) and `digital` with BN set t; steps beyond the meta-trained number reuse the last
    LSLR rate. `adapt` writes the crossbar part of it and adds the digital part.
    """
    frozen = models.split(meta.params, placement)[models.FROZEN]
    rates = traverse_util.flatten_dict(meta.lslr)
    lr_t = min(t, next(iter(rates.values())).shape[0] - 1)

    def support_loss(on_crossbars, digital):
        params = models.merge(frozen, on_crossbars, digital)
        out = model.apply({"params": params}, episode.support_x, t)
        return models.cross_entropy(out, episode.support_y)

    grads = jax.grad(support_loss, argnums=(0, 1))(on_crossbars, digital)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    return {p: -rho * rates[p][lr_t] * g for p, g in {**grads[0], **grads[1]}.items()}


def msl_weights(num_steps: int, epoch, msl_epochs: int):
    """MAML++ multi-step loss weights of the S query losses at `epoch`.

    They start uniform (1/S each) and move linearly, over `msl_epochs` epochs, to all weight on
    the last step except a floor of 0.03/S on the others. msl_epochs = 0 uses the last step only.
    """
    if num_steps <= 1 or msl_epochs <= 0:
        return jnp.zeros((max(num_steps, 1),)).at[-1].set(1.0)
    uniform = 1.0 / num_steps
    floor = 0.03 / num_steps
    progress = jnp.clip(jnp.asarray(epoch, jnp.float32) / msl_epochs, 0.0, 1.0)
    others = jnp.maximum(uniform - progress * (uniform - floor), floor)
    last = 1.0 - (num_steps - 1) * others
    return jnp.full((num_steps,), others).at[-1].set(last)
