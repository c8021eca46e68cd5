"""Meta-training loop: learning, checkpoint/resume, config and flag validation (train.py)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from roa_jax import train

ROOT = Path(__file__).resolve().parent.parent

TINY = train.Config(
    dataset="synthetic",
    width=8,
    meta_batch_size=4,
    epochs=2,
    iterations_per_epoch=4,
    first_order_epochs=1,
    msl_epochs=0,
    val_tasks=16,
    log_every=2,
    checkpoint_every=3,
)


def _final_state(cfg, workdir):
    return train.restore_latest(train.Workdir(workdir), train.init_state(cfg, (28, 28, 1)))


def test_resume_equals_uninterrupted(tmp_path):
    whole = train.fit(TINY, tmp_path / "whole")
    first = train.fit(TINY, tmp_path / "split", stop_after_steps=5)
    assert first["step"] == 5
    second = train.fit(TINY, tmp_path / "split")
    assert second == whole
    chex.assert_trees_all_equal(
        _final_state(TINY, tmp_path / "whole"), _final_state(TINY, tmp_path / "split")
    )
    read = lambda run, name: (tmp_path / run / name).read_text().splitlines()
    assert read("whole", "val.csv") == read("split", "val.csv")
    # Train metrics are identical row for row, but for the last column (steps/s).
    drop_rate = lambda rows: [r.rsplit(",", 1)[0] for r in rows]
    assert drop_rate(read("whole", "train.csv")) == drop_rate(read("split", "train.csv"))
    best = json.loads((tmp_path / "split" / "best.json").read_text())
    assert best["step"] == whole["best_step"]


def test_changed_config_refuses_to_resume(tmp_path):
    train.fit(TINY, tmp_path, stop_after_steps=1)
    with pytest.raises(ValueError, match="different config"):
        train.fit(dataclasses.replace(TINY, inner_lr=0.5), tmp_path)
    # A run saved before a Config field existed resumes when the field is at its default.
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["exact_loss_weight"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert train.fit(TINY, tmp_path, stop_after_steps=2)["step"] == 2
    saved["init_from"] = "elsewhere"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="different config"):
        train.fit(TINY, tmp_path)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    train.fit(TINY, tmp_path, stop_after_steps=3)
    for f in (tmp_path / "checkpoints" / "3").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be restored"):
        train.fit(TINY, tmp_path)


def test_meta_training_on_synthetic_tasks_beats_chance():
    cfg = dataclasses.replace(TINY, width=16, epochs=1, iterations_per_epoch=150, val_tasks=64)
    splits, norm = train.load_dataset(cfg)
    val = jax.device_put(splits["val"])
    state = train.init_state(cfg, (28, 28, 1))
    before = np.mean(train.evaluate(jax.random.PRNGKey(5), state.meta, val, 64, cfg, norm))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = train.fit(cfg, d)
        meta = train.load_meta(Path(d) / "best", cfg, (28, 28, 1))
    after = np.mean(train.evaluate(jax.random.PRNGKey(5), meta, val, 64, cfg, norm))
    assert result["best_val_accuracy"] > 0.45  # 5-way: chance is 0.2
    assert after > before + 0.1


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_way=0), "n_way"),
        (dict(meta_lr=float("nan")), "meta_lr"),
        (dict(constraint_k=0.5), "constraint_k"),
        (dict(dataset="cifar"), "dataset"),
        (dict(task_batching="grouped"), "task_batching"),
        (dict(train_sigma_w=-1.0), "sigma_w"),
        (dict(pulse_policy="closed"), "pulse_policy"),
        (dict(device="nope"), "preset"),
        (dict(exact_loss_weight=1.5), "exact_loss_weight"),
        (dict(exact_loss_weight=0.5), "needs hardware_inner"),
    ],
)
def test_bad_config_raises(change, message):
    with pytest.raises(ValueError, match=message):
        train.validate_config(dataclasses.replace(TINY, **change))


def test_too_many_ways_for_the_split_fails_before_training():
    cfg = dataclasses.replace(TINY, n_way=60)  # the synthetic val split has 50 classes
    splits, _ = train.load_dataset(cfg)
    with pytest.raises(ValueError, match="n_way"):
        train.check_data(cfg, splits)


def _run_binary(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "meta_train.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_binary_rejects_bad_flags_before_training(tmp_path):
    config = str(ROOT / "experiments" / "configs" / "synthetic_smoke.py")
    bad = _run_binary(f"--config={config}", f"--workdir={tmp_path}", "--set=n_query=0")
    assert bad.returncode != 0 and "n_query" in bad.stderr
    bad = _run_binary(f"--config={config}", f"--workdir={tmp_path}", "--set=widht=3")
    assert bad.returncode != 0 and "widht" in bad.stderr
    bad = _run_binary(f"--config={tmp_path}/missing.py", f"--workdir={tmp_path}")
    assert bad.returncode != 0 and "missing.py" in bad.stderr
    assert not (tmp_path / "checkpoints").exists()
