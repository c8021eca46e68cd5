"""Device characterization (roa_jax/characterization.py): Fig. 2B, Fig. 2C and the fit."""

import csv
import json
import math

import jax
import numpy as np
import pytest

from roa_jax import characterization, device, fitting

PAPER = device.paper()


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _measured_csv(path):
    """A small measured-looking CSV: the paper device with G range 20-90 uS, 0.2 % read noise."""
    true = PAPER._replace(alpha=PAPER.alpha * 41.0, gamma=PAPER.gamma * 0.6584)
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
    result = characterization.run(
        str(out),
        PAPER,
        "paper",
        num_pulses=20,
        sigma_ws=[0.0, 0.1, 0.5, 2.0],
        num_devices=10000,
        measured=fitting.load_curves(str(measured)),
        measured_source=str(measured),
        fit_steps=300,
        save_fitted=fitted_path,
    )

    for name in ("pulse_response", "write_noise", "fit"):
        assert (out / f"{name}.csv").stat().st_size > 0
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert result == dict(summary, outputs=result["outputs"])
    names = [f"{n}.{e}" for n in ("pulse_response", "write_noise", "fit") for e in ("csv", "png")]
    wanted = [str(out / n) for n in names] + [fitted_path, str(out / "summary.json")]
    assert sorted(result["outputs"]) == sorted(wanted)
    assert summary["pulses_0_to_0p95"] == 30 and summary["pulses_1_to_0p05"] == 28
    assert summary["noise_law"] == "sqrt"

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
    assert len(rows) == 4 * 3 and {r["noise_law"] for r in rows} == {"sqrt"}
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

    # Fit of a curve made by a known device, and the saved params usable as a device preset.
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


@pytest.mark.parametrize("law", device.NOISE_LAWS)
def test_write_noise_sweep_follows_each_law(law):
    # Small noise (a few uS, far from the bounds): the spread is the law's std, written out here
    # from MODEL.md 1 (not from device.noise_std): n nominal pulses from w = 0.5 change w by
    # 0.5 (1 - exp(-a n)), a = lam |exp(eta1 V) - exp(-eta2 V)| t_p. per_pulse catches a pulse
    # count not passed to device.noise_std.
    scale = 1.5
    params = device.with_noise(PAPER, law, scale)
    sigma_w = {"sqrt": 0.02, "linear": 0.05, "per_pulse": 0.1, "range": 0.01}[law]
    rows = characterization.write_noise_sweep(jax.random.PRNGKey(0), params, [sigma_w], 40_000)
    assert [r["pulses"] for r in rows] == list(characterization.NOISE_PULSES)
    span = 8e-5 * math.sinh(1.7 * 0.1) / 0.1 - 1e-6 * -math.expm1(-0.5 * 0.1) / 0.1  # Eq. 3
    lam, eta1, eta2, t_p = (float(x) for x in (PAPER.lam, PAPER.eta1, PAPER.eta2, PAPER.t_p))
    for r in rows:
        n = r["pulses"]
        v = float(PAPER.v_set if n > 0 else PAPER.v_reset)
        a = lam * abs(math.exp(eta1 * v) - math.exp(-eta2 * v)) * t_p
        dg = math.copysign(span * 0.5 * -math.expm1(-a * abs(n)), n)
        unit = {
            "sqrt": math.sqrt(abs(dg) * span),
            "linear": abs(dg),
            "per_pulse": abs(dg) / math.sqrt(abs(n)),
            "range": span,
        }[law]
        std_us = scale * sigma_w * unit * 1e6
        assert r["clipped_fraction"] == 0
        np.testing.assert_allclose(r["dG_actual_uS"], dg * 1e6, rtol=1e-5)
        np.testing.assert_allclose(r["std_eq7_uS"], std_us, rtol=1e-5)
        np.testing.assert_allclose(r["std_eq7_clipped_uS"], std_us, rtol=1e-5)
        # 40k devices: the sample std is within 3 % (about 8 standard errors).
        np.testing.assert_allclose(r["std_measured_uS"], std_us, rtol=0.03)


def test_pulses_to_reach_matches_the_closed_form():
    assert characterization.pulses_to_reach(PAPER, 0.0, 0.95) == 30
    assert characterization.pulses_to_reach(PAPER, 1.0, 0.05) == 28
    fine = device.with_granularity(PAPER, 10)
    n = characterization.pulses_to_reach(fine, 0.0, 0.95)
    assert 295 <= n <= 305
    assert float(device.pulse_response(0.0, float(n), fine)) >= 0.95
    assert float(device.pulse_response(0.0, float(n - 1), fine)) < 0.95
    # The state never reaches 1 under the closed form of a window-1 device.
    assert characterization.pulses_to_reach(PAPER, 0.0, 1.0 + 1e-3) is None


@pytest.mark.parametrize("mean", [0.0, 2.5, 9.0])
def test_censored_normal_std_equals_sampling(mean):
    low, high, sigma = -1.0, 10.0, 3.0
    x = np.clip(np.random.default_rng(0).normal(mean, sigma, 400_000), low, high)
    got = characterization.censored_normal_std(mean, sigma, low, high)
    np.testing.assert_allclose(got, np.std(x), rtol=0.01)
    assert got < sigma
    assert characterization.censored_normal_std(mean, 0.0, low, high) == 0.0
    np.testing.assert_allclose(
        characterization.censored_normal_std(0.0, 1.0, -1e9, 1e9), 1.0, rtol=1e-9
    )


def test_run_rejects_bad_arguments_before_writing(tmp_path):
    out = tmp_path / "out"
    for kwargs, message in (
        (dict(sigma_ws=[-1.0]), "sigma_w"),
        (dict(sigma_ws=[]), "sigma_ws"),
        (dict(num_pulses=0), "num_pulses"),
        (dict(num_devices=1), "num_devices"),
        (dict(save_fitted=str(tmp_path / "x.json")), "save_fitted"),
    ):
        with pytest.raises(ValueError, match=message):
            characterization.run(str(out), PAPER, "paper", **kwargs)
    with pytest.raises(ValueError, match="noise_law"):
        characterization.run(str(out), PAPER._replace(noise_law=np.float32(7)), "paper")
    assert not out.exists()
