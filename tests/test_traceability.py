"""Every committed table and claim verdict is recomputed here from the results.json it came from.

The tables (each task's table2.md, results/paper/table2.md, the scales and MAML++ sanity tables,
the claims in claims.json/claims.md and the claims summary) are written by roa_jax.figures and
roa_jax.claims. This file reads results.json with plain `json` and redoes the arithmetic from
the definitions the tables state, without those modules:

- a Table 2 cell is the mean of the repeats' accuracies ("mean of 4 repeats") +- the 95 % CI of
  the evaluated row, read from the test
  part of the method's network at the rho the method uses: the rho with the best validation
  accuracy at that sigma_w (ties: the smaller rho) for ROA, 5-step and ROA-WC, rho 1 for the
  FLR methods; offline has one row per sigma_w;
- a claim's numbers and margin follow the rule its `tolerance` states (MODEL.md 5); a
  difference between two rows is paired per task where both hold their per-task accuracies
  (the rows of results written before those were kept combine their CIs as independent).

`results["methods"]` and `results["best_rho"]`, which the library derives from the parts, are
not read. The README's generated blocks must equal the committed files they are generated
from, and the BUILD_NOTES.md sections the README cites must exist. Reads files only: fast.
"""

import functools
import json
import math
import pathlib
import re
import statistics

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
# Each task's results folder, e.g. omniglot_5w1s_cpu (results/paper and calibration are not).
TASKS = sorted(
    p.parent.name for p in RESULTS.glob("*/results.json") if (p.parent / "table2.md").exists()
)

# Method of Table 2 -> (network, whether its rho is chosen on validation); offline: no network.
METHODS = {
    "ROA": ("roa", True),
    "5-step": ("five_step", True),
    "ROA-WC": ("roa_wc", True),
    "ROA-FLR": ("roa", False),
    "ROA-WC-FLR (MAML++)": ("roa_wc", False),
    "5-step-FLR": ("five_step", False),
    "offline": ("offline", False),
}
# The paper's per-task statements (MODEL.md 5): ROA - ROA-FLR gain at sigma_w > 2 (pp), what
# the constraint does at high noise, ROA's best rho at low noise.
PAPER = {
    "omniglot_5w1s": (4.0, "gain", 2.0),
    "omniglot_10w1s": (7.0, "gain", 2.0),
    "omniglot_20w1s": (15.0, "similar", 2.0),
    "omniglot_20w1s_w128": (15.0, None, 2.0),
    "miniimagenet_5w1s": (5.0, "gain", 4.0),
}
TITLES = {  # row / section titles of the tables across tasks
    "5-way 1-shot Omniglot": "omniglot_5w1s",
    "10-way 1-shot Omniglot": "omniglot_10w1s",
    "20-way 1-shot Omniglot": "omniglot_20w1s",
    "20-way 1-shot Omniglot, 128 filters": "omniglot_20w1s_w128",
    "5-way 1-shot miniImageNet": "miniimagenet_5w1s",
}


@functools.cache
def _results(task: str) -> dict:
    return json.loads((RESULTS / task / "results.json").read_text())


def _paper_task(task: str) -> str:
    """The paper's task a results folder holds: the longest task name it starts with."""
    return max((t for t in PAPER if task.startswith(t + "_")), key=len)


class _Cell(tuple):
    """(mean of the repeats, 95 % CI) of an evaluated row, in %; .tasks: its per-task
    accuracies in % (None where the row has none)."""

    def __new__(cls, row: dict):
        cell = super().__new__(
            cls, (100 * statistics.fmean(row["seed_accuracies"]), 100 * row["ci95"])
        )
        per_task = row.get("task_accuracies")
        cell.tasks = [100 * x for x in per_task] if per_task else None
        return cell


def _pct(row: dict) -> _Cell:
    return _Cell(row)


def _diff(pairs) -> tuple[float, float]:
    """Mean of a - b over the (a, b) cell pairs and its 95 % CI: of the per-task differences
    (averaged over the pairs) where every cell has them, else of independent errors."""
    diff = statistics.fmean(a[0] - b[0] for a, b in pairs)
    if all(c.tasks for pair in pairs for c in pair):
        per_task = [
            statistics.fmean(a.tasks[i] - b.tasks[i] for a, b in pairs)
            for i in range(len(pairs[0][0].tasks))
        ]
        return diff, 1.96 * statistics.stdev(per_task) / math.sqrt(len(per_task))
    return diff, math.sqrt(sum(a[1] ** 2 + b[1] ** 2 for a, b in pairs)) / len(pairs)


