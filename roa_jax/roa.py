"""ROA and the schemes it is compared with: how a new task is learned on crossbars.

Paper sections "ROA", "Regularization Constraint" and "Learning Rate Adjustment" (MODEL.md 4):
meta-train in software with `lambda_c * R(theta)` added to the meta-loss, program theta_0 onto
crossbars, then adapt to a new task with ONE noisy hardware write whose inner learning rates
are scaled by `rho`, and evaluate the query set on the noisy crossbars. The schemes (MODEL.md
5), each a function of one batch of tasks:

  - `adapt_tasks` with a `Hardware`: ROA (1 write) or the online baseline (5 writes), from a
    meta-trained theta_0; with `hw=None`, exact adaptation, the ideal "origin";
  - `offline_tasks`: a network trained for each task in software from a Gaussian
    initialization, then mapped onto blank crossbars by ONE open-loop write.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roa_jax import batching, crossbar, maml, models, writers


def constraint(params: dict, constraint_k: float, placement=models.default_placement):
    """R(theta) = sum(relu(|theta| - 1/k)^2) over the crossbar weights (Eqs. 17-18).

    Zero while every weight is inside [-1/k, 1/k]; k = 1 is the full weight range (ROA-WC).
    """
    bound = 1.0 / constraint_k
    on_crossbars = models.split(params, placement)[models.CROSSBAR]
    return sum(jnp.sum(jax.nn.relu(jnp.abs(w) - bound) ** 2) for w in on_crossbars.values())


# |W| at or beyond this is "near the device's ends": within 10 % of the range's half-width of
# G_min or G_max (crossbar.program maps W in [-1, 1] onto the whole range).
NEAR_ENDS = 0.9


def weight_shares(params: dict, constraint_k: float, placement=models.default_placement):
    """Where the crossbar weights sit, per layer: {layer: {'beyond': share with |W| > 1/k
    (what the constraint acts on), 'near_ends': share with |W| >= NEAR_ENDS, 'median', 'p99'
    (of |W|), 'size'}}. Layers are the kernels' paths joined by '/'."""
    bound = 1.0 / constraint_k
    out = {}
    for path, w in models.split(params, placement)[models.CROSSBAR].items():
        a = np.abs(np.asarray(w, np.float64)).ravel()
        out["/".join(path)] = {
            "beyond": float(np.mean(a > bound)),
            "near_ends": float(np.mean(a >= NEAR_ENDS)),
            "median": float(np.median(a)),
            "p99": float(np.quantile(a, 0.99)),
            "size": int(a.size),
        }
    return out


def adapt_tasks(
    key,
    model: nn.Module,
    meta: maml.MetaParams,
    episodes,
    num_steps: int,
    hw: writers.Hardware | None = None,
    rho=1.0,
    task_batching: str = "auto",
):
    """Adapts theta_0 to each task with `num_steps` updates on `hw`; query accuracy per task.

    `hw=None` is the ideal "origin" (exact arithmetic); a `Hardware` gives ROA (one step) or
    the online baseline (several steps). Each task gets its own noise key.
    """
    keys = task_keys(key, episodes)
    return adapt_each(keys, model, meta, episodes, num_steps, hw, rho, task_batching)


def task_keys(key, episodes):
    """The noise key of each task of a batch (what adapt_tasks and offline_tasks use)."""
    return jax.random.split(key, episodes.query_y.shape[0])


def adapt_each(
    keys, model, meta, episodes, num_steps, hw=None, rho=1.0, task_batching="auto", normals=None
):
    """`adapt_tasks` with the tasks' keys given (`task_keys`), so a batch can be cut; `normals`:
    each task's write noise drawn beforehand (`draw_normals`), else drawn from its key."""

    def one(k, episode, *drawn):
        writer = writers.writer(hw)
        result = maml.adapt(
            k, model, meta, episode, num_steps, writer, rho, every_step=False, normals=drawn or None
        )
        return result.accuracy[-1]

    tasks = (keys, episodes) if normals is None else (keys, episodes, *normals)
    return batching.map_tasks(one, *tasks, strategy=task_batching)


