"""How a function written for one task (or one grid point) is lifted over many: per backend.

The one place these performance choices are made, each measured (BUILD_NOTES.md, "Task
batching" and "Sweeps"; benchmarks/meta_step.py and benchmarks/sweep.py):

  - tasks inside one compiled program (`map_tasks`): 'unroll' (a Python loop inside the
    caller's jit) on XLA:CPU, where a `jax.vmap` over per-task conv weights becomes a
    grouped convolution that runs ~7x slower; 'vmap' on accelerators;
  - grid points of a sweep (`evaluation.sweep`): 'loop' (a Python loop of single-point
    programs) on XLA:CPU, where one program over the grid was 2-3.2x slower (lax.map, vmap)
    or compiled for minutes (unroll); 'vmap' on accelerators;
  - over many devices (`map_tasks(..., mesh=)`): each device maps its share with the same
    choice, inside a `jax.shard_map` (a sweep's points, a meta-batch's tasks;
    benchmarks/scaling.py). Left to XLA's partitioner (a plain jit with the task axis
    sharded), a second-order meta-step ran 9x (unroll) and 6x (vmap) slower than on one
    device (4 forced CPU devices, conv4-8);
  - XLA:CPU's library for convolutions (`configure_xla`, applied when roa_jax is imported):
    Eigen, not YNNPACK;
  - the float32 precision of an evaluation sweep's convolutions and dots (`sweep_precision`):
    full float32 everywhere, so that every strategy and backend gives the same accuracies.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import jaxlib

from roa_jax import errors

# XLA:CPU (jaxlib 0.10) hands convolutions, dots and reductions to YNNPACK by default. Its
# convolutions ran 2-4x slower than XLA's own (Eigen) at MAML's shapes (75 x 14 x 14 x 64 ->
# 64: forward 21 vs 12 ms, input gradient 20 vs 9, filter gradient 48 vs 12) while its dots and
# reductions are the faster ones: keep those, take convolutions out (BUILD_NOTES.md, "Speed:
# the meta-step near the machine's limit"). Only for the jaxlib releases it was measured on: a
# flag an XLA does not know aborts the process.
_CPU_XLA_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type="
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
)
_MEASURED_JAXLIB = ("0.10.",)


def configure_xla(environ=os.environ) -> bool:
    """Adds the XLA:CPU flags measured fastest to `environ['XLA_FLAGS']`; True if it did.

    Nothing changes where the user's XLA_FLAGS already choose the libraries, or where jaxlib
    is a release it was not measured on. XLA reads its flags when JAX starts its backend, so
    this takes effect when roa_jax is imported before JAX's first computation (as the
    binaries, benchmarks and tests do); on GPU and TPU the CPU flag has no effect.
    """
    flags = environ.get("XLA_FLAGS", "")
    if "ynn_fusion_type" in flags or not jaxlib.__version__.startswith(_MEASURED_JAXLIB):
        return False
    environ["XLA_FLAGS"] = f"{flags} {_CPU_XLA_FLAGS}".strip()
    return True


def use_compile_cache(directory, environ=os.environ) -> bool:
    """Keeps compiled programs in `directory` across processes (JAX's persistent compilation
    cache, programs that took >= 1 s to compile); True if it did.

    A rerun, a resumed run or a second task of the same shapes loads its programs instead of
    compiling them again (BUILD_NOTES.md, "The main job's compiles").
    Nothing changes where JAX_COMPILATION_CACHE_DIR already names a cache, or where
    ROA_COMPILE_CACHE=0.
    """
    if environ.get("ROA_COMPILE_CACHE") == "0" or environ.get("JAX_COMPILATION_CACHE_DIR"):
        return False
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return True


STRATEGIES = ("unroll", "vmap", "map")
GRID_STRATEGIES = (*STRATEGIES, "loop")


def default_strategy(backend: str | None = None) -> str:
    """Tasks in one program: 'unroll' on XLA:CPU, 'vmap' elsewhere."""
    return "unroll" if (backend or jax.default_backend()) == "cpu" else "vmap"


def default_grid_strategy(backend: str | None = None) -> str:
    """Grid points of a sweep: 'loop' (of single-point programs) on XLA:CPU, 'vmap' elsewhere."""
    return "loop" if (backend or jax.default_backend()) == "cpu" else "vmap"


def sweep_precision(backend: str | None = None) -> str | None:
    """`jax.default_matmul_precision` of evaluation sweeps: 'highest' on accelerators, None on CPU.

    An accelerator's default float32 passes (TF32 on recent GPUs, bfloat16 passes on TPU) round
    a batched (vmap) convolution differently from a per-point one by ~1e-3 of the value, enough
    to move a rounded pulse count or a near-tied query: the vmapped sweep then differed from the
    loop of single-point programs on a GPU (issue 31). XLA:CPU computes float32 in full either
    way, and its default leaves the library choices of `configure_xla` untouched.
    """
    return None if (backend or jax.default_backend()) == "cpu" else "highest"


def in_sweep_precision(fn):
    """`fn` run under `jax.default_matmul_precision(sweep_precision())`."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision(sweep_precision()):
            return fn(*args, **kwargs)

    return wrapped


def check(strategy: str, allowed=STRATEGIES) -> str:
    """Returns `strategy` if it is 'auto' or one of `allowed`; else raises naming them."""
    if strategy != "auto" and strategy not in allowed:
        raise errors.ConfigError(f"task_batching={strategy!r} is not one of {allowed} or 'auto'.")
    return strategy


def map_tasks(fn, *tasks, strategy: str = "auto", mesh=None, shared=()):
    """`fn(*shared, *task)` for every task (leading axis of each leaf of `tasks`), results stacked.

    'unroll' (a Python loop inside the caller's jit), 'vmap', or 'map' (`lax.map`,
    sequential); 'auto' picks per backend (`default_strategy`). With a `jax.sharding.Mesh`,
    the tasks are split evenly over its (first axis') devices and each device maps its own
    with `strategy`; `shared` and the values `fn` closes over are replicated. Pass a global
    array that `fn` indexes or gathers from in `shared`: closed over, it keeps the sharding
    of the mesh outside the shard_map, which indexing inside refuses.
    """
    if mesh is not None:
        spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
        # check_vma=False: with it, a gradient inside `fn` of a replicated value (the inner
        # loop's grad of theta_0) would be summed over the devices; the outer gradient of a
        # replicated input is still summed (shard_map's transpose: XLA's all-reduce).
        return jax.shard_map(
            lambda s, t: map_tasks(fn, *t, strategy=strategy, shared=s),
            mesh=mesh,
            in_specs=(jax.sharding.PartitionSpec(), spec),
            out_specs=spec,
            check_vma=False,
        )(tuple(shared), tasks)
    fn = functools.partial(fn, *shared)
    strategy = default_strategy() if check(strategy) == "auto" else strategy
    if strategy == "vmap":
        return jax.vmap(fn)(*tasks)
    if strategy == "map":
        return jax.lax.map(lambda task: fn(*task), tasks)
    num = jax.tree.leaves(tasks)[0].shape[0]
    outs = [fn(*jax.tree.map(lambda x, i=i: x[i], tasks)) for i in range(num)]
    return jax.tree.map(lambda *x: jnp.stack(x), *outs)
