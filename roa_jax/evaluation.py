"""The evaluation engine: any scheme of roa.py over a grid of device x noise x rho x seed.

One grid point is (device, sigma_w, rho, seed): which of the stacked device parameters (a
device preset, or one reconstruction of the lost noise law; `stack`), the write noise of the
adaptation writes, ROA's relative learning rate, and the repeat. The seed picks the tasks, so
every point with the same seed sees the same tasks (and the same noise draws, scaled by
sigma_w): methods, devices and noise levels are compared on common random numbers. Device
parameters, noise level and rho are traced, so one compiled program serves the whole grid;
`sweep` maps the grid with the strategy measured fastest on the backend
(`batching.default_grid_strategy`).

Kinds of point (`Setting.kind`), each a scheme of roa.py:
  - 'adapt': a meta-trained theta_0 on crossbars, `num_steps` noisy hardware writes with the
    LSLR rates times rho (ROA: 1 step; the online baseline: 5 steps);
  - 'origin': exact (software) adaptation, the ideal-weight line (device, sigma_w, rho unused);
  - 'offline': the network trained per task in software for `num_steps` SGD steps, then
    mapped onto blank crossbars by ONE open-loop write.
"""

from __future__ import annotations

import functools
import math
from operator import itemgetter
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roa_jax import batching, device, distributed, roa, writers
from roa_jax.data import episodes as episodes_lib

KINDS = ("adapt", "origin", "offline")


class Grid(NamedTuple):
    """Grid points as parallel arrays (one entry per point)."""

    device: np.ndarray  # [G] int, index into the stacked device parameters
    sigma_w: np.ndarray  # [G] float
    rho: np.ndarray  # [G] float
    seed: np.ndarray  # [G] int


def make_grid(sigmas, rhos, seeds, devices=(0,)) -> Grid:
    """The Cartesian product devices x sigmas x rhos x seeds, devices slowest."""
    d, s, r, e = np.meshgrid(
        np.asarray(devices, np.int32),
        np.asarray(sigmas, np.float32),
        np.asarray(rhos, np.float32),
        np.asarray(seeds, np.int32),
        indexing="ij",
    )
    return Grid(d.ravel(), s.ravel(), r.ravel(), e.ravel())


def stack(params: list[device.DeviceParams]) -> device.DeviceParams:
    """Device parameters stacked on a leading axis, for a grid's `device` index."""
    return jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v, jnp.float32) for v in x]), *params)


class Setting(NamedTuple):
    """What a sweep evaluates, apart from the grid. Hashable: a static jit argument."""

    kind: str  # one of KINDS
    model: nn.Module  # the meta-trained network ('adapt', 'origin') or the offline one
    n_way: int
    k_shot: int
    n_query: int
    num_steps: int = 1  # adaptation writes ('adapt') or SGD steps ('offline')
    chunk: int = 8  # tasks drawn together per point (and per compiled call, but in the loop)
    offline_lr: float = 0.1
    task_batching: str = "auto"  # tasks inside one point, see batching.map_tasks
    # Tasks per compiled call of the loop strategy (XLA:CPU), which unrolls a call's tasks.
    # One: a 5-step program of 8 tasks took ~2.5 min to compile, of 1 task 20 s, and ran no
    # faster (benchmarks/program_tasks.py). The tasks and noise keys are the chunk's either
    # way, so the numbers do not depend on it.
    program_tasks: int = 1


def task_key(key, seed, chunk):
    """Key of chunk `chunk` of repeat `seed`: tasks from fold_in(., 0), noise from fold_in(., 1)."""
    return jax.random.fold_in(jax.random.fold_in(key, seed), chunk)


