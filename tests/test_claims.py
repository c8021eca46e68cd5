"""The paper's claims as code (claims.py): each claim holds, fails and goes unmeasured on
synthetic results made for it."""

import copy
import dataclasses
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from roa_jax import claims, tasks
from roa_jax import results as results_lib
from roa_jax.results import FIVE_STEP, ROA, ROA_WC, Results

ROOT = Path(__file__).resolve().parent.parent
CPU_SIGMAS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0)

# A 5-way run in which every claim of Omniglot 5-way holds (accuracies as fractions).
PAPER_LIKE = {
    "ROA": dict(zip(CPU_SIGMAS, (0.95, 0.94, 0.92, 0.85, 0.70, 0.55), strict=True)),
    "ROA-FLR": dict(zip(CPU_SIGMAS, (0.945, 0.935, 0.90, 0.82, 0.66, 0.51), strict=True)),
    "ROA-WC": dict(zip(CPU_SIGMAS, (0.945, 0.93, 0.90, 0.80, 0.62, 0.50), strict=True)),
    "ROA-WC-FLR (MAML++)": dict(zip(CPU_SIGMAS, (0.94, 0.92, 0.88, 0.78, 0.6, 0.46), strict=True)),
    "5-step": dict(zip(CPU_SIGMAS, (0.955, 0.93, 0.85, 0.40, 0.22, 0.21), strict=True)),
    "offline": dict(zip(CPU_SIGMAS, (0.60, 0.30, 0.22, 0.21, 0.20, 0.20), strict=True)),
}
PAPER_LIKE_RHO = dict(zip(CPU_SIGMAS, (2.0, 2.0, 2.0, 2.0, 0.5, 0.5), strict=True))
RHOS = (0.5, 1.0, 2.0, 4.0)
# ROA's validation accuracy falls by this much per octave of rho away from the best rho.
VAL_SLOPE = 0.03
# Ideal weights of the ROA network (no ROA-WC origin: constraint_no_noise uses sigma_w 0 alone).
PAPER_LIKE_ORIGIN = {"roa": {"accuracy": 0.96, "ci95": 0.01}}


def val_rows(best_rho, roa=None, ci95=0.01):
    """ROA's validation rows: at each level the best rho scores ROA's accuracy, every other rho
    VAL_SLOPE less per octave away from it."""
    roa = PAPER_LIKE["ROA"] if roa is None else roa
    return [
        {
            "sigma_w": s,
            "rho": rho,
            "accuracy": acc - VAL_SLOPE * abs(math.log2(rho / best_rho[s])),
            "ci95": ci95,
            "seed_accuracies": [acc],
            "tasks": 100,
        }
        for s, acc in roa.items()
        if s in best_rho
        for rho in RHOS
    ]


def make_results(accuracies=None, best_rho=None, chance=0.2, ci95=0.01, origin=PAPER_LIKE_ORIGIN):
    """Results with one method row per {method: {sigma_w: accuracy}} entry, and ROA's
    validation rows (`val_rows`) where ROA has rows."""
    accuracies = copy.deepcopy(PAPER_LIKE if accuracies is None else accuracies)
    best_rho = dict(PAPER_LIKE_RHO if best_rho is None else best_rho)
    rows = []
    for method, by_sigma in accuracies.items():
        for sigma_w, acc in by_sigma.items():
            rho = best_rho.get(sigma_w, 1.0) if method in (ROA, ROA_WC, FIVE_STEP) else 1.0
            rows.append(
                {
                    "method": method,
                    "sigma_w": sigma_w,
                    "rho": rho,
                    "accuracy": acc,
                    "ci95": ci95,
                    "seed_accuracies": [acc] * 4,
                    "tasks": 300,
                }
            )
    parts = {}
    if ROA in accuracies:
        parts["roa_val"] = {"rows": val_rows(best_rho, accuracies[ROA], ci95)}
    return Results(
        title="test",
        chance=chance,
        parts=parts,
        methods=rows,
        best_rho={"roa": best_rho},
        origin=origin or {},
    )


def changed(method, **by_sigma):
    """PAPER_LIKE with some accuracies of `method` replaced ({sigma_w as 's0_25': acc})."""
    accuracies = copy.deepcopy(PAPER_LIKE)
    for key, acc in by_sigma.items():
        accuracies[method][float(key[1:].replace("_", "."))] = acc
    return make_results(accuracies)


