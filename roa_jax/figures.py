"""The paper's Figures 3-6, Table 2 and an overview from a results.Results (comparison.evaluate)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from roa_jax import results as results_lib  # noqa: E402
from roa_jax import tasks  # noqa: E402
from roa_jax.results import (  # noqa: E402
    FIVE_STEP,
    FIVE_STEP_MODEL,
    OFFLINE,
    ROA,
    ROA_FLR,
    ROA_MODEL,
    ROA_WC,
    ROA_WC_FLR,
    ROA_WC_MODEL,
)

_ABLATIONS = (ROA, ROA_WC, ROA_FLR, ROA_WC_FLR)  # Figure 5


def _by_sigma(rows):
    """(sigma_w, accuracy, ci95) arrays of `rows`, in increasing sigma_w."""
    rows = sorted(rows, key=lambda r: r["sigma_w"])
    return tuple(np.array([r[k] for r in rows]) for k in ("sigma_w", "accuracy", "ci95"))


def _method(results, name):
    return results.rows(name)


def _references(ax, results):
    """Chance level and the ideal origin line of the ROA network."""
    ax.axhline(100 * results.chance, color="grey", ls=":", label="chance")
    origin = results.origin.get(ROA_MODEL)
    if origin:
        ax.axhline(100 * origin["accuracy"], color="black", ls="--", label="origin")
    _accuracy_axes(ax)


def _accuracy_axes(ax):
    ax.set_xlabel(r"write noise $\sigma_w$")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)


def _curves(ax, results, methods):
    for name, style in methods:
        rows = _method(results, name)
        if rows:
            s, acc, ci = _by_sigma(rows)
            ax.errorbar(s, 100 * acc, yerr=100 * ci, capsize=3, label=name, **style)
    _references(ax, results)
    ax.legend(fontsize=8)


def figure3(results, path):
    """(A) 1-step (ROA) vs 5-step online accuracy; (B) their best rho (chosen on val) vs noise."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    _curves(a, results, [(ROA, {"marker": "o"}), (FIVE_STEP, {"marker": "s"})])
    a.set_title(f"(A) {results.title}: 1-step vs 5-step")
    _best_rho(b, results)
    b.set_title("(B) best rho vs noise")
    return _save(fig, path)


def _best_rho(ax, results):
    for model, label, marker in ((ROA_MODEL, ROA, "o"), (FIVE_STEP_MODEL, FIVE_STEP, "s")):
        best = results.best_rho.get(model, {})
        if best:
            s = sorted(best)
            ax.plot(s, [best[x] for x in s], marker=marker, label=f"{label} (rho chosen on val)")
    ax.set_yscale("log", base=2)
    ax.set_xlabel(r"write noise $\sigma_w$")
    ax.set_ylabel(r"best relative learning rate $\rho$")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def figure4(results, path):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    _curves(ax, results, [(ROA, {"marker": "o"}), (OFFLINE, {"marker": "^"})])
    ax.set_title(f"{results.title}: offline (5-step, 1 write) vs ROA")
    return _save(fig, path)


def figure5(results, path):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    _curves(ax, results, [(m, {"marker": mk}) for m, mk in zip(_ABLATIONS, "osD^", strict=True)])
    ax.set_title(f"{results.title}: ablations")
    return _save(fig, path)


def figure6(results, path):
    """Heatmaps of test accuracy over noise x rho: (A) ROA, (B) ROA-WC, (C) 5-step."""
    panels = [(ROA_MODEL, ROA), (ROA_WC_MODEL, ROA_WC), (FIVE_STEP_MODEL, FIVE_STEP)]
    panels = [(m, t) for m, t in panels if results.part_rows(m, "test") is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    for ax, letter, (model, title) in zip(axes[0], "ABC", panels, strict=False):
        _heatmap(fig, ax, results.part_rows(model, "test"))
        ax.set_title(f"({letter}) {title}, {results.title}: test accuracy (%)", fontsize=9)
    return _save(fig, path)


def _heatmap(fig, ax, rows):
    sigmas = sorted({r["sigma_w"] for r in rows})
    rhos = sorted({r["rho"] for r in rows})
    acc = np.full((len(rhos), len(sigmas)), np.nan)
    for r in rows:
        acc[rhos.index(r["rho"]), sigmas.index(r["sigma_w"])] = 100 * r["accuracy"]
    image = ax.imshow(acc, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=100)
    for i in range(len(rhos)):
        for j in range(len(sigmas)):
            color = "white" if acc[i, j] < 60 else "black"
            ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(sigmas)), [f"{s:g}" for s in sigmas])
    ax.set_yticks(range(len(rhos)), [f"{r:g}" for r in rhos])
    ax.set_xlabel(r"write noise $\sigma_w$")
    ax.set_ylabel(r"relative learning rate $\rho$")
    fig.colorbar(image, ax=ax, label="accuracy (%)")


