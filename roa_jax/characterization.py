"""Device characterization: the pulse response (Fig. 2B), the write-noise spread (Fig. 2C) and
the fit of the device model to measured pulse-response curves (roa_jax/fitting.py).

Measurements are plain functions of `DeviceParams` (`pulse_response_curve`, `pulses_to_reach`,
`write_noise_sweep`, `device_summary`); `run` makes all of them for one device and writes
CSV, PNG and JSON files into a folder (experiments/characterize_device.py is its binary).

Equation numbers refer to shared/paper/MODEL.md, section 1. Conductances in the files are in
uS (columns ending in `_uS`); in the functions, in S.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import logging

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from roa_jax import device, errors, fitting  # noqa: E402
from roa_jax.data import paths as data_paths  # noqa: E402

# Updates written in the noise sweep, as nominal-step pulse counts from w = 0.5.
NOISE_PULSES = (1, 5, -5)
DEFAULT_SIGMA_WS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0)


# Measurements.


def pulse_response_curve(params: device.DeviceParams, num_pulses: int):
    """The Fig. 2B curve: `num_pulses` SET pulses from w = 0, then `num_pulses` RESET pulses.

    Args:
      params: scalar device parameters.
      num_pulses: pulses per polarity, >= 1.

    Returns:
      (k, w): pulse numbers 0..2 num_pulses (int) and the state after each (closed form of
      Eq. 1), both of length 2 num_pulses + 1.
    """
    k = jnp.arange(num_pulses + 1, dtype=jnp.float32)
    up = device.pulse_response(0.0, k, params)
    down = device.pulse_response(up[-1], -k[1:], params)
    return np.arange(2 * num_pulses + 1), np.concatenate([up, down])


def pulses_to_reach(params: device.DeviceParams, w_start: float, w_target: float) -> int | None:
    """Fewest identical pulses taking the state from `w_start` to `w_target` or beyond.

    The polarity is that of `w_target - w_start`; found by bisection on the closed form.

    Returns:
      The pulse count, or None if it exceeds 2^40 (a target the device never reaches).
    """
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


def censored_normal_std(mean: float, sigma: float, low: float, high: float) -> float:
    """Standard deviation of clip(N(mean, sigma^2), low, high), in the arguments' units."""
    if sigma == 0:
        return 0.0
    a, b = (low - mean) / sigma, (high - mean) / sigma
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    inside = cdf(b) - cdf(a)
    # First and second moments of the clipped standard normal.
    m1 = a * cdf(a) + b * (1 - cdf(b)) + pdf(a) - pdf(b)
    m2 = a * a * cdf(a) + b * b * (1 - cdf(b)) + inside + a * pdf(a) - b * pdf(b)
    return sigma * math.sqrt(max(m2 - m1 * m1, 0.0))


def noise_law_name(params: device.DeviceParams) -> str:
    """The name (in `device.NOISE_LAWS`) of the write-noise law of scalar `params`."""
    return device.NOISE_LAWS[int(round(float(params.noise_law)))]


