"""Why the ROA constraint adds little here (issue 32): where the weights sit, and a k x lambda
sweep scored on ROA - ROA-WC at high noise.

The constraint (Eq. 18, roa.constraint) penalizes crossbar weights beyond 1/k. It can only
change a network whose weights would otherwise sit beyond 1/k, and it can only help at high
noise if such weights cost accuracy there (near the device's ends the soft-bound steps shrink).
So the study measures (1) the share of each layer's |W| beyond 1/k and near the ends, for the
meta-trained ROA and ROA-WC networks and at initialization (He-normal, ours, and
xavier-uniform, MAML++'s), and (2) ROA - ROA-WC at high noise on validation tasks for ROA
networks meta-trained with every k and lambda of a grid, paired per task (claims.py).

Usage (experiments/constraint.py is the binary):
    cfg = constraint_study.config("cpu", k=8.0, lam=1.0)
    record = constraint_study.score(results)  # results: ROA (this k, lambda) + ROA-WC merged
    constraint_study.write(records, shares, out_dir, command)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from roa_jax import claims, models, roa, tasks  # noqa: E402
from roa_jax import config as config_lib  # noqa: E402
from roa_jax.results import ROA, ROA_WC, Results  # noqa: E402

TASK = tasks.find("omniglot", n_way=5)  # studied on, as the calibration; the others test it
KS = (2.0, 4.0, 8.0)
LAMBDAS = (0.01, 0.1, 1.0)
# The evaluation [chosen]: sigma_w 0 (the constraint should change nothing), 2 and 3 (high:
# > 2, claims.HIGH_NOISE_SIGMA); the cpu rhos; 100 validation tasks choose rho, 100 others
# (other keys) score; no offline baseline.
SIGMAS = (0.0, 2.0, 3.0)
PROTOCOL = dict(sigmas=SIGMAS, seeds=1, val_tasks=100, test_tasks=100, offline_steps=0)
INITIALIZERS = {
    "he_normal (ours)": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
    "xavier_uniform (MAML++)": nn.initializers.xavier_uniform(),
}


def name(k: float, lam: float) -> str:
    """The run folder of one setting: 'k4_lambda0.1'."""
    return f"k{k:g}_lambda{lam:g}"


def config(scale: str, k: float, lam: float) -> config_lib.Config:
    """The 5-way ROA network of `scale` with the constraint's k and lambda replaced."""
    cfg = config_lib.model_config(TASK, "roa", scale)
    return config_lib.validate(dataclasses.replace(cfg, constraint_k=k, constraint_lambda=lam))


def score(results: Results, k: float, lam: float) -> dict:
    """ROA - ROA-WC (pp, paired per task) at high noise and at sigma_w 0, with each side's
    accuracy and rho per level, from the merged results of one setting."""
    table = {m: {r["sigma_w"]: r for r in results.rows(m)} for m in (ROA, ROA_WC)}
    common = set(table[ROA]) & set(table[ROA_WC])
    high = claims.high_noise_levels(common)
    gain, ci, paired = claims.paired_difference(
        [table[ROA][s] for s in high], [table[ROA_WC][s] for s in high]
    )
    zero, zero_ci, _ = claims.paired_difference([table[ROA][0.0]], [table[ROA_WC][0.0]])
    levels = sorted(common)
    return dict(
        k=k,
        lam=lam,
        device=results.device_note,
        high_levels=high,
        gain_pp=gain,
        gain_ci95_pp=ci,
        paired=paired,
        no_noise_pp=zero,
        no_noise_ci95_pp=zero_ci,
        roa={f"{s:g}": 100 * table[ROA][s]["accuracy"] for s in levels},
        roa_wc={f"{s:g}": 100 * table[ROA_WC][s]["accuracy"] for s in levels},
        roa_rho={f"{s:g}": table[ROA][s]["rho"] for s in levels},
        roa_wc_rho={f"{s:g}": table[ROA_WC][s]["rho"] for s in levels},
    )