def _best_rho(val_rows: list[dict]) -> dict[float, float]:
    """{sigma_w: the rho with the best validation accuracy}, ties to the smaller rho."""
    best = {}
    for row in sorted(val_rows, key=lambda r: r["rho"]):
        s = row["sigma_w"]
        if s not in best or _pct(row)[0] > _pct(best[s])[0]:
            best[s] = row
    return {s: row["rho"] for s, row in best.items()}


def _cells(task: str) -> dict[str, dict[float, tuple[float, float]]]:
    """{method: {sigma_w: (mean %, CI %)}}, computed from the evaluated parts."""
    parts = _results(task)["parts"]
    out = {}
    for method, (model, tuned) in METHODS.items():
        if f"{model}_test" not in parts:
            continue
        rho = _best_rho(parts[f"{model}_val"]["rows"]) if tuned else {}
        rows = parts[f"{model}_test"]["rows"]
        out[method] = {
            r["sigma_w"]: _pct(r) for r in rows if r["rho"] == rho.get(r["sigma_w"], 1.0)
        }
        assert len(out[method]) == len({r["sigma_w"] for r in rows}), (task, method)
    return out


def _origin(task: str, model: str = "roa") -> tuple[float, float]:
    (row,) = _results(task)["parts"][f"{model}_origin"]["rows"]
    return _pct(row)


def _tables(text: str) -> list[dict[tuple, dict[float, str]]]:
    """Each Markdown table with σw columns: {(the cells left of them): {sigma_w: cell}}."""
    tables, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None and any(c.startswith("σw=") for c in cells):
            header = cells
            first = next(i for i, c in enumerate(cells) if c.startswith("σw="))
            tables.append({})
        elif header is not None and not cells[0].startswith("---"):
            sigmas = [float(c[3:]) for c in header[first:]]
            tables[-1][tuple(cells[:first])] = dict(zip(sigmas, cells[first:], strict=True))
    return tables


