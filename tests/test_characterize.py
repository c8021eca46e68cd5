"""The device characterization binary (experiments/characterize_device.py), run in-process."""

import csv
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags
from absl.testing import flagsaver

from roa_jax import device, fitting

ROOT = pathlib.Path(__file__).resolve().parents[1]
BINARY = ROOT / "experiments" / "characterize_device.py"

_spec = importlib.util.spec_from_file_location("characterize_device", BINARY)
characterize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(characterize)
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _measured_csv(path):
    """A small measured-looking CSV: the paper device with G range 20-90 uS, 0.2 % read noise."""
    true = device.paper()._replace(
        alpha=device.paper().alpha * 41.0, gamma=device.paper().gamma * 0.6584
    )
    rng = np.random.default_rng(1)
    g_min, g_max = device.conductance_range(true)
    lines, w = ["cycle,pulse_index,polarity,conductance_S"], 0.02
    for cycle in (1, 2, 3):
        for polarity in (1, -1):
            k = np.arange(61, dtype=np.float32)
            ws = np.asarray(device.pulse_response(w, polarity * k, true))
            g = np.asarray(device.conductance(ws, true)) + rng.normal(
                0, 0.002 * (g_max - g_min), 61
            )
            lines += [f"{cycle},{i},{polarity},{x:.6e}" for i, x in enumerate(g)]
            w = float(ws[-1])
    path.write_text("\n".join(lines) + "\n")
    return true


def test_outputs_obey_the_physics(tmp_path):
    measured = tmp_path / "measured.csv"
    true = _measured_csv(measured)
    fitted_path = str(tmp_path / "fitted" / "dev.json")
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        out_dir=str(out),
        num_pulses=20,
        sigma_w=["0", "0.1", "0.5", "2"],
        num_devices=10000,
        fit=str(measured),
        fit_steps=300,
        save_fitted=fitted_path,
    ):
        characterize.main(["characterize_device"])

    for name in ("pulse_response", "write_noise", "fit"):
        assert (out / f"{name}.csv").stat().st_size > 0
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pulses_0_to_0p95"] == 30 and summary["pulses_1_to_0p05"] == 28

    # Pulse response: from G_min, within [G_min, G_max], monotone in each phase, for every device.
    rows = _rows(out / "pulse_response.csv")
    assert {r["device"] for r in rows} == set(device.PRESETS)
    for name, stats in summary["presets"].items():
        mine = [r for r in rows if r["device"] == name]
        g = np.array([float(r["G_uS"]) for r in mine])
        assert len(g) == 41 and [r["phase"] for r in mine].count("set") == 21
        tol = 1e-6 * stats["G_max_uS"]
        assert np.all((g >= stats["G_min_uS"] - tol) & (g <= stats["G_max_uS"] + tol))
        np.testing.assert_allclose(g[0], stats["G_min_uS"], rtol=1e-6)
        assert np.all(np.diff(g[:21]) >= 0) and np.all(np.diff(g[20:]) <= 0)
        assert g[20] > g[0]  # every preset moves within 20 pulses

    # Write noise: std of 10000 devices within 5 % of Eq. 7 where (almost) nothing is clipped,
    # and within 5 % of Eq. 7 followed by the clip everywhere.
    rows = _rows(out / "write_noise.csv")
    assert len(rows) == 4 * 3
    unclipped = 0
    for r in rows:
        measured_std, eq7 = float(r["std_measured_uS"]), float(r["std_eq7_uS"])
        if float(r["sigma_w"]) == 0:
            assert measured_std == 0 and eq7 == 0
            continue
        np.testing.assert_allclose(measured_std, float(r["std_eq7_clipped_uS"]), rtol=0.05)
        if float(r["clipped_fraction"]) < 1e-3:
            np.testing.assert_allclose(measured_std, eq7, rtol=0.05)
            unclipped += 1
    assert unclipped >= 4
    assert float(rows[-1]["std_measured_uS"]) < 0.8 * float(rows[-1]["std_eq7_uS"])  # clipped

    # Fit of a curve made by a known device, and the saved params usable as --device.
    fit = summary["fit"]
    assert fit["num_reads"] == 6 * 61 and fit["rel_rms"] < 0.003
    for got, want in zip(
        (fit["fitted"]["G_min_uS"], fit["fitted"]["G_max_uS"]),
        device.conductance_range(true),
        strict=True,
    ):
        np.testing.assert_allclose(got, float(want) * 1e6, rtol=0.02)
    fitted = device.preset(fitted_path)
    assert {k: float(v) for k, v in fitted._asdict().items()} == fit["fitted"]["params"]
    rows = _rows(out / "fit.csv")
    err = [float(r["measured_uS"]) - float(r["fitted_uS"]) for r in rows]
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(err))), fit["rms_uS"], rtol=1e-4)
    curves = fitting.load_curves(str(measured))
    np.testing.assert_array_equal([int(r["polarity"]) for r in rows], curves.polarity)


@pytest.mark.parametrize(
    "overrides, flag",
    [
        (dict(sigma_w=["0", "-0.5"]), "--sigma_w"),
        (dict(sigma_w=["1", "x"]), "--sigma_w"),
        (dict(num_pulses=0), "--num_pulses"),
        (dict(num_devices=1), "--num_devices"),
        (dict(device="nope"), "--device"),
        (dict(device="/no/such.json"), "--device"),
        (dict(fit="/no/such.csv"), "--fit"),
        (dict(save_fitted="x.json"), "--save_fitted"),
        (dict(fit_steps=0), "--fit_steps"),
    ],
)
def test_bad_flags_raise_before_any_work(tmp_path, overrides, flag):
    out = tmp_path / "out"
    with flagsaver.flagsaver(out_dir=str(out), **overrides):
        with pytest.raises(app.UsageError, match=flag):
            characterize.main(["characterize_device"])
    assert not out.exists()


@pytest.mark.parametrize(
    "args, flag", [(["--sigma_w=0,-1"], "--sigma_w"), (["--num_pulses=0"], "--num_pulses")]
)
def test_bad_flag_exits_nonzero(tmp_path, args, flag):
    result = subprocess.run(
        [sys.executable, str(BINARY), f"--out_dir={tmp_path / 'out'}", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    assert result.returncode != 0
    assert flag in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()