def init_shares(params: dict, constraint_k: float, seed: int = 0) -> dict:
    """{initializer: roa.weight_shares} of fresh kernels of `params`' shapes, per initializer."""
    out = {}
    crossbar = sorted(models.split(params)[models.CROSSBAR].items())
    for i, (label, init) in enumerate(INITIALIZERS.items()):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        fresh = {
            path: init(jax.random.fold_in(key, j), w.shape) for j, (path, w) in enumerate(crossbar)
        }
        out[label] = roa.weight_shares(models.merge(fresh), constraint_k)
    return out


def verdict(records: list[dict], threshold_pp: float = claims.CONSTRAINT_GAIN_PP) -> str:
    """One sentence: the best setting's gain against the paper's > 3 points."""
    best = max(records, key=lambda r: r["gain_pp"])
    where = f"k {best['k']:g}, lambda {best['lam']:g}"
    if best["gain_pp"] - max(threshold_pp, best["gain_ci95_pp"]) > 0:
        return (
            f"The constraint adds {best['gain_pp']:+.1f} pp (95 % CI {best['gain_ci95_pp']:.1f})"
            f" at high noise with {where}: more than the paper's {threshold_pp:g} points."
        )
    return (
        f"No setting adds more than {threshold_pp:g} points at high noise: the best, {where}, "
        f"adds {best['gain_pp']:+.1f} pp (95 % CI {best['gain_ci95_pp']:.1f})."
    )