def _shows(text: str, value: float) -> bool:
    """Whether the number `text` is `value` rounded to the digits `text` has."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-6


def _assert_cell(cell: str, mean: float, ci: float | None, where) -> None:
    """`cell` ("89.2 ± 0.9", or "89.2" where ci is None) shows mean and ci, rounded."""
    numbers = re.findall(r"\d+(?:\.\d+)?", cell)
    expected = [mean] if ci is None else [mean, ci]
    message = f"{where}: shows {cell!r}, computed {expected}"
    assert len(numbers) == len(expected), message
    assert all(_shows(n, v) for n, v in zip(numbers, expected, strict=True)), message


# Each task's Table 2 (table2.md).


@pytest.mark.parametrize("task", TASKS)
def test_table2_cells_are_the_repeat_means_at_the_rho_each_method_uses(task):
    (table,) = _tables((RESULTS / task / "table2.md").read_text())
    cells = _cells(task)
    assert {k for k in table if not k[0].endswith("(val)")} == {(m,) for m in cells}
    for method, by_sigma in cells.items():
        assert set(table[(method,)]) == set(by_sigma), (task, method)
        for sigma, (mean, ci) in by_sigma.items():
            _assert_cell(table[(method,)][sigma], mean, ci, (task, method, sigma))


@pytest.mark.parametrize("task", TASKS)
def test_table2_rho_rows_are_the_validation_argmax(task):
    (table,) = _tables((RESULTS / task / "table2.md").read_text())
    parts = _results(task)["parts"]
    for model, label in (("roa", "ROA's rho (val)"), ("five_step", "5-step's rho (val)")):
        if f"{model}_val" not in parts:
            assert (label,) not in table
            continue
        best = _best_rho(parts[f"{model}_val"]["rows"])
        assert table[(label,)] == {s: f"{rho:g}" for s, rho in best.items()}, (task, model)


@pytest.mark.parametrize("task", TASKS)
def test_table2_caption_states_repeats_chance_and_origin(task):
    caption = (RESULTS / task / "table2.md").read_text().splitlines()[0]
    results = _results(task)
    repeats = {len(r["seed_accuracies"]) for r in results["parts"]["roa_test"]["rows"]}
    assert f"mean of {repeats.pop()} repeats" in caption
    chance = re.search(r"Chance (\S+) %", caption).group(1)
    assert _shows(chance, 100 / results["models"]["roa"]["n_way"])
    origin = re.search(r"Origin \(ideal weights\) (\S+) \+- (\S+)\.", caption)
    _assert_cell(f"{origin.group(1)} ± {origin.group(2)}", *_origin(task), task)


# Tables across tasks and scales (results/paper/).


def test_paper_table2_shows_each_tasks_means():
    text = (RESULTS / "paper" / "table2.md").read_text()
    sections = re.findall(r"\*\*(.+?)\*\* \(chance (\S+), origin (\S+)\)", text)
    tables = _tables(text)
    assert len(sections) == len(tables) > 0
    for (title, chance, origin), table in zip(sections, tables, strict=True):
        task = f"{TITLES[title]}_cpu"
        assert _shows(chance, 100 / _results(task)["models"]["roa"]["n_way"])
        assert _shows(origin, _origin(task)[0]), title
        cells = _cells(task)
        assert set(table) == {(m,) for m in ("ROA", "5-step", "ROA-WC", "ROA-FLR") if m in cells}
        for (method,), row in table.items():
            for sigma, cell in row.items():
                _assert_cell(cell, cells[method][sigma][0], None, (title, method, sigma))


def test_scales_table_shows_each_scales_cells():
    text = (RESULTS / "paper" / "scales_omniglot_5w1s.md").read_text()
    (table,) = _tables(text)
    for (method, scale), row in table.items():
        task = f"omniglot_5w1s_{scale}"
        if method == "origin":
            _assert_cell(row[0.0], *_origin(task), (method, scale))
            continue
        for sigma, cell in row.items():
            _assert_cell(cell, *_cells(task)[method][sigma], (method, scale, sigma))


def test_maml_sanity_rows_are_each_tasks_origin_and_protocol():
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in (RESULTS / "paper" / "maml_sanity.md").read_text().splitlines()[2:]
    ]
    assert rows
    for title, _, roa, roa_wc, steps, tests in rows:
        task = f"{TITLES[title]}_cpu"
        _assert_cell(roa, *_origin(task, "roa"), title)
        _assert_cell(roa_wc, *_origin(task, "roa_wc"), title)
        cfg, proto = _results(task)["models"]["roa"], _results(task)["protocol"]
        n = cfg["epochs"] * cfg["iterations_per_epoch"]
        assert steps == f"{n} x {cfg['meta_batch_size']} ({100 * n / (100 * 500):.1f} %)"
        assert tests == f"{proto['seeds']} x {proto['test_tasks']}"


# The claims (claims.json, claims.md, the summary across tasks and scales).


def _levels(sigmas) -> tuple[list[float], list[float]]:
    """(low-noise levels, sigma_w <= 0.3; high-noise levels, sigma_w > 2)."""
    return sorted(s for s in sigmas if s <= 0.3), sorted(s for s in sigmas if s > 2)


def _mean_difference(a: dict, b: dict, levels) -> tuple[float, float]:
    """Mean of a - b over levels and its 95 % CI, pp."""
    return _diff([(a[s], b[s]) for s in levels])


def _agree(a: dict, b: dict):
    """|a - b| <= max(2 pp, CI of the difference) at each low-noise level."""
    low, _ = _levels(set(a) & set(b))
    numbers = [x for s in low for x in (s, a[s][0], b[s][0], a[s][0] - b[s][0])]
    margin = min(max(2, _diff([(a[s], b[s])])[1]) - abs(a[s][0] - b[s][0]) for s in low)
    return numbers, margin


def _collapse(roa: dict, five: dict, chance: float):
    """The five_step_collapses rule: (numbers quoted, margin, first collapsed level or inf)."""
    levels = sorted(set(roa) & set(five))

    def margin_at(s):  # > 0: 5-step is far below ROA, or at chance while ROA is not
        gap, ci = _diff([(roa[s], five[s])])
        near = min(5 - (five[s][0] - chance), roa[s][0] - chance - 5)
        return min(gap - max(2, ci), max(gap - 10, near))

    cms = [margin_at(s) for s in levels]
    if cms[0] > 0:
        s = levels[0]
        return [five[s][0], roa[s][0], s], -cms[0], s
    first = next((i for i, cm in enumerate(cms) if cm > 0), None)
    if first is None:
        w = max(levels, key=lambda s: roa[s][0] - five[s][0])
        return [levels[-1], five[w][0], roa[w][0], w], min(-cms[0], max(cms)), math.inf
    t, beyond = levels[first], levels[first:]
    low = min(beyond, key=lambda s: roa[s][0] - five[s][0])
    stays = min(roa[s][0] - five[s][0] + max(2, _diff([(roa[s], five[s])])[1]) for s in beyond)
    numbers = [t, five[t][0], roa[t][0], t, roa[low][0] - five[low][0], low]
    return numbers, min(-cms[0], cms[first], stays), t


def _geomean(xs) -> float:
    return 2 ** statistics.fmean(math.log2(x) for x in xs)


def _claims(task: str) -> dict:
    """{claim id: (numbers its `ours` quotes, margin)}; None where it cannot be measured."""
    t, origin = _cells(task), [_origin(task, m) for m in ("roa", "roa_wc")]
    chance = 100 / _results(task)["models"]["roa"]["n_way"]
    rho_gain, constraint, best_rho = PAPER[_paper_task(task)]
    best = _best_rho(_results(task)["parts"]["roa_val"]["rows"])
    low, high = _levels(best)
    roa, wc, flr = t["ROA"], t["ROA-WC"], t["ROA-FLR"]
    out = dict.fromkeys(["offline_chance", "five_step_agrees_low_noise", "five_step_collapses"])
    if "offline" in t:
        levels = sorted(s for s in t["offline"] if s > 0.3)
        off = t["offline"]
        margins = [max(5, off[s][1]) - abs(off[s][0] - chance) for s in levels]
        worst = levels[margins.index(min(margins))]
        numbers = [*(off[s][0] for s in levels), *levels, chance, off[worst][0] - chance, worst]
        out["offline_chance"] = numbers, min(margins)
    if "5-step" in t:
        out["five_step_agrees_low_noise"] = _agree(roa, t["5-step"])
        out["five_step_collapses"] = _collapse(roa, t["5-step"], chance)[:2]
    diff, ci = _mean_difference(roa, wc, high)
    margin = diff - max(3, ci) if constraint == "gain" else max(2, ci) - abs(diff)
    out["constraint_high_noise"] = ([diff, *high], margin) if constraint else None
    pairs = [(roa[0.0], wc[0.0]), origin]  # at sigma_w 0, then origin
    out["constraint_no_noise"] = (
        [0.0, *(x for a, b in pairs for x in (a[0], b[0], a[0] - b[0]))],
        min(max(2, _diff([(a, b)])[1]) - abs(a[0] - b[0]) for a, b in pairs),
    )
    loss = origin[0][0] - roa[0.0][0]
    tol = max(2, _diff([(origin[0], roa[0.0])])[1])
    out["noiseless_write_matches_origin"] = [roa[0.0][0], 0.0, origin[0][0], -loss], tol - loss
    diff, ci = _mean_difference(roa, flr, high)
    tol = max(2, 0.3 * rho_gain, ci)
    out["rho_gain_high_noise"] = [diff, *high], tol - abs(diff - rho_gain)
    out["rho_gain_low_noise"] = _agree(roa, flr)
    rho_low, rho_high = _geomean(best[s] for s in low), _geomean(best[s] for s in high)
    out["best_rho_low_noise"] = _best_rho_about(
        _results(task)["parts"]["roa_val"]["rows"], best_rho
    )
    out["best_rho_falls"] = (
        [*(best[s] for s in high), *high, rho_low, *low],
        min(math.log2(1 / rho_high), math.log2(rho_low / rho_high)),
    )
    return out


def _best_rho_about(val_rows: list[dict], target: float):
    """At each acceptable level (sigma_w <= 2, ROA's best validation accuracy within 10 pp of
    sigma_w 0's) rho `target` within max(0.1 pp, CI) of the best rho (ties: the smaller)."""
    cells = {}
    for r in val_rows:
        cells.setdefault(r["sigma_w"], {})[r["rho"]] = _pct(r)
    top = {s: max(c[0] for c in by_rho.values()) for s, by_rho in cells.items()}
    acceptable = sorted(s for s in cells if s <= 2 and top[s] >= top[0.0] - 10)
    numbers, margins = [], []
    for s in acceptable:
        best = min(rho for rho, c in cells[s].items() if c[0] == top[s])
        gap, ci = _diff([(cells[s][best], cells[s][target])])
        tol = max(0.1, ci)
        numbers += [s, best, target, -gap, tol]
        margins.append(tol - gap)
    return numbers, min(margins)


def _quoted(ours: str) -> list[str]:
    """The numbers a verdict's `ours` text quotes ("5-step" is a name, not a number)."""
    return re.findall(r"[-+]?\d+(?:\.\d+)?", ours.replace("5-step", "five-step"))


@pytest.mark.parametrize("task", TASKS)
def test_claim_numbers_and_verdicts_are_recomputed_from_the_results(task):
    verdicts = json.loads((RESULTS / task / "claims.json").read_text())
    expected = _claims(task)
    assert [v["claim"] for v in verdicts] == list(expected)
    for v in verdicts:
        where = (task, v["claim"], v["ours"])
        if expected[v["claim"]] is None:
            assert v["verdict"] == "not measured" and v["margin"] is None, where
            continue
        numbers, margin = expected[v["claim"]]
        quoted = _quoted(v["ours"])
        assert len(quoted) == len(numbers), (where, numbers)
        assert all(_shows(q, x) for q, x in zip(quoted, numbers, strict=True)), (where, numbers)
        assert v["margin"] == pytest.approx(margin, abs=1e-4), where
        assert v["verdict"] == ("holds" if margin > 0 else "fails"), where


@pytest.mark.parametrize("task", TASKS)
def test_claims_md_shows_the_claims_json_rows(task):
    text = (RESULTS / task / "claims.md").read_text()
    verdicts = json.loads((RESULTS / task / "claims.json").read_text())
    claim = re.compile(r"\(`(\w+)`, (?:stated|inferred)\) \|")
    rows = {claim.search(line).group(1): line for line in text.splitlines() if claim.search(line)}
    assert len(rows) == len(verdicts)
    for v in verdicts:
        shown = f"**{v['verdict']}**" if v["verdict"] == "fails" else v["verdict"]
        ours = v["ours"].replace("|", "\\|")
        assert f"(`{v['claim']}`, {v['source']}) | {ours} | " in rows[v["claim"]], v["claim"]
        assert rows[v["claim"]].endswith(f" | {shown} |"), v["claim"]
    holds = sum(v["verdict"] == "holds" for v in verdicts)
    measured = sum(v["verdict"] != "not measured" for v in verdicts)
    stated = [v for v in verdicts if v["source"] == "stated"]
    assert (
        f"{holds} of {measured} measured claims hold ({len(verdicts)} claims); of the claims the "
        f"paper states, {sum(v['verdict'] == 'holds' for v in stated)} of "
        f"{sum(v['verdict'] != 'not measured' for v in stated)}." in text
    )


def _md_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


_MARKS = {"holds": "holds", "fails": "**fails**", "not measured": "–"}


def test_claims_summary_marks_are_each_tasks_verdicts():
    text = (RESULTS / "paper" / "claims.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| claim |"))
    tasks = [c.strip() for c in header.strip("|").split("|")][1:]
    verdicts = {t: json.loads((RESULTS / f"{t}_cpu" / "claims.json").read_text()) for t in tasks}
    rows = _md_rows(text, "| claim |")
    for i, row in enumerate(rows[:-1]):
        claim = re.search(r"\(`(\w+)`, (?:stated|inferred)\)$", row[0]).group(1)
        for task, mark in zip(tasks, row[1:], strict=True):
            assert verdicts[task][i]["claim"] == claim
            assert mark == _MARKS[verdicts[task][i]["verdict"]], (task, claim)
    for task, score in zip(tasks, rows[-1][1:], strict=True):
        measured = [v for v in verdicts[task] if v["verdict"] != "not measured"]
        assert score == f"{sum(v['verdict'] == 'holds' for v in measured)}/{len(measured)}"


