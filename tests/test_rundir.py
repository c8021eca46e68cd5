"""The files of a run: config, checkpoints, best model, CSV (roa_jax/rundir.py)."""

import dataclasses
import json
import os
import subprocess
import sys

import chex
import jax.numpy as jnp
import pytest

from roa_jax import config, errors, maml, rundir

CFG = config.Config(dataset="synthetic", width=8, epochs=2, iterations_per_epoch=4)


def _state(scale=1.0):
    """A small pytree with the structure of a train state."""
    meta = maml.MetaParams(
        params={"head": {"kernel": scale * jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}},
        lslr={"head": {"kernel": jnp.full((1,), 0.1), "bias": jnp.full((1,), 0.1)}},
    )
    return {"meta": meta, "step": jnp.int32(3)}


def test_changed_config_refuses_to_resume(tmp_path):
    workdir = rundir.Workdir(tmp_path)
    rundir.claim(workdir, CFG)
    assert rundir.read_config(tmp_path) == CFG
    rundir.claim(workdir, CFG)  # the same config resumes
    rundir.claim(workdir, dataclasses.replace(CFG, epochs=5))  # a run may be extended
    with pytest.raises(ValueError, match=r"different config .*'inner_lr': \(0.1, 0.5\)"):
        rundir.claim(workdir, dataclasses.replace(CFG, epochs=5, inner_lr=0.5))
    # A run saved before a Config field existed resumes when the field is at its default.
    saved = json.loads(workdir.config_json.read_text())
    del saved["exact_loss_weight"]
    workdir.config_json.write_text(json.dumps(saved))
    assert rundir.read_config(tmp_path).exact_loss_weight == 0.0
    rundir.claim(workdir, dataclasses.replace(CFG, epochs=5))
    # ... but not when the new config sets it to something else.
    workdir.config_json.write_text(json.dumps(saved))
    changed = dataclasses.replace(CFG, exact_loss_weight=0.5)
    with pytest.raises(ValueError, match=r"different config .*'exact_loss_weight': \(0.0, 0.5\)"):
        rundir.claim(workdir, changed)


def test_a_folder_without_a_readable_config(tmp_path):
    with pytest.raises(errors.RunFolderError, match="not a meta_train.py run folder"):
        rundir.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        rundir.read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"n_way": 0}))
    with pytest.raises(ValueError, match="n_way"):  # a saved config is validated too
        rundir.read_config(tmp_path)


def test_checkpoints_restore_the_latest(tmp_path):
    checkpoints = rundir.Checkpoints(rundir.Workdir(tmp_path))
    target = _state(0.0)
    assert checkpoints.restore_latest(target) is target  # nothing saved yet
    checkpoints.save(3, _state(1.0))
    checkpoints.save(4, _state(2.0))
    chex.assert_trees_all_equal(checkpoints.restore_latest(target), _state(2.0))