def write(
    records: list[dict], shares: dict, out_dir, command: str = "", chance: float = 0.2
) -> list[pathlib.Path]:
    """sweep.csv, shares.csv, constraint.md, constraint.json and constraint.png in `out_dir`.

    Args:
      records: `score` of every setting.
      shares: {network label: roa.weight_shares} (trained networks and initializations).
      out_dir: the output folder.
      command: the command that made them, written at the top of constraint.md.
      chance: the task's chance accuracy (a fraction), drawn in the figure.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w", newline="") as f:
        fields = ["k", "lam", "gain_pp", "gain_ci95_pp", "no_noise_pp", "no_noise_ci95_pp"]
        writer = csv.writer(f)
        writer.writerow([*fields, "roa", "roa_wc", "roa_rho"])
        for r in records:
            writer.writerow(
                [f"{r[x]:.4g}" for x in fields]
                + [json.dumps(r[x]) for x in ("roa", "roa_wc", "roa_rho")]
            )
    with open(out / "shares.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["network", "layer", "beyond", "near_ends", "median", "p99", "size"])
        for net, layers in shares.items():
            for layer, s in layers.items():
                writer.writerow([net, layer, *(f"{s[x]:.4g}" for x in list(s)[:4]), s["size"]])
    (out / "constraint.json").write_text(
        json.dumps({"verdict": verdict(records), "sweep": records, "shares": shares}, indent=1)
    )
    (out / "constraint.md").write_text(to_markdown(records, shares, command))
    _figure(records, shares, out / "constraint.png", chance)
    return [out / n for n in ("sweep.csv", "shares.csv", "constraint.json", "constraint.md")] + [
        out / "constraint.png"
    ]


def to_markdown(records: list[dict], shares: dict, command: str = "") -> str:
    lines = ["# The ROA constraint: a k x lambda sweep and where the weights sit", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Device preset: {records[0]['device']}.", ""]
    lines += [f"**Verdict.** {verdict(records)}", ""]
    high = records[0]["high_levels"]
    lines += [
        f"ROA (k, lambda) - ROA-WC on validation tasks, paired per task: at high noise "
        f"(sigma_w {', '.join(f'{s:g}' for s in high)}) and at sigma_w 0 (pp, 95 % CI).",
        "",
        "| k | lambda | ROA - ROA-WC, high noise | at sigma_w 0 | ROA by sigma_w | rho |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["k"], r["lam"])):
        accs = ", ".join(f"{a:.1f}" for a in r["roa"].values())
        rhos = ", ".join(f"{x:g}" for x in r["roa_rho"].values())
        lines.append(
            f"| {r['k']:g} | {r['lam']:g} | {r['gain_pp']:+.1f} ± {r['gain_ci95_pp']:.1f} | "
            f"{r['no_noise_pp']:+.1f} ± {r['no_noise_ci95_pp']:.1f} | {accs} | {rhos} |"
        )
    wc = records[0]
    lines += [
        "",
        f"ROA-WC (k = 1) by sigma_w {', '.join(wc['roa_wc'])}: "
        + ", ".join(f"{a:.1f}" for a in wc["roa_wc"].values())
        + " % (rho "
        + ", ".join(f"{x:g}" for x in wc["roa_wc_rho"].values())
        + ").",
        "",
        "Where the crossbar weights sit: share of |W| beyond 1/k (k of the network; 1/4 for "
        f"ROA-WC and the initializations) and near the device's ends (|W| >= {roa.NEAR_ENDS:g}).",
        "",
        "| network | " + " | ".join(_layer_names(shares)) + " |",
        "|---" * (len(_layer_names(shares)) + 1) + "|",
    ]
    for net, layers in shares.items():
        cells = [
            f"{100 * s['beyond']:.1f} % / {100 * s['near_ends']:.1f} %" for s in layers.values()
        ]
        lines.append(f"| {net} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _layer_names(shares: dict) -> list[str]:
    return [layer.split("/")[0] for layer in next(iter(shares.values()))]


def _figure(records, shares, path, chance=0.2):
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(18, 4.8), width_ratios=(1, 1, 1.4))
    ks = sorted({r["k"] for r in records})
    lams = sorted({r["lam"] for r in records})
    grid = np.full((len(ks), len(lams)), np.nan)
    for r in records:
        grid[ks.index(r["k"]), lams.index(r["lam"])] = r["gain_pp"]
    bound = max(3.5, float(np.nanmax(np.abs(grid))))
    im = left.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
    for r in records:
        i, j = ks.index(r["k"]), lams.index(r["lam"])
        left.text(j, i, f"{r['gain_pp']:+.1f}\n±{r['gain_ci95_pp']:.1f}", ha="center", va="center")
    left.set_xticks(range(len(lams)), [f"{x:g}" for x in lams])
    left.set_yticks(range(len(ks)), [f"{x:g}" for x in ks])
    left.set_xlabel(r"$\lambda_c$")
    left.set_ylabel("k (constraint range 1/k)")
    high = ", ".join(f"{s:g}" for s in records[0]["high_levels"])
    left.set_title(f"ROA - ROA-WC at $\\sigma_w$ {high} (pp; paper: > 3)", fontsize=10)
    fig.colorbar(im, ax=left, shrink=0.8)
    for r in records:
        levels = [float(s) for s in r["roa"]]
        middle.plot(levels, list(r["roa"].values()), marker="o", ms=3, lw=0.8, alpha=0.7)
    wc = records[0]
    middle.plot(
        [float(s) for s in wc["roa_wc"]],
        list(wc["roa_wc"].values()),
        "k-o",
        lw=2.5,
        label="ROA-WC (k = 1)",
    )
    middle.axhline(100 * chance, color="grey", ls=":", label="chance")
    middle.set_xlabel(r"$\sigma_w$")
    middle.set_ylabel("validation accuracy (%)")
    middle.set_title("every (k, lambda) ROA (thin) and ROA-WC", fontsize=10)
    middle.set_ylim(0, 100)
    middle.legend(fontsize=7)
    layers = _layer_names(shares)
    width = 0.8 / len(shares)
    for i, (net, by_layer) in enumerate(shares.items()):
        x = np.arange(len(layers)) + (i - (len(shares) - 1) / 2) * width
        right.bar(x, [100 * s["beyond"] for s in by_layer.values()], width, label=net)
        right.scatter(
            x, [100 * s["near_ends"] for s in by_layer.values()], marker="x", color="black", s=12
        )
    right.set_xticks(range(len(layers)), layers)
    right.set_ylabel("% of |W| beyond 1/k (bars); near the ends (x)")
    right.set_title("where the crossbar weights sit", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
