"""Characterizes a device model: pulse response (Fig. 2B), write noise (Fig. 2C), optional fit.

  .venv/bin/python experiments/characterize_device.py --out_dir=results/characterize \\
      --fit=/work/shared/data/devices/crosssim_example_setreset.csv \\
      --save_fitted=results/characterize/crosssim_fitted.json

writes into --out_dir (about 10 s on 2 CPU cores):
  pulse_response.csv/.png  G vs pulse number, --num_pulses SET then --num_pulses RESET pulses
                           from G_min (closed form of Eq. 1), for --device and every preset;
  write_noise.csv/.png     spread of the written conductance vs sigma_w for +1, +5 and -5
                           nominal pulses from mid range, measured over --num_devices devices,
                           beside Eq. 7 (and Eq. 7 followed by the clip to [G_min, G_max]);
  summary.json             parameters, G range, pulse rates, pulses to 95 %, nominal steps;
  fit.csv/.png             with --fit: measured vs fitted reads (relative RMS about 4.9 % of the
                           range for the CrossSim file: its SET steps grow, which Eq. 1 cannot do).
A saved fit is used with --device=results/characterize/crosssim_fitted.json.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags, logging

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from roa_jax import device, fitting  # noqa: E402

_DEVICE = flags.DEFINE_string(
    "device", "paper", f"Device preset ({', '.join(device.PRESETS)}) or a .json params file."
)
_OUT_DIR = flags.DEFINE_string("out_dir", "results/characterize", "Folder for the outputs.")
_NUM_PULSES = flags.DEFINE_integer(
    "num_pulses", 60, "Pulses per polarity in the pulse-response curve, in [1, 100000]."
)
_SIGMA_W = flags.DEFINE_list(
    "sigma_w", ["0", "0.25", "0.5", "1", "2", "3"], "Write-noise levels (Eq. 7), each >= 0."
)
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", 10000, "Devices written per noise level and update, in [2, 1000000]."
)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed (>= 0) of the write noise.")
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

# Nominal-step updates written in the noise sweep (pulse counts, from w = 0.5).
_NOISE_PULSES = (1, 5, -5)


def _int_in(flag, low, high):
    if not low <= flag.value <= high:
        raise app.UsageError(f"--{flag.name}={flag.value} must be in [{low}, {high}].")
    return flag.value


def _parse_flags():
    """Validates every flag; returns (params, sigma_ws, curves or None). Raises UsageError."""
    _int_in(_NUM_PULSES, 1, 100_000)
    _int_in(_NUM_DEVICES, 2, 1_000_000)
    _int_in(_SEED, 0, 2**31 - 1)
    _int_in(_FIT_STEPS, 1, 100_000)
    try:
        sigma_ws = [float(s) for s in _SIGMA_W.value]
        device.validate_sigma_w(sigma_ws)
    except ValueError:
        sigma_ws = []
    if not sigma_ws:
        raise app.UsageError(
            f"--sigma_w={','.join(_SIGMA_W.value)}: give a non-empty comma list of finite "
            "numbers >= 0 (the dimensionless write-noise level of Eq. 7)."
        )
    if not _OUT_DIR.value:
        raise app.UsageError("--out_dir must not be empty.")
    try:
        params = device.validate(device.preset(_DEVICE.value))
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(f"--device={_DEVICE.value}: {e}") from e
    curves = None
    if _FIT.value:
        g_range = tuple(float(g) for g in device.conductance_range(params))
        try:
            curves = fitting.load_curves(_FIT.value, norm_range=g_range)
        except (ValueError, FileNotFoundError) as e:
            raise app.UsageError(f"--fit={_FIT.value}: {e}") from e
    if _SAVE_FITTED.value and not _FIT.value:
        raise app.UsageError(f"--save_fitted={_SAVE_FITTED.value} needs --fit.")
    if _SAVE_FITTED.value and not _SAVE_FITTED.value.endswith(".json"):
        raise app.UsageError(f"--save_fitted={_SAVE_FITTED.value} must end in .json.")
    return params, sigma_ws, curves


def _label(name):
    return os.path.basename(name) if name.endswith(".json") else name


# ----------------------------------------------------------------------------------------------
# Measurements.


def pulse_response_curve(params, num_pulses):
    """(pulse number, w) for num_pulses SET pulses from w = 0, then num_pulses RESET pulses."""
    k = jnp.arange(num_pulses + 1, dtype=jnp.float32)
    up = device.pulse_response(0.0, k, params)
    down = device.pulse_response(up[-1], -k[1:], params)
    return np.arange(2 * num_pulses + 1), np.concatenate([up, down])


def pulses_to_reach(params, w_start, w_target):
    """Fewest pulses taking w_start to beyond w_target (closed form, bisection); None if > 2^40."""
    sign = 1.0 if w_target > w_start else -1.0

    def reached(n):
        w = float(device.pulse_response(w_start, sign * n, params))
        return w >= w_target if sign > 0 else w <= w_target

    low, high = 0, 1
    while not reached(high):
        low, high = high, 2 * high
        if high > 2**40:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if reached(mid) else (mid, high)
    return high


def _censored_normal_std(mean, sigma, low, high):
    """Std of clip(N(mean, sigma^2), low, high), in the units of the arguments."""
    if sigma == 0:
        return 0.0
    a, b = (low - mean) / sigma, (high - mean) / sigma
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    inside = cdf(b) - cdf(a)
    m1 = a * cdf(a) + b * (1 - cdf(b)) + pdf(a) - pdf(b)
    m2 = a * a * cdf(a) + b * b * (1 - cdf(b)) + inside + a * pdf(a) - b * pdf(b)
    return sigma * math.sqrt(max(m2 - m1 * m1, 0.0))


def write_noise_sweep(key, params, sigma_ws, num_devices, pulses=_NOISE_PULSES):
    """Writes each nominal update into num_devices mid-range devices at every sigma_w.

    One jitted write, vmapped over sigma_w (independent keys). Returns a list of dict rows.
    """
    g_min, g_max = (float(g) for g in device.conductance_range(params))
    g_mid = float(device.conductance(0.5, params))
    step_up, step_down = device.nominal_steps(params)
    wanted = jnp.array([n * (step_up if n > 0 else step_down) for n in pulses])
    g = jnp.full((len(pulses), num_devices), g_mid, jnp.float32)
    dg = jnp.broadcast_to(wanted[:, None], g.shape)
    write = lambda k, s: device.write(k, g, dg, params, s)
    keys = jax.random.split(key, len(sigma_ws))
    g_new, n = jax.jit(jax.vmap(write))(keys, jnp.asarray(sigma_ws, jnp.float32))
    if not np.all(np.asarray(n) == np.array(pulses, np.float32)[None, :, None]):
        raise RuntimeError(f"Pulse counts differ from the nominal updates {pulses}.")
    g_new = np.asarray(g_new, np.float64)
    rows = []
    for i, sigma_w in enumerate(sigma_ws):
        for j, num in enumerate(pulses):
            w_end = float(device.pulse_response(0.5, float(num), params))
            dg_actual = (w_end - 0.5) * (g_max - g_min)
            eq7 = float(device.write_noise_std(dg_actual, params, sigma_w))
            clipped = np.mean((g_new[i, j] <= g_min) | (g_new[i, j] >= g_max))
            rows.append(
                dict(
                    sigma_w=sigma_w,
                    pulses=num,
                    dG_actual_uS=dg_actual * 1e6,
                    mean_G_new_uS=np.mean(g_new[i, j]) * 1e6,
                    std_measured_uS=np.std(g_new[i, j]) * 1e6,
                    std_eq7_uS=eq7 * 1e6,
                    std_eq7_clipped_uS=_censored_normal_std(g_mid + dg_actual, eq7, g_min, g_max)
                    * 1e6,
                    clipped_fraction=float(clipped),
                )
            )
    return rows


def device_summary(params):
    """The figures of merit of one device, JSON-ready."""
    g_min, g_max = (float(g) for g in device.conductance_range(params))
    a_plus, a_minus = (float(a) for a in device.pulse_rates(params))
    step_up, step_down = (float(s) for s in device.nominal_steps(params))
    return dict(
        params={k: float(v) for k, v in params._asdict().items()},
        G_min_uS=g_min * 1e6,
        G_max_uS=g_max * 1e6,
        a_plus=a_plus,
        a_minus=a_minus,
        pulses_0_to_0p95=pulses_to_reach(params, 0.0, 0.95),
        pulses_1_to_0p05=pulses_to_reach(params, 1.0, 0.05),
        nominal_step_up_uS=step_up * 1e6,
        nominal_step_down_uS=step_down * 1e6,
    )


# ----------------------------------------------------------------------------------------------
# Output.


def _write_csv(path, rows):
    keys = list(rows[0])
    with open(path, "w") as f:
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(f"{r[k]:.8g}" if isinstance(r[k], float) else str(r[k]) for k in keys))
            f.write("\n")


def _plot_pulse_response(path, label, params, curves, num_pulses):
    fig, (ax_g, ax_w) = plt.subplots(1, 2, figsize=(11, 4))
    g_min, g_max = (float(g) * 1e6 for g in device.conductance_range(params))
    k, w = curves[label]
    ax_g.plot(k, g_min + w * (g_max - g_min), "o-", ms=3, color="C0")
    ax_g.axvline(num_pulses, color="grey", lw=0.8, ls=":")
    ax_g.set(xlabel="pulse number", ylabel="G (uS)", title=f"{label}: SET then RESET from G_min")
    for i, (name, (k, w)) in enumerate(curves.items()):
        ax_w.plot(
            k,
            w,
            lw=2.5 if name == label else 1.2,
            alpha=1 if name == label else 0.6,
            color=f"C{i}",
            label=name,
        )
    ax_w.axvline(num_pulses, color="grey", lw=0.8, ls=":")
    ax_w.set(
        xlabel="pulse number",
        ylabel="state w = (G - G_min) / (G_max - G_min)",
        title="all presets",
        ylim=(-0.03, 1.03),
    )
    ax_w.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_write_noise(path, label, rows):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (num, marker) in enumerate(zip(_NOISE_PULSES, "osv", strict=False)):
        r = [row for row in rows if row["pulses"] == num]
        s = [row["sigma_w"] for row in r]
        column = lambda name, r=r: [row[name] for row in r]
        ax.plot(
            s,
            column("std_measured_uS"),
            marker,
            color=f"C{i}",
            mfc="none",
            ms=7,
            label=f"{num:+d} pulses, measured",
        )
        ax.plot(s, column("std_eq7_uS"), "--", color=f"C{i}", lw=1)
        ax.plot(s, column("std_eq7_clipped_uS"), "-", color=f"C{i}", lw=1, alpha=0.6)
    ax.plot([], [], "k--", lw=1, label="Eq. 7")
    ax.plot([], [], "k-", lw=1, alpha=0.6, label="Eq. 7, then clip to [G_min, G_max]")
    ax.set(
        xlabel="sigma_w",
        ylabel="std of written G (uS)",
        title=f"{label}: spread of one write from mid range",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_fit(path, curves, predicted, title):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, sign, name in zip(
        axes, (1, -1), ("SET (potentiation)", "RESET (depression)"), strict=True
    ):
        pick = curves.polarity == sign
        ax.plot(
            np.abs(curves.pulses[pick]),
            curves.conductance[pick] * 1e6,
            ".",
            ms=1.5,
            color="grey",
            alpha=0.4,
            label="measured (all ramps)",
        )
        for j, ramp in enumerate(np.unique(curves.ramp[pick])):
            r = pick & (curves.ramp == ramp)
            ax.plot(
                np.abs(curves.pulses[r]),
                predicted[r] * 1e6,
                "-",
                lw=0.7,
                color="C3",
                alpha=0.5,
                label="fitted (per ramp)" if j == 0 else None,
            )
        ax.set(xlabel="pulses into the ramp", title=name)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("G (uS)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pulse_response(path, label, params, num_pulses):
    """Fig. 2B for the device and, faintly, every preset: writes the CSV and PNG."""
    devices = {label: params} | {n: device.preset(n) for n in device.PRESETS if n != label}
    curves = {name: pulse_response_curve(p, num_pulses) for name, p in devices.items()}
    rows = []
    for name, (k, w) in curves.items():
        g_min, g_max = (float(g) for g in device.conductance_range(devices[name]))
        for ki, wi in zip(k, np.asarray(w, np.float64), strict=True):
            phase = "set" if ki <= num_pulses else "reset"
            g_us = (g_min + wi * (g_max - g_min)) * 1e6
            rows.append(dict(device=name, pulse=int(ki), phase=phase, w=float(wi), G_uS=g_us))
    _write_csv(path("pulse_response.csv"), rows)
    _plot_pulse_response(path("pulse_response.png"), label, params, curves, num_pulses)
    logging.info("pulse response: %d pulses per polarity, %d devices", num_pulses, len(curves))


def _write_noise(path, label, params, sigma_ws, num_devices, seed):
    """Fig. 2C: writes the CSV and PNG of the written-conductance spread vs sigma_w."""
    rows = write_noise_sweep(jax.random.PRNGKey(seed), params, sigma_ws, num_devices)
    _write_csv(path("write_noise.csv"), rows)
    _plot_write_noise(path("write_noise.png"), label, rows)
    for r in rows:
        logging.info(
            "sigma_w=%g %+d pulses: std %.4g uS measured, %.4g uS Eq. 7 (%.4g after the clip)",
            *(r[k] for k in ("sigma_w", "pulses", "std_measured_uS", "std_eq7_uS")),
            r["std_eq7_clipped_uS"],
        )


def _fit(path, measured, params, num_steps):
    """Fits `params` to the measured curves; writes fit.csv/.png; returns (summary, params)."""
    logging.info(
        "fitting %s: %d reads, %d ramps, %d adam steps",
        _FIT.value,
        len(measured.ramp),
        measured.ramp.max() + 1,
        num_steps,
    )
    result = fitting.fit(measured, params, num_steps=num_steps)
    fitted = device_summary(result.params)
    columns = (measured.cycle, measured.pulse_index, measured.polarity, measured.conductance)
    rows = [
        dict(
            cycle=int(c),
            pulse_index=int(i),
            polarity=int(p),
            measured_uS=float(m) * 1e6,
            fitted_uS=float(f) * 1e6,
        )
        for c, i, p, m, f in zip(*columns, result.predicted, strict=True)
    ]
    _write_csv(path("fit.csv"), rows)
    window = fitted["params"]["window"]
    title = (
        f"{os.path.basename(_FIT.value)}: RMS {result.rms * 1e6:.3g} uS = "
        f"{100 * result.rel_rms:.2f} % of the range; window {window:.3g}"
    )
    _plot_fit(path("fit.png"), measured, result.predicted, title)
    logging.info(
        "fit: RMS %.4g uS = %.2f %% of the measured range; G %.4g..%.4g uS, a+ %.4g, a- %.4g, "
        "window %.3g",
        result.rms * 1e6,
        100 * result.rel_rms,
        *(fitted[k] for k in ("G_min_uS", "G_max_uS", "a_plus", "a_minus")),
        window,
    )
    summary = dict(
        data=_FIT.value,
        num_reads=len(measured.ramp),
        num_ramps=int(measured.ramp.max() + 1),
        steps=num_steps,
        rms_uS=result.rms * 1e6,
        rel_rms=result.rel_rms,
        final_loss=float(result.losses[-1]),
        fitted=fitted,
    )
    return summary, result.params


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    params, sigma_ws, measured = _parse_flags()
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    path = lambda name: os.path.join(_OUT_DIR.value, name)
    label = _label(_DEVICE.value)
    logging.info("jax %s on %s; device %s", jax.__version__, jax.devices()[0], _DEVICE.value)

    _pulse_response(path, label, params, _NUM_PULSES.value)
    _write_noise(path, label, params, sigma_ws, _NUM_DEVICES.value, _SEED.value)
    summary = dict(
        device=_DEVICE.value,
        **device_summary(params),
        presets={n: device_summary(device.preset(n)) for n in device.PRESETS},
    )
    outputs = ["pulse_response.csv", "pulse_response.png", "write_noise.csv", "write_noise.png"]
    if measured is not None:
        summary["fit"], fitted = _fit(path, measured, params, _FIT_STEPS.value)
        outputs += ["fit.csv", "fit.png"]
        if _SAVE_FITTED.value:
            os.makedirs(os.path.dirname(os.path.abspath(_SAVE_FITTED.value)), exist_ok=True)
            device.save_params(_SAVE_FITTED.value, fitted)
            logging.info("fitted params: %s (use --device=%s)", *[_SAVE_FITTED.value] * 2)
    with open(path("summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    outputs.append("summary.json")
    for name in outputs:
        logging.info("wrote %s", path(name))


if __name__ == "__main__":
    app.run(main)
