"""Run folders under faults (issue 30): kill -9 at random moments, two writers, a damaged
checkpoint, a diverging run. Each run here is a binary in a subprocess, as a user runs it, and
each resumed run must end bit-identical to an uninterrupted one.

The kill chains are `-m slow` (minutes); they print their counts ("faults survived: N of N",
BUILD_NOTES.md "Run folders under faults").
"""

import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax.numpy as jnp
import pytest

from roa_jax import rundir, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMOKE = f"--config={ROOT / 'experiments' / 'configs' / 'synthetic_smoke.py'}"

# meta_train.py: 8 steps (2 epochs of 4), a log line and a checkpoint every step, then an
# evaluation in parts. reproduce.py: the tiny scale's run of the roa model, exported after
# every checkpoint (--trained_dir), then its parts, figures and claims.
META_TRAIN = [
    "meta_train.py",
    SMOKE,
    "--config.width=8",
    "--config.meta_batch_size=2",
    "--config.epochs=2",
    "--config.iterations_per_epoch=4",
    "--config.first_order_epochs=2",
    "--config.val_tasks=4",
    "--config.eval_chunk=4",
    "--config.log_every=1",
    "--config.checkpoint_every=1",
    "--eval_scale=tiny",
    "--seeds=1",
    "--test_tasks=4",
    "--val_tasks=4",
    "--offline_steps=1",
]
REPRODUCE = ["reproduce.py", "--task=synthetic_5w1s", "--scale=tiny", "--models=roa"]


def _command(binary, *flags):
    return [sys.executable, str(ROOT / "experiments" / binary), *flags]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _folders(kind, base: pathlib.Path) -> list[str]:
    if kind == "meta_train":
        return [f"--workdir={base / 'run'}"]
    return [
        f"--workdir={base / 'runs'}",
        f"--results_dir={base / 'results'}",
        f"--trained_dir={base / 'trained'}",
    ]