def without(*methods, best_rho=True):
    accuracies = {m: v for m, v in PAPER_LIKE.items() if m not in methods}
    results = make_results(accuracies)
    return results if best_rho else dataclasses.replace(results, best_rho={})


def verdict_of(results, claim, task="omniglot_5w1s"):
    (verdict,) = [v for v in claims.evaluate(results, task) if v.claim == claim]
    return verdict


# claim: (results where it fails, results where it is not measured)
CASES = {
    "offline_chance": (changed("offline", s0_5=0.40), without("offline")),
    "five_step_agrees_low_noise": (changed("5-step", s0=0.85), without("5-step")),
    "five_step_collapses": (
        make_results({**PAPER_LIKE, "5-step": {s: a - 0.01 for s, a in PAPER_LIKE["ROA"].items()}}),
        without("5-step"),
    ),
    "constraint_high_noise": (changed("ROA-WC", s3=0.53), without("ROA-WC")),
    "constraint_no_noise": (changed("ROA-WC", s0=0.90), without("ROA-WC")),
    "noiseless_write_matches_origin": (
        make_results(origin={"roa": {"accuracy": 0.985, "ci95": 0.01}}),
        without("ROA", best_rho=False),
    ),
    "rho_gain_high_noise": (changed("ROA-FLR", s3=0.35), without("ROA-FLR")),
    "rho_gain_low_noise": (changed("ROA-FLR", s0=0.80), without("ROA-FLR")),
    "best_rho_low_noise": (
        make_results(best_rho={**PAPER_LIKE_RHO, 0.0: 0.5, 0.25: 0.5}),
        without("ROA", best_rho=False),
    ),
    "best_rho_falls": (
        make_results(best_rho={**PAPER_LIKE_RHO, 3.0: 1.0}),
        without("ROA", best_rho=False),
    ),
}


def test_every_claim_has_cases_in_order():
    assert tuple(CASES) == claims.CLAIM_IDS
    assert [v.claim for v in claims.evaluate(make_results(), "omniglot_5w1s")] == list(CASES)


@pytest.mark.parametrize("claim", claims.CLAIM_IDS)
def test_claim_holds(claim):
    verdict = verdict_of(make_results(), claim)
    assert verdict.verdict == claims.HOLDS, verdict
    assert verdict.margin > 0


@pytest.mark.parametrize("claim", claims.CLAIM_IDS)
def test_claim_fails(claim):
    verdict = verdict_of(CASES[claim][0], claim)
    assert verdict.verdict == claims.FAILS, verdict
    assert verdict.margin <= 0


@pytest.mark.parametrize("claim", claims.CLAIM_IDS)
def test_claim_not_measured(claim):
    verdict = verdict_of(CASES[claim][1], claim)
    assert verdict.verdict == claims.NOT_MEASURED, verdict
    assert verdict.margin is None


def test_empty_results_measure_nothing():
    for results in (Results(), Results(methods=[], best_rho={"roa": {}})):
        verdicts = claims.evaluate(results, "omniglot_5w1s")
        assert [v.verdict for v in verdicts] == [claims.NOT_MEASURED] * len(claims.CLAIM_IDS)
        assert claims.score(verdicts) == (0, 0)


def test_json_round_trip_gives_the_same_verdicts():
    # JSON turns the float sigma_w keys of best_rho into strings; reading makes them floats.
    results = dataclasses.replace(make_results(), seeds=4)
    text = results.to_json()
    assert isinstance(next(iter(json.loads(text)["best_rho"]["roa"])), str)
    loaded = results_lib.from_json(json.loads(text))
    assert loaded.best_rho == results.best_rho
    assert claims.evaluate(loaded, "omniglot_5w1s") == claims.evaluate(results, "omniglot_5w1s")


def test_best_rho_falls_back_to_the_roa_rows():
    results = dataclasses.replace(make_results(), best_rho={})
    assert verdict_of(results, "best_rho_falls").verdict == claims.HOLDS


