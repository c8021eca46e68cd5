"""Evaluation of every method of the paper (MODEL.md 5) over a grid of noise x rho x seed.

One grid point is (sigma_w, rho, seed): the write noise of the adaptation writes, ROA's
relative learning rate and the repeat. The seed picks the tasks, so every point with the same
seed sees the same tasks (and the same noise draws, scaled by sigma_w): methods and noise
levels are compared on common random numbers. `sweep` maps the grid with the strategy
measured fastest on the backend (`default_sweep_batching`, benchmarks/sweep.py): one
`jax.vmap`-ed program per chunk of tasks on accelerators; on XLA:CPU a Python loop of
single-point programs, because there a vmap turns the per-point convolutions into grouped
convolutions (3.2x slower) and a `lax.map` runs its body 2-2.3x slower than the same body
called from Python.

Methods, each a `kind` of grid point:
  - 'adapt': a meta-trained theta_0 on crossbars, `num_steps` noisy hardware writes with the
    LSLR rates times rho (ROA: 1 step; the online baseline: 5 steps);
  - 'origin': exact (software) adaptation, the ideal-weight line (sigma_w and rho unused);
  - 'offline': a network trained for the task in software from a Gaussian initialization
    with `offline_steps` SGD steps, then mapped onto blank crossbars by ONE open-loop write.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from roa_jax import device, maml, models, roa
from roa_jax.data import episodes as episodes_lib

KINDS = ("adapt", "origin", "offline")


class Grid(NamedTuple):
    """Grid points as parallel arrays (one entry per point)."""

    sigma_w: np.ndarray  # [G] float
    rho: np.ndarray  # [G] float
    seed: np.ndarray  # [G] int


def make_grid(sigmas, rhos, seeds) -> Grid:
    """The Cartesian product sigmas x rhos x seeds, sigma slowest."""
    s, r, e = np.meshgrid(
        np.asarray(sigmas, np.float32),
        np.asarray(rhos, np.float32),
        np.asarray(seeds, np.int32),
        indexing="ij",
    )
    return Grid(s.ravel(), r.ravel(), e.ravel())


class Setting(NamedTuple):
    """What a sweep evaluates, apart from the grid. Hashable: a static jit argument."""

    kind: str  # one of KINDS
    n_way: int
    k_shot: int
    n_query: int
    num_steps: int = 1  # adaptation writes ('adapt') or SGD steps ('offline')
    chunk: int = 8  # tasks per point per compiled call
    policy: str = "open_loop"  # pulse policy of the writes
    offline_lr: float = 0.1
    width: int = 64  # offline network width
    task_batching: str = "auto"  # tasks inside one point, see maml.map_tasks


def default_sweep_batching(backend: str | None = None) -> str:
    """Measured per backend (benchmarks/sweep.py): a loop of programs on XLA:CPU, vmap elsewhere."""
    backend = backend or jax.default_backend()
    return "loop" if backend == "cpu" else "vmap"


def task_key(key, seed, chunk):
    """Key of chunk `chunk` of repeat `seed`: tasks from fold_in(., 0), noise from fold_in(., 1)."""
    return jax.random.fold_in(jax.random.fold_in(key, seed), chunk)


def offline_adapt(key, episode, setting: Setting, hw: roa.Hardware):
    """Query accuracy of the offline scheme on one task (MODEL.md 5, paper Figure 4).

    A conv4 from a Gaussian (He-normal) initialization is trained on the support set in exact
    arithmetic for `num_steps` SGD steps, then mapped onto crossbars at weight 0 by ONE
    open-loop write of its weights (quantized, non-linear, with noise `hw.sigma_w`).
    """
    k_init, k_write = jax.random.split(key)
    image_shape = episode.support_x.shape[1:]
    net = models.init(k_init, setting.n_way, image_shape, setting.width, num_bn_steps=1)

    def support_loss(weights, biases):
        logits = models.apply(weights, biases, net.bn, episode.support_x)
        return models.cross_entropy(logits, episode.support_y)

    def sgd(_, params):
        grads = jax.grad(support_loss, argnums=(0, 1))(*params)
        return jax.tree.map(lambda p, g: p - setting.offline_lr * g, params, grads)

    weights, biases = jax.lax.fori_loop(0, setting.num_steps, sgd, (net.weights, net.biases))
    writer = roa.writer(hw)
    blank = writer.start(None, jax.tree.map(jnp.zeros_like, weights))  # exact: no key used
    mapped = writer.read(writer.write(k_write, blank, weights))
    logits = models.apply(mapped, biases, net.bn, episode.query_x)
    return models.accuracy(logits, episode.query_y)


def evaluate_point(key, meta, images, norm, params, sigma_w, rho, seed, chunk, setting: Setting):
    """Per-task query accuracy [setting.chunk] of one grid point on one chunk of tasks."""
    k = task_key(key, seed, chunk)
    episodes = episodes_lib.sample_episodes(
        jax.random.fold_in(k, 0),
        images,
        setting.chunk,
        setting.n_way,
        setting.k_shot,
        setting.n_query,
        *norm,
    )
    noise_key = jax.random.fold_in(k, 1)
    hw = roa.Hardware(params, sigma_w, device.pulse_policy(setting.policy))
    if setting.kind == "origin":
        return roa.evaluate_tasks(
            noise_key, meta, episodes, setting.num_steps, None, 1.0, setting.task_batching
        )
    if setting.kind == "adapt":
        return roa.evaluate_tasks(
            noise_key, meta, episodes, setting.num_steps, hw, rho, setting.task_batching
        )
    if setting.kind == "offline":
        keys = jax.random.split(noise_key, setting.chunk)
        return maml.map_tasks(
            lambda kk, ep: offline_adapt(kk, ep, setting, hw),
            keys,
            episodes,
            strategy=setting.task_batching,
        )
    raise ValueError(f"kind={setting.kind!r} is not one of {KINDS}.")


def _sweep_chunk(key, meta, images, norm, params, grid, chunk, setting, strategy):
    point = lambda s, r, e: evaluate_point(key, meta, images, norm, params, s, r, e, chunk, setting)
    return maml.map_tasks(point, grid.sigma_w, grid.rho, grid.seed, strategy=strategy)


_sweep_chunk_jit = jax.jit(_sweep_chunk, static_argnames=("setting", "strategy"))
_point_jit = jax.jit(evaluate_point, static_argnames=("setting",))


def sweep(
    key,
    meta,
    images,
    norm,
    params: device.DeviceParams,
    grid: Grid,
    num_tasks: int,
    setting: Setting,
    strategy: str = "auto",
    progress=None,
):
    """Accuracy [G, num_tasks] of every grid point on `num_tasks` tasks per seed.

    Args:
      key: base key of the split (tasks and noise derive from it, the point's seed and chunk).
      meta: meta-parameters ('adapt', 'origin'); unused by 'offline'.
      images: uint8 classes [C, I, H, W, ch] of the split.
      norm: per-channel (mean, std).
      params: device parameters of the crossbars.
      grid: the points.
      num_tasks: tasks per point (rounded up to whole chunks, then cut).
      setting: method and episode shape.
      strategy: 'auto', 'vmap', 'map' or 'unroll' (one compiled program per chunk over the
        whole grid), or 'loop' (a Python loop of single-point programs: the reference).
      progress: optional callable(chunks_done, chunks_total).
    """
    strategy = default_sweep_batching() if strategy == "auto" else strategy
    norm = tuple(jnp.asarray(x, jnp.float32) for x in norm)
    grid_j = Grid(*(jnp.asarray(x) for x in grid))
    num_chunks = math.ceil(num_tasks / setting.chunk)
    out = []
    for c in range(num_chunks):
        if strategy == "loop":
            acc = jnp.stack(
                [
                    _point_jit(key, meta, images, norm, params, s, r, e, c, setting)
                    for s, r, e in zip(*grid_j, strict=True)
                ]
            )
        else:
            acc = _sweep_chunk_jit(key, meta, images, norm, params, grid_j, c, setting, strategy)
        out.append(np.asarray(acc))
        if progress is not None:
            progress(c + 1, num_chunks)
    return np.concatenate(out, axis=1)[:, :num_tasks]


def summarize(accuracies, grid: Grid) -> list[dict]:
    """One row per (sigma_w, rho): mean of the per-seed means, 95 % CI over all tasks."""
    rows = []
    keys = sorted({(float(s), float(r)) for s, r in zip(grid.sigma_w, grid.rho, strict=True)})
    for sigma_w, rho in keys:
        sel = (grid.sigma_w == np.float32(sigma_w)) & (grid.rho == np.float32(rho))
        per_seed = accuracies[sel]  # [seeds, tasks]
        seed_means = per_seed.mean(axis=1)
        _, ci = roa.confidence_interval(per_seed.ravel())
        rows.append(
            {
                "sigma_w": sigma_w,
                "rho": rho,
                "accuracy": float(np.mean(seed_means)),
                "ci95": float(ci),
                "seed_accuracies": [float(x) for x in seed_means],
                "tasks": int(per_seed.size),
            }
        )
    return rows


def best_rho(val_rows: list[dict]) -> dict:
    """{sigma_w: the rho with the highest validation accuracy} (ties: the smaller rho)."""
    best = {}
    for row in sorted(val_rows, key=lambda r: (r["sigma_w"], r["rho"])):
        current = best.get(row["sigma_w"])
        if current is None or row["accuracy"] > current["accuracy"]:
            best[row["sigma_w"]] = row
    return {sigma_w: row["rho"] for sigma_w, row in best.items()}
