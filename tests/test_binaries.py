"""The binaries (experiments/*.py), run as subprocesses: every bad flag, config, data folder or
checkpoint is refused with one line that names it (no traceback), before any training or
compile; and tiny end-to-end runs write their files.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from test_miniimagenet import TEST_WNIDS, VAL_WNIDS, _write_split

from roa_jax import comparison, config, data, device, rundir
from roa_jax.data import episodes
from roa_jax.data import miniimagenet as mi

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "experiments" / "configs"
SMOKE = f"--config={CONFIGS / 'synthetic_smoke.py'}"
FAST = 60  # s: a refusal comes before any compile or training


def _run(binary, *flags, timeout=FAST, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / binary), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
    )


def _assert_refused(proc, *names):
    """Non-zero exit, no traceback, and a last stderr line `<binary>: error: ...` naming it."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    binary = pathlib.Path(proc.args[1]).name
    assert last.startswith(f"{binary}: error: "), last
    for name in names:
        assert name in last, last


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# meta_train.py: its config.


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--config.inner_lr=nan"], ["config.inner_lr=nan"]),
        (["--config.n_way=0"], ["config.n_way=0"]),
        (["--config.n_way=500"], ["n_way=500", "200 classes"]),  # synthetic: 200 train classes
        (["--config.device=bad"], ["config.device='bad'"]),
        (["--config.width=abc"], ["--config.width=abc"]),
        (["--config.nonexistent=1"], ["unknown config field 'nonexistent' (see"]),
        (["--config.nway=5"], ["field 'nway'; Did you mean \"n_way\""]),  # plain, one line
        (["--config=missing_file.py"], ["missing_file.py"]),
        (["--config=missing_file.py", "--config.n_way=3"], ["missing_file.py"]),
        (["--stop_after_steps=0"], ["--stop_after_steps=0"]),
        (["--data_dir=/nonexistent"], ["--data_dir=/nonexistent"]),
        (["--unknown_flag=1"], ["unknown_flag"]),
    ],
)
def test_meta_train_refuses_a_bad_config(tmp_path, flags, names):
    proc = _run("meta_train.py", SMOKE, f"--workdir={tmp_path / 'run'}", *flags)
    _assert_refused(proc, *names)
    assert not (tmp_path / "run").exists()


def test_a_missing_data_dir_is_an_error_even_when_a_cache_exists(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    # A cache Omniglot would load without looking at the data folder.
    np.savez(cache / "omniglot_v1_28px.npz", images=np.zeros((1623, 20, 28, 28, 1), np.uint8))
    flags = [f"--workdir={tmp_path / 'run'}", f"--cache_dir={cache}", "--data_dir=/nonexistent"]
    quick = f"--config={CONFIGS / 'omniglot_5w1s_quick.py'}"
    _assert_refused(_run("meta_train.py", quick, *flags), "--data_dir=/nonexistent")
    reproduce = ["--task=omniglot_5w1s", "--scale=tiny", f"--results_dir={tmp_path / 'res'}"]
    _assert_refused(_run("reproduce.py", *reproduce, *flags), "--data_dir=/nonexistent")
    assert not (tmp_path / "run").exists() and not (tmp_path / "res").exists()


# The evaluation flags, shared by meta_train.py, reproduce.py and evaluate.py.

PROTOCOL_CASES = [
    ("--sigma_w=nan", ["--sigma_w=nan"]),
    ("--sigma_w=-1", ["sigma_w=(-1.0,)", ">= 0"]),
    ("--sigma_w=1,x", ["--sigma_w=1,x", "'x' is not a number"]),
    ("--rhos=2,4", ["rhos=(2.0, 4.0)", "must include 1"]),
    ("--rhos=inf", ["--rhos=inf"]),
    ("--test_tasks=-1", ["test_tasks=-1"]),
    ("--seeds=0", ["seeds=0"]),
    ("--eval_device=nonexistent", ["eval_device='nonexistent'"]),
    ("--eval_device=missing.json", ["missing.json"]),
]


def _base_flags(binary, tmp_path):
    if binary == "meta_train.py":
        return [SMOKE, f"--workdir={tmp_path / 'run'}"]
    if binary == "reproduce.py":
        return [
            "--task=synthetic_5w1s",
            "--scale=tiny",
            f"--workdir={tmp_path / 'run'}",
            f"--results_dir={tmp_path / 'results'}",
        ]
    return [f"--roa={tmp_path / 'run'}", f"--out_dir={tmp_path / 'out'}"]


@pytest.mark.parametrize("binary", ["meta_train.py", "reproduce.py", "evaluate.py"])
@pytest.mark.parametrize("flag, names", PROTOCOL_CASES)
def test_bad_evaluation_flags_are_refused(tmp_path, binary, flag, names):
    proc = _run(binary, *_base_flags(binary, tmp_path), flag)
    _assert_refused(proc, *names)
    assert not any(tmp_path.iterdir())  # nothing written


# constraint.py


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--ks=0.5"], ["constraint_k=0.5", ">= 1"]),
        (["--ks=2,x"], ["--ks=2,x", "'x' is not a number"]),
        (["--lambdas=-1"], ["constraint_lambda=-1.0", ">= 0"]),
        (["--trained=/nonexistent"], ["--trained (roa/)=/nonexistent"]),
        (["--sigma_w=nan"], ["--sigma_w=nan"]),
    ],
)
def test_constraint_refuses_bad_flags(tmp_path, flags, names):
    out = [f"--workdir={tmp_path / 'run'}", f"--out_dir={tmp_path / 'out'}"]
    _assert_refused(_run("constraint.py", *out, *flags), *names)
    assert not any(tmp_path.iterdir())  # nothing written


