"""The study's files: CSV rows, the gradient check and the comparison as Markdown, the plots."""

from __future__ import annotations

import csv

import numpy as np

from roa_jax.codesign.diagnostics import Direction


def write_csv(path, rows: list[dict]) -> None:
    """Rows of dicts as a CSV (the union of their keys, in first-seen order)."""
    fields = list(dict.fromkeys(f for row in rows for f in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


def check_markdown(rows: list[dict], step: float) -> str:
    """The gradient check as a table: straight-through vs central differences per knob."""
    lines = [
        "Gradient check: d(query loss after ROA's one write)/d(knob), straight-through (ste) "
        f"vs central differences (fd, step {step:g} in knob units) of the exact write, with "
        "common random numbers; mean +- 95 % CI over tasks, and the paired difference "
        "(**bold**: its CI excludes 0, i.e. ste is biased there). Knobs: log a+, log a-, "
        "logit window, log rho.",
        "",
        "| device | sigma_w | knob | loss | ste | fd | ste - fd |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{r['diff']:+.3g} +- {r['diff_ci']:.2g}"
        if abs(r["diff"]) > r["diff_ci"]:
            diff = f"**{diff}**"
        lines.append(
            f"| {r['device']} | {r['sigma_w']:g} | {r['knob']} | {r['loss']:.3f} | "
            f"{r['ste']:+.3g} +- {r['ste_ci']:.2g} | {r['fd']:+.3g} +- {r['fd_ci']:.2g} | "
            f"{diff} |"
        )
    return "\n".join(lines) + "\n"


def comparison_markdown(results: dict) -> str:
    """The found devices against the preset on test tasks, and what changed."""
    rows = results["comparison"]
    tuned = "preset_tuned" in rows[0]
    pct = lambda r, name: f"{100 * r[name]:.1f} +- {100 * r[name + '_ci']:.1f}"
    gain = lambda r, name: f"{100 * r[name]:+.1f} +- {100 * r[name + '_ci']:.1f}"
    lines = [
        "Test accuracy (%) after ROA's one write: the preset at the rho ROA picks on "
        "validation, "
        + ("the preset with rho alone optimized, " if tuned else "")
        + "and the device (with rho) optimized at each sigma_w; mean +- 95 % CI over "
        f"{rows[0]['tasks']} test tasks (one set, common to every column), gains paired per "
        "task.",
        "",
        "| found at | evaluated at | preset (rho) | "
        + ("preset, rho tuned (rho) | " if tuned else "")
        + "found (rho) | gain |"
        + (" gain over rho-tuned |" if tuned else ""),
        "|---|---|---|---|---|" + ("---|---|" if tuned else ""),
    ]
    for r in rows:
        line = f"| {r['optimized_at']:g} | {r['sigma_w']:g} | "
        line += f"{pct(r, 'preset')} ({r['preset_rho']:g}) | "
        if tuned:
            line += f"{pct(r, 'preset_tuned')} ({r['preset_tuned_rho']:.2f}) | "
        line += f"{pct(r, 'found')} ({r['found_rho']:.2f}) | {gain(r, 'gain')} |"
        if tuned:
            line += f" {gain(r, 'gain_over_tuned')} |"
        lines.append(line)
    base = results["base"]
    lines += [
        "",
        "| device | rho | a+ | a- | a-/a+ | levels up / down | window |",
        "|---|---|---|---|---|---|---|",
        f"| preset | (val) | {base['a_plus']:.4f} | {base['a_minus']:.4f} | "
        f"{base['asymmetry']:.3f} | {base['levels_up']:.1f} / {base['levels_down']:.1f} | "
        f"{base['window']:.4f} |",
    ]
    for s, f in results["found"].items():
        lines.append(
            f"| found at sigma_w={float(s):g} | {f['rho']:.2f} | {f['a_plus']:.4f} | "
            f"{f['a_minus']:.4f} | {f['asymmetry']:.3f} | {f['levels_up']:.1f} / "
            f"{f['levels_down']:.1f} | {f['window']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot_sensitivity(rows: list[dict], dirs: list[Direction], path) -> None:
    """Accuracy (left) and loss with straight-through tangents (right) along each line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted({r["sigma_w"] for r in rows})
    fig, axes = plt.subplots(len(dirs), 2, figsize=(11, 2.6 * len(dirs)), squeeze=False)
    for i, d in enumerate(dirs):
        for s, color in zip(sigmas, plt.cm.viridis(np.linspace(0, 0.85, len(sigmas))), strict=True):
            line = sorted(
                (r for r in rows if r["direction"] == d.name and r["sigma_w"] == s),
                key=lambda r: r["offset"],
            )
            if not line:
                continue
            t = np.array([r["offset"] for r in line])
            acc = np.array([r["accuracy"] for r in line])
            loss = np.array([r["loss"] for r in line])
            axes[i, 0].plot(t, 100 * acc, "o-", color=color, label=f"sigma_w={s:g}")
            axes[i, 1].plot(t, loss, "o-", color=color)
            half = 0.15 * (t.max() - t.min())
            for tj, lj, r in zip(t, loss, line, strict=True):
                g = r["grad_ste"]
                axes[i, 1].plot(
                    [tj - half, tj + half],
                    [lj - g * half, lj + g * half],
                    "-",
                    color="crimson",
                    lw=1,
                )
            for ax in axes[i]:
                ax.axvline(0.0, color="gray", lw=0.5)
                ax.set_xticks(t, [f"{r['value']:.3g}" for r in line], fontsize=7)
        for ax in axes[i]:  # a flat line (the G range) at its scale, not float32 rounding's
            ax.ticklabel_format(axis="y", useOffset=False)
            low, high = ax.get_ylim()
            if high - low < 1e-3 * max(abs(low), abs(high)):
                mid = (low + high) / 2
                ax.set_ylim(mid - 0.05 * abs(mid), mid + 0.05 * abs(mid))
        axes[i, 0].set_ylabel(f"{d.name}\naccuracy (%)")
        axes[i, 1].set_ylabel("query loss")
        for ax in axes[i]:
            ax.set_xlabel(d.label, fontsize=8)
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].set_title("loss; red: straight-through slope at each point", fontsize=9)
    axes[0, 0].set_title("validation accuracy (exact write)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_optimization(history: list[dict], path) -> None:
    """Loss, accuracy and the device's levels, asymmetry, window and rho per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("loss", "query loss (batch)"),
        ("accuracy", "accuracy (batch)"),
        ("levels_up", "levels up"),
        ("levels_down", "levels down"),
        ("asymmetry", "a- / a+"),
        ("window", "window"),
        ("rho", "rho"),
    ]
    sigmas = sorted({r["sigma_w"] for r in history})
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3))
    for s, color in zip(sigmas, plt.cm.viridis(np.linspace(0, 0.85, len(sigmas))), strict=True):
        rows = [r for r in history if r["sigma_w"] == s]
        steps = [r["step"] for r in rows]
        for ax, (key, label) in zip(axes, panels, strict=True):
            y = np.array([r[key] for r in rows])
            if key in ("loss", "accuracy") and len(y) >= 5:  # and a 5-step running mean
                ax.plot(steps, y, color=color, alpha=0.25)
                y, steps_ = np.convolve(y, np.ones(5) / 5, mode="valid"), steps[2:-2]
            else:
                steps_ = steps
            ax.plot(steps_, y, color=color, label=f"sigma_w={s:g}")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