def _run(kind, base, *extra, timeout=600):
    args = META_TRAIN if kind == "meta_train" else REPRODUCE
    return subprocess.run(
        _command(*args, *_folders(kind, base), *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _message(line: str) -> str | None:
    """The message of one of our absl log lines with its numbers blanked, else None."""
    match = re.match(r"[IWE]\d{4} [\d:.]+ +\d+ (\w+)\.py:\d+\] (.*)", line)
    if not match or match.group(1) not in ("train", "comparison", "reproduce", "meta_train"):
        return None
    return re.sub(r"[-+]?\d[\d.]*(e[-+]?\d+)?", "#", match.group(2))[:60]


def _without_rates(text: str) -> list[str]:
    return [row.rsplit(",", 1)[0] for row in text.splitlines()]  # steps_per_s: the last column


def _outcome(kind, base) -> dict:
    """What a finished run leaves, less what measures time: compared across runs."""
    run = base / "run" if kind == "meta_train" else base / "runs" / "roa"
    cfg, meta = train.load_trained(run)
    out = {
        "meta": meta,
        "state": _final_state(cfg, run),
        "best.json": json.loads((run / "best.json").read_text()),
        "train.csv": _without_rates((run / "train.csv").read_text()),
        "val.csv": (run / "val.csv").read_text(),
    }
    results = base / "run" / "evaluation" if kind == "meta_train" else base / "results"
    parts = base / "run" / "evaluation" if kind == "meta_train" else base / "trained" / "evaluation"
    saved = json.loads((results / "results.json").read_text())
    out["results"] = json.dumps({k: v for k, v in saved.items() if k not in ("seconds", "parts")})
    for file in sorted((parts / "parts").glob("*.json")):
        part = json.loads(file.read_text())
        out[file.name] = json.dumps({k: v for k, v in part.items() if k != "seconds"})
    if kind == "reproduce":
        out["trained"] = train.load_trained(base / "trained" / "roa")[1]
        assert rundir.finished(base / "trained" / "roa")
    return out


def _final_state(cfg, run):
    meta = train.init_meta(cfg, (cfg.image_size, cfg.image_size, 1))
    target = train.TrainState(meta, train.make_optimizer(cfg).init(meta), jnp.int32(0))
    return rundir.Checkpoints(rundir.Workdir(run)).restore_latest(target)


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if key in ("meta", "state", "trained"):
            chex.assert_trees_all_equal(a[key], b[key])
        else:
            assert a[key] == b[key], key


def _kill_at(kind, base, target: str, delay: float) -> bool:
    """Starts the run; kill -9 `delay` s after a log line whose message is `target` appears.
    False if the run ended first (finished)."""
    args = META_TRAIN if kind == "meta_train" else REPRODUCE
    proc = subprocess.Popen(
        _command(*args, *_folders(kind, base)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    for line in proc.stderr:
        if _message(line) == target:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return proc.returncode == -signal.SIGKILL
    assert proc.wait() == 0
    return False


@pytest.mark.slow  # ~20-30 min: 20 kills, each run resumed to the end
@pytest.mark.parametrize("kind", ["meta_train", "reproduce"])
def test_kill_9_at_random_moments_resumes_bit_identical(tmp_path, kind):
    reference = _ok(_run(kind, tmp_path / "reference"))
    expected = _outcome(kind, tmp_path / "reference")
    moments = sorted({m for m in map(_message, reference.stderr.splitlines()) if m})
    rng = random.Random(0)
    kills, chains, at = 0, 0, []
    while kills < 20:
        base = tmp_path / f"chain{chains}"
        while True:  # kill this chain's run until it finishes
            target, delay = rng.choice(moments), rng.uniform(0.0, 0.5)
            if not _kill_at(kind, base, target, delay):
                break
            kills += 1
            at.append(target)
        _assert_same(_outcome(kind, base), expected)
        chains += 1
        shutil.rmtree(base)
    print(f"\n{kind}: faults survived: {kills} of {kills} kill -9 in {chains} runs, after: {at}")


@pytest.mark.slow  # ~3 min: two runs of 800 steps
def test_two_writers_on_one_folder_the_second_refused(tmp_path):
    # Long enough (800 steps, ~90 s) that the second run starts while the first trains.
    longer = ["--config.iterations_per_epoch=400", "--test_tasks=0"]
    _ok(_run("meta_train", tmp_path / "reference", *longer))
    first = subprocess.Popen(
        _command(*META_TRAIN, *_folders("meta_train", tmp_path), *longer),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    lines = []
    for line in first.stderr:
        lines.append(line)
        if (_message(line) or "").startswith("step #/#"):
            break  # the first run holds the folder and trains
    second = _run("meta_train", tmp_path, *longer, timeout=120)
    assert first.poll() is None, "the first run ended before the second started: lengthen it"
    lines.extend(first.stderr)
    assert first.wait() == 0, "".join(lines)[-3000:]
    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("meta_train.py: error: ") and f"pid {first.pid}" in last, last
    assert str(tmp_path / "run") in last
    assert "step 800/800" in "".join(lines)  # the first finished
    for name in ("train.csv", "val.csv", "best.json"):
        ours, ref = tmp_path / "run" / name, tmp_path / "reference" / "run" / name
        assert _without_rates(ours.read_text()) == _without_rates(ref.read_text()), name


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path):
    expected = _outcome("meta_train", _ok_base(tmp_path / "reference"))
    base = tmp_path / "damaged"
    _ok(_run("meta_train", base, "--stop_after_steps=6"))
    for file in (base / "run" / "checkpoints" / "6").rglob("*"):
        if file.is_file():
            file.write_bytes(b"junk")
    proc = _ok(_run("meta_train", base))
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (warning,) = [line for line in proc.stderr.splitlines() if "do not restore" in line]
    assert "Checkpoints [6]" in warning and "resuming from step 5" in warning
    _assert_same(_outcome("meta_train", base), expected)


def _ok_base(base):
    _ok(_run("meta_train", base))
    return base


def test_a_diverging_run_exits_with_one_line(tmp_path):
    proc = _run("meta_train", tmp_path, "--config.inner_lr=1e6", "--test_tasks=0")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("meta_train.py: error: meta-loss diverged at step 1"), last
    assert "--config.inner_lr (1e+06)" in last and "--config.meta_lr" in last