def test_noise_regimes():
    assert claims.low_noise_levels(CPU_SIGMAS) == [0.0, 0.25]
    assert claims.high_noise_levels([0.0, 1.0, 1.5, 2.0, 2.5, 3.0]) == [2.5, 3.0]
    assert claims.high_noise_levels([0.0, 1.0, 2.0]) == [2.0]
    assert claims.high_noise_levels([0.0, 1.0, 1.5]) == []


def test_high_noise_uses_the_largest_level_at_least_2_when_none_is_above():
    accuracies = {m: {s: a for s, a in v.items() if s <= 2.0} for m, v in PAPER_LIKE.items()}
    accuracies["ROA-FLR"][2.0] = accuracies["ROA"][2.0] - 0.04
    verdict = verdict_of(make_results(accuracies), "rho_gain_high_noise")
    assert verdict.verdict == claims.HOLDS
    assert "sigma_w 2" in verdict.ours and "no level > 2" in verdict.tolerance
    # No level >= 2 at all: not measured rather than judged on low noise.
    low = {m: {s: a for s, a in v.items() if s < 2.0} for m, v in PAPER_LIKE.items()}
    assert verdict_of(make_results(low), "rho_gain_high_noise").verdict == claims.NOT_MEASURED


def test_rho_gain_band():
    # About 4 pp on Omniglot 5-way: +-2 pp, so 2.5 pp holds, 1.5 pp and no gain fail.
    assert verdict_of(changed("ROA-FLR", s3=0.525), "rho_gain_high_noise").verdict == "holds"
    assert verdict_of(changed("ROA-FLR", s3=0.535), "rho_gain_high_noise").verdict == "fails"
    flat = changed("ROA-FLR", s3=PAPER_LIKE["ROA"][3.0])
    assert verdict_of(flat, "rho_gain_high_noise").verdict == claims.FAILS


def test_tolerance_widens_to_the_combined_ci():
    # 3 pp apart at sigma_w 0: fails with 1 pp CIs, holds with 3 pp CIs (combined 4.2 pp).
    accuracies = copy.deepcopy(PAPER_LIKE)
    accuracies["5-step"][0.0] = accuracies["ROA"][0.0] - 0.03
    assert verdict_of(make_results(accuracies), "five_step_agrees_low_noise").verdict == "fails"
    wide = make_results(accuracies, ci95=0.03)
    assert verdict_of(wide, "five_step_agrees_low_noise").verdict == "holds"


def test_constraint_gain_must_also_exceed_its_ci():
    # A 5 pp gain with 5 pp CIs (combined CI of the difference 7.1 pp) is not significant.
    assert verdict_of(make_results(ci95=0.05), "constraint_high_noise").verdict == "fails"


def test_best_rho_must_fall_below_its_low_noise_value():
    flat = make_results(best_rho={s: 0.5 for s in CPU_SIGMAS})
    assert verdict_of(flat, "best_rho_falls").verdict == claims.FAILS


def test_five_step_collapsed_from_the_start_fails():
    accuracies = copy.deepcopy(PAPER_LIKE)
    accuracies["5-step"] = {s: 0.21 for s in CPU_SIGMAS}
    verdict = verdict_of(make_results(accuracies), "five_step_collapses")
    assert verdict.verdict == claims.FAILS
    assert "from the start" in verdict.ours


def test_five_step_collapse_needs_roa_above_beyond_it():
    accuracies = copy.deepcopy(PAPER_LIKE)
    accuracies["5-step"][3.0] = 0.60  # 5 pp above ROA after the collapse
    assert verdict_of(make_results(accuracies), "five_step_collapses").verdict == claims.FAILS


def test_five_step_threshold():
    assert claims.five_step_threshold(make_results()) == 1.0
    never = make_results({**PAPER_LIKE, "5-step": PAPER_LIKE["ROA"]})
    assert math.isinf(claims.five_step_threshold(never))
    assert claims.five_step_threshold(without("5-step")) is None


def test_constraint_no_noise_also_checks_origin():
    origin = {"roa": {"accuracy": 0.96, "ci95": 0.01}, "roa_wc": {"accuracy": 0.90, "ci95": 0.01}}
    verdict = verdict_of(make_results(origin=origin), "constraint_no_noise")
    assert verdict.verdict == claims.FAILS and "origin" in verdict.ours
    origin["roa_wc"]["accuracy"] = 0.955
    assert verdict_of(make_results(origin=origin), "constraint_no_noise").verdict == "holds"
    only_origin = dataclasses.replace(without(ROA_WC), origin=origin)
    assert verdict_of(only_origin, "constraint_no_noise").verdict == claims.HOLDS


