r"""Characterizes a device model: pulse response (Fig. 2B), write noise (Fig. 2C), optional fit.

  python experiments/characterize_device.py --out_dir=results/characterize \
      --fit=$ROA_DATA_DIR/devices/crosssim_example_setreset.csv \
      --save_fitted=results/characterize/crosssim_fitted.json

writes into --out_dir (about 10 s on 2 CPU cores; roa_jax/characterization.py `run`):
  pulse_response.csv/.png  G vs pulse number, --num_pulses SET then --num_pulses RESET pulses
                           from G_min (closed form of Eq. 1), for --device and every preset;
  write_noise.csv/.png     spread of the written conductance vs sigma_w for +1, +5 and -5
                           nominal pulses from mid range, measured over --num_devices devices,
                           beside the --noise_law x --noise_scale form of Eq. 7 (and that law
                           followed by the clip to [G_min, G_max]);
  summary.json             parameters, G range, pulse rates, pulses to 95 %, nominal steps;
  fit.csv/.png             with --fit: measured vs fitted reads (relative RMS about 4.9 % of the
                           range for the CrossSim file: its SET steps grow, which Eq. 1 cannot do).
A saved fit is used with --device=results/characterize/crosssim_fitted.json.
"""

import math

import common
from absl import flags

from roa_jax import characterization, device, errors, fitting

_DEVICE = flags.DEFINE_string(
    "device", "paper", f"Device preset ({', '.join(device.PRESETS)}) or a .json params file."
)
_OUT_DIR = flags.DEFINE_string("out_dir", "results/characterize", "Folder for the outputs.")
_NUM_PULSES = flags.DEFINE_integer(
    "num_pulses", 60, "Pulses per polarity in the pulse-response curve, in [1, 100000]."
)
_SIGMA_W = flags.DEFINE_list(
    "sigma_w",
    [f"{s:g}" for s in characterization.DEFAULT_SIGMA_WS],
    "Write-noise levels (Eq. 7), each finite and >= 0.",
)
_NOISE_LAW = flags.DEFINE_string(
    "noise_law",
    "sqrt",
    f"Write-noise law of Eq. 7, one of {', '.join(device.NOISE_LAWS)} (roa_jax/device.py); "
    "sqrt is Eq. 7 as written.",
)
_NOISE_SCALE = flags.DEFINE_float(
    "noise_scale", 1.0, "Factor (finite, >= 0) on the noise law's standard deviation."
)
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", 10000, "Devices written per noise level and update, in [2, 1000000]."
)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the write noise, in [0, 2^31 - 1].")
_FIT = flags.DEFINE_string(
    "fit",
    "",
    "Measured pulse-response CSV to fit (layout of shared/data/devices); empty: no fit. A "
    "unitless conductance_norm file is mapped onto the --device's G range first.",
)
_FIT_STEPS = flags.DEFINE_integer("fit_steps", 400, "Adam steps of the fit, in [1, 100000].")
_SAVE_FITTED = flags.DEFINE_string(
    "save_fitted", "", "Where to write the fitted params (.json, usable as --device); needs --fit."
)


def _int_in(flag, low, high):
    if not low <= flag.value <= high:
        raise errors.ConfigError(f"--{flag.name}={flag.value} must be in [{low}, {high}].")
    return flag.value


def _sigma_ws():
    text = ",".join(_SIGMA_W.value)
    try:
        values = [float(s) for s in _SIGMA_W.value]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(s) and s >= 0 for s in values):
        raise errors.ConfigError(
            f"--sigma_w={text}: give a non-empty comma list of finite numbers >= 0 "
            "(the dimensionless write-noise level of Eq. 7)."
        )
    return values


def _params():
    try:
        params = device.validate(device.preset(_DEVICE.value))
    except errors.UserError as e:
        raise type(e)(f"--device={_DEVICE.value}: {e}") from None
    if _NOISE_LAW.value not in device.NOISE_LAWS:
        raise errors.ConfigError(
            f"--noise_law={_NOISE_LAW.value} must be one of {', '.join(device.NOISE_LAWS)}."
        )
    scale = _NOISE_SCALE.value
    if not (math.isfinite(scale) and scale >= 0):
        raise errors.ConfigError(f"--noise_scale={scale} must be finite and >= 0.")
    return device.with_noise(params, _NOISE_LAW.value, scale)


def _measured(params):
    if _SAVE_FITTED.value and not _FIT.value:
        raise errors.ConfigError(f"--save_fitted={_SAVE_FITTED.value} needs --fit.")
    if _SAVE_FITTED.value and not _SAVE_FITTED.value.endswith(".json"):
        raise errors.ConfigError(f"--save_fitted={_SAVE_FITTED.value} must end in .json.")
    if not _FIT.value:
        return None
    g_range = tuple(float(g) for g in device.conductance_range(params))
    try:
        return fitting.load_curves(_FIT.value, norm_range=g_range)
    except errors.UserError as e:
        raise type(e)(f"--fit={_FIT.value}: {e}") from None


def main(argv):
    del argv  # common.run rejects extra arguments
    num_pulses = _int_in(_NUM_PULSES, 1, 100_000)
    num_devices = _int_in(_NUM_DEVICES, 2, 1_000_000)
    seed = _int_in(_SEED, 0, 2**31 - 1)
    fit_steps = _int_in(_FIT_STEPS, 1, 100_000)
    sigma_ws = _sigma_ws()
    if not _OUT_DIR.value:
        raise errors.ConfigError("--out_dir must not be empty.")
    params = _params()
    measured = _measured(params)
    characterization.run(
        _OUT_DIR.value,
        params,
        _DEVICE.value,
        num_pulses=num_pulses,
        sigma_ws=sigma_ws,
        num_devices=num_devices,
        seed=seed,
        measured=measured,
        measured_source=_FIT.value,
        fit_steps=fit_steps,
        save_fitted=_SAVE_FITTED.value or None,
    )


if __name__ == "__main__":
    common.run(main)