# technology_map.py


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--technologies=calibrated"], ["--technologies=calibrated", "not an aihwkit"]),
        (["--devices=reram_es"], ["--devices=reram_es", "paper's model"]),
        (["--technologies=reram"], ["device preset 'reram'"]),
        (["--runs=/nonexistent"], ["--runs (roa/)=/nonexistent/roa"]),
        (["--sigma_w=-1"], ["sigma_w"]),
    ],
)
def test_technology_map_refuses_bad_flags(tmp_path, flags, names):
    out = [f"--out_dir={tmp_path / 'out'}"]
    runs = [] if any(f.startswith("--runs") for f in flags) else [f"--runs={tmp_path / 'r'}"]
    _assert_refused(_run("technology_map.py", *out, *runs, *flags), *names)
    assert not any(tmp_path.iterdir())  # nothing written


# reproduce.py


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--task=bogus"], ["--task=bogus"]),
        (["--scale=huge"], ["--scale=huge"]),
        (["--models=foo"], ["--models=['foo']"]),
        (["--models=roa_wc"], ["--models=['roa_wc']", "with roa"]),
        (["--data_dir=/nonexistent"], ["--data_dir=/nonexistent"]),
    ],
)
def test_reproduce_refuses_a_bad_task_or_model(tmp_path, flags, names):
    proc = _run("reproduce.py", *_base_flags("reproduce.py", tmp_path), *flags)
    _assert_refused(proc, *names)
    assert not any(tmp_path.iterdir())


# build_miniimagenet.py


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--data_dir=/nonexistent"], ["--data_dir=/nonexistent"]),
        (["--data_dir={tmp}"], ["--data_dir=", "no miniImageNet split"]),
        (["--data_dir={tmp}", "--splits=bogus"], ["--splits", "bogus"]),
        ([], ["--data_dir is not set"]),
    ],
)
def test_build_miniimagenet_refuses_a_bad_data_dir(tmp_path, flags, names):
    flags = [f.format(tmp=tmp_path) for f in flags]
    env = {"ROA_DATA_DIR": ""}
    proc = _run("build_miniimagenet.py", *flags, f"--tfds_dir={tmp_path / 'tfds'}", env=env)
    _assert_refused(proc, *names)
    assert not (tmp_path / "tfds").exists()


# characterize_device.py.