def test_task_specific_expectations():
    results = make_results()
    # miniImageNet expects best rho 4 and a 5 pp gain.
    assert verdict_of(results, "best_rho_low_noise", "miniimagenet_5w1s").verdict == "fails"
    assert verdict_of(results, "rho_gain_high_noise", "miniimagenet_5w1s").verdict == "holds"
    # 20-way: 15 pp rho gain; the constraint claim is "similar" (a 5 pp gain fails it).
    assert verdict_of(results, "rho_gain_high_noise", "omniglot_20w1s").verdict == "fails"
    assert verdict_of(results, "constraint_high_noise", "omniglot_20w1s").verdict == "fails"
    similar = changed("ROA-WC", s3=0.545)
    assert verdict_of(similar, "constraint_high_noise", "omniglot_20w1s").verdict == "holds"
    # 128 filters: no per-task constraint claim; a suffix resolves to the longest task name.
    w128 = verdict_of(results, "constraint_high_noise", "omniglot_20w1s_w128_cpu")
    assert w128.verdict == claims.NOT_MEASURED and "states none" in w128.statement
    assert claims.task_claims("omniglot_20w1s_w128_cpu").rho_gain_pp == 15.0
    assert claims.task_claims("omniglot_5w1s_cpu") == tasks.TASKS["omniglot_5w1s"].claims
    # The demo task and an unknown name: the paper states nothing.
    assert claims.task_claims("synthetic_5w1s_tiny") == claims.task_claims("x") == tasks.Claims()


def test_summary_names_each_tasks_own_statement():
    results = make_results()
    tasks = ("omniglot_5w1s", "omniglot_5w1s_cpu", "omniglot_20w1s")
    text = claims.summary(dict.fromkeys(tasks, results))
    (row,) = [line for line in text.splitlines() if "`rho_gain_high_noise`" in line]
    five, twenty = (verdict_of(results, "rho_gain_high_noise", t).statement for t in tasks[1:])
    assert five != twenty  # 4 and 15 points
    assert row.startswith(f"| {five} [omniglot_5w1s, omniglot_5w1s_cpu]; {twenty} [omniglot_20w1s]")
    (same,) = [line for line in text.splitlines() if "`offline_chance`" in line]
    assert same.startswith(
        f"| {verdict_of(results, 'offline_chance').statement} (`offline_chance`, stated) |"
    )


def test_by_scale_shows_each_scales_verdict_and_margin():
    short = changed("5-step", s1=0.84, s2=0.70, s3=0.55)  # no 5-step collapse: fails
    longer = make_results()
    text = claims.by_scale({"cpu": short, "cpu_long": longer}, "omniglot_5w1s")
    lines = text.splitlines()
    assert "| claim | cpu | cpu_long |" in lines
    (row,) = [line for line in lines if "`five_step_collapses`" in line]
    cells = [c.strip() for c in row.split("|")[2:4]]
    margins = [verdict_of(r, "five_step_collapses").margin for r in (short, longer)]
    assert margins[0] <= 0 < margins[1]
    assert cells == [f"**fails** ({margins[0]:+.1f})", f"holds ({margins[1]:+.1f})"]
    holds = [claims.score(claims.evaluate(r, "omniglot_5w1s"))[0] for r in (short, longer)]
    assert lines[-1] == f"| holds / measured | {holds[0]}/10 | {holds[1]}/10 |"
    # A claim without its rows is shown unmeasured, without a margin.
    no_offline = make_results({k: v for k, v in PAPER_LIKE.items() if k != "offline"})
    text = claims.by_scale({"cpu": no_offline}, "omniglot_5w1s")
    (row,) = [line for line in text.splitlines() if "`offline_chance`" in line]
    assert row.endswith("| – |")


def test_unknown_task_measures_only_the_generic_claims():
    verdicts = {v.claim: v.verdict for v in claims.evaluate(make_results(), "synthetic_5w1s")}
    task_specific = {"constraint_high_noise", "rho_gain_high_noise", "best_rho_low_noise"}
    assert {c for c, v in verdicts.items() if v == claims.NOT_MEASURED} == task_specific