def draw_tasks(key, images, norm, seed, chunk, shape):
    """The episodes of chunk `chunk` of repeat `seed`, and the write-noise key of each.

    Args:
      key: the split's base key.
      images: uint8 class array of the split.
      norm: per-channel (mean, std).
      seed: the repeat, traced.
      chunk: which chunk of the repeat's tasks, traced.
      shape: (tasks, n_way, k_shot, n_query), static (`episode_shape`).
    """
    k = task_key(key, seed, chunk)
    episodes = episodes_lib.sample_episodes(jax.random.fold_in(k, 0), images, *shape, *norm)
    return episodes, roa.task_keys(jax.random.fold_in(k, 1), episodes)


def episode_shape(setting: Setting) -> tuple:
    return (setting.chunk, setting.n_way, setting.k_shot, setting.n_query)


def evaluate_tasks(keys, meta, episodes, devices, policy, point, setting: Setting, normals=None):
    """Per-task query accuracy of one grid point on drawn episodes (any number of them).

    Args:
      keys: the write-noise key of each task (`draw_tasks`).
      meta: meta-parameters ('adapt', 'origin'); unused by 'offline'.
      episodes: the tasks (`draw_tasks`).
      devices: stacked device parameters (leading axis: the grid's device index).
      policy: pulse policy of the writes.
      point: (device, sigma_w, rho), traced.
      setting: the scheme and the episode shape.
      normals: 'adapt': the tasks' write noise drawn beforehand (`draw_normals`), else drawn
        here from their keys (the same numbers).
    """
    device_index, sigma_w, rho = point
    params = jax.tree.map(lambda x: x[device_index], devices)
    hw = writers.Hardware(params, sigma_w, policy)
    model, steps, batching_ = setting.model, setting.num_steps, setting.task_batching
    if setting.kind == "origin":
        return roa.adapt_each(keys, model, meta, episodes, steps, None, 1.0, batching_)
    if setting.kind == "adapt":
        return roa.adapt_each(keys, model, meta, episodes, steps, hw, rho, batching_, normals)
    if setting.kind == "offline":
        return roa.offline_each(keys, model, episodes, steps, setting.offline_lr, hw, batching_)
    raise ValueError(f"kind={setting.kind!r} is not one of {KINDS}.")


def evaluate_point(key, meta, images, norm, devices, policy, point, chunk, setting: Setting):
    """Per-task query accuracy [setting.chunk] of one grid point (device, sigma_w, rho, seed)
    on one chunk of tasks: `draw_tasks` then `evaluate_tasks`."""
    *where, seed = point
    episodes, keys = draw_tasks(key, images, norm, seed, chunk, episode_shape(setting))
    return evaluate_tasks(keys, meta, episodes, devices, policy, tuple(where), setting)


def draw_normals(keys, meta, devices, policy, setting: Setting):
    """The write noise's standard normals of `evaluate_tasks(keys, ...)` for `setting`, which
    depend on the tasks' keys only, not on the point: None where it draws none ('origin', and
    'offline', whose one write draws its own)."""
    if setting.kind != "adapt":
        return None
    hw = writers.Hardware(jax.tree.map(itemgetter(0), devices), jnp.float32(0), policy)
    return roa.draw_normals(keys, meta, setting.num_steps, hw)


# The loop strategy draws each round's tasks in a program of their own, so the (costly) program
# of the scheme does not depend on the split's number of classes: validation and test parts
# of one model share it. The same program draws the tasks' write noise: common to every point
# of the repeat, it is drawn once, not once per point (the threefry draw was ~a quarter of a
# 5-step task; BUILD_NOTES.md, "Speed: the meta-step near the machine's limit"). Its pieces are
# the tasks of one program each (`program_tasks`).
@functools.partial(jax.jit, static_argnames=("shape", "step", "setting", "mesh"))
def _draw_round(key, images, norm, meta, devices, policy, seeds, chunk, shape, step, setting, mesh):
    def one(key, images, norm, meta, devices, policy, chunk, seed):
        episodes, keys = draw_tasks(key, images, norm, seed, chunk, shape)
        drawn = (episodes, keys, draw_normals(keys, meta, devices, policy, setting))
        return [
            jax.tree.map(itemgetter(slice(a, a + step)), drawn) for a in range(0, shape[0], step)
        ]

    shared = (key, images, norm, meta, devices, policy, chunk)
    return batching.map_tasks(one, seeds, strategy="unroll", mesh=mesh, shared=shared)


