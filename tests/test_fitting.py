"""Fitting device parameters to pulse-response curves (roa_jax/fitting.py).

The real-data test needs the measured curves: set ROA_DATA_DIR to a folder holding devices/
(crosssim_example_setreset.csv); without it that test is skipped.
"""

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from roa_jax import device, errors, fitting

BASE = device.paper()


def _device(g_min, g_max, a_plus, a_minus, window=1.0, base=BASE):
    """`base` with the given G range (S), pulse rates and window."""
    lam, eta2 = fitting.rates_to_params(a_plus, a_minus, base)
    v = float(base.v_read)
    return base._replace(
        alpha=jnp.float32(g_min * v / -math.expm1(-float(base.beta) * v)),
        gamma=jnp.float32(g_max * v / math.sinh(float(base.delta) * v)),
        lam=jnp.float32(lam),
        eta2=jnp.float32(eta2),
        window=jnp.float32(window),
    )


def _measure(params, ramps, noise, seed=0, w_start=0.03):
    """Simulated reads of alternating ramps (pulses, polarity), with Gaussian read noise given
    as a fraction of G_max - G_min. Each ramp starts where the previous one ended."""
    rng = np.random.default_rng(seed)
    g_min, g_max = (float(g) for g in device.conductance_range(params))
    columns, w = [], w_start
    for cycle, (num, polarity) in enumerate(ramps, start=1):
        k = np.arange(num + 1)
        ws = np.asarray(device.pulse_response(w, polarity * k.astype(np.float32), params))
        g = np.asarray(device.conductance(ws, params), np.float64)
        g = g + rng.normal(0.0, noise * (g_max - g_min), g.shape)
        columns.append((np.full(num + 1, cycle), k, np.full(num + 1, polarity), g))
        w = float(ws[-1])
    return fitting.curves_from_arrays(*(np.concatenate(c) for c in zip(*columns, strict=True)))


def _rel(a, b):
    return abs(float(a) / float(b) - 1.0)


# Known device: G range, rates and asymmetry unlike the paper preset and the data-driven guess.
TRUE = _device(g_min=50e-6, g_max=150e-6, a_plus=0.2, a_minus=0.06)
RAMPS = [(50, +1), (80, -1)] * 6


@pytest.mark.parametrize("start", ["data", "paper"])
def test_fit_recovers_known_device(start):
    curves = _measure(TRUE, RAMPS, noise=0.003)
    init = None if start == "data" else device.paper()
    guess = fitting.initial_guess(curves, BASE) if init is None else init
    true_rates = device.pulse_rates(TRUE)
    # The start is genuinely off: rates by more than 40 %.
    for got, want in zip(device.pulse_rates(guess), true_rates, strict=True):
        assert _rel(got, want) > 0.4

    # From the paper preset (G_min 100x too low) 400 steps leave a+ 7 % off; 1000 converge.
    result = fitting.fit(curves, BASE, num_steps=400 if init is None else 1000, init=init)

    device.validate(result.params)
    for got, want in zip(
        device.conductance_range(result.params), device.conductance_range(TRUE), strict=True
    ):
        assert _rel(got, want) < 0.02, (got, want)
    for got, want in zip(device.pulse_rates(result.params), true_rates, strict=True):
        assert _rel(got, want) < 0.02, (got, want)
    # At the noise floor: the read noise is 0.3 % of the range (the reads span about 97 % of it).
    assert result.rel_rms < 0.0035
    assert result.losses[-1] < 0.01 * result.losses[0]
    # Kept fixed: everything but the G range, lambda, eta2 and the window.
    for name in ("beta", "delta", "v_read", "eta1", "v_set", "v_reset", "t_p"):
        assert getattr(result.params, name) == getattr(BASE, name)


def test_prediction_is_the_closed_form_from_each_ramp_start():
    curves = _measure(TRUE, [(7, +1), (9, -1)], noise=0.0, w_start=0.4)
    np.testing.assert_allclose(fitting.predict(TRUE, curves), curves.conductance, rtol=1e-6)
    # Ramp 2 starts where ramp 1 ended, 7 pulses up from w = 0.4.
    w_top = device.pulse_response(0.4, 7.0, TRUE)
    np.testing.assert_allclose(
        curves.start, device.conductance(jnp.array([0.4, w_top]), TRUE), rtol=1e-6
    )
    np.testing.assert_array_equal(curves.pulses[8:], -np.arange(10))


def _straight_line_floor(curves):
    """Relative RMS of the best straight line through each ramp's first read (slope free per
    ramp): the window-0 limit of Eq. 1, with more freedom than one slope per polarity."""
    residuals = []
    for r in np.unique(curves.ramp):
        pick = curves.ramp == r
        n, dg = np.abs(curves.pulses[pick]), curves.conductance[pick] - curves.start[r]
        residuals.append(dg - n * (n @ dg) / (n @ n))
    return np.sqrt(np.mean(np.concatenate(residuals) ** 2)) / np.ptp(curves.conductance)


def test_fit_crosssim_measured_curves():
    if not os.environ.get("ROA_DATA_DIR"):
        pytest.skip(
            "set ROA_DATA_DIR to a folder holding devices/ "
            "(crosssim_example_setreset.csv) to fit the measured CrossSim curves."
        )
    path = os.path.join(os.environ["ROA_DATA_DIR"], "devices", "crosssim_example_setreset.csv")
    curves = fitting.load_curves(path)
    assert len(curves.conductance) == 13417 and curves.ramp.max() + 1 == 79
    result = fitting.fit(curves, BASE)
    device.validate(result.params)
    # Bound: the SET steps of this device GROW along a ramp (about 2.5 -> 6 uS per pulse), which
    # Eq. 1 cannot produce (its steps shrink toward the bounds, window in [0, 1]); the best it can
    # do is nearly a straight line, and straight lines per ramp leave about 4.9 % of the range
    # (6.5 % on SET, 1 % on RESET). The fit reaches 4.92 %; at its data-driven start it is 14 %.
    floor = _straight_line_floor(curves)
    assert 0.04 < floor < 0.055
    assert result.rel_rms < min(0.06, 1.1 * floor), (result.rel_rms, floor)
    g_min, g_max = device.conductance_range(result.params)
    assert g_min <= curves.conductance.min() and g_max >= 0.999 * curves.conductance.max()


# Loading measured curves.


def test_load_curves_errors(tmp_path):
    with pytest.raises(errors.DataError, match="nothere.csv"):
        fitting.load_curves(str(tmp_path / "nothere.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("cycle,pulse,polarity,conductance_S\n1,0,1,1e-4\n")
    with pytest.raises(ValueError, match=r"bad.csv.*lack \['pulse_index'\]"):
        fitting.load_curves(str(bad))
    bad.write_text("cycle,pulse_index,polarity,conductance_S\n1,0,2,1e-4\n")
    with pytest.raises(ValueError, match="polarity"):
        fitting.load_curves(str(bad))
    norm = tmp_path / "norm.csv"
    norm.write_text("cycle,pulse_index,polarity,conductance_norm\n1,0,1,-1\n1,1,1,0\n1,2,1,1\n")
    with pytest.raises(ValueError, match="unitless conductance_norm.*norm_range"):
        fitting.load_curves(str(norm))
    curves = fitting.load_curves(str(norm), norm_range=(10e-6, 30e-6))
    np.testing.assert_allclose(curves.conductance, [10e-6, 20e-6, 30e-6])
