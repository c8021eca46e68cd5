"""Noise x rho x seed sweeps, the rho search, every method, figures and Table 2 (evaluation.py,
reproduce.py, figures.py)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import matplotlib.image
import numpy as np
import pytest

from roa_jax import device, evaluation, figures, maml, reproduce, train
from roa_jax.data import synthetic

ROOT = Path(__file__).resolve().parent.parent
PROTO = reproduce.Protocol(
    sigmas=(0.0, 2.0), rhos=(1.0, 4.0), seeds=2, test_tasks=4, val_tasks=4, offline_steps=2, chunk=2
)


def _tiny_models():
    cfgs = {
        m: dataclasses.replace(
            reproduce.model_config("synthetic_5w1s", m, "tiny"), width=8, num_inner_steps=s
        )
        for m, s in (("roa", 1), ("roa_wc", 1), ("five_step", 2))
    }
    shape = (28, 28, 1)
    models = {}
    for name, cfg in cfgs.items():
        # Different initial networks stand in for differently meta-trained ones.
        meta = train.init_state(dataclasses.replace(cfg, seed=len(models)), shape).meta
        models[name] = (cfg, meta)
    return models


@pytest.fixture(scope="module")
def data():
    return synthetic.load_synthetic(seed=0, image_size=28), (0.0, 1.0)


@pytest.fixture(scope="module")
def evaluated(data, tmp_path_factory):
    splits, norm = data
    out = tmp_path_factory.mktemp("eval")
    models = _tiny_models()
    results = reproduce.evaluate_models(models, splits, norm, PROTO, out, title="tiny")
    return models, results, out


def _setting(kind="adapt", num_steps=1):
    return evaluation.Setting(kind=kind, n_way=5, k_shot=1, n_query=3, num_steps=num_steps, chunk=2)


@pytest.mark.parametrize("strategy", ["map", "vmap", "unroll"])
def test_sweep_equals_a_loop_of_single_evaluations(data, strategy):
    splits, norm = data
    meta = _tiny_models()["roa"][1]
    grid = evaluation.make_grid([0.0, 1.5], [1.0, 2.0], [0, 1])
    args = (jax.random.PRNGKey(3), meta, splits["test"], norm, device.paper(), grid, 3, _setting())
    swept = evaluation.sweep(*args, strategy=strategy)
    looped = evaluation.sweep(*args, strategy="loop")
    assert swept.shape == (8, 3)
    if strategy == "vmap":
        # Batched convs round differently in the last bit, which can flip a near-tied argmax
        # of this untrained net on a few of the 15 queries (the losses agree to 1e-6).
        assert np.mean(np.abs(swept - looped)) < 0.05
    else:
        np.testing.assert_array_equal(swept, looped)
    # Points differ (noise and rho matter), and one seed's points share their tasks.
    assert len({tuple(row) for row in swept}) > 1


def test_grid_is_the_cartesian_product():
    grid = evaluation.make_grid([0.0, 1.0], [1.0, 2.0, 4.0], [0, 1])
    assert len(grid.sigma_w) == 12
    points = set(zip(grid.sigma_w.tolist(), grid.rho.tolist(), grid.seed.tolist(), strict=True))
    assert len(points) == 12 and (1.0, 4.0, 1) in points


def test_summary_averages_seeds_and_pools_tasks_for_the_interval():
    grid = evaluation.make_grid([0.0], [1.0], [0, 1])
    acc = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    (row,) = evaluation.summarize(acc, grid)
    assert row["accuracy"] == pytest.approx(0.75)
    assert row["seed_accuracies"] == [0.5, 1.0]
    expected = 1.96 * np.std(acc.ravel(), ddof=1) / np.sqrt(8)
    assert row["ci95"] == pytest.approx(expected, rel=1e-5)


def test_best_rho_is_the_argmax_per_noise_level():
    rows = [
        {"sigma_w": 0.0, "rho": 1.0, "accuracy": 0.9},
        {"sigma_w": 0.0, "rho": 2.0, "accuracy": 0.8},
        {"sigma_w": 1.0, "rho": 1.0, "accuracy": 0.5},
        {"sigma_w": 1.0, "rho": 2.0, "accuracy": 0.7},
    ]
    assert evaluation.best_rho(rows) == {0.0: 1.0, 1.0: 2.0}


def test_rho_search_never_reads_the_test_classes(data, evaluated, tmp_path):
    splits, norm = data
    models, results, _ = evaluated
    other = np.asarray(splits["test"])[::-1].copy()  # different test classes
    changed = reproduce.evaluate_models(
        {"roa": models["roa"]}, {**splits, "test": other}, norm, PROTO, tmp_path, title="x"
    )
    assert changed["best_rho"]["roa"] == results["best_rho"]["roa"]
    assert changed["parts"]["roa_val"]["rows"] == results["parts"]["roa_val"]["rows"]
    assert changed["parts"]["roa_test"]["rows"] != results["parts"]["roa_test"]["rows"]


def test_every_method_is_evaluated_at_every_noise_level(evaluated):
    _, results, _ = evaluated
    methods = {r["method"] for r in results["methods"]}
    assert methods == {
        "ROA",
        "ROA-FLR",
        "ROA-WC",
        "ROA-WC-FLR (MAML++)",
        "5-step",
        "offline",
    }
    for method in methods:
        rows = [r for r in results["methods"] if r["method"] == method]
        assert sorted(r["sigma_w"] for r in rows) == list(PROTO.sigmas)
        assert all(r["tasks"] == PROTO.seeds * PROTO.test_tasks for r in rows)
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    roa = {r["sigma_w"]: r for r in results["methods"] if r["method"] == "ROA"}
    for sigma_w, rho in results["best_rho"]["roa"].items():
        assert roa[sigma_w]["rho"] == rho


def test_ideal_device_hardware_adaptation_equals_origin(data):
    splits, norm = data
    meta = _tiny_models()["roa"][1]
    grid = evaluation.make_grid([0.0], [1.0], [0])
    key = jax.random.PRNGKey(0)
    hw = evaluation.sweep(key, meta, splits["test"], norm, device.ideal(), grid, 4, _setting())
    ideal = evaluation.sweep(
        key, meta, splits["test"], norm, device.ideal(), grid, 4, _setting("origin")
    )
    np.testing.assert_allclose(hw, ideal)


def test_evaluated_parts_are_reused_when_rerun(data, evaluated, monkeypatch):
    splits, norm = data
    models, results, out = evaluated

    def fail(*args, **kwargs):
        raise AssertionError("a finished part was recomputed")

    monkeypatch.setattr(evaluation, "sweep", fail)
    again = reproduce.evaluate_models(models, splits, norm, PROTO, out, title="tiny")
    assert again["methods"] == results["methods"]


def test_figures_and_table_from_a_tiny_run(evaluated, tmp_path):
    _, results, _ = evaluated
    reproduce.save_results(results, tmp_path)
    loaded = reproduce.load_results(tmp_path)
    paths = figures.make_all(loaded, tmp_path)
    names = {p.name for p in paths}
    assert names == {"figure3.png", "figure4.png", "figure5.png", "figure6.png", "table2.md"}
    for path in paths[:-1]:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # not blank
    table = (tmp_path / "table2.md").read_text()
    for method in ("ROA", "5-step", "ROA-WC", "ROA-FLR", "offline"):
        assert f"| {method} |" in table
    assert "σw=2" in table
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + sum(len(p["rows"]) for p in results["parts"].values()) + len(
        results["methods"]
    )


def test_offline_depends_on_noise(data):
    splits, norm = data
    grid = evaluation.make_grid([0.0, 3.0], [1.0], [0])
    acc = evaluation.sweep(
        jax.random.PRNGKey(0),
        None,
        splits["test"],
        norm,
        device.paper(),
        grid,
        4,
        _setting("offline", num_steps=3),
    )
    assert acc.shape == (2, 4)
    assert np.all((acc >= 0) & (acc <= 1))


def test_protocol_and_task_validation():
    with pytest.raises(ValueError, match="must include 1"):
        reproduce.check_protocol(PROTO._replace(rhos=(2.0, 4.0)))
    with pytest.raises(ValueError, match="--task"):
        reproduce.model_config("omniglot_7w1s", "roa", "cpu")
    with pytest.raises(ValueError, match="--scale"):
        reproduce.protocol("huge")
    assert reproduce.model_config("omniglot_5w1s", "roa_wc", "cpu").constraint_k == 1.0
    assert reproduce.model_config("omniglot_5w1s", "five_step", "paper").num_inner_steps == 5
    assert maml.default_task_batching("gpu") == "vmap"
    assert evaluation.default_sweep_batching("cpu") == "loop"
    assert evaluation.default_sweep_batching("gpu") == "vmap"


def test_reproduce_binary_rejects_a_bad_task_before_training(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "experiments/reproduce.py",
            "--task=omniglot_7w1s",
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "--task='omniglot_7w1s'" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_evaluate_binary_rejects_a_missing_checkpoint_and_bad_rhos(tmp_path):
    base = [sys.executable, "experiments/evaluate.py", f"--out_dir={tmp_path / 'out'}"]
    run = lambda *flags: subprocess.run(
        [*base, *flags], cwd=ROOT, capture_output=True, text=True, check=False
    )
    missing = run(f"--roa={tmp_path / 'nope'}")
    assert missing.returncode != 0 and "--roa=" in missing.stderr
    assert "meta-train it first" in missing.stderr
    rhos = run(f"--roa={tmp_path}", "--rhos=2,4")
    assert rhos.returncode != 0 and "must include 1" in rhos.stderr
    assert not (tmp_path / "out").exists()