CHARACTERIZE = ROOT / "experiments" / "characterize_device.py"


def _characterize(*args):
    return subprocess.run(
        [sys.executable, str(CHARACTERIZE), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--sigma_w=0,-1"], "--sigma_w=0,-1"),
        (["--sigma_w=1,x"], "--sigma_w=1,x"),
        (["--sigma_w=nan"], "--sigma_w=nan"),
        (["--num_pulses=0"], "--num_pulses=0 must be in [1, 100000]"),
        (["--num_devices=1"], "--num_devices=1"),
        (["--seed=-1"], "--seed=-1"),
        (["--fit_steps=0"], "--fit_steps=0"),
        (["--out_dir="], "--out_dir"),
        (["--device=nope"], "--device=nope"),
        (["--device=/no/such.json"], "--device=/no/such.json"),
        (["--noise_law=cubic"], "--noise_law=cubic"),
        (["--noise_scale=-1"], "--noise_scale=-1"),
        (["--noise_scale=inf"], "--noise_scale=inf"),
        (["--fit=/no/such.csv"], "--fit=/no/such.csv"),
        (["--save_fitted=x.json"], "--save_fitted=x.json needs --fit"),
        (["--fit=/no/such.csv", "--save_fitted=x.txt"], "--save_fitted=x.txt must end in .json"),
    ],
)
def test_characterize_bad_flag_is_one_line(tmp_path, args, flag):
    out = tmp_path / "out"
    args = [f"--out_dir={out}", *args] if "--out_dir=" not in args else args
    result = _characterize(*args)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("characterize_device.py: error: --"), lines[0]
    assert flag in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()


def test_characterize_tiny_run_writes_its_files(tmp_path):
    out = tmp_path / "out"
    result = _characterize(
        f"--out_dir={out}",
        "--num_pulses=5",
        "--sigma_w=0,1",
        "--num_devices=100",
        "--noise_law=per_pulse",
        "--noise_scale=2",
    )
    assert result.returncode == 0, result.stderr
    for name in ("pulse_response", "write_noise"):
        assert (out / f"{name}.csv").read_text().count("\n") > 1
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "paper" and summary["noise_law"] == "per_pulse"
    assert summary["params"]["noise_scale"] == 2.0
    assert not (out / "fit.csv").exists()


# A meta_train.py run on a generated miniImageNet (5 classes x 16 images per split): trained one
# step, resumed to the end (2 steps) and evaluated with the tiny protocol.

MINI_CONFIG = [
    f"--config={CONFIGS / 'miniimagenet_5w1s.py'}",
    "--config.width=4",
    "--config.meta_batch_size=2",
    "--config.n_query=2",
    "--config.epochs=1",
    "--config.iterations_per_epoch=2",
    "--config.first_order_epochs=1",
    "--config.val_tasks=4",
    "--config.eval_chunk=2",
    "--config.log_every=1",
    "--config.checkpoint_every=1",
]
MINI_PROTOCOL = ["--eval_scale=tiny", "--test_tasks=2", "--val_tasks=2", "--offline_steps=1"]


def _write_all_splits(root: pathlib.Path) -> None:
    for seed, split in enumerate(mi.SPLITS):
        _write_split(root, split, mi.WNIDS[split][:5], seed=seed, num_instances=16)


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    """(data flags, the finished run folder, a copy of it after its first step)."""
    tmp = tmp_path_factory.mktemp("mini")
    root, workdir = tmp / "data", tmp / "run"
    _write_all_splits(root)
    flags = [*MINI_CONFIG, f"--data_dir={root}", f"--cache_dir={tmp / 'cache'}"]
    run = [*flags, f"--workdir={workdir}", *MINI_PROTOCOL]
    _ok(_run("meta_train.py", *run, "--stop_after_steps=1", timeout=900))
    assert not (workdir / "evaluation").exists()  # not finished: not evaluated
    shutil.copytree(workdir, tmp / "after_step_1")
    _ok(_run("meta_train.py", *run, timeout=900))
    return flags, workdir, tmp / "after_step_1"


