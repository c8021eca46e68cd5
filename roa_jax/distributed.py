"""Many devices and many hosts: a mesh, global arrays, data-parallel meta-steps, process 0.

One axis of devices (`mesh`) carries whatever is independent: grid points of a sweep
(`evaluation.sweep(..., mesh=)`: each device evaluates its share of the points, no
collective) or the tasks of a meta-batch (`data_parallel`: the episode batch sharded along its
task axis, the train state replicated; the meta-gradient is averaged by the reduction XLA
inserts for the mean over tasks, no hand-written all-reduce). Inside a device, points or tasks
are mapped with the backend's measured strategy (`batching.map_tasks(..., mesh=)`: a
`jax.shard_map` of the per-device map). Every random draw keys on the point or task, never on
the device, so the numbers equal the one-device ones (bit for bit where the strategy is the
same; a sum of per-device gradients rounds differently in the last bits).

Many hosts: `initialize` joins the processes (`jax.distributed.initialize`) before any JAX
computation; afterwards `jax.devices()` lists every process's devices, each process computes
only the shards on its own devices (its share of the tasks), and `is_main` (process 0) alone
writes files. Run folders and output folders must be on a filesystem all hosts share.

This module sits below the model code (it imports none): the engines take a mesh as an
argument and use its helpers, and the run folder (rundir) its process-0 decisions.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roa_jax import errors
from roa_jax.data import episodes as episodes_lib

# Launchers whose multi-process runs `jax.distributed.initialize()` detects on its own: the
# environment variable holding the number of processes.
_LAUNCHERS = {"Slurm": "SLURM_NTASKS", "Open MPI": "OMPI_COMM_WORLD_SIZE"}


def initialize(coordinator_address=None, num_processes=None, process_id=None) -> bool:
    """Joins a multi-process run; returns whether there is more than one process.

    Arguments left None are read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. With none of the three given, a multi-task Slurm job or Open MPI run is
    left to JAX's own detection (`jax.distributed.initialize()`), and anything else is one
    process (nothing to do). Call it before any JAX computation.

    Args:
      coordinator_address: 'host:port' of process 0, reachable from every process.
      num_processes: processes in the run.
      process_id: this process, 0 .. num_processes - 1.
    """
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num = _int("num_processes", num_processes, "JAX_NUM_PROCESSES")
    pid = _int("process_id", process_id, "JAX_PROCESS_ID")
    given = {"coordinator_address": address, "num_processes": num, "process_id": pid}
    if all(v is None for v in given.values()):
        launcher = [name for name, var in _LAUNCHERS.items() if _int(var, None, var, 1) > 1]
        if launcher:
            jax.distributed.initialize()
        return bool(launcher)
    if missing := [name for name, v in given.items() if v is None]:
        raise errors.ConfigError(
            f"--{', --'.join(missing)} missing: a multi-process run needs "
            "--coordinator_address, --num_processes and --process_id (or JAX_COORDINATOR_"
            "ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."
        )
    if num < 1 or not 0 <= pid < num:
        raise errors.ConfigError(
            f"--num_processes={num} must be >= 1 and --process_id={pid} in [0, {num - 1}]."
        )
    if ":" not in address:
        raise errors.ConfigError(f"--coordinator_address={address!r} must be host:port.")
    if num == 1:
        return False
    jax.distributed.initialize(address, num, pid)
    return True


def _int(name, value, env, default=None):
    text = os.environ.get(env) if value is None else value
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise errors.ConfigError(f"--{name}={text!r} (or ${env}) must be an integer.") from None


def is_main() -> bool:
    """Whether this is process 0, the one that writes files (True in a one-process run)."""
    return jax.process_index() == 0


def mesh(axis: str = "grid", devices=None) -> Mesh:
    """A one-axis mesh over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (axis,))


def replicate(tree, mesh_: Mesh | None):
    """`tree`'s arrays as global arrays with a full copy on every device of `mesh_`.

    Every process must pass the same values. Python scalars and arrays already replicated
    on `mesh_` are left as they are; with no mesh (one device) the whole tree is.
    """
    if mesh_ is None:
        return tree
    sharding = NamedSharding(mesh_, PartitionSpec())
    return jax.tree.map(functools.partial(_put, sharding=sharding), tree)


def shard(tree, mesh_: Mesh | None):
    """`tree`'s arrays as global arrays split along their leading axis over `mesh_`.

    Every process passes the whole (same) value and keeps the slices of its devices. With no
    mesh (one device) the tree is left as it is.
    """
    if mesh_ is None:
        return tree
    sharding = NamedSharding(mesh_, PartitionSpec(mesh_.axis_names[0]))
    return jax.tree.map(functools.partial(_put, sharding=sharding), tree)


def _put(x, sharding):
    if not isinstance(x, jax.Array | np.ndarray | np.generic):
        return x
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def gather(x) -> np.ndarray:
    """The whole value of a global array, on every process (a collective with many)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local(tree):
    """A replicated tree's copy on this process's first device (for one-device code)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def barrier(name: str) -> None:
    """Waits for every process (nothing to wait for in a one-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# Meta-training: the meta-batch split over the mesh.


def training_mesh(data_parallel: bool, meta_batch_size: int) -> Mesh | None:
    """The mesh of data-parallel meta-training (axis 'tasks'), or None; checks the config.

    Raises:
      ConfigError: naming config.meta_batch_size if the tasks do not split evenly over the
        devices, or config.data_parallel if several processes would train without it.
    """
    if not data_parallel:
        if jax.process_count() > 1:
            raise errors.ConfigError(
                f"config.data_parallel=False in a run of {jax.process_count()} processes: "
                "set --config.data_parallel=True (multi-host meta-training is data parallel)."
            )
        return None
    count = jax.device_count()
    if meta_batch_size % count:
        raise errors.ConfigError(
            f"config.meta_batch_size={meta_batch_size} must be a multiple of the {count} "
            "devices that config.data_parallel=True splits the tasks over."
        )
    return mesh("tasks")


def data_parallel(step, mesh_: Mesh):
    """`step(state, episodes, *rest, first_order=)` jitted for a task-sharded batch.

    The state and `rest` (key, MSL weights, hardware) are replicated on `mesh_`, the episodes
    come sharded along their task axis (`sampler`); the new state and the metrics come back
    replicated. The objective must carry `mesh_` (train.Objective.mesh) so that each device
    maps its own tasks.
    """
    replicated = NamedSharding(mesh_, PartitionSpec())
    jitted = jax.jit(step, static_argnames="first_order", out_shardings=replicated)

    def run(state, episodes, *rest, **static):
        return jitted(replicate(state, mesh_), episodes, *replicate(rest, mesh_), **static)

    return run


def sampler(mesh_: Mesh):
    """`episodes.sample_episodes`, jitted to draw each device's tasks on that device.

    The same episodes as one device (each task's draw keys on its own split of the key).
    """
    sharded = NamedSharding(mesh_, PartitionSpec(mesh_.axis_names[0]))
    jitted = jax.jit(
        episodes_lib.sample_episodes,
        static_argnames=("num_tasks", "n_way", "k_shot", "n_query"),
        out_shardings=sharded,
    )

    def sample(key, images, num_tasks, n_way, k_shot, n_query, mean=0.0, std=1.0):
        key, images, mean, std = replicate((key, images, mean, std), mesh_)
        return jitted(key, images, num_tasks, n_way, k_shot, n_query, mean, std)

    return sample