def write_noise_sweep(
    key: jax.Array,
    params: device.DeviceParams,
    sigma_ws,
    num_devices: int,
    pulses: tuple[int, ...] = NOISE_PULSES,
) -> list[dict]:
    """The Fig. 2C measurement: the spread of one write into identical mid-range devices.

    Each update of `pulses` nominal steps (open loop, Eq. 5) is written into `num_devices`
    devices at w = 0.5, at every noise level, by one jitted `device.write` vmapped over sigma_w
    (independent keys). The measured spread is given beside the device's noise law
    (`device.noise_std`, Eq. 7 under `params.noise_law` and `noise_scale`), alone and followed
    by the clip to [G_min, G_max].

    Args:
      key: PRNG key of the write noise.
      params: scalar device parameters (any noise law).
      sigma_ws: write-noise levels, each finite and >= 0.
      num_devices: devices written per level and update, >= 2.
      pulses: signed nominal pulse counts of the updates; none 0.

    Returns:
      One dict per (sigma_w, update), sigma_w outermost: sigma_w, pulses, dG_actual_uS,
      mean_G_new_uS, std_measured_uS, std_eq7_uS (the law), std_eq7_clipped_uS (the law, then
      the clip) and clipped_fraction (share of devices at a bound).

    Raises:
      RuntimeError: a written pulse count differs from `pulses` (the nominal steps are wrong).
    """
    g_min, g_max = (float(g) for g in device.conductance_range(params))
    g_mid = float(device.conductance(0.5, params))
    g_new = _write_from_mid_range(key, params, sigma_ws, num_devices, pulses)
    rows = []
    for i, sigma_w in enumerate(sigma_ws):
        for j, num in enumerate(pulses):
            w_end = float(device.pulse_response(0.5, float(num), params))
            dg_actual = (w_end - 0.5) * (g_max - g_min)
            law = float(device.noise_std(dg_actual, float(num), params, sigma_w))
            clipped = np.mean((g_new[i, j] <= g_min) | (g_new[i, j] >= g_max))
            law_clipped = censored_normal_std(g_mid + dg_actual, law, g_min, g_max)
            rows.append(
                dict(
                    sigma_w=float(sigma_w),
                    pulses=num,
                    dG_actual_uS=dg_actual * 1e6,
                    mean_G_new_uS=float(np.mean(g_new[i, j])) * 1e6,
                    std_measured_uS=float(np.std(g_new[i, j])) * 1e6,
                    std_eq7_uS=law * 1e6,
                    std_eq7_clipped_uS=law_clipped * 1e6,
                    clipped_fraction=float(clipped),
                )
            )
    return rows


def _write_from_mid_range(key, params, sigma_ws, num_devices: int, pulses) -> np.ndarray:
    """One open-loop write (Eq. 5) of each update of `pulses` into `num_devices` devices at w = 0.5.

    One jitted `device.write` vmapped over sigma_ws, an independent key per level.

    Returns:
      The written conductances (S, float64), shape (len(sigma_ws), len(pulses), num_devices).

    Raises:
      RuntimeError: a written pulse count differs from `pulses` (the nominal steps are wrong).
    """
    step_up, step_down = device.nominal_steps(params)
    wanted = jnp.array([n * (step_up if n > 0 else step_down) for n in pulses])
    g_mid = float(device.conductance(0.5, params))
    g = jnp.full((len(pulses), num_devices), g_mid, jnp.float32)
    dg = jnp.broadcast_to(wanted[:, None], g.shape)
    write = lambda k, s: device.write(k, g, dg, params, s)
    keys = jax.random.split(key, len(sigma_ws))
    g_new, n = jax.jit(jax.vmap(write))(keys, jnp.asarray(sigma_ws, jnp.float32))
    if not np.all(np.asarray(n) == np.array(pulses, np.float32)[None, :, None]):
        raise RuntimeError(f"Pulse counts differ from the nominal updates {pulses}.")
    return np.asarray(g_new, np.float64)


def device_summary(params: device.DeviceParams) -> dict:
    """The figures of merit of scalar `params`, JSON-ready (conductances in uS).

    Returns:
      dict with params (every field as a float), noise_law (its name), G_min_uS, G_max_uS,
      a_plus, a_minus (Eq. 1 rates), pulses_0_to_0p95, pulses_1_to_0p05 and the nominal
      one-pulse steps at mid range (Eq. 5).
    """
    g_min, g_max = (float(g) for g in device.conductance_range(params))
    a_plus, a_minus = (float(a) for a in device.pulse_rates(params))
    step_up, step_down = (float(s) for s in device.nominal_steps(params))
    return dict(
        params={k: float(v) for k, v in params._asdict().items()},
        noise_law=noise_law_name(params),
        G_min_uS=g_min * 1e6,
        G_max_uS=g_max * 1e6,
        a_plus=a_plus,
        a_minus=a_minus,
        pulses_0_to_0p95=pulses_to_reach(params, 0.0, 0.95),
        pulses_1_to_0p05=pulses_to_reach(params, 1.0, 0.05),
        nominal_step_up_uS=step_up * 1e6,
        nominal_step_down_uS=step_down * 1e6,
    )


