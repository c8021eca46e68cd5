"""The technology map (roa_jax/technology_map.py): device descriptions against their closed
forms, and the table and figure from a real (tiny) multi-device evaluation."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from roa_jax import comparison, config, crossbar, technology_map, train
from roa_jax import results as results_lib
from roa_jax.data import synthetic

PROTO = config.Protocol(
    sigmas=(0.0, 1.0), rhos=(1.0, 2.0), seeds=1, test_tasks=4, val_tasks=4, offline_steps=1, chunk=2
)


@pytest.mark.parametrize(
    "name, levels, asymmetry, nonlinearity",
    [
        ("linear_step", 32.0, 1.0, 0.0),  # 32 equal steps, no saturation
        ("aihwkit_constant_step", 1200.0, 1.0, 0.0),  # [-0.6, 0.6] in steps of 0.001
        # SoftBounds: step ~ 1 - w / 0.6, which is 1.5 at 1/4 of the range and 0.5 at 3/4.
        ("aihwkit_soft_bounds", 1200.0, 1.0, 2.0 / 3.0),
        ("gokmen_vlasov", 2.0 / 0.0016, 1.0, 0.0),
    ],
)
def test_descriptions_match_the_closed_forms(name, levels, asymmetry, nonlinearity):
    d = technology_map.describe(crossbar.preset(name))
    np.testing.assert_allclose(
        [d["levels"], d["asymmetry"], d["nonlinearity"]],
        [levels, asymmetry, nonlinearity],
        rtol=2e-3,
        atol=1e-4,
    )


def test_own_noise_is_described_in_steps():
    d = technology_map.describe(crossbar.preset("reram_sb"))
    assert d["c2c"] == pytest.approx(3.75)
    # 56 dw_min of write noise against a mid-range up step of dw_min (1 - w_mid / 1.25).
    assert d["write_noise"] == pytest.approx(56 / (1 - 0.25 / 1.25), rel=1e-3)


def test_map_from_a_tiny_evaluation(tmp_path):
    models = {}
    for i, (name, steps) in enumerate((("roa", 1), ("five_step", 2))):
        cfg = config.model_config("synthetic_5w1s", name, "tiny")
        cfg = dataclasses.replace(
            cfg, width=8, image_size=16, n_query=3, num_inner_steps=steps, seed=i
        )
        models[name] = (cfg, train.init_meta(cfg, (16, 16, 1)))
    splits, norm = synthetic.load_synthetic(seed=0, image_size=16), (0.0, 1.0)
    devices = {n: crossbar.preset(n) for n in ("reram_es", "ecram")}
    results = comparison.evaluate(
        models, splits, norm, PROTO, tmp_path / "parts", "tiny", devices=devices
    )
    table = []
    for i, (label, params) in enumerate(devices.items()):
        table += technology_map.rows(results, i, label, params)
    assert [(r["device"], r["sigma_w"]) for r in table] == [
        ("reram_es", 0.0),
        ("reram_es", 1.0),
        ("ecram", 0.0),
        ("ecram", 1.0),
    ]
    for r in table:
        one = comparison.select(results, list(devices).index(r["device"]))
        roa = next(x for x in one.rows(results_lib.ROA) if x["sigma_w"] == r["sigma_w"])
        five = next(x for x in one.rows(results_lib.FIVE_STEP) if x["sigma_w"] == r["sigma_w"])
        assert r["roa"] == pytest.approx(100 * roa["accuracy"])
        assert r["roa_minus_five_step"] == pytest.approx(
            100 * (roa["accuracy"] - five["accuracy"]), abs=1e-4
        )
        assert 0 <= r["offline"] <= 100 and 0 <= r["origin"] <= 100
    paths = technology_map.write(table, tmp_path / "out", "python experiments/x.py", 0.2)
    assert [p.name for p in paths] == [f"technologies.{e}" for e in ("md", "csv", "json", "png")]
    md = paths[0].read_text()
    assert "python experiments/x.py" in md and md.count("| reram_es |") == 2
    with open(paths[1]) as f:
        assert len(list(csv.DictReader(f))) == 4
    assert json.loads(paths[2].read_text())["rows"][0]["device"] == "reram_es"
    assert paths[3].stat().st_size > 10_000
