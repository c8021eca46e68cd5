"""MAML++ for ONE task, with an inner update that is either exact or a hardware write.

MAML (Finn et al. 2017) with the MAML++ changes (Antoniou et al. 2018): per-layer per-step
learnable inner learning rates (LSLR), per-step batch-norm weights (BNWB), multi-step loss
(MSL) with annealing, derivative-order annealing (first order early). Cosine meta-LR
annealing is the optimizer's schedule (train.py).

The inner update goes through a `Writer`, a pair of pure functions in the optax style:
`start(key, weights) -> state` puts the initial weights where they live, `read(state) ->
weights` returns the weights the network computes with and `write(key, state, dw) -> state`
applies an update. `software()` is exact arithmetic; `hardware(...)` programs crossbars and
writes every update as pulses with noise (MODEL.md 1-2), differentiably, so the same inner
loop serves meta-training, hardware-aware meta-training and ROA adaptation.

Everything here is written for one task; `map_tasks` lifts it over a batch of tasks with the
strategy measured fastest on the backend (benchmarks/meta_step.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from roa_jax import crossbar, device, models
from roa_jax.data.episodes import Episode


class MetaParams(NamedTuple):
    """Everything the outer loop learns."""

    net: models.NetParams  # initial network theta_0 (weights on crossbars, digital periphery)
    lslr: dict  # {'weights': {layer: [S]}, 'biases': {layer: [S]}}: per-layer per-step inner LRs


class Writer(NamedTuple):
    """Where the adapted weights live and how an update reaches them."""

    start: Callable[[Any, dict], Any]  # (key, weights) -> state
    read: Callable[[Any], dict]  # state -> weights the network computes with
    write: Callable[[Any, Any, dict], Any]  # (key, state, dw) -> state


def software() -> Writer:
    """Exact arithmetic: theta <- theta + dw."""
    return Writer(
        start=lambda key, weights: weights,
        read=lambda state: state,
        write=lambda key, state, dw: jax.tree.map(jnp.add, state, dw),
    )


def hardware(
    params: device.DeviceParams,
    sigma_w,
    policy: device.PulsePolicy | None = None,
    differential: bool = False,
    verify_tol: float | None = None,
    verify_iterations: int = 50,
) -> Writer:
    """Weights on crossbars; each update is one open-loop (or model-inverse) noisy write.

    Args:
      params: device parameters.
      sigma_w: write-noise level of the adaptation writes (Eq. 7).
      policy: pulse policy of the adaptation writes; default open_loop.
      differential: differential-pair mapping instead of one device around the midpoint.
      verify_tol: None programs the initial weights exactly (the paper's assumption [text]);
        a tolerance (weight units) programs them by noisy write-verify instead.
      verify_iterations: write-verify's iteration cap.
    """

    def start(key, weights):
        if verify_tol is None:
            return {k: crossbar.program(w, params, differential) for k, w in weights.items()}
        # Write-verify from a blank (all-zero-weight) array to the targets.
        keys = dict(zip(weights, jax.random.split(key, len(weights)), strict=True))
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

    def write(key, state, dw):
        keys = dict(zip(state, jax.random.split(key, len(state)), strict=True))
        return {
            k: crossbar.write_update(keys[k], xb, dw[k], params, sigma_w, policy)[0]
            for k, xb in state.items()
        }

    return Writer(start, read, write)


def init(
    key, n_way: int, image_shape, width: int, num_inner_steps: int, inner_lr: float
) -> MetaParams:
    """Conv4 theta_0 with num_inner_steps + 1 BN sets and LSLR rates all at `inner_lr`."""
    net = models.init(key, n_way, image_shape, width, num_bn_steps=num_inner_steps + 1)
    rates = lambda tree: jax.tree.map(
        lambda _: jnp.full((num_inner_steps,), inner_lr, jnp.float32), tree
    )
    return MetaParams(net, {"weights": rates(net.weights), "biases": rates(net.biases)})


class TaskResult(NamedTuple):
    """Query metrics of one task after each inner step."""

    loss: jax.Array  # [num_steps] query loss after step 1..S ([1]: theta_0 itself when S = 0)
    accuracy: jax.Array  # [num_steps] query accuracy, same steps


def adapt(
    key,
    meta: MetaParams,
    episode: Episode,
    num_steps: int,
    writer: Writer | None = None,
    rho=1.0,
    first_order: bool = False,
):
    """Inner loop on one task's support set; returns the query metrics after every step.

    Step t computes the support loss of theta_t (BN set t), its gradient, and the update
    dw = -rho * lr[layer, t] * grad, written by `writer`; the digital head bias is updated
    exactly. `rho` is ROA's relative learning rate (1 in meta-training). Steps beyond the
    meta-trained number reuse the last LSLR rate and BN set.

    Args:
      key: PRNG key for the writes (noise) and the initial programming.
      meta: meta-parameters.
      episode: one task (no leading task axis).
      num_steps: number of inner updates S >= 0 (static).
      writer: how updates are applied; default `software()`.
      rho: multiplier of all inner learning rates.
      first_order: drop second-order terms (gradients are not differentiated through).

    Returns:
      TaskResult of the query set after each of the S updates (theta_0 alone when S = 0).
    """
    writer = software() if writer is None else writer
    net, bn = meta.net, meta.net.bn
    num_bn = bn["conv0"]["scale"].shape[0]
    trained_steps = jax.tree.leaves(meta.lslr)[0].shape[0]

    def query(weights, biases, t):
        logits = models.apply(weights, biases, bn, episode.query_x, min(t, num_bn - 1))
        return models.cross_entropy(logits, episode.query_y), models.accuracy(
            logits, episode.query_y
        )

    k_start, k_write = jax.random.split(key)
    state = writer.start(k_start, net.weights)
    biases = net.biases
    if num_steps == 0:
        loss, acc = query(writer.read(state), biases, 0)
        return TaskResult(loss[None], acc[None])

    losses, accs = [], []
    for t in range(num_steps):

        def support_loss(weights, biases, t=t):
            logits = models.apply(weights, biases, bn, episode.support_x, min(t, num_bn - 1))
            return models.cross_entropy(logits, episode.support_y)

        g_w, g_b = jax.grad(support_loss, argnums=(0, 1))(writer.read(state), biases)
        if first_order:
            g_w, g_b = jax.lax.stop_gradient((g_w, g_b))
        lr_t = min(t, trained_steps - 1)
        step = lambda g, lr, lr_t=lr_t: -rho * lr[lr_t] * g
        state = writer.write(
            jax.random.fold_in(k_write, t), state, jax.tree.map(step, g_w, meta.lslr["weights"])
        )
        biases = jax.tree.map(
            lambda b, g, lr, step=step: b + step(g, lr), biases, g_b, meta.lslr["biases"]
        )
        loss, acc = query(writer.read(state), biases, t + 1)
        losses.append(loss)
        accs.append(acc)
    return TaskResult(jnp.stack(losses), jnp.stack(accs))


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


TASK_BATCHING = ("unroll", "vmap", "map")


def default_task_batching(backend: str | None = None) -> str:
    """Measured choice per backend (benchmarks/meta_step.py, BUILD_NOTES.md).

    On XLA:CPU a vmapped conv whose weights differ per task becomes a grouped conv that runs
    ~7x slower than the same convs unrolled in one program; accelerators batch it well.
    """
    backend = backend or jax.default_backend()
    return "unroll" if backend == "cpu" else "vmap"


def map_tasks(fn, *tasks, strategy: str = "auto"):
    """`fn(*task)` for every task (leading axis of each leaf of `tasks`), results stacked.

    The one place that decides how tasks are batched: 'unroll' (a Python loop inside the
    caller's jit), 'vmap', or 'map' (`lax.map`, sequential); 'auto' picks per backend.
    """
    strategy = default_task_batching() if strategy == "auto" else strategy
    if strategy == "vmap":
        return jax.vmap(fn)(*tasks)
    if strategy == "map":
        return jax.lax.map(lambda task: fn(*task), tasks)
    if strategy != "unroll":
        raise ValueError(f'task_batching={strategy!r} is not one of {TASK_BATCHING} or "auto".')
    num = jax.tree.leaves(tasks)[0].shape[0]
    outs = [fn(*jax.tree.map(lambda x, i=i: x[i], tasks)) for i in range(num)]
    return jax.tree.map(lambda *x: jnp.stack(x), *outs)