def _damage(folder):
    files = [f for f in folder.rglob("*") if f.is_file() and f.stat().st_size > 0]
    assert files
    for f in files:
        f.write_bytes(b"garbage")


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_restored(tmp_path, caplog):
    workdir = rundir.Workdir(tmp_path)
    checkpoints = rundir.Checkpoints(workdir)
    for step in (3, 4):
        checkpoints.save(step, _state(float(step)))
    _damage(workdir.checkpoints / "4")
    with caplog.at_level("WARNING"):
        restored = rundir.Checkpoints(workdir).restore_latest(_state(0.0))
    chex.assert_trees_all_equal(restored, _state(3.0))
    assert sorted(p.name for p in workdir.checkpoints.iterdir()) == ["3"]
    assert (tmp_path / "checkpoints.damaged" / "4").is_dir()  # moved aside, not deleted
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "[4]" in warning.getMessage() and "resuming from step 3" in warning.getMessage()
    assert rundir.latest_step(tmp_path) == 3
    # Saved again at 4, the new 4 restores; a second damaged 4 does not overwrite the first.
    rundir.Checkpoints(workdir).save(4, _state(4.0))
    _damage(workdir.checkpoints / "4")
    chex.assert_trees_all_equal(
        rundir.Checkpoints(workdir).restore_latest(_state(0.0)), _state(3.0)
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints.damaged").iterdir()) == ["4", "4.1"]


@pytest.mark.parametrize(
    "bad",
    [
        _state(float("nan")),  # a non-finite value
        {"meta": _state()["meta"], "step": jnp.zeros(2, jnp.int32)},  # another shape
    ],
    ids=["nan", "shape"],
)
def test_a_checkpoint_that_restores_but_does_not_check_is_skipped(tmp_path, bad):
    workdir = rundir.Workdir(tmp_path)
    rundir.Checkpoints(workdir).save(3, _state(3.0))
    rundir.Checkpoints(workdir).save(4, bad)
    chex.assert_trees_all_equal(
        rundir.Checkpoints(workdir).restore_latest(_state(0.0)), _state(3.0)
    )


def test_with_every_checkpoint_damaged_the_run_starts_over(tmp_path):
    workdir = rundir.Workdir(tmp_path)
    rundir.Checkpoints(workdir).save(3, _state())
    _damage(workdir.checkpoints / "3")
    target = _state(0.0)
    assert rundir.Checkpoints(workdir).restore_latest(target) is target
    assert not list(workdir.checkpoints.iterdir())
    assert (tmp_path / "checkpoints.damaged" / "3").is_dir()


_HOLDER = """
import sys, time
from roa_jax import rundir
with rundir.lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(folder):
    """A process holding `folder`'s lock (after it printed 'held')."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_one_writer_per_folder_and_kill_9_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(rundir.FolderInUse, match=f"pid {holder.pid}") as error:
            with rundir.lock(tmp_path / "run"):
                pass
        assert str(tmp_path / "run") in str(error.value)
    finally:
        holder.kill()  # SIGKILL: the OS drops its lock
        holder.wait()
    with rundir.lock(tmp_path / "run"):
        with rundir.lock(tmp_path / "run"):  # the same process may nest it
            pass
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    holder = _holder(tmp_path / "run")  # released when the block ended
    holder.kill()
    holder.wait()


def test_csv_drops_rows_after_the_restored_step(tmp_path):
    path, fields = tmp_path / "train.csv", ["step", "loss"]
    log = rundir.Csv(path, fields, keep_until_step=0)
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step})
    # Resumed from the checkpoint at step 3: the rows of steps 4 and 5 are redone.
    log = rundir.Csv(path, fields, keep_until_step=3)
    assert [int(r["step"]) for r in log.rows] == [1, 2, 3]
    log.write({"step": 4, "loss": 0.2})
    assert path.read_text().splitlines() == [
        "step,loss",
        "1,1.0",
        "2,0.5",
        "3,0.3333333333333333",
        "4,0.2",
    ]


def test_save_best_and_load_best_round_trip(tmp_path):
    workdir = rundir.Workdir(tmp_path)
    assert rundir.read_best(workdir) == {}
    meta = _state(1.0)["meta"]
    rundir.save_best(workdir, meta, {"val_accuracy": 0.5, "step": 4})
    better = _state(2.0)["meta"]
    rundir.save_best(workdir, better, {"val_accuracy": 0.6, "step": 8})  # replaces best/
    target = _state(0.0)["meta"]
    restored = rundir.load_best(workdir.best, target)
    assert isinstance(restored, maml.MetaParams)
    chex.assert_trees_all_equal(restored, better)
    assert rundir.read_best(workdir) == {"val_accuracy": 0.6, "step": 8}
    assert not (tmp_path / "best.tmp").exists()
    with pytest.raises(errors.RunFolderError, match="meta_train.py"):
        rundir.load_best(tmp_path / "missing", target)
    # A checkpoint of another network is refused with a message, not an orbax trace.
    other = maml.MetaParams({"conv0": {"kernel": jnp.zeros((3, 3, 1, 8))}}, {})
    with pytest.raises(ValueError, match="from another network"):
        rundir.load_best(workdir.best, other)