def test_cross_task_claims_are_recomputed_from_the_results():
    rows = _md_rows((RESULTS / "paper" / "claims.md").read_text(), "| cross-task claim |")
    ours = {re.search(r"\(`(\w+)`, stated\)$", r[0]).group(1): r[1:] for r in rows}
    # The 5-step collapse threshold of 5-, 10-, 20-way (none: no collapse up to sigma_w 3).
    thresholds = []
    for way in (5, 10, 20):
        cells = _cells(f"omniglot_{way}w1s_cpu")
        thresholds.append(_collapse(cells["ROA"], cells["5-step"], 100 / way)[2])
    expected = []  # "thresholds 5-way: none, 10-way: sigma_w 1, ..."
    for way, t in zip((5, 10, 20), thresholds, strict=True):
        expected += [way] if t == math.inf else [way, t]
    quoted = _quoted(ours["five_step_threshold_falls_with_classes"][0])
    assert len(quoted) == len(expected)
    assert all(_shows(q, x) for q, x in zip(quoted, expected, strict=True))
    strictly = any(a > b for a, b in zip(thresholds, thresholds[1:], strict=False))
    falls = all(a >= b for a, b in zip(thresholds, thresholds[1:], strict=False)) and strictly
    assert (
        ours["five_step_threshold_falls_with_classes"][1] == _MARKS["holds" if falls else "fails"]
    )
    # 128 against 64 filters on 20-way: ROA's mean difference over the noisy levels, about 2 pp.
    wide, narrow = _cells("omniglot_20w1s_w128_cpu")["ROA"], _cells("omniglot_20w1s_cpu")["ROA"]
    levels = sorted(s for s in set(wide) & set(narrow) if s > 0)
    diff, ci = _mean_difference(wide, narrow, levels)
    quoted = _quoted(ours["wide_net_helps_20way"][0])
    assert all(_shows(q, x) for q, x in zip(quoted, [128, 64, diff, *levels], strict=True))
    holds = max(2, 0.3 * 2, ci) - abs(diff - 2) > 0
    assert ours["wide_net_helps_20way"][1] == _MARKS["holds" if holds else "fails"]