# Files.


def write_csv(path: str, rows: list[dict]) -> None:
    """Writes `rows` (dicts with the same keys) as CSV; floats with 8 significant digits."""
    keys = list(rows[0])
    with open(path, "w") as f:
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(f"{r[k]:.8g}" if isinstance(r[k], float) else str(r[k]) for k in keys))
            f.write("\n")


def plot_pulse_response(path: str, label: str, params: device.DeviceParams, curves, num_pulses):
    """Fig. 2B: G of device `label` (left) and w of every curve in `curves` (right).

    Args:
      path: PNG to write.
      label: the key of `params`' curve in `curves`.
      params: the device's parameters (its G range).
      curves: {name: (k, w)} from `pulse_response_curve`.
      num_pulses: pulses per polarity (where SET turns to RESET).
    """
    fig, (ax_g, ax_w) = plt.subplots(1, 2, figsize=(11, 4))
    g_min, g_max = (float(g) * 1e6 for g in device.conductance_range(params))
    k, w = curves[label]
    ax_g.plot(k, g_min + w * (g_max - g_min), "o-", ms=3, color="C0")
    ax_g.axvline(num_pulses, color="grey", lw=0.8, ls=":")
    ax_g.set(xlabel="pulse number", ylabel="G (uS)", title=f"{label}: SET then RESET from G_min")
    for i, (name, (k, w)) in enumerate(curves.items()):
        mine = name == label
        ax_w.plot(
            k, w, lw=2.5 if mine else 1.2, alpha=1 if mine else 0.6, color=f"C{i}", label=name
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


def plot_write_noise(path: str, label: str, rows: list[dict], law: str, scale: float) -> None:
    """Fig. 2C: measured spread (markers) vs sigma_w beside the noise law `law` x `scale`.

    Args:
      path: PNG to write.
      label: device name for the title.
      rows: from `write_noise_sweep`.
      law: the noise law's name (device.NOISE_LAWS), for the title and legend.
      scale: its noise_scale.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    updates = list(dict.fromkeys(r["pulses"] for r in rows))
    for i, (num, marker) in enumerate(zip(updates, "osvd^<>", strict=False)):
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
    law_text = f"Eq. 7, {law} law" + (f" x {scale:g}" if scale != 1 else "")
    ax.plot([], [], "k--", lw=1, label=law_text)
    ax.plot([], [], "k-", lw=1, alpha=0.6, label=f"{law_text}, then clip to [G_min, G_max]")
    ax.set(
        xlabel="sigma_w",
        ylabel="std of written G (uS)",
        title=f"{label}: spread of one write from mid range\nwrite noise: {law_text}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fit(path: str, curves: fitting.PulseCurves, predicted, title: str) -> None:
    """Measured reads (grey) and the fitted model per ramp (red), SET left, RESET right."""
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


# The three parts of a characterization, each writing its files.


def pulse_response_files(out_dir: str, label: str, params, num_pulses: int) -> list[str]:
    """Fig. 2B for `params` and, faintly, every preset: pulse_response.csv and .png.

    Returns:
      The paths written.
    """
    devices = {label: params} | {n: device.preset(n) for n in device.PRESETS if n != label}
    curves = {name: pulse_response_curve(p, num_pulses) for name, p in devices.items()}
    rows = []
    for name, (k, w) in curves.items():
        g_min, g_max = (float(g) for g in device.conductance_range(devices[name]))
        for ki, wi in zip(k, np.asarray(w, np.float64), strict=True):
            phase = "set" if ki <= num_pulses else "reset"
            g_us = (g_min + wi * (g_max - g_min)) * 1e6
            rows.append(dict(device=name, pulse=int(ki), phase=phase, w=float(wi), G_uS=g_us))
    paths = [os.path.join(out_dir, f"pulse_response.{ext}") for ext in ("csv", "png")]
    write_csv(paths[0], rows)
    plot_pulse_response(paths[1], label, params, curves, num_pulses)
    logging.info("pulse response: %d pulses per polarity, %d devices", num_pulses, len(curves))
    return paths


def write_noise_files(
    out_dir: str, label: str, params, sigma_ws, num_devices: int, seed: int
) -> list[str]:
    """Fig. 2C (`write_noise_sweep` under the device's noise law): write_noise.csv and .png.

    Returns:
      The paths written.
    """
    rows = write_noise_sweep(jax.random.PRNGKey(seed), params, sigma_ws, num_devices)
    law, scale = noise_law_name(params), float(params.noise_scale)
    paths = [os.path.join(out_dir, f"write_noise.{ext}") for ext in ("csv", "png")]
    write_csv(paths[0], [dict(r, noise_law=law, noise_scale=scale) for r in rows])
    plot_write_noise(paths[1], label, rows, law, scale)
    for r in rows:
        logging.info(
            "sigma_w=%g %+d pulses: std %.4g uS measured, %.4g uS %s law (%.4g after the clip)",
            *(r[k] for k in ("sigma_w", "pulses", "std_measured_uS", "std_eq7_uS")),
            law,
            r["std_eq7_clipped_uS"],
        )
    return paths


def fit_files(
    out_dir: str,
    measured: fitting.PulseCurves,
    source: str,
    params,
    num_steps: int,
    save_fitted: str | None = None,
) -> tuple[dict, list[str]]:
    """Fits `params` to the `measured` curves (`fitting.fit`): fit.csv, fit.png, `save_fitted`.

    Args:
      out_dir: folder of the files.
      measured: the measured reads (`fitting.load_curves`).
      source: where they came from (a file name), for the title and the summary.
      params: the starting device; its fixed fields (and noise law) are kept.
      num_steps: adam steps of the fit.
      save_fitted: .json file for the fitted params (`device.save_params`); None: not saved.

    Returns:
      (summary, paths written); summary is JSON-ready.
    """
    num_reads, num_ramps = len(measured.ramp), int(measured.ramp.max() + 1)
    logging.info(
        "fitting %s: %d reads, %d ramps, %d adam steps", source, num_reads, num_ramps, num_steps
    )
    result = fitting.fit(measured, params, num_steps=num_steps)
    fitted = device_summary(result.params)
    paths = [os.path.join(out_dir, f"fit.{ext}") for ext in ("csv", "png")]
    write_csv(paths[0], _fit_rows(measured, result.predicted))
    window = fitted["params"]["window"]
    title = (
        f"{os.path.basename(source)}: RMS {result.rms * 1e6:.3g} uS = "
        f"{100 * result.rel_rms:.2f} % of the range; window {window:.3g}"
    )
    plot_fit(paths[1], measured, result.predicted, title)
    logging.info(
        "fit: RMS %.4g uS = %.2f %% of the measured range; G %.4g..%.4g uS, a+ %.4g, a- %.4g, "
        "window %.3g",
        result.rms * 1e6,
        100 * result.rel_rms,
        *(fitted[k] for k in ("G_min_uS", "G_max_uS", "a_plus", "a_minus")),
        window,
    )
    if save_fitted:
        os.makedirs(os.path.dirname(os.path.abspath(save_fitted)), exist_ok=True)
        device.save_params(save_fitted, result.params)
        logging.info("fitted params: %s (a device preset name)", save_fitted)
        paths.append(save_fitted)
    summary = dict(
        data=data_paths.shown(source),
        num_reads=num_reads,
        num_ramps=num_ramps,
        steps=num_steps,
        rms_uS=result.rms * 1e6,
        rel_rms=result.rel_rms,
        final_loss=float(result.losses[-1]),
        fitted=fitted,
    )
    return summary, paths


def _fit_rows(measured: fitting.PulseCurves, predicted) -> list[dict]:
    """The rows of fit.csv: each measured read beside the fitted model's, in uS."""
    columns = (measured.cycle, measured.pulse_index, measured.polarity, measured.conductance)
    return [
        dict(
            cycle=int(c),
            pulse_index=int(i),
            polarity=int(p),
            measured_uS=float(m) * 1e6,
            fitted_uS=float(f) * 1e6,
        )
        for c, i, p, m, f in zip(*columns, predicted, strict=True)
    ]


def run(
    out_dir: str,
    params: device.DeviceParams,
    name: str,
    *,
    num_pulses: int = 60,
    sigma_ws=DEFAULT_SIGMA_WS,
    num_devices: int = 10_000,
    seed: int = 0,
    measured: fitting.PulseCurves | None = None,
    measured_source: str = "measured",
    fit_steps: int = 400,
    save_fitted: str | None = None,
) -> dict:
    """Characterizes one device and writes every file into `out_dir`.

    Files: pulse_response.csv/.png (Fig. 2B), write_noise.csv/.png (Fig. 2C, under the
    device's noise law), summary.json (`device_summary` of the device and of every preset),
    and with `measured`, fit.csv/.png and the fit in the summary.

    Args:
      out_dir: output folder, created if missing.
      params: scalar device parameters, including the noise law (`device.with_noise`).
      name: the device's preset name or .json file (its basename labels the plots).
      num_pulses: pulses per polarity of the pulse-response curve, >= 1.
      sigma_ws: write-noise levels of the sweep, each finite and >= 0.
      num_devices: devices written per noise level and update, >= 2.
      seed: PRNG seed of the write noise.
      measured: measured curves to fit `params` to (`fitting.load_curves`); None: no fit.
      measured_source: where `measured` came from (a path), for the fit's title and summary.
      fit_steps: adam steps of the fit, >= 1.
      save_fitted: .json file for the fitted params (`device.save_params`); needs `measured`.

    Returns:
      The summary written to summary.json, with `outputs`, the paths written.

    Raises:
      UserError: an argument out of range (before any file is written).
    """
    counts = dict(
        num_pulses=(num_pulses, 1), num_devices=(num_devices, 2), fit_steps=(fit_steps, 1)
    )
    _check_run_args(params, sigma_ws, counts, measured, save_fitted)
    os.makedirs(out_dir, exist_ok=True)
    label = os.path.basename(name) if name.endswith(".json") else name

    outputs = pulse_response_files(out_dir, label, params, num_pulses)
    outputs += write_noise_files(out_dir, label, params, sigma_ws, num_devices, seed)
    summary = dict(
        device=name,
        **device_summary(params),
        presets={n: device_summary(device.preset(n)) for n in device.PRESETS},
    )
    if measured is not None:
        summary["fit"], paths = fit_files(
            out_dir, measured, measured_source, params, fit_steps, save_fitted
        )
        outputs += paths
    outputs.append(os.path.join(out_dir, "summary.json"))
    with open(outputs[-1], "w") as f:
        json.dump(summary, f, indent=2)
    for path in outputs:
        logging.info("wrote %s", path)
    return dict(summary, outputs=outputs)


def _check_run_args(params, sigma_ws, counts: dict, measured, save_fitted) -> None:
    """Raises ConfigError for an argument of `run` out of range.

    Args:
      params, sigma_ws, measured, save_fitted: as `run`'s.
      counts: {argument name: (value, lowest allowed)} of run's integer arguments.
    """
    device.validate(params)
    device.validate_sigma_w(sigma_ws)
    if not len(sigma_ws):
        raise errors.ConfigError("sigma_ws must not be empty.")
    for arg, (value, low) in counts.items():
        if value < low:
            raise errors.ConfigError(f"{arg}={value} must be >= {low}.")
    if save_fitted and measured is None:
        raise errors.ConfigError(f"save_fitted={save_fitted} needs measured curves to fit.")