def draw_normals(keys, meta, num_steps, hw):
    """The write noise's random numbers of `adapt_each(keys, ...)` on `hw`: a list over the
    writes, each stacked over the tasks; the same numbers as drawn in `adapt_each`."""
    per_task = [maml.draw_normals(k, meta, num_steps, writers.writer(hw)) for k in keys]
    return jax.tree.map(lambda *x: jnp.stack(x), *per_task)


def write_pulses(model, meta: maml.MetaParams, episode, hw: writers.Hardware, rho=1.0) -> dict:
    """|Pulse count| of every crossbar device in ROA's one write on one task, {path: array}.

    theta_0 is programmed exactly, the first inner update (`maml.inner_update`, scaled by
    `rho`) becomes pulse counts by `hw.policy`; a count of 0 leaves the device as it was (a
    wanted change under half a step). The counts do not depend on the noise level.
    """
    groups = models.split(meta.params)
    writer = writers.crossbars(hw)
    state = writer.start(None, groups[models.CROSSBAR])  # exact programming: no key used
    step = maml.inner_update(
        model, meta, episode, writer.read(state), groups[models.DIGITAL], 0, rho
    )
    key = jax.random.PRNGKey(0)  # noise does not change the counts
    return {
        p: jnp.abs(crossbar.write_update(key, xb, step[p], hw.params, hw.sigma_w, hw.policy)[1])
        for p, xb in state.items()
    }


def offline_adapt(key, model: nn.Module, episode, num_steps: int, lr, hw: writers.Hardware):
    """Query accuracy of the offline scheme on one task (MODEL.md 5, paper Figure 4).

    `model` (one BN set) from its Gaussian (He-normal) initialization is trained on the
    support set in exact arithmetic for `num_steps` SGD steps at rate `lr`, then its crossbar
    weights are mapped onto crossbars at weight 0 by ONE open-loop write (quantized,
    non-linear, with noise `hw.sigma_w`); biases are digital, BN stays at its initialization.
    """
    k_init, k_write = jax.random.split(key)
    groups = models.split(model.init(k_init, episode.support_x)["params"])
    frozen = groups[models.FROZEN]

    def logits(trained, x):
        return model.apply({"params": models.merge(frozen, *trained)}, x)

    def loss(trained):
        return models.cross_entropy(logits(trained, episode.support_x), episode.support_y)

    # Unrolled: the same 5 steps in a `lax.fori_loop` ran ~4x slower on XLA:CPU (BUILD_NOTES.md,
    # "Speed: the meta-step near the machine's limit").
    weights, biases = groups[models.CROSSBAR], groups[models.DIGITAL]
    for _ in range(num_steps):
        grads = jax.grad(loss)((weights, biases))
        weights, biases = jax.tree.map(lambda p, g: p - lr * g, (weights, biases), grads)
    writer = writers.crossbars(hw)
    blank = writer.start(None, jax.tree.map(jnp.zeros_like, weights))  # exact: no key used
    mapped = writer.read(writer.write(k_write, blank, weights))
    return models.accuracy(logits((mapped, biases), episode.query_x), episode.query_y)


def offline_tasks(
    key, model, episodes, num_steps: int, lr, hw: writers.Hardware, task_batching="auto"
):
    """`offline_adapt` on every task of a batch, each with its own key."""
    return offline_each(task_keys(key, episodes), model, episodes, num_steps, lr, hw, task_batching)


def offline_each(keys, model, episodes, num_steps: int, lr, hw, task_batching="auto"):
    """`offline_tasks` with the tasks' keys given (`task_keys`)."""
    one = lambda k, episode: offline_adapt(k, model, episode, num_steps, lr, hw)
    return batching.map_tasks(one, keys, episodes, strategy=task_batching)