def test_meta_train_and_evaluate_end_to_end(mini_run):
    flags, workdir, _ = mini_run
    cfg = config.build(json.loads((workdir / "config.json").read_text()))
    assert (cfg.dataset, cfg.image_size, cfg.width, cfg.total_steps) == ("miniimagenet", 84, 4, 2)
    # The ImageNet per-channel statistics reach the episode sampler.
    root, cache = (f.split("=", 1)[1] for f in flags[-2:])
    splits, norm = data.load_splits(cfg, root, cache)
    chex.assert_trees_all_equal(norm, (mi.MEAN, mi.STD))
    chex.assert_shape(list(splits.values()), [(5, 16, 84, 84, 3)] * 3)
    key = jax.random.PRNGKey(0)
    raw = episodes.sample_episodes(key, splits["val"], 2, 5, 1, 2, 0.0, 1.0)
    normalized = episodes.sample_episodes(key, splits["val"], 2, 5, 1, 2, *norm)
    chex.assert_trees_all_close(
        normalized.query_x, (raw.query_x - mi.MEAN) / mi.STD, rtol=1e-5, atol=1e-5
    )
    # Trained to the end (resumed after step 1), the best checkpoint kept, then evaluated.
    best = json.loads((workdir / "best.json").read_text())
    assert best["step"] == 2 and 0.0 <= best["val_accuracy"] <= 1.0
    steps = [int(line.split(",")[0]) for line in (workdir / "train.csv").read_text().split()[1:]]
    assert steps == [1, 2]
    results = json.loads((workdir / "evaluation" / "results.json").read_text())
    assert results["chance"] == pytest.approx(0.2)
    assert {r["method"] for r in results["methods"]} == {"ROA", "ROA-FLR", "offline"}
    for row in results["methods"]:
        assert row["sigma_w"] in (0.0, 1.0) and 0.0 <= row["accuracy"] <= 1.0
        assert row["tasks"] == 2 * 2  # 2 seeds x 2 test tasks
    assert 0.0 <= results["origin"]["roa"]["accuracy"] <= 1.0
    table = (workdir / "evaluation" / "table2.md").read_text()
    assert "| ROA |" in table and "Origin (ideal weights)" in table


def test_evaluate_on_an_aihwkit_technology(mini_run, tmp_path):
    # --eval_device takes aihwkit's presets like any other: the ReRam preset's own noise,
    # variation and coarse steps, in the same evaluation engine.
    flags, workdir, _ = mini_run
    out = tmp_path / "reram_es"
    args = [*flags[-2:], f"--roa={workdir}", f"--out_dir={out}", *MINI_PROTOCOL]  # data flags
    _ok(_run("evaluate.py", *args, "--eval_device=reram_es", timeout=900))
    results = json.loads((out / "results.json").read_text())
    assert list(results["devices"]) == ["reram_es"]
    assert results["devices"]["reram_es"]["write_noise_std"] == 75.0
    for row in results["methods"]:
        assert 0.0 <= row["accuracy"] <= 1.0
    assert "reram_es [" in (out / "table2.md").read_text()


def test_meta_train_sets_a_damaged_checkpoint_aside_with_one_warning(mini_run, tmp_path):
    flags, _, after_step_1 = mini_run
    workdir = tmp_path / "run"
    shutil.copytree(after_step_1, workdir)
    for file in (workdir / "checkpoints" / "1").rglob("*"):
        if file.is_file():
            file.write_bytes(b"junk")
    run = [*flags, f"--workdir={workdir}", *MINI_PROTOCOL, "--stop_after_steps=1"]
    proc = _ok(_run("meta_train.py", *run, timeout=900))
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (warning,) = [line for line in proc.stderr.splitlines() if "do not restore" in line]
    assert "Checkpoints [1]" in warning and "resuming from the start" in warning
    assert (workdir / "checkpoints.damaged" / "1").is_dir()
    assert rundir.latest_step(workdir) == 1  # trained step 1 again