@functools.partial(jax.jit, static_argnames=("setting", "mesh"))
def _tasks_round(episodes, keys, normals, meta, devices, policy, where, setting, mesh):
    def one(meta, devices, policy, episodes, keys, normals, *where):
        return evaluate_tasks(keys, meta, episodes, devices, policy, where, setting, normals)

    shared = (meta, devices, policy)
    return batching.map_tasks(
        one, episodes, keys, normals, *where, strategy="unroll", mesh=mesh, shared=shared
    )


@functools.partial(jax.jit, static_argnames=("setting", "strategy", "mesh"))
def _points(key, meta, images, norm, devices, policy, grid, chunk, setting, strategy, mesh):
    def one(key, meta, images, norm, devices, policy, chunk, *point):
        return evaluate_point(key, meta, images, norm, devices, policy, point, chunk, setting)

    shared = (key, meta, images, norm, devices, policy, chunk)
    return batching.map_tasks(one, *grid, strategy=strategy, mesh=mesh, shared=shared)


@batching.in_sweep_precision
def sweep(
    key,
    meta,
    images,
    norm,
    devices: device.DeviceParams,
    grid: Grid,
    num_tasks: int,
    setting: Setting,
    policy: device.PulsePolicy | None = None,
    strategy: str = "auto",
    progress=None,
    mesh=None,
):
    """Accuracy [G, num_tasks] of every grid point on `num_tasks` tasks per seed.

    The points go in rounds. 'loop' (the XLA:CPU default): a round is one point per device,
    its tasks drawn by one program and evaluated `setting.program_tasks` at a time by others;
    'vmap', 'map', 'unroll': one round of the whole grid, one program per chunk in which each
    device maps its share of the points with the strategy. With a mesh, each device runs what
    one device would on its points (`batching.map_tasks(..., mesh=)`): the one-device
    numbers, bit for bit where that is a per-point program ('loop', 'map', 'unroll').

    Args:
      key: base key of the split (tasks and noise derive from it, the point's seed and chunk).
      meta: meta-parameters ('adapt', 'origin'); unused by 'offline'.
      images: uint8 classes [C, I, H, W, ch] of the split (put on the device once).
      norm: per-channel (mean, std).
      devices: device parameters stacked on a leading axis (`stack`), indexed by grid.device.
      grid: the points.
      num_tasks: tasks per point (rounded up to whole chunks, then cut).
      setting: scheme and episode shape.
      policy: pulse policy of the writes; default open_loop.
      strategy: 'auto', 'loop', 'vmap', 'map' or 'unroll' (`batching.GRID_STRATEGIES`).
      progress: optional callable(chunks_done, chunks_total).
      mesh: a `jax.sharding.Mesh` (`distributed.mesh()`) to split the grid over (padded with
        copies of its last point to whole rounds); every process passes the same arguments
        and gets the whole result. None or one device: the default device.
    """
    batching.check(strategy, batching.GRID_STRATEGIES)
    strategy = batching.default_grid_strategy() if strategy == "auto" else strategy
    policy = device.open_loop() if policy is None else policy
    mesh = mesh if mesh is not None and mesh.size > 1 else None
    size, num_points = 1 if mesh is None else mesh.size, len(grid.seed)
    per_round = size if strategy == "loop" else math.ceil(num_points / size) * size
    padded = math.ceil(num_points / per_round) * per_round
    grid = Grid(
        *(np.concatenate([x, np.repeat(x[-1:], padded - len(x))]) for x in map(np.asarray, grid))
    )
    rounds = [Grid(*(x[i : i + per_round] for x in grid)) for i in range(0, padded, per_round)]
    placed = [distributed.shard(g, mesh) for g in rounds]
    norm = tuple(np.asarray(x, np.float32) for x in norm)
    shared = distributed.replicate((key, meta, images, norm, devices, policy), mesh)
    key, meta, images, norm, devices, policy = shared
    shape, step = episode_shape(setting), setting.program_tasks
    num_chunks = math.ceil(num_tasks / setting.chunk)
    out = []
    for c in range(num_chunks):
        chunk, drawn, rows = np.int32(c), {}, []  # rows: per round, its pieces [points, tasks]
        for g, here in zip(rounds, placed, strict=True):
            if strategy != "loop":
                rows.append([_points(*shared, here, chunk, setting, strategy, mesh)])
                continue
            seeds = tuple(g.seed.tolist())  # every point of the same seeds sees their tasks
            if seeds not in drawn:
                drawn[seeds] = _draw_round(
                    key, images, norm, meta, devices, policy, here.seed, chunk, shape, step,
                    setting, mesh,
                )  # fmt: skip
            where = tuple(here[:3])
            rows.append(
                [
                    _tasks_round(*p, meta, devices, policy, where, setting, mesh)
                    for p in drawn[seeds]
                ]
            )
        # Gathered once every program of the chunk is queued.
        acc = np.concatenate([np.concatenate([distributed.gather(x) for x in r], 1) for r in rows])
        out.append(acc[:num_points])
        if progress is not None:
            progress(c + 1, num_chunks)
    return np.concatenate(out, axis=1)[:, :num_tasks]


