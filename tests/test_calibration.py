"""The calibration of the device reconstruction (calibration.py): the grid, the two stages,
the outputs, and a rescore of the saved parts that evaluates nothing."""

import json

import pytest
from test_comparison import PROTO, _tiny_models

from roa_jax import calibration, claims, device, evaluation
from roa_jax.data import synthetic

RECONS = [
    calibration.Reconstruction("sqrt", 1.0, 1.0),
    calibration.Reconstruction("linear", 1.0, 3.0),
]


def test_grid_starts_with_the_literal_reading_and_checks_its_fields():
    grid = calibration.make_grid()
    assert grid[0] == calibration.Reconstruction("sqrt", 1.0, 1.0)
    per_granularity = sum(len(s) for s in calibration.DEFAULT_SCALES.values())
    assert len(grid) == len(set(grid)) == per_granularity * len(calibration.DEFAULT_GRANULARITIES)
    with pytest.raises(ValueError):
        calibration.check([calibration.Reconstruction("cubic", 1.0, 1.0)])
    with pytest.raises(ValueError):
        calibration.check([])


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    splits = synthetic.load_synthetic(seed=0, image_size=16)
    out = tmp_path_factory.mktemp("calibration")
    records = calibration.calibrate(
        _tiny_models(), splits["val"], (0.0, 1.0), RECONS, PROTO, out, device.paper(), top=1
    )
    return splits, out, records


def test_every_reconstruction_is_scored_and_the_top_one_gets_5_step(calibrated):
    _, _, records = calibrated
    assert sorted(r["reconstruction"] for r in records) == sorted(RECONS)
    assert [(-r["holds"], -r["margin"]) for r in records] == sorted(
        (-r["holds"], -r["margin"]) for r in records
    )
    for r in records:
        assert [v.claim for v in r["verdicts"]] == list(claims.CLAIM_IDS)
        # Scored on the stated claims; the inferred one is reported beside, not weighed.
        assert (r["holds"], r["measured"]) == claims.score(r["verdicts"], (claims.STATED,))
        assert r["inferred"] == claims.score(r["verdicts"], (claims.INFERRED,))
        stated = [v for v in r["verdicts"] if v.source == claims.STATED]
        assert r["margin"] == pytest.approx(sum(v.margin for v in stated if v.margin is not None))
    with_five = [r for r in records if "five_step_test" in r["results"].parts]
    assert len(with_five) == 1


def test_rescore_evaluates_nothing_and_gives_the_same_records(calibrated, monkeypatch):
    splits, out, records = calibrated

    def no_sweep(*args, **kwargs):
        raise AssertionError("a rescore evaluated a part")

    monkeypatch.setattr(evaluation, "sweep", no_sweep)
    again = calibration.calibrate(
        _tiny_models(), splits["val"], (0.0, 1.0), RECONS, PROTO, out, device.paper(), 1, True
    )
    # The reconstructions that had the 5-step model keep it, whatever top says now.
    assert [(r["reconstruction"], r["holds"], r["margin"]) for r in again] == [
        (r["reconstruction"], r["holds"], r["margin"]) for r in records
    ]
    with pytest.raises(ValueError, match="saved for devices"):
        calibration.calibrate(
            _tiny_models(),
            splits["val"],
            (0.0, 1.0),
            RECONS[:1],
            PROTO,
            out,
            device.paper(),
            rescore=True,
        )


def test_outputs(calibrated, tmp_path):
    _, _, records = calibrated
    paths = calibration.write(records, tmp_path, command="python experiments/calibrate.py")
    assert all(p.exists() for p in paths)
    summary = json.loads((tmp_path / "calibration.json").read_text())
    assert [s["holds"] for s in summary] == [r["holds"] for r in records]
    assert set(summary[0]["margins"]) == set(claims.CLAIM_IDS)
    table = (tmp_path / "calibration.md").read_text()
    assert "`python experiments/calibrate.py`" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + len(RECONS)


def test_the_earlier_choice_against_this_one_claim_by_claim(calibrated):
    _, _, records = calibrated
    assert calibration.adopted().params(device.paper()) == device.calibrated()
    assert "`calibrated`) is sqrt x1, 4x finer: not in this grid" in calibration.choices(records)
    # An earlier calibration that chose this one's second reconstruction.
    second, best = records[1]["reconstruction"], records[0]["reconstruction"]
    earlier = [{**second._asdict(), "verdicts": {"offline_chance": "fails"}}]
    text = calibration.choices(records, earlier)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(claims.CLAIM_IDS)
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    marks = {"holds": "✓", "fails": "✗", "not measured": "–"}
    assert cells == [
        "`offline_chance`",
        "stated",
        "✗",  # as judged where it was chosen
        marks[records[1]["verdicts"][0].verdict],
        "–",  # the best here was not in the earlier grid
        marks[records[0]["verdicts"][0].verdict],
    ]
    assert f"Here, stated claims: {best.label} #1 of 2," in text
    assert f"{second.label} #2 of 2," in text and "summed margin" in text
