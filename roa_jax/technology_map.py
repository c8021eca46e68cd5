"""The technology map: ROA's one write against 5-step, offline and origin on every device
technology, with what sets each device apart (issue 34; experiments/technology_map.py).

Each device is described by its single-pulse response, measured on its nominal device (no
variation, no noise) so that technologies of every model compare on one scale:

  levels        pulses across the weight range at the midpoint's up step (the open-loop write's
                resolution: finer means a small update is not rounded away);
  asymmetry     up step / down step at the midpoint (1: symmetric);
  nonlinearity  1 - up step at 3/4 of the range / up step at 1/4 (0: linear, 1: saturating);
  c2c           the cycle-to-cycle spread of one pulse's step (relative), and `write_noise` the
                apparent weight's noise after a write, in up steps (aihwkit's technologies).
"""

from __future__ import annotations

import csv
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from roa_jax import claims, comparison, crossbar, device, technologies
from roa_jax import results as results_lib


def _steps(params, fractions, up: bool):
    """One pulse's step, as a fraction of the weight range, at `fractions` of the range."""
    if isinstance(params, technologies.TechParams):
        spreads = [k for k in params._fields if k.endswith("_dtod") or k == "reference_std"]
        nominal = params._replace(**{k: jnp.float32(0) for k in spreads})
        h = technologies.noise_free(technologies.chip(nominal, (len(fractions),)))
        span = h.max_bound - h.min_bound
        w = h.min_bound + jnp.asarray(fractions) * span - h.reference
        after, _ = technologies.pulse_train(None, w, [1.0 if up else -1.0], h)
        return np.abs(np.asarray((after[0] - w) / span))
    w = jnp.asarray(fractions)
    return np.abs(np.asarray(device.pulse_response(w, 1.0 if up else -1.0, params) - w))


def describe(params) -> dict:
    """{levels, asymmetry, nonlinearity, c2c, write_noise} of a device (module docstring)."""
    up = _steps(params, [0.25, 0.5, 0.75], True)
    down = _steps(params, [0.5], False)
    out = {
        "levels": float(1.0 / up[1]),
        "asymmetry": float(up[1] / down[0]),
        "nonlinearity": float(1.0 - up[2] / up[0]),
        "c2c": 0.0,
        "write_noise": 0.0,
    }
    if isinstance(params, technologies.TechParams):
        _, g_half = crossbar.reference(params)
        out["c2c"] = float(params.dw_min_std)
        out["write_noise"] = float(params.write_noise_std * params.dw_min / (up[1] * 2 * g_half))
    return out


def rows(results: results_lib.Results, index: int, label: str, params) -> list[dict]:
    """One row per sigma_w for device `index` of a multi-device evaluation: its description and
    ROA's, 5-step's, offline's and origin's accuracy (%), with ROA - 5-step paired per task."""
    one = comparison.select(results, index) if len(results.devices) > 1 else results
    desc = describe(params)
    by = {m: {r["sigma_w"]: r for r in one.rows(m)} for m in results_lib.METHOD_NAMES}
    out = []
    for sigma in sorted(by[results_lib.ROA]):
        roa, five = by[results_lib.ROA][sigma], by[results_lib.FIVE_STEP].get(sigma)
        offline = by[results_lib.OFFLINE].get(sigma)
        row = {"device": label, **desc, "sigma_w": sigma, "rho": roa["rho"]}
        row["roa"], row["roa_ci"] = 100 * roa["accuracy"], 100 * roa["ci95"]
        if five is not None:
            row["five_step"], row["five_step_ci"] = 100 * five["accuracy"], 100 * five["ci95"]
            diff, half, _ = claims.paired_difference([roa], [five])
            row["roa_minus_five_step"], row["difference_ci"] = diff, half
        if offline is not None:
            row["offline"] = 100 * offline["accuracy"]
        origin = one.origin.get(results_lib.ROA_MODEL)
        row["origin"] = None if origin is None else 100 * origin["accuracy"]
        out.append(row)
    return out