def test_meta_train_refuses_a_run_folder_of_another_config(mini_run, tmp_path):
    flags, _, after_step_1 = mini_run
    workdir = tmp_path / "run"
    shutil.copytree(after_step_1, workdir)
    proc = _run("meta_train.py", *flags, "--config.n_query=3", f"--workdir={workdir}")
    _assert_refused(proc, str(workdir), "'n_query': (2, 3)")


def test_evaluate_refuses_a_folder_without_a_finished_checkpoint(mini_run, tmp_path):
    _, _, after_step_1 = mini_run
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run("evaluate.py", f"--roa={empty}", f"--out_dir={out}")
    _assert_refused(proc, f"--roa={empty}", "no config.json")
    proc = _run("evaluate.py", f"--roa={after_step_1}", f"--out_dir={out}")
    _assert_refused(proc, f"--roa={after_step_1}", "has not finished")
    assert not out.exists()


def test_evaluate_refuses_models_of_different_tasks(mini_run, tmp_path):
    _, workdir, _ = mini_run
    # A five_step run folder trained on 3-way tasks (its config says so).
    five_step = tmp_path / "five_step"
    shutil.copytree(workdir, five_step)
    cfg = json.loads((five_step / "config.json").read_text())
    (five_step / "config.json").write_text(json.dumps({**cfg, "n_way": 3, "num_inner_steps": 5}))
    out = tmp_path / "out"
    flags = [f"--roa={workdir}", f"--five_step={five_step}", f"--out_dir={out}"]
    _assert_refused(_run("evaluate.py", *flags), "five_step", "'roa': ('miniimagenet', 5")
    proc = _run("evaluate.py", f"--roa={workdir}", f"--out_dir={out}", "--data_dir=/nonexistent")
    _assert_refused(proc, "--data_dir=/nonexistent")
    assert not out.exists()


def test_write_stats_counts_pulses_and_refuses_bad_flags(mini_run, tmp_path):
    flags, workdir, after_step_1 = mini_run
    out = tmp_path / "stats.json"
    run = [f"--run={workdir}", *flags[-2:]]  # the data flags
    for bad, names in [
        ("--rhos=0,1", ["--rhos=0,1", "> 0"]),
        ("--tasks=0", ["--tasks=0"]),
        (f"--run={after_step_1}", [f"--run={after_step_1}", "has not finished"]),
    ]:
        _assert_refused(_run("write_stats.py", *run, bad, f"--out={out}"), *names)
    assert not out.exists()
    proc = _ok(
        _run("write_stats.py", *run, "--rhos=1e-6,1e3", "--tasks=2", f"--out={out}", timeout=600)
    )
    stats = json.loads(out.read_text())
    assert "devices pulsed" in proc.stdout and stats["tasks"] == 2
    assert 0.0 <= stats["theta_0_accuracy"] <= 1.0
    assert 0.0 < stats["nominal_step_weight_units"]["up"] < 1.0
    tiny, huge = stats["rhos"]
    assert tiny["pulsed_share"] == 0.0 and huge["pulsed_share"] > 0.5
    assert len(huge["pulsed_share_per_task"]) == 2
    assert set(huge["pulsed_share_per_matrix"]) == {f"conv{i}/kernel" for i in range(4)} | {
        "head/kernel"
    }


def test_meta_train_without_usable_splits_fails_before_training(tmp_path):
    root, cache, workdir = tmp_path / "data", tmp_path / "cache", tmp_path / "run"
    _write_split(root, "val", VAL_WNIDS, seed=1)  # 3 classes x 4 images
    _write_split(root, "test", TEST_WNIDS, seed=2)
    flags = [*MINI_CONFIG, f"--data_dir={root}", f"--cache_dir={cache}", f"--workdir={workdir}"]
    zip_path = root / "miniimagenet" / "miniimagenet_train.zip"
    proc = _run("meta_train.py", *flags)
    _assert_refused(proc, f"{zip_path} not found")
    assert not list(cache.glob("miniimagenet*"))  # val and test were not decoded either
    assert not workdir.exists()
    # With train present, the 3-class val split cannot make 5-way tasks.
    _write_split(root, "train", mi.WNIDS["train"][:5], num_instances=16)
    proc = _run("meta_train.py", *flags)
    _assert_refused(proc, "n_way=5 is larger than the 3 classes of the 'val' split")
    assert not workdir.exists()


