"""ROA's post-write query loss per task, and two estimators of its gradient in the knobs.

  - 'ste' (`task_gradients`): autodiff through `device.write`, whose pulse count is rounded
    with a straight-through gradient and whose noise is reparameterized (fixed normals);
  - 'fd' (`fd_gradients`): central differences of the EXACT write's loss in the knobs, with
    common random numbers (the same tasks and the same normals on both sides). The forward
    value of `device.write` is the exact write: the straight-through estimator changes
    gradients only.

The exact loss is piecewise smooth: with every pulse count fixed it is smooth in the rates,
the window and the noise, and it jumps where some device's count changes (a device that
starts receiving a pulse also starts receiving noise). The straight-through estimator replaces
the jumps by the derivative of a continuous count: the mean effect of the jumps where a
device's wanted change spans many steps, but not where most wanted changes are under half a
step and round to no write (ROA's updates on every device here); there it is biased, and
blind to the noise a newly written device gets. Averaged over ~1e5 devices per task and many
tasks the jumps are dense and small, so central differences over a few per cent of a knob are
the reference (`diagnostics.gradient_check`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from roa_jax import batching, maml, writers
from roa_jax.codesign.parameterization import NAMES, Knobs, device_params, shifted

ESTIMATORS = ("ste", "fd")


def _one_write(k: Knobs, meta, key, episode, base, sigma_w, policy, model):
    """(query loss, query accuracy) of one task after ROA's one write on the device of `k`."""
    hw = writers.Hardware(device_params(k, base), sigma_w, policy)
    rho = jnp.exp(k.log_rho)
    result = maml.adapt(key, model, meta, episode, 1, writers.crossbars(hw), rho, first_order=True)
    return result.loss[-1], result.accuracy[-1]


def _one_gradient(k: Knobs, meta, key, episode, base, sigma_w, policy, model, joint):
    """(loss, accuracy, d loss / d knobs, d loss / d meta or None) of one task."""
    fn = lambda kn, m: _one_write(kn, m, key, episode, base, sigma_w, policy, model)
    (loss, acc), grads = jax.value_and_grad(fn, (0, 1) if joint else 0, has_aux=True)(k, meta)
    g_knobs, g_meta = grads if joint else (grads, None)
    return loss, acc, g_knobs, g_meta


_one_write_jit = jax.jit(_one_write, static_argnames="model")
_one_gradient_jit = jax.jit(_one_gradient, static_argnames=("model", "joint"))


@functools.partial(jax.jit, static_argnames=("fn", "strategy", "static"))
def _batched(k, meta, keys, episodes, args, *, fn, strategy, static):
    one = lambda kk, ep: fn(k, meta, kk, ep, *args, *static)
    return batching.map_tasks(one, keys, episodes, strategy=strategy)


def _over_tasks(fn, fn_jit, static, k, meta, key, episodes, args, strategy):
    """fn on every task (noise keys as roa.adapt_tasks), results stacked on a leading axis.

    'loop' (the 'auto' choice on XLA:CPU, as `batching.default_grid_strategy`) is a Python
    loop of one-task programs: one program over 8 conv4-64 tasks ('unroll') took 5.8 min to
    compile on the loaded 2-core machine and ran no faster, and under `lax.map` ('map') the
    gradient ran 8x slower. The other strategies are one batched program.
    """
    strategy = batching.default_grid_strategy() if strategy == "auto" else strategy
    keys = jax.random.split(key, episodes.query_y.shape[0])
    if strategy != "loop":
        return _batched(k, meta, keys, episodes, args, fn=fn, strategy=strategy, static=static)
    outs = [
        fn_jit(k, meta, keys[i], jax.tree.map(lambda x, i=i: x[i], episodes), *args, *static)
        for i in range(keys.shape[0])
    ]
    return jax.tree.map(lambda *x: jnp.stack(x), *outs)


def task_losses(k: Knobs, meta, key, episodes, base, sigma_w, policy, model, strategy="auto"):
    """Per-task (query loss [T], accuracy [T]) after the exact write on the device of `k`.

    Args:
      k: the knobs: the device (the rest of it from `base`) and rho.
      meta: meta-parameters (theta_0, LSLR).
      key: PRNG key; task t's write noise from `jax.random.split(key, T)[t]`, as in
        `roa.adapt_tasks`, so the accuracies are that function's on the same device.
      episodes: a batch of tasks (leading axis T).
      base: device parameters that the knobs leave unchanged (noise law, voltages, ...).
      sigma_w: write noise (Eq. 7), traced.
      policy: pulse policy (`device.open_loop()` for ROA).
      model: the network (static).
      strategy: 'auto', 'loop' (one-task programs), or a `batching.map_tasks` strategy.
    """
    args = (base, sigma_w, policy)
    return _over_tasks(_one_write, _one_write_jit, (model,), k, meta, key, episodes, args, strategy)


def task_gradients(
    k: Knobs, meta, key, episodes, base, sigma_w, policy, model, joint=False, strategy="auto"
):
    """Straight-through gradients per task (arguments as `task_losses`).

    Returns:
      (loss [T], accuracy [T], Knobs of d loss_t / d knob [T], meta-shaped d loss_t / d meta
      [T, ...] when `joint`, else None).
    """
    args = (base, sigma_w, policy)
    return _over_tasks(
        _one_gradient, _one_gradient_jit, (model, joint), k, meta, key, episodes, args, strategy
    )


def fd_gradients(
    k: Knobs,
    meta,
    key,
    episodes,
    base,
    sigma_w,
    policy,
    model,
    names: Sequence[str] = NAMES,
    step: float = 0.05,
    strategy: str = "auto",
) -> dict:
    """Central differences of the exact loss per task: {name: [T] slopes in knob units}.

    (loss(k + step e) - loss(k - step e)) / (2 step) for each named knob, with the same tasks
    and noise normals on both sides (common random numbers).
    """
    out = {}
    for name in names:
        up, down = (
            task_losses(
                shifted(k, name, h), meta, key, episodes, base, sigma_w, policy, model, strategy
            )[0]
            for h in (step, -step)
        )
        out[name] = (up - down) / (2 * step)
    return out
