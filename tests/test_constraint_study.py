"""The constraint study (constraint_study.py): its configs, its paired score, where fresh
kernels sit, and its outputs."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from roa_jax import config as config_lib
from roa_jax import constraint_study, maml, models
from roa_jax.results import ROA, ROA_WC, Results


def test_config_replaces_only_k_and_lambda():
    base = config_lib.model_config("omniglot_5w1s", "roa", "cpu")
    cfg = constraint_study.config("cpu", 8.0, 1.0)
    assert (cfg.constraint_k, cfg.constraint_lambda) == (8.0, 1.0)
    assert dataclasses.replace(cfg, constraint_k=4.0, constraint_lambda=0.1) == base
    assert constraint_study.name(8.0, 1.0) == "k8_lambda1"
    with pytest.raises(ValueError, match="constraint_k"):
        constraint_study.config("cpu", 0.5, 0.1)


def _row(method, sigma_w, per_task, rho=1.0):
    return {
        "method": method,
        "sigma_w": sigma_w,
        "rho": rho,
        "accuracy": sum(per_task) / len(per_task),
        "ci95": 0.05,
        "task_accuracies": per_task,
    }


def _results(gain):
    """ROA `gain` above ROA-WC on every task at sigma_w 3, equal at 0, 0.1 below at 2."""
    tasks = [0.2 + 0.06 * (i % 10) for i in range(50)]
    rows = []
    for s, delta in ((0.0, 0.0), (2.0, -0.1), (3.0, gain)):
        rows.append(_row(ROA_WC, s, tasks))
        rows.append(_row(ROA, s, [t + delta + 0.002 * (i % 2) for i, t in enumerate(tasks)], 2.0))
    return Results(methods=rows, devices={"calibrated": {"granularity": 4.0}})


def test_score_is_the_paired_difference_at_high_noise():
    record = constraint_study.score(_results(0.05), 4.0, 0.1)
    assert record["high_levels"] == [3.0]  # > 2: sigma_w 2 is not high noise
    assert record["gain_pp"] == pytest.approx(5.1)
    assert record["paired"] and record["gain_ci95_pp"] < 0.1
    assert record["no_noise_pp"] == pytest.approx(0.1)
    assert record["roa_rho"] == {"0": 2.0, "2": 2.0, "3": 2.0}
    assert record["roa_wc"]["3"] == pytest.approx(
        100 * sum(0.2 + 0.06 * (i % 10) for i in range(50)) / 50
    )


def test_verdict_names_the_best_setting_against_3_points():
    records = [constraint_study.score(_results(g), k, 0.1) for g, k in ((0.01, 2.0), (0.05, 8.0))]
    assert "adds +5.1 pp" in constraint_study.verdict(records) and "k 8" in (
        constraint_study.verdict(records)
    )
    assert constraint_study.verdict(records[:1]).startswith("No setting adds more than 3 points")


def test_xavier_kernels_sit_inside_a_quarter_where_he_normal_ones_do_not():
    model = models.Conv4(5, 64, 2)
    meta = maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, 28, 28, 1)), 1, 0.1)
    shares = constraint_study.init_shares(meta.params, 4.0)
    he, xavier = shares["he_normal (ours)"], shares["xavier_uniform (MAML++)"]
    first = next(layer for layer in he if layer.startswith("conv"))
    # conv1 sees 9 inputs: He-normal's std sqrt(2/9) = 0.47 puts ~60 % beyond 1/4;
    # xavier-uniform's bound sqrt(6/(9 + 576)) = 0.10 puts none there.
    assert 0.5 < he[first]["beyond"] < 0.7 and xavier[first]["beyond"] == 0.0
    crossbar = {"/".join(path) for path in models.split(meta.params)[models.CROSSBAR]}
    assert set(he) == set(xavier) == crossbar


def test_write_makes_every_output(tmp_path):
    records = [
        constraint_study.score(_results(g), k, lam)
        for g, (k, lam) in zip(
            (0.01, 0.02, 0.05, 0.0), [(2.0, 0.1), (2.0, 1.0), (8.0, 0.1), (8.0, 1.0)], strict=True
        )
    ]
    shares = {"net": {"conv0/kernel": dict(beyond=0.5, near_ends=0.1, median=0.2, p99=0.9, size=9)}}
    paths = constraint_study.write(records, shares, tmp_path, "python x")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    md = (tmp_path / "constraint.md").read_text()
    assert "Command: `python x`" in md and "| 8 | 0.1 | +5.1 ±" in md
    assert "| net | 50.0 % / 10.0 % |" in md
    assert "Device preset: calibrated [" in md
    data = json.loads((tmp_path / "constraint.json").read_text())
    assert data["verdict"].startswith("The constraint adds +5.1 pp")
    assert len((tmp_path / "sweep.csv").read_text().splitlines()) == 1 + len(records)