def test_chance_from_the_task_name_when_missing():
    results = dataclasses.replace(make_results(), chance=None)
    assert verdict_of(results, "offline_chance").verdict == claims.HOLDS
    assert verdict_of(results, "offline_chance", "synthetic").verdict == claims.NOT_MEASURED


def _with_threshold(sigma_w, n_way=5, wide_gain=0.0):
    """Results whose 5-step collapses first at `sigma_w` (None: never)."""
    accuracies = copy.deepcopy(PAPER_LIKE)
    accuracies["ROA"] = {s: a + wide_gain for s, a in accuracies["ROA"].items()}
    accuracies["5-step"] = {
        s: (0.2 if sigma_w is not None and s >= sigma_w else accuracies["ROA"][s] - 0.005)
        for s in CPU_SIGMAS
    }
    return make_results(accuracies, chance=1.0 / n_way)


def across(t5, t10, t20, wide_gain=0.02):
    verdicts = claims.evaluate_across(
        {
            "omniglot_5w1s_cpu": _with_threshold(t5, 5),
            "omniglot_10w1s": _with_threshold(t10, 10),
            "omniglot_20w1s": _with_threshold(t20, 20),
            "omniglot_20w1s_w128": _with_threshold(t20, 20, wide_gain),
        }
    )
    assert [v.claim for v in verdicts] == list(claims.CROSS_TASK_CLAIM_IDS)
    return {v.claim: v for v in verdicts}


def test_threshold_falls_with_classes():
    claim = "five_step_threshold_falls_with_classes"
    assert across(2.0, 1.0, 0.5)[claim].verdict == claims.HOLDS
    assert across(None, 1.0, 1.0)[claim].verdict == claims.HOLDS  # 5-way never collapses
    assert across(1.0, 1.0, 1.0)[claim].verdict == claims.FAILS
    assert across(0.5, 1.0, 2.0)[claim].verdict == claims.FAILS
    assert across(2.0, 1.0, 0.5)[claim].margin == 1.0
    missing = claims.evaluate_across({"omniglot_5w1s": make_results()})
    assert missing[0].verdict == claims.NOT_MEASURED


def test_wide_net_helps_20way():
    claim = "wide_net_helps_20way"
    assert across(2.0, 1.0, 0.5, wide_gain=0.02)[claim].verdict == claims.HOLDS
    assert across(2.0, 1.0, 0.5, wide_gain=-0.01)[claim].verdict == claims.FAILS
    assert across(2.0, 1.0, 0.5, wide_gain=0.08)[claim].verdict == claims.FAILS
    only_64 = claims.evaluate_across({"omniglot_20w1s": make_results()})
    assert only_64[1].verdict == claims.NOT_MEASURED


def test_score():
    verdicts = claims.evaluate(CASES["offline_chance"][0], "omniglot_5w1s")
    verdicts += claims.evaluate_across({})
    assert claims.score(verdicts) == (len(claims.CLAIM_IDS) - 1, len(claims.CLAIM_IDS))
    assert claims.score([]) == (0, 0)


def test_write_round_trips(tmp_path):
    verdicts = claims.evaluate(CASES["constraint_no_noise"][0], "omniglot_5w1s")
    verdicts.append(verdicts[0]._replace(claim="infinite", margin=math.inf))
    md, js = claims.write(verdicts, tmp_path / "out", title="Omniglot 5-way")
    assert (md.name, js.name) == ("claims.md", "claims.json")
    loaded = [claims.Verdict(**d) for d in json.loads(js.read_text())]
    assert loaded[:-1] == verdicts[:-1]
    assert loaded[-1].margin is None  # inf is not JSON
    text = md.read_text()
    assert text == claims.to_markdown(verdicts, "Omniglot 5-way")
    assert text.startswith("### Omniglot 5-way\n")
    assert "| Claim | Ours | Tolerance | Verdict |" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(verdicts)
    # Escaped pipes keep every row at four cells.
    assert all(line.replace("\\|", "").count("|") == 5 for line in table)
    assert all(f"`{v.claim}`" in text for v in verdicts)
    assert f"{len(verdicts) - 1} of {len(verdicts)} measured claims hold" in text