def overview(results, path):
    """Every method against noise in one panel, with chance and origin (the main job's figure)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "osD^vPx"
    methods = results_lib.METHOD_NAMES
    _curves(ax, results, [(m, {"marker": k}) for m, k in zip(methods, markers, strict=False)])
    ax.set_title(f"{results.title}: one-step ROA against the other schemes")
    return _save(fig, path)


def table2(results) -> str:
    """Markdown: methods x noise levels, mean +- 95 % CI (%), chance and origin noted."""
    sigmas = sorted({r["sigma_w"] for r in results.methods})
    lines = [
        f"Table 2 ({results.title}): test accuracy (%), mean of {results.seeds} repeats "
        f"+- 95 % CI over all tasks. Chance {100 * results.chance:.1f} %."
    ]
    if results.devices:
        lines[0] += f" Device preset {results.device_note}."
    row = results.origin.get(ROA_MODEL)
    if row:
        lines[0] += (
            f" Origin (ideal weights) {100 * row['accuracy']:.1f} +- {100 * row['ci95']:.1f}."
        )
    lines += ["", "| method | " + " | ".join(f"σw={s:g}" for s in sigmas) + " |"]
    lines.append("|---" * (len(sigmas) + 1) + "|")
    for method in results_lib.METHOD_NAMES:
        rows = {r["sigma_w"]: r for r in _method(results, method)}
        if not rows:
            continue
        cells = [_pm(rows[s]) if s in rows else "" for s in sigmas]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for model, label in ((ROA_MODEL, ROA), (FIVE_STEP_MODEL, FIVE_STEP)):
        best = results.best_rho.get(model)
        if best:
            rhos = [best.get(results_lib.sigma_key(s)) for s in sigmas]
            cells = " | ".join("" if rho is None else f"{rho:g}" for rho in rhos)
            lines.append(f"| {label}'s rho (val) | {cells} |")
    return "\n".join(lines) + "\n"


def _pm(record) -> str:
    """A results row or origin record as "mean ± 95 % CI" in %."""
    return f"{100 * record['accuracy']:.1f} ± {100 * record['ci95']:.1f}"


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return pathlib.Path(path)


def make_all(results, out_dir) -> list[pathlib.Path]:
    """Writes figure3-6.png, overview.png and table2.md to out_dir; returns their paths.

    A figure whose comparison was not evaluated is left out: Figure 3 (1-step vs 5-step)
    without a 5-step model, Figure 4 (offline vs ROA) without the offline baseline (the
    128-filter task has neither). Only process 0 writes; the others get [].
    """
    from roa_jax import distributed  # matplotlib first; distributed pulls in jax

    if not distributed.is_main():
        return []
    out = pathlib.Path(out_dir)
    paths = []
    if _method(results, FIVE_STEP):
        paths.append(figure3(results, out / "figure3.png"))
    if _method(results, OFFLINE):
        paths.append(figure4(results, out / "figure4.png"))
    paths.append(figure5(results, out / "figure5.png"))
    if results.part_rows(ROA_MODEL, "test") is not None:
        paths.append(figure6(results, out / "figure6.png"))
    paths.append(overview(results, out / "overview.png"))
    (out / "table2.md").write_text(table2(results))
    return [*paths, out / "table2.md"]


# The paper's multi-panel figures, assembled across tasks ({task: results}); each task's title
# and MAML++'s published accuracy are in tasks.TASKS.

_PAPER_META_STEPS = 100 * 500  # the paper's protocol: 100 epochs x 500 meta-steps
_LETTERS = "ABCDEFGH"


def _panels(by_task, names, rows, width=4.2, height=3.4):
    """A figure with `rows` rows and a column per task of `names` that has results."""
    shown = [t for t in names if t in by_task]
    columns = max(len(shown), 1)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    return fig, axes, shown


def paper_figure3(by_task: dict, path):
    """Figure 3: (A-D) 1-step vs 5-step per task, (E-H) their best rho vs noise."""
    fig, axes, shown = _panels(by_task, tasks.FIGURE3_TASKS, 2)
    for j, task in enumerate(shown):
        title = tasks.TASKS[task].title
        _curves(axes[0, j], by_task[task], [(ROA, {"marker": "o"}), (FIVE_STEP, {"marker": "s"})])
        axes[0, j].set_title(f"({_LETTERS[j]}) {title}", fontsize=9)
        _best_rho(axes[1, j], by_task[task])
        axes[1, j].set_title(f"({_LETTERS[j + len(shown)]}) best rho, {title}", fontsize=9)
    return _save(fig, path)


def paper_figure4(by_task: dict, path):
    """Figure 4: (A-D) offline (trained per task, one write) vs ROA per task."""
    fig, axes, shown = _panels(by_task, tasks.FIGURE3_TASKS, 1)
    for j, task in enumerate(shown):
        _curves(axes[0, j], by_task[task], [(ROA, {"marker": "o"}), (OFFLINE, {"marker": "^"})])
        axes[0, j].set_title(f"({_LETTERS[j]}) {tasks.TASKS[task].title}", fontsize=9)
    return _save(fig, path)


def paper_figure5(by_task: dict, path):
    """Figure 5: (A-E) ROA, ROA-WC, ROA-FLR and ROA-WC-FLR per task, D the 128-filter network."""
    fig, axes, shown = _panels(by_task, tasks.PAPER_TASKS, 1)
    styles = [(m, {"marker": k}) for m, k in zip(_ABLATIONS, "osD^", strict=True)]
    for j, task in enumerate(shown):
        _curves(axes[0, j], by_task[task], styles)
        axes[0, j].set_title(f"({_LETTERS[j]}) {tasks.TASKS[task].title}", fontsize=9)
    return _save(fig, path)


def _present(by_task: dict):
    """(task, title, results) for the paper's tasks that have results, in the paper's order."""
    return [(t, tasks.TASKS[t].title, by_task[t]) for t in tasks.PAPER_TASKS if t in by_task]


def maml_sanity_table(by_task: dict) -> str:
    """Origin (exact arithmetic, sigma_w 0) per task against MAML++'s published accuracy.

    Both meta-trained networks' origin: ROA's (constrained) and ROA-WC's (unconstrained: the
    MAML++ network), with the meta-training scale each had.
    """

    def origin(results, model):
        o = results.origin.get(model)
        return _pm(o) if o else "–"

    lines = [
        "| task | MAML++ (published) | origin, ROA net | origin, ROA-WC net (MAML++'s) "
        "| meta-steps x tasks (share of the paper's steps) | test tasks |",
        "|---|---|---|---|---|---|",
    ]
    for task, title, results in _present(by_task):
        cfg = results.models[ROA_MODEL]
        steps = cfg["epochs"] * cfg["iterations_per_epoch"]
        published = tasks.TASKS[task].mamlpp_accuracy
        proto = results.protocol
        lines.append(
            f"| {title} | {f'{published:.2f}' if published else '– (not reported)'} "
            f"| {origin(results, ROA_MODEL)} | {origin(results, ROA_WC_MODEL)} "
            f"| {steps} x {cfg['meta_batch_size']} ({100 * steps / _PAPER_META_STEPS:.1f} %) "
            f"| {proto['seeds']} x {proto['test_tasks']} |"
        )
    return "\n".join(lines) + "\n"


def paper_table2(by_task: dict) -> str:
    """Table 2 over all tasks: ROA, 5-step, ROA-WC, ROA-FLR at each task's noise levels."""
    notes = {results.device_note for _, _, results in _present(by_task)}
    one = len(notes) == 1
    same = (
        f"the device preset {next(iter(notes))} for every task"
        if one
        else "DIFFERENT device presets per task (named under each)"
    )
    lines = [
        "Table 2, every task: test accuracy (%) of ROA, 5-step, ROA-WC and ROA-FLR, mean of the "
        "repeats (CIs in each task's table2.md); chance and origin (ideal weights) per task; "
        f"{same}.",
        "",
    ]
    for _, title, results in _present(by_task):
        sigmas = sorted({r["sigma_w"] for r in results.methods})
        origin = results.origin.get(ROA_MODEL)
        origin_text = f", origin {100 * origin['accuracy']:.1f}" if origin else ""
        device_text = "" if one else f", device {results.device_note}"
        lines += [
            f"**{title}** (chance {100 * results.chance:.1f}{origin_text}{device_text})",
            "",
            "| method | " + " | ".join(f"σw={s:g}" for s in sigmas) + " |",
            "|---" * (len(sigmas) + 1) + "|",
        ]
        for method in _SCALE_METHODS:
            rows = {r["sigma_w"]: r for r in _method(results, method)}
            if rows:
                cells = [f"{100 * rows[s]['accuracy']:.1f}" if s in rows else "" for s in sigmas]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# One task meta-trained at several scales ({scale: results}, shortest training first): how far