def to_markdown(table: list[dict], command: str, chance: float) -> str:
    """The map as a markdown table, with the command that made it."""
    lines = [
        "# ROA on the device technologies",
        "",
        f"Command: `{command}`",
        "",
        "Test accuracy (%) after adaptation on each device, mean +- 95 % CI over the test "
        "tasks; rho tuned on validation per device and sigma_w; sigma_w adds Eq. 7's noise on "
        "top of the device's own (0: its own noise only). ROA - 5-step is paired per task. "
        f"Chance {100 * chance:.0f} %. Levels: pulses across the range at mid-range; "
        "asymmetry: up / down step; nonlinearity: 1 - step at 3/4 / step at 1/4; c2c: "
        "cycle-to-cycle spread of a step; write noise: in steps.",
        "",
        "| device | levels | asym. | nonlin. | c2c | write noise | sigma_w | ROA (rho) | "
        "5-step | ROA - 5-step | offline | origin |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        five = f"{r['five_step']:.1f} +- {r['five_step_ci']:.1f}" if "five_step" in r else "-"
        diff = (
            f"{r['roa_minus_five_step']:+.1f} +- {r['difference_ci']:.1f}"
            if "five_step" in r
            else "-"
        )
        offline = f"{r['offline']:.1f}" if r.get("offline") is not None else "-"
        origin = f"{r['origin']:.1f}" if r.get("origin") is not None else "-"
        lines.append(
            f"| {r['device']} | {r['levels']:.0f} | {r['asymmetry']:.2f} | "
            f"{r['nonlinearity']:.2f} | {r['c2c']:.2f} | {r['write_noise']:.1f} | "
            f"{r['sigma_w']:g} | {r['roa']:.1f} +- {r['roa_ci']:.1f} ({r['rho']:g}) | {five} | "
            f"{diff} | {offline} | {origin} |"
        )
    return "\n".join(lines) + "\n"


def figure(table: list[dict], path, chance: float) -> None:
    """Left: ROA and 5-step at each device's own noise (sigma_w = 0), devices sorted by ROA.
    Right: ROA's accuracy against the device's levels, a point per sigma_w, a device's points
    joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = sorted((r for r in table if r["sigma_w"] == 0.0), key=lambda r: r["roa"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.35 * len(own) + 2.5))
    y = np.arange(len(own))
    left.barh(
        y - 0.2,
        [r["roa"] for r in own],
        0.4,
        xerr=[r["roa_ci"] for r in own],
        label="ROA (one write)",
    )
    left.barh(
        y + 0.2,
        [r.get("five_step", np.nan) for r in own],
        0.4,
        xerr=[r.get("five_step_ci", 0.0) for r in own],
        label="5-step",
    )
    left.scatter(
        [r["origin"] if r["origin"] is not None else np.nan for r in own],
        y,
        marker="|",
        s=200,
        color="k",
        label="origin (exact weights)",
    )
    left.axvline(100 * chance, color="gray", ls=":", label="chance")
    left.set_yticks(y, [r["device"] for r in own])
    left.set_xlabel("test accuracy (%) at the device's own noise")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=4, fontsize=8)
    sigmas = sorted({r["sigma_w"] for r in table})
    for r in own:  # each device's accuracies over sigma_w, joined
        pts = [x["roa"] for x in table if x["device"] == r["device"]]
        right.plot([r["levels"]] * len(pts), pts, color="lightgray", zorder=0)
    for sigma in sigmas:
        pts = [r for r in table if r["sigma_w"] == sigma]
        right.scatter(
            [r["levels"] for r in pts],
            [r["roa"] for r in pts],
            label=f"sigma_w = {sigma:g}",
            alpha=0.8,
        )
    noisiest = [r for r in table if r["sigma_w"] == sigmas[-1]]
    for r, label_y in zip(noisiest, _label_heights(noisiest), strict=True):
        right.annotate(
            r["device"],
            (r["levels"], r["roa"]),
            xytext=(r["levels"] * 1.1, label_y),
            fontsize=7,
            va="center",
            arrowprops=dict(arrowstyle="-", color="gray", lw=0.5),
        )
    right.set_xscale("log")
    right.axhline(100 * chance, color="gray", ls=":")
    right.set_xlabel("levels: pulses across the weight range (mid-range step)")
    right.set_ylabel("ROA test accuracy (%)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label_heights(rows: list[dict], decades: float = 0.45, gap: float = 2.2) -> list[float]:
    """Heights for the devices' labels beside their points (right of them, on the log-levels
    axis): from the top down, each label moves down until no label placed before lies within
    `decades` of it across and `gap` points of accuracy up or down."""
    placed, heights = [], {}
    for i in sorted(range(len(rows)), key=lambda i: -rows[i]["roa"]):
        x, y = np.log10(rows[i]["levels"]), rows[i]["roa"]
        while any(abs(x - px) < decades and abs(y - py) < gap for px, py in placed):
            y -= gap / 2
        placed.append((x, y))
        heights[i] = y
    return [heights[i] for i in range(len(rows))]


def write(table: list[dict], out_dir, command: str, chance: float) -> list[pathlib.Path]:
    """technologies.md, .csv, .json and .png in `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"technologies.{ext}" for ext in ("md", "csv", "json", "png")]
    paths[0].write_text(to_markdown(table, command, chance))
    fields = list(dict.fromkeys(k for r in table for k in r))  # in order of first use
    with open(paths[1], "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(table)
    paths[2].write_text(json.dumps({"command": command, "rows": table}, indent=1))
    figure(table, paths[3], chance)
    return paths