def test_scales_claims_are_each_scales_verdicts_and_margins():
    text = (RESULTS / "paper" / "scales_omniglot_5w1s.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| claim |"))
    scales = [c.strip() for c in header.strip("|").split("|")][1:]
    verdicts = {
        s: json.loads((RESULTS / f"omniglot_5w1s_{s}" / "claims.json").read_text()) for s in scales
    }
    for i, row in enumerate(_md_rows(text, "| claim |")[:-1]):
        for scale, cell in zip(scales, row[1:], strict=True):
            v = verdicts[scale][i]
            assert row[0].endswith(f"(`{v['claim']}`, {v['source']})")
            assert cell == f"{_MARKS[v['verdict']]} ({v['margin']:+.1f})", (scale, v["claim"])


# The README.

_BLOCK = re.compile(r"<!-- ([\w -]+) -->\n(.*?)<!-- /\1 -->", re.S)


def _source(block: str) -> pathlib.Path:
    """The committed file experiments/paper_figures.py (calibrate.py: calibration) fills a
    README block from."""
    kind, *name = block.split(" ")
    return {
        "table2": lambda: RESULTS / name[0] / "table2.md",
        "claims-summary": lambda: RESULTS / "paper" / "claims.md",
        "maml-sanity": lambda: RESULTS / "paper" / "maml_sanity.md",
        "scales": lambda: RESULTS / "paper" / f"scales_{name[0]}.md",
        "calibration": lambda: RESULTS / name[0] / "summary.md",
    }[kind]()


def test_readme_generated_blocks_equal_their_files():
    text = (ROOT / "README.md").read_text()
    blocks = _BLOCK.findall(text)
    names = [name for name, _ in blocks]
    assert {"claims-summary", "maml-sanity"} <= set(names)
    assert len(names) == text.count("<!-- /"), "a block whose end marker does not match"
    for name, body in blocks:
        assert body == _source(name).read_text(), f"README block {name!r} differs from its file"


def test_readme_cites_only_existing_build_notes_sections():
    readme = " ".join((ROOT / "README.md").read_text().split())
    headings = [
        line[3:] for line in (ROOT / "BUILD_NOTES.md").read_text().splitlines() if line[:3] == "## "
    ]
    cited = re.findall(r'BUILD_NOTES\.md`?,? "([^"]+)"', readme)
    assert cited
    for section in cited:
        assert any(h.startswith(section) for h in headings), section