# each method moves with training (the longer Omniglot 5-way run against the cpu scale).

_SCALE_METHODS = (ROA, FIVE_STEP, ROA_WC, ROA_FLR)  # offline uses no meta-trained net


def _meta_steps(results, model=ROA_MODEL) -> str:
    cfg = results.models.get(model)
    if not cfg:
        return "–"
    return f"{cfg['epochs'] * cfg['iterations_per_epoch']} x {cfg['meta_batch_size']}"


def scales_table(by_scale: dict) -> str:
    """Markdown: origin and each method at each noise level, a row per (method, scale)."""
    sigmas = sorted({r["sigma_w"] for res in by_scale.values() for r in res.methods})
    steps = "; ".join(f"{s}: {_meta_steps(r)}" for s, r in by_scale.items())
    lines = [
        f"Test accuracy (%) ± 95 % CI at each meta-training scale (ROA network's meta-steps x "
        f"tasks: {steps}); origin is the ROA network with ideal weights.",
        "",
        "| method | scale | " + " | ".join(f"σw={s:g}" for s in sigmas) + " |",
        "|---|---" + "|---" * len(sigmas) + "|",
    ]
    for scale, results in by_scale.items():
        origin = results.origin.get(ROA_MODEL)
        if origin:
            lines.append(f"| origin | {scale} | {_pm(origin)} |" + " |" * (len(sigmas) - 1))
    for method in _SCALE_METHODS:
        for scale, results in by_scale.items():
            rows = {r["sigma_w"]: r for r in _method(results, method)}
            if rows:
                cells = [_pm(rows[s]) if s in rows else "" for s in sigmas]
                lines.append(f"| {method} | {scale} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scales_figure(by_scale: dict, title: str, path):
    """A panel per method of _SCALE_METHODS: a curve per scale, dashed the origin (ideal
    weights) of that method's network at that scale."""
    methods = [m for m in _SCALE_METHODS if any(_method(r, m) for r in by_scale.values())]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False)
    first = next(iter(by_scale.values()))
    for j, method in enumerate(methods):
        ax = axes[0, j]
        for k, (scale, results) in enumerate(by_scale.items()):
            color = f"C{k}"
            rows = _method(results, method)
            if rows:
                s, acc, ci = _by_sigma(rows)
                ax.errorbar(
                    s,
                    100 * acc,
                    yerr=100 * ci,
                    capsize=3,
                    marker="o",
                    color=color,
                    label=f"{scale} ({_meta_steps(results, results_lib.MODEL_OF[method])})",
                )
            origin = results.origin.get(results_lib.MODEL_OF[method])
            if origin:
                ax.axhline(
                    100 * origin["accuracy"], color=color, ls="--", lw=1, label=f"origin, {scale}"
                )
        ax.axhline(100 * first.chance, color="grey", ls=":", label="chance")
        _accuracy_axes(ax)
        ax.legend(fontsize=7)
        ax.set_title(f"({_LETTERS[j]}) {method}, {title}", fontsize=9)
    return _save(fig, path)