def test_the_cpu_results_file():
    path = ROOT / "results" / "omniglot_5w1s_cpu" / "results.json"
    if not path.exists():
        pytest.skip("no CPU results file")
    results = results_lib.read(path)
    verdicts = claims.evaluate(results, "omniglot_5w1s_cpu")
    assert [v.claim for v in verdicts] == list(claims.CLAIM_IDS)
    needs_origin = set() if results.origin else {"noiseless_write_matches_origin"}
    assert all(
        v.verdict in (claims.HOLDS, claims.FAILS) for v in verdicts if v.claim not in needs_origin
    )
    # Measured there: 5-step is 10 pp below ROA already without noise.
    assert verdict_of(results, "five_step_agrees_low_noise").verdict == "fails"


def test_noiseless_write_is_one_sided_and_widens_with_the_ci():
    claim = "noiseless_write_matches_origin"
    above = make_results(origin={"roa": {"accuracy": 0.90, "ci95": 0.01}})
    assert verdict_of(above, claim).verdict == claims.HOLDS  # ROA above its origin loses nothing
    # 3.5 pp short fails within a 2 pp band but holds within a combined CI of 4.2 pp.
    far = make_results(origin={"roa": {"accuracy": 0.985, "ci95": 0.03}}, ci95=0.03)
    assert verdict_of(far, claim).verdict == claims.HOLDS
    assert verdict_of(CASES[claim][0], claim).margin == pytest.approx(2.0 - 3.5)


PAPER_TEXT = ROOT.parent / "shared" / "paper" / "roa_paper_text.txt"


def test_every_claim_has_its_source():
    assert set(claims.SOURCES) == {*claims.CLAIM_IDS, *claims.CROSS_TASK_CLAIM_IDS}
    assert {s.kind for s in claims.SOURCES.values()} == {claims.STATED, claims.INFERRED}
    assert [c for c, s in claims.SOURCES.items() if s.kind == claims.INFERRED] == [
        "noiseless_write_matches_origin"
    ]
    for v in claims.evaluate(make_results(), "omniglot_5w1s") + claims.evaluate_across({}):
        assert (v.source, v.quote) == claims.SOURCES[v.claim]


def test_stated_claims_quote_the_paper():
    if not PAPER_TEXT.exists():
        pytest.skip(f"the paper's text is not beside the project ({PAPER_TEXT.name})")
    # The text lost its symbols ("[image: image]"); a quote names them (k, sigma_w) or leaves
    # them out ("..."): every piece between them is the paper's, word for word.
    text = " ".join(PAPER_TEXT.read_text().split())
    for claim, source in claims.SOURCES.items():
        if source.kind != claims.STATED:
            continue
        for piece in re.split(r"\.\.\.|\bk\b|\bsigma_w\b", source.quote):
            piece = piece.strip(" ,.")
            assert piece and piece in text, (claim, piece)


def _row(sigma_w, rho, per_task):
    per_task = [float(x) for x in per_task]
    acc = sum(per_task) / len(per_task)
    sd = statistics.stdev(per_task)
    return {
        "sigma_w": sigma_w,
        "rho": rho,
        "accuracy": acc,
        "ci95": 1.96 * sd / math.sqrt(len(per_task)),
        "seed_accuracies": [acc],
        "tasks": len(per_task),
        "task_accuracies": per_task,
    }


def test_paired_difference_cancels_what_tasks_share():
    # Task difficulty varies widely and both methods share it; b is 0.02 below a on every task.
    hard = [0.3 + 0.6 * (i % 10) / 9 for i in range(100)]
    a, b = (
        _row(0.0, 1.0, hard),
        _row(0.0, 1.0, [x - 0.02 + 0.01 * (i % 2) for i, x in enumerate(hard)]),
    )
    diff, ci, paired = claims.paired_difference([a], [b])
    assert paired and diff == pytest.approx(1.5)
    assert ci < 0.2 < math.hypot(100 * a["ci95"], 100 * b["ci95"])
    # Without per-task accuracies (files from before), the CIs combine as independent errors.
    old = [{k: v for k, v in r.items() if k != "task_accuracies"} for r in (a, b)]
    diff_old, ci_old, paired_old = claims.paired_difference(old[:1], old[1:])
    assert not paired_old and diff_old == pytest.approx(1.5)
    assert ci_old == pytest.approx(math.hypot(100 * a["ci95"], 100 * b["ci95"]))
    # Several levels: the per-task differences are averaged over the levels first.
    diff2, ci2, _ = claims.paired_difference([a, a], [b, _row(0.0, 1.0, hard)])
    assert diff2 == pytest.approx(0.75) and ci2 < ci