def confidence_interval(accuracies):
    """(mean, half-width of the 95 % normal confidence interval) of per-task accuracies."""
    acc = np.asarray(accuracies, np.float64).ravel()
    return float(np.mean(acc)), float(1.96 * np.std(acc, ddof=1) / np.sqrt(acc.size))


def summarize(accuracies, grid: Grid) -> list[dict]:
    """One row per (device, sigma_w, rho): mean of the per-seed means, 95 % CI over all tasks.

    The `device` key is left out of rows of a single-device grid. 'task_accuracies' holds every
    task's accuracy (seed by seed, to 6 decimals): points with the same seeds saw the same tasks
    and noise draws, so two rows can be compared task by task (claims.py's paired differences).
    """
    rows = []
    many = len(set(grid.device.tolist())) > 1
    points = zip(grid.device, grid.sigma_w, grid.rho, strict=True)
    for d, sigma_w, rho in sorted({(int(d), float(s), float(r)) for d, s, r in points}):
        sel = (grid.device == d) & (grid.sigma_w == np.float32(sigma_w))
        sel &= grid.rho == np.float32(rho)
        per_seed = accuracies[sel]  # [seeds, tasks]
        _, ci = confidence_interval(per_seed)
        rows.append(
            {
                **({"device": d} if many else {}),
                "sigma_w": sigma_w,
                "rho": rho,
                "accuracy": float(np.mean(per_seed.mean(axis=1))),
                "ci95": ci,
                "seed_accuracies": [float(x) for x in per_seed.mean(axis=1)],
                "tasks": int(per_seed.size),
                "task_accuracies": [round(float(x), 6) for x in per_seed.ravel()],
            }
        )
    return rows


def best_rho(val_rows: list[dict]) -> dict:
    """{sigma_w: the rho with the highest validation accuracy} (ties: the smaller rho).

    Rows of several devices give {(device, sigma_w): rho}.
    """
    best = {}
    for row in sorted(val_rows, key=lambda r: (r.get("device", 0), r["sigma_w"], r["rho"])):
        where = (row["device"], row["sigma_w"]) if "device" in row else row["sigma_w"]
        if where not in best or row["accuracy"] > best[where]["accuracy"]:
            best[where] = row
    return {where: row["rho"] for where, row in best.items()}
