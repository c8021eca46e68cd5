"""Many devices and hosts (distributed.py): sharded sweeps, data-parallel meta-training, processes.

The checks that need several devices run this file as a script in a subprocess with 4 forced
CPU devices (`python tests/test_distributed.py <check>`), so that every other test keeps one
device; two processes on 127.0.0.1 stand for two hosts. Tiny synthetic tasks (conv4-8, 16x16).
"""

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FORCED = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}


def _run(*args, env=None, timeout=600):
    """Runs this file (or another script) as a subprocess; returns its stdout."""
    out = subprocess.run(
        [sys.executable, *map(str, args)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _check(name, *args):
    assert "PASSED" in _run(__file__, name, *args, env=FORCED)


# What the subprocesses run (with `python tests/test_distributed.py <check>`).


def _tiny():
    from roa_jax import config

    return dataclasses.replace(
        config.model_config("synthetic_5w1s", "roa", "tiny"), width=8, image_size=16, n_query=3
    )


def _sweep_inputs():
    import jax

    from roa_jax import device, evaluation, train
    from roa_jax.data import synthetic

    cfg = _tiny()
    setting = evaluation.Setting("adapt", train.build_model(cfg), 5, 1, 3, num_steps=1, chunk=2)
    # 5 points that differ in device, noise, rho and seed: padded to 8 over 4 devices.
    grid = evaluation.Grid(
        device=np.array([0, 1, 0, 1, 0], np.int32),
        sigma_w=np.array([0.0, 1.5, 1.5, 1.5, 1.5], np.float32),
        rho=np.array([1.0, 1.0, 1.0, 2.0, 2.0], np.float32),
        seed=np.array([0, 0, 0, 0, 1], np.int32),
    )
    devices = evaluation.stack([device.paper(), device.with_noise(device.paper(), "linear")])
    images = synthetic.load_synthetic(seed=0, image_size=16)["test"]
    meta = train.init_meta(cfg, (16, 16, 1))
    return (jax.random.PRNGKey(3), meta, images, (0.0, 1.0), devices, grid, 2, setting)


def check_sweep():
    import jax

    from roa_jax import distributed, evaluation

    assert jax.device_count() == 4
    args = _sweep_inputs()
    mesh = distributed.mesh()
    # 'loop' (the XLA:CPU default): one program per round of one point per device; 'map':
    # one program per device's share of 2 points. Both run each point's own program.
    for strategy in ("loop", "map"):
        one = evaluation.sweep(*args, strategy=strategy)
        many = evaluation.sweep(*args, strategy=strategy, mesh=mesh)
        assert many.shape == one.shape == (5, 2)
        np.testing.assert_array_equal(many, one)
    assert len({tuple(row) for row in one}) > 1  # the points differ: a real check


def check_meta_step():
    import chex
    import jax

    from roa_jax import distributed, maml, train
    from roa_jax.data import episodes, synthetic

    # Hardware-aware: each task's write noise keys on the task, not on its device. With the
    # CPU default (unroll) each task runs the same program on one device as on four; a
    # batched (vmap) conv rounds differently, which a quantized write can turn into a pulse.
    cfg = dataclasses.replace(_tiny(), meta_batch_size=4, hardware_inner=True, train_sigma_w=0.5)
    images = synthetic.load_synthetic(seed=0, image_size=16)["train"]
    meta = train.init_meta(cfg, (16, 16, 1))
    hw, msl_w = train.training_hardware(cfg), maml.msl_weights(1, 0, 0)
    mesh = distributed.training_mesh(True, cfg.meta_batch_size)
    with np.testing.assert_raises_regex(ValueError, "meta_batch_size=6 must be a multiple of"):
        distributed.training_mesh(True, 6)
    key, sample_key = jax.random.PRNGKey(1), jax.random.PRNGKey(2)

    sample = jax.jit(episodes.sample_episodes, static_argnums=(2, 3, 4, 5))
    batch = sample(sample_key, images, 4, 5, 1, 3)
    sharded = distributed.sampler(mesh)(sample_key, images, 4, 5, 1, 3)
    chex.assert_trees_all_equal(sharded, batch)  # the same episodes, drawn device by device
    assert sharded.query_x.sharding.spec == jax.sharding.PartitionSpec("tasks")

    # The meta-gradient: per-task gradients on their devices, summed by the reduction XLA
    # inserts (in another order than on one device: float tolerance).
    grad = jax.jit(jax.grad(train.meta_loss, has_aux=True), static_argnums=(5, 6))
    one = grad(meta, batch, key, msl_w, hw, train.objective(cfg), True)
    shared = distributed.replicate((meta, key, msl_w, hw), mesh)
    objective = train.objective(cfg)._replace(mesh=mesh)
    many = grad(shared[0], sharded, *shared[1:], objective, True)
    chex.assert_trees_all_close(many, one, rtol=1e-5, atol=1e-7)
    assert many[0].params["conv0"]["kernel"].sharding.is_fully_replicated
    assert np.abs(one[0].params["conv0"]["kernel"]).max() > 1e-3  # a real gradient


def check_fit(workdir):
    import chex
    import jax.numpy as jnp

    from roa_jax import config, rundir, train

    cfg = config.Config(
        dataset="synthetic",
        width=8,
        image_size=16,
        n_query=3,
        meta_batch_size=4,
        epochs=1,
        iterations_per_epoch=4,
        first_order_epochs=1,
        msl_epochs=0,
        val_tasks=4,
        eval_chunk=4,
        log_every=2,
        checkpoint_every=3,
    )
    parallel = dataclasses.replace(cfg, data_parallel=True)
    one = train.fit(cfg, Path(workdir, "one"))
    assert train.fit(parallel, Path(workdir, "many"), stop_after_steps=3)["step"] == 3
    assert train.fit(parallel, Path(workdir, "many")) == one  # resumed from the checkpoint

    def final(run):
        meta = train.init_meta(cfg, (16, 16, 1))
        opt_state = train.make_optimizer(cfg).init(meta)
        target = train.TrainState(meta, opt_state, jnp.int32(0))
        return rundir.Checkpoints(rundir.Workdir(Path(workdir, run))).restore_latest(target)

    chex.assert_trees_all_close(final("many"), final("one"), atol=1e-6)
    read = lambda run: Path(workdir, run, "val.csv").read_text()
    assert read("many") == read("one")


def check_process(port, process_id, out):
    """One of two processes of a sweep (2 CPU devices each, 4 in all)."""
    from roa_jax import distributed, evaluation

    assert distributed.initialize(f"127.0.0.1:{port}", 2, int(process_id))
    import jax

    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    acc = evaluation.sweep(*_sweep_inputs(), mesh=distributed.mesh())
    assert distributed.is_main() == (process_id == "0")
    np.save(out, acc)  # each process has the whole result


CHECKS = {f.__name__: f for f in (check_sweep, check_meta_step, check_fit, check_process)}


# The tests.


def test_sharded_sweep_equals_the_one_device_sweep():
    _check("check_sweep")


def test_data_parallel_meta_step_equals_one_device():
    _check("check_meta_step")


def test_data_parallel_fit_resumes_and_equals_one_device(tmp_path):
    _check("check_fit", tmp_path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_sweep_as_one(tmp_path):
    from roa_jax import evaluation

    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "check_process", str(port), str(i), tmp_path / f"{i}.npy"],
            env={**os.environ, **FORCED, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    one = evaluation.sweep(*_sweep_inputs())  # this process: one device
    for i in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"{i}.npy"), one)


def test_initialize_checks_its_arguments(monkeypatch):
    from roa_jax import distributed

    for var in (
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task Slurm job is one process
    assert distributed.initialize() is False
    with pytest.raises(ValueError, match="--num_processes, --process_id missing"):
        distributed.initialize("127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"--process_id=2 in \[0, 1\]"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="must be host:port"):
        distributed.initialize("127.0.0.1", 2, 0)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match=r"\(or \$JAX_NUM_PROCESSES\) must be an integer"):
        distributed.initialize()
    assert distributed.initialize("127.0.0.1:1234", 1, 0) is False  # one process: nothing
    assert distributed.is_main()


def test_binary_names_a_missing_process_flag(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            ROOT / "experiments" / "evaluate.py",
            f"--roa={tmp_path}",
            f"--out_dir={tmp_path}",
            "--coordinator_address=127.0.0.1:1234",
            "--num_processes=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "evaluate.py: error: --process_id missing: a multi-process run needs "
        "--coordinator_address, --num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID)."
    )


@pytest.mark.slow  # a benchmark script's smoke run, like tests/test_benchmarks.py
def test_scaling_benchmark_prints_a_row_per_device_count():
    out = _run(
        ROOT / "benchmarks" / "scaling.py",
        "--devices=1,2",
        "--width=4",
        "--image_size=16",
        "--points=4",
        "--tasks=2",
        "--meta_batch=4",
        "--repeats=1",
        env={**FORCED, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    for row in ("sweep", "meta-step"):
        assert len([line for line in out.splitlines() if line.startswith(row)]) == 2, out


if __name__ == "__main__":
    CHECKS[sys.argv[1]](*sys.argv[2:])
    print("PASSED")