# reproduce.py from scratch: the three tiny models meta-trained, every method evaluated, the
# figures, Table 2 and the claims written.


@pytest.mark.slow  # minutes; its parts (training, export, comparison, figures, claims) have tests
def test_reproduce_synthetic_tiny_end_to_end(tmp_path):
    results_dir = tmp_path / "results"
    proc = _run(
        "reproduce.py",
        "--task=synthetic_5w1s",
        "--scale=tiny",
        f"--workdir={tmp_path / 'runs'}",
        f"--results_dir={results_dir}",
        f"--trained_dir={tmp_path / 'trained'}",
        timeout=1800,
    )
    _ok(proc)
    results = json.loads((results_dir / "results.json").read_text())
    methods = {m for m, _, _ in comparison.METHODS}
    assert {r["method"] for r in results["methods"]} == methods | {"offline"}
    assert set(results["origin"]) == set(config.MODELS)
    for name in ("figure3", "figure4", "figure5", "figure6", "overview"):
        assert (results_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (results_dir / "table2.md").read_text()
    assert "| ROA |" in table and "| 5-step-FLR |" in table
    assert "claim" in (results_dir / "claims.md").read_text().lower()
    assert (results_dir / "table2.md").read_text() in proc.stdout
    for model in config.MODELS:
        assert (tmp_path / "runs" / model / "best").is_dir()
        # The copy that travels with the results: finished, without TensorBoard events.
        assert rundir.finished(tmp_path / "trained" / model)
        assert not (tmp_path / "trained" / model / "tb").exists()
    # So do the evaluated parts (a half-done evaluation resumes elsewhere).
    parts = {f.stem for f in (tmp_path / "trained" / "evaluation" / "parts").glob("*.json")}
    assert {f"{m}_test" for m in config.MODELS} | {"offline_test"} <= parts
    assert not (tmp_path / "runs" / "evaluation").exists()


# paper_figures.py: assembles the committed per-task results; fills the README's sections.


def test_paper_figures_from_the_committed_results(tmp_path):
    for task in ("omniglot_5w1s", "omniglot_10w1s"):
        (tmp_path / "results" / f"{task}_cpu").mkdir(parents=True)
        shutil.copy(
            ROOT / "results" / f"{task}_cpu" / "results.json", tmp_path / "results" / f"{task}_cpu"
        )
    # The longer 5-way run: the cpu results with ROA 5 points higher at every level.
    five_way = ROOT / "results" / "omniglot_5w1s_cpu" / "results.json"
    short, longer = (json.loads(five_way.read_text()) for _ in range(2))
    for row in longer["methods"]:
        row["accuracy"] += 0.05 if row["method"] == "ROA" else 0.0
    (tmp_path / "results" / "omniglot_5w1s_cpu_long").mkdir()
    (tmp_path / "results" / "omniglot_5w1s_cpu_long" / "results.json").write_text(
        json.dumps(longer)
    )
    readme = tmp_path / "README.md"
    sections = "<!-- claims-summary -->\nSTALE\n<!-- /claims-summary -->\n"
    sections += "<!-- scales omniglot_5w1s -->\nSTALE\n<!-- /scales omniglot_5w1s -->\n"
    sections += "<!-- table2 omniglot_10w1s_cpu -->\nSTALE\n<!-- /table2 omniglot_10w1s_cpu -->\n"
    readme.write_text(
        f"# x\n{sections}between\n<!-- maml-sanity -->\nSTALE\n<!-- /maml-sanity -->\nend\n"
    )
    flags = [f"--results={tmp_path / 'results'}", f"--out_dir={tmp_path / 'paper'}"]
    _ok(_run("paper_figures.py", *flags, f"--readme={readme}", timeout=300))
    for name in ("figure3.png", "figure4.png", "figure5.png"):
        assert (tmp_path / "paper" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sanity = (tmp_path / "paper" / "maml_sanity.md").read_text()
    origin = short["origin"]
    assert f"| 5-way 1-shot Omniglot | 99.47 | {100 * origin['roa']['accuracy']:.1f} ±" in sanity
    assert "| 10-way 1-shot Omniglot | – (not reported) |" in sanity
    assert "20-way" not in sanity  # no results, no row
    text = readme.read_text()
    assert "STALE" not in text and text.startswith("# x\n") and text.endswith("end\n")
    assert sanity in text and (tmp_path / "paper" / "claims.md").read_text() in text
    table = (ROOT / "results" / "omniglot_10w1s_cpu" / "table2.md").read_text()
    assert f"<!-- table2 omniglot_10w1s_cpu -->\n{table}<!-- /table2" in text
    # Only 5-way has the longer run: its table (a row per method and scale) goes to the README.
    assert sorted(p.name for p in (tmp_path / "paper").glob("scales_*")) == [
        "scales_omniglot_5w1s.md",
        "scales_omniglot_5w1s.png",
    ]
    scales = (tmp_path / "paper" / "scales_omniglot_5w1s.md").read_text()
    assert f"<!-- scales omniglot_5w1s -->\n{scales}<!-- /scales" in text
    for scale, res in (("cpu", short), ("cpu_long", longer)):
        roa = sorted((r["sigma_w"], r) for r in res["methods"] if r["method"] == "ROA")
        cells = " | ".join(f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}" for _, r in roa)
        assert f"| ROA | {scale} | {cells} |" in scales
    assert "| claim | cpu | cpu_long |" in scales
    # An unknown comparison scale is refused.
    proc = _run("paper_figures.py", *flags, "--compare_scales=cpu,cpu_longer")
    _assert_refused(proc, "--compare_scales=cpu_longer")
    # A task's table section whose end marker is missing is refused before anything is written.
    readme.write_text(
        f"{sections.replace('<!-- /table2', '<!-- /tabel2')}<!-- maml-sanity -->\n"
        "<!-- /maml-sanity -->\n"
    )
    proc = _run("paper_figures.py", *flags, f"--readme={readme}")
    _assert_refused(proc, "--readme=", "table2 omniglot_10w1s_cpu")
    # A README without the markers is refused before anything is written.
    readme.write_text("# no markers\n")
    proc = _run("paper_figures.py", *flags, f"--readme={readme}")
    _assert_refused(proc, "--readme=", "claims-summary")


# common.run decides by exception class: a UserError is one line, anything else a traceback.

_FAILING = """
import sys
sys.path.insert(0, {experiments!r})
import common
from roa_jax import device, models


def main(argv):
    del argv
    if {user!r}:
        device.preset("bogus")  # a DeviceError: the user named an unknown preset
    # A plain ValueError raised inside roa_jax: a placement function with a typo is a bug of
    # the calling code, not the user's input.
    models.split({{"dense": {{"kernel": 0}}}}, lambda path: "crosbar")


common.run(main)
"""


@pytest.mark.parametrize("user", [True, False])
def test_run_prints_a_user_error_as_one_line_and_a_bug_with_its_traceback(tmp_path, user):
    binary = tmp_path / "fake_binary.py"
    binary.write_text(_FAILING.format(experiments=str(ROOT / "experiments"), user=user))
    proc = subprocess.run(
        [sys.executable, str(binary)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=FAST,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "ROA_DEBUG": ""},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    if user:
        assert proc.stderr.strip().splitlines() == [
            f"fake_binary.py: error: device preset 'bogus' is not one of {sorted(device.PRESETS)}."
        ]
    else:
        assert "Traceback" in proc.stderr and "roa_jax/models.py" in proc.stderr, proc.stderr
        assert "ValueError: placement('dense', 'kernel') = 'crosbar'" in proc.stderr
        assert "fake_binary.py: error:" not in proc.stderr