def test_a_difference_judged_paired_can_hold_where_independent_errors_fail_it():
    # ROA 3.5 pp above ROA-WC at sigma_w 3 on every task: significant paired (CI ~0.5 pp),
    # not with the rows' wide CIs as independent errors (combined ~8 pp > 3.5).
    results = make_results()
    spread = [0.1 + 0.8 * (i % 5) / 4 for i in range(100)]
    wc = _row(3.0, 0.5, spread)
    roa = _row(3.0, 0.5, [x + 0.035 + 0.01 * (i % 2) for i, x in enumerate(spread)])
    methods = [
        r for r in results.methods if not (r["sigma_w"] == 3.0 and r["method"] in (ROA, ROA_WC))
    ]
    methods += [{"method": ROA, **roa}, {"method": ROA_WC, **wc}]
    paired = dataclasses.replace(results, methods=methods)
    verdict = verdict_of(paired, "constraint_high_noise")
    assert verdict.verdict == claims.HOLDS and "paired 95 % CI" in verdict.tolerance
    unpaired = dataclasses.replace(
        results,
        methods=[{k: v for k, v in r.items() if k != "task_accuracies"} for r in methods],
    )
    verdict = verdict_of(unpaired, "constraint_high_noise")
    assert verdict.verdict == claims.FAILS and "combined 95 % CI" in verdict.tolerance


def test_best_rho_about_2_within_the_paired_ci_of_the_best():
    # At sigma_w 0 rho 1 is best by 0.1 pp on the average task, within the paired CI: holds.
    base = [0.6 + 0.4 * (i % 7) / 6 for i in range(100)]
    noise = [0.01 * ((i * 37) % 5 - 2) for i in range(100)]
    rows = [
        _row(0.0, 1.0, base),
        _row(0.0, 2.0, [b - 0.001 + n for b, n in zip(base, noise, strict=True)]),
    ]
    rows += [_row(0.0, 4.0, [b - 0.05 for b in base]), _row(0.0, 0.5, [b - 0.05 for b in base])]
    results = dataclasses.replace(make_results(), parts={"roa_val": {"rows": rows}})
    verdict = verdict_of(results, "best_rho_low_noise")
    assert verdict.verdict == claims.HOLDS, verdict
    assert "best rho 1" in verdict.ours and "paired 95 % CI" in verdict.tolerance
    # 2 pp behind on every task: significantly worse than the best, fails.
    rows[1] = _row(0.0, 2.0, [b - 0.02 + n for b, n in zip(base, noise, strict=True)])
    results = dataclasses.replace(make_results(), parts={"roa_val": {"rows": rows}})
    assert verdict_of(results, "best_rho_low_noise").verdict == claims.FAILS


def test_acceptable_levels():
    # ROA within 10 pp of its noiseless accuracy, and not high noise (sigma_w <= 2).
    rows = val_rows(PAPER_LIKE_RHO)  # ROA 95, 94, 92, 85, 70, 55 %
    assert claims.acceptable_levels(rows) == [0.0, 0.25, 0.5, 1.0]
    flat = val_rows(PAPER_LIKE_RHO, roa=dict.fromkeys(CPU_SIGMAS, 0.9))
    assert claims.acceptable_levels(flat) == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert claims.acceptable_levels([r for r in rows if r["sigma_w"] > 0]) == []


def test_score_of_the_stated_claims():
    verdicts = claims.evaluate(CASES["noiseless_write_matches_origin"][0], "omniglot_5w1s")
    n = len(claims.CLAIM_IDS)
    assert claims.score(verdicts) == (n - 1, n)
    assert claims.score(verdicts, (claims.STATED,)) == (n - 1, n - 1)
    assert claims.score(verdicts, (claims.INFERRED,)) == (0, 1)
