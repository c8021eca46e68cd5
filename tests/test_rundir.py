"""The files of a run: config, checkpoints, best model, CSV (roa_jax/rundir.py)."""

import dataclasses
import json

import chex
import jax.numpy as jnp
import pytest

from roa_jax import config, maml, rundir

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
    with pytest.raises(FileNotFoundError, match="not a meta_train.py run folder"):
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


def test_corrupt_checkpoint_gives_a_clear_error_naming_the_folder(tmp_path):
    workdir = rundir.Workdir(tmp_path)
    rundir.Checkpoints(workdir).save(3, _state())
    files = [f for f in (workdir.checkpoints / "3").rglob("*") if f.is_file()]
    assert files
    for f in files:
        if f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be restored") as error:
        rundir.Checkpoints(workdir).restore_latest(_state())
    assert f"{workdir.checkpoints}/3" in str(error.value)
    assert "Delete that folder" in str(error.value)


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
    with pytest.raises(FileNotFoundError, match="meta_train.py"):
        rundir.load_best(tmp_path / "missing", target)
    # A checkpoint of another network is refused with a message, not an orbax trace.
    other = maml.MetaParams({"conv0": {"kernel": jnp.zeros((3, 3, 1, 8))}}, {})
    with pytest.raises(ValueError, match="from another network"):
        rundir.load_best(workdir.best, other)
