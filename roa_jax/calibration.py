"""Calibration of the lost device reconstruction against the paper's claims (issue 10).

The paper's Table 1 (device parameters) and the exact scaling of its write noise (Eq. 7) are
lost (MODEL.md 1). A reconstruction is a noise law (device.NOISE_LAWS), a scale factor on its
standard deviation and a granularity (how many times finer the pulses are than the `paper`
preset's). ROA pre-trains in software, so the device enters only at evaluation: the
meta-trained networks of one task are evaluated once for every reconstruction (one sweep per
part, the reconstructions on the grid's device axis), on VALIDATION classes only: rho is chosen
on one set of validation tasks and the methods are scored on another (comparison.evaluate with
the validation classes as both of its splits, different task keys). Each reconstruction is
then scored by the claims module. Calibrate on Omniglot 5-way 1-shot only: the other tasks
are the held-out test of the chosen reconstruction.

Stage 1 evaluates the 1-step models (ROA, ROA-WC) and the offline scheme for every
reconstruction; stage 2 adds the 5-step model for the `top` reconstructions of stage 1, since
five noisy writes cost about 3.5x one and only two claims need them.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from roa_jax import claims, comparison, device, errors, tasks  # noqa: E402
from roa_jax import config as config_lib  # noqa: E402
from roa_jax.results import (  # noqa: E402
    FIVE_STEP,
    FIVE_STEP_MODEL,
    OFFLINE,
    ROA,
    ROA_FLR,
    ROA_MODEL,
    ROA_WC,
    ROA_WC_MODEL,
    Results,
)

TASK = tasks.find("omniglot", n_way=5)  # calibrated on; the other tasks test it


class Reconstruction(NamedTuple):
    """One reading of the lost device table and noise law."""

    law: str  # one of device.NOISE_LAWS
    scale: float  # factor on the law's standard deviation
    granularity: float  # pulses across the range, relative to the base preset

    @property
    def label(self) -> str:
        return f"{self.law} x{self.scale:g}, {self.granularity:g}x finer"

    def params(self, base: device.DeviceParams) -> device.DeviceParams:
        return device.with_granularity(
            device.with_noise(base, self.law, self.scale), self.granularity
        )


# The default grid [chosen]: scales that span from the literal reading down to noise that
# hardly matters at sigma_w = 3 for each law's units (BUILD_NOTES.md, "Calibration").
DEFAULT_SCALES = {
    "sqrt": (1.0, 0.1, 0.03, 0.01),
    "linear": (1.0, 0.3, 0.1),
    "per_pulse": (1.0, 0.3, 0.1),
    "range": (0.01, 0.003, 0.001),
}
DEFAULT_GRANULARITIES = (1.0, 3.0, 10.0)


def make_grid(scales: dict = DEFAULT_SCALES, granularities=DEFAULT_GRANULARITIES):
    """Every law x its scales x granularity, the literal reading (sqrt x1, 1x) first."""
    grid = [
        Reconstruction(law, float(s), float(g))
        for g in granularities
        for law, law_scales in scales.items()
        for s in law_scales
    ]
    literal = Reconstruction("sqrt", 1.0, 1.0)
    return sorted(grid, key=lambda r: r != literal)


def check(recons: list[Reconstruction]) -> None:
    """Raises a UserError naming a bad law, scale or granularity."""
    if not recons:
        raise errors.ConfigError("the reconstruction grid is empty.")
    for r in recons:
        device.with_granularity(device.with_noise(device.paper(), r.law, r.scale), r.granularity)


def calibrate(
    models_: dict,
    val_images,
    norm,
    recons: list[Reconstruction],
    proto: config_lib.Protocol,
    out_dir,
    base: device.DeviceParams,
    top: int = 6,
    rescore: bool = False,
) -> list[dict]:
    """Scores every reconstruction with the claims; returns one record per reconstruction.

    Args:
      models_: {'roa', 'roa_wc'[, 'five_step']: (cfg, meta)} meta-trained on Omniglot 5-way.
      val_images: the validation classes (both rho search and scoring draw from them).
      norm: per-channel (mean, std).
      recons: the reconstructions.
      proto: sigmas, rhos, tasks (val_tasks for the rho search, test_tasks for scoring, one
        repeat each: seeds is used as given) and offline steps.
      out_dir: parts are saved (and reused on a rerun) under out_dir/stage1, /stage2.
      base: the device the granularity refers to (the `paper` preset).
      top: reconstructions of stage 1 that stage 2 evaluates with the 5-step model.
      rescore: evaluate nothing: score the parts an earlier run saved in out_dir again (after
        a change of the claims); stage 2 keeps the reconstructions that run chose for it.

    Returns:
      Records {'reconstruction', 'verdicts', 'holds', 'measured', 'margin', 'results'},
      best first (most claims holding, then the larger summed margin).
    """
    splits = {"val": val_images, "test": val_images}
    devices = {r.label: r.params(base) for r in recons}
    one_step = {m: models_[m] for m in (ROA_MODEL, ROA_WC_MODEL) if m in models_}
    stage1 = comparison.evaluate(
        one_step,
        splits,
        norm,
        proto,
        pathlib.Path(out_dir, "stage1"),
        "calibration",
        devices=devices,
        saved_only=rescore,
    )
    records = sorted(
        (_record(r, comparison.select(stage1, i)) for i, r in enumerate(recons)), key=_rank
    )
    if FIVE_STEP_MODEL not in models_:
        return records
    records, chosen = _stage2_choice(records, out_dir, top, rescore)
    if not chosen:
        return records
    stage2 = comparison.evaluate(
        {FIVE_STEP_MODEL: models_[FIVE_STEP_MODEL]},
        splits,
        norm,
        proto._replace(offline_steps=0),
        pathlib.Path(out_dir, "stage2"),
        "calibration",
        devices={r["reconstruction"].label: devices[r["reconstruction"].label] for r in chosen},
        saved_only=rescore,
    )
    for i, record in enumerate(chosen):
        extra = comparison.select(stage2, i) if len(chosen) > 1 else stage2
        records[i] = _record(record["reconstruction"], comparison.merge(record["results"], extra))
    return sorted(records, key=_rank)


def _stage2_choice(records, out_dir, top, rescore) -> tuple[list[dict], list[dict]]:
    """(records, the first of them that stage 2 evaluates with the 5-step model).

    The `top` best of stage 1; on a rescore, those the earlier run chose (its saved stage-2
    part names their devices), moved to the front.
    """
    saved_stage2 = pathlib.Path(out_dir, "stage2", "parts", f"{FIVE_STEP_MODEL}_val.json")
    if rescore and saved_stage2.exists():
        by_label = {r["reconstruction"].label: r for r in records}
        chosen = [by_label[label] for label in comparison.saved_devices(saved_stage2)]
        return chosen + [r for r in records if all(r is not c for c in chosen)], chosen
    if rescore or top <= 0:
        return records, []
    return records, records[:top]


def _record(recon: Reconstruction, results: Results) -> dict:
    """The reconstruction's verdicts, scored on the claims the paper states (the inferred ones
    are reported beside, never weighed)."""
    verdicts = claims.evaluate(results, TASK)
    holds, measured = claims.score(verdicts, (claims.STATED,))
    margin = sum(
        v.margin
        for v in verdicts
        if v.source == claims.STATED and v.margin is not None and math.isfinite(v.margin)
    )
    return dict(
        reconstruction=recon,
        verdicts=verdicts,
        holds=holds,
        measured=measured,
        inferred=claims.score(verdicts, (claims.INFERRED,)),
        margin=margin,
        results=results,
    )


def _rank(record):
    return (-record["holds"], -record["margin"])


def write(
    records: list[dict], out_dir, command: str = "", earlier: list[dict] | None = None
) -> list[pathlib.Path]:
    """calibration.csv, calibration.md (claims by reconstruction), calibration.json,
    calibration.png (heatmap of the claims, accuracy vs noise of the best few), adopted.md
    (`choices`, with the `earlier` calibration's records) and summary.md (`readme_section`) in
    `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "calibration.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["law", "scale", "granularity", "method", "sigma_w", "rho", "accuracy"])
        for r in records:
            rec = r["reconstruction"]
            for row in r["results"].methods:
                writer.writerow(
                    [
                        rec.law,
                        rec.scale,
                        rec.granularity,
                        row["method"],
                        row["sigma_w"],
                        row["rho"],
                        f"{row['accuracy']:.4f}",
                    ]
                )
    (out / "calibration.md").write_text(to_markdown(records, command))
    summary = [
        dict(
            **r["reconstruction"]._asdict(),
            holds=r["holds"],
            measured=r["measured"],
            inferred_holds=r["inferred"][0],
            inferred_measured=r["inferred"][1],
            margin=r["margin"],
            sources={v.claim: v.source for v in r["verdicts"]},
            verdicts={v.claim: v.verdict for v in r["verdicts"]},
            ours={v.claim: v.ours for v in r["verdicts"]},
            margins={v.claim: claims.finite_margin(v) for v in r["verdicts"]},
        )
        for r in records
    ]
    (out / "calibration.json").write_text(json.dumps(summary, indent=1))
    _figure(records, out / "calibration.png")
    (out / "adopted.md").write_text(choices(records, earlier))
    (out / "summary.md").write_text(readme_section(records, earlier, command))
    names = ("calibration.csv", "calibration.md", "calibration.json", "calibration.png")
    return [out / n for n in (*names, "adopted.md", "summary.md")]


_MARK = {"holds": "✓", "fails": "✗", "not measured": "–"}


def adopted() -> Reconstruction:
    """The reconstruction the `calibrated` preset is (device.CALIBRATED)."""
    return Reconstruction(**device.CALIBRATED)


def choices(records: list[dict], earlier: list[dict] | None = None) -> str:
    """Markdown: per claim, the earlier calibration's choice against this one's, each judged
    where it was chosen and here, and where the adopted preset (device.CALIBRATED) ranks.

    Args:
      records: this calibration's records, best first (`calibrate`).
      earlier: the records (calibration.json, best first) of an earlier calibration, e.g. the
        one on less-trained networks; None: this calibration's best and the adopted preset.
    """
    best = records[0]["reconstruction"]
    before = (
        Reconstruction(*(earlier[0][k] for k in ("law", "scale", "granularity")))
        if earlier
        else adopted()
    )
    here = {r["reconstruction"]: r for r in records}
    there = {
        Reconstruction(e["law"], e["scale"], e["granularity"]): e["verdicts"] for e in earlier or []
    }

    def rank(recon):
        if recon not in here:
            return "not in this grid"
        r = here[recon]
        return (
            f"#{records.index(r) + 1} of {len(records)}, {r['holds']}/{r['measured']} "
            f"(summed margin {r['margin']:+.1f} pp)"
        )

    mine = adopted()
    lines = [
        f"The {'earlier calibration' if earlier else 'adopted preset'}'s choice "
        f"({before.label}) against this calibration's ({best.label}), claim by claim (✓ holds, "
        "✗ fails, – not measured or not in that grid; stated claims score, inferred ones are "
        f"shown). Here, stated claims: {best.label} {rank(best)}; {before.label} "
        f"{rank(before)}. The adopted preset (`calibrated`) is {mine.label}: {rank(mine)}.",
        "",
    ]
    head = ["claim", "source"]
    for recon in dict.fromkeys((before, best)):
        if earlier:
            head.append(f"{recon.label}, earlier (rules then)")
        head.append(f"{recon.label}, here")
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for i, claim in enumerate(v.claim for v in records[0]["verdicts"]):
        cells = [f"`{claim}`", records[0]["verdicts"][i].source]
        for recon in dict.fromkeys((before, best)):
            if earlier:
                cells.append(_MARK[there.get(recon, {}).get(claim, "not measured")])
            cells.append(_MARK[here[recon]["verdicts"][i].verdict] if recon in here else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_section(records: list[dict], earlier=None, command: str = "", best: int = 6) -> str:
    """The README's calibration section: `choices`, then the `best` first rows of the ranking."""
    rows = to_markdown(records[:best], command)
    first = f"The first {best} of {len(records)}, from calibration.md."
    return f"{choices(records, earlier)}\n{first}\n\n{rows}"


def to_markdown(records: list[dict], command: str = "") -> str:
    """Claims (columns) by reconstruction (rows, best first), with the score."""
    ids = [
        v.claim + (" (inferred)" if v.source != claims.STATED else "")
        for v in records[0]["verdicts"]
    ]
    lines = [
        "Calibration on Omniglot 5-way 1-shot validation tasks: which of the paper's claims "
        "hold under each reconstruction of the lost device table and noise law "
        "(✓ holds, ✗ fails, – not measured; best first). Ranked by the claims the paper states "
        "(stated holds), then their summed margin; an inferred claim is shown, not weighed."
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += ["", "| # | law | scale | granularity | " + " | ".join(ids) + " | stated holds |"]
    lines.append("|---" * (len(ids) + 5) + "|")
    for i, r in enumerate(records, 1):
        rec = r["reconstruction"]
        marks = " | ".join(_MARK[v.verdict] for v in r["verdicts"])
        lines.append(
            f"| {i} | {rec.law} | {rec.scale:g} | {rec.granularity:g}x | {marks} | "
            f"{r['holds']}/{r['measured']} |"
        )
    return "\n".join(lines) + "\n"


def _figure(records, path, best: int = 3):
    ids = [v.claim for v in records[0]["verdicts"]]
    value = {"holds": 1.0, "fails": 0.0, "not measured": np.nan}
    grid = np.array([[value[v.verdict] for v in r["verdicts"]] for r in records])
    literal = [
        i for i, r in enumerate(records) if r["reconstruction"] == Reconstruction("sqrt", 1.0, 1.0)
    ]
    shown = list(range(min(best, len(records)))) + [i for i in literal if i >= best]
    fig = plt.figure(figsize=(15, max(6.5, 0.28 * len(records) + 3)))
    heat = fig.add_axes([0.2, 0.3, 0.3, 0.62])
    heat.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    heat.set_xticks(range(len(ids)), ids, rotation=60, ha="right", fontsize=7)
    heat.set_yticks(
        range(len(records)),
        [f"{r['reconstruction'].label} ({r['holds']}/{r['measured']})" for r in records],
        fontsize=7,
    )
    heat.set_title("claims holding (green), failing (red), not measured (white)", fontsize=9)
    for k, i in enumerate(shown[:4]):
        ax = fig.add_axes([0.6 + 0.2 * (k % 2), 0.58 - 0.46 * (k // 2), 0.17, 0.34])
        results = records[i]["results"]
        for method in (ROA, ROA_FLR, FIVE_STEP, ROA_WC, OFFLINE):
            rows = sorted(results.rows(method), key=lambda r: r["sigma_w"])
            if rows:
                ax.plot(
                    [r["sigma_w"] for r in rows],
                    [100 * r["accuracy"] for r in rows],
                    marker="o",
                    ms=3,
                    label=method,
                )
        ax.axhline(100 * results.chance, color="grey", ls=":")
        origin = results.origin.get(ROA_MODEL)
        if origin:
            ax.axhline(100 * origin["accuracy"], color="black", ls="--", lw=1)
        ax.set_ylim(0, 100)
        ax.set_title(f"#{i + 1} {records[i]['reconstruction'].label}", fontsize=8)
        ax.set_xlabel(r"$\sigma_w$", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6)
    fig.savefig(path, dpi=110)
    plt.close(fig)
