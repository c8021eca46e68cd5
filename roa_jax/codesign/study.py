"""The study of experiments/codesign.py, as a sequence of parts that each return rows.

    preset_rho            ROA's rho for the preset per noise level (validation)   rho_val.csv
    gradient_check_rows   straight-through vs central differences (validation)    gradient_check.*
    sensitivity_rows      loss and accuracy along lines through the preset        sensitivity.*
    optimize_devices      adam over the device and rho per noise level            optimization.*,
                                                                                  devices/*.json
    comparison_rows       the found devices beside the preset (test)              comparison.md

`run_study` runs them in that order and writes the files; every part reads a `Setup` and the
preset's rho per noise level, {sigma_w: rho}, keyed by the study's own sigma_w values.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from roa_jax import config, device, errors, evaluation, maml
from roa_jax.codesign import report
from roa_jax.codesign.diagnostics import directions, gradient_check, mean_ci_fields, sensitivity
from roa_jax.codesign.optimizer import Problem, Result, optimize, sample_tasks
from roa_jax.codesign.parameterization import DEFAULT_FREE, describe, knobs

PARTS = ("check", "sensitivity", "optimize")


class Study(NamedTuple):
    """What experiments/codesign.py runs; each field is the flag of the same name."""

    sigma_w: tuple  # write-noise levels; one optimization each
    rhos: tuple  # the preset's rho is chosen among these on validation tasks (ROA's protocol)
    parts: tuple = PARTS  # which of PARTS to run (the rho choice always runs)
    val_tasks: int = 50  # validation tasks of the preset's rho choice
    test_tasks: int = 200  # test tasks of the final comparison (one repeat)
    check_tasks: int = 24  # validation tasks of the gradient check
    check_granularity: float = 1000.0  # second device of the check: the preset this much
    #   finer (0: none)
    sensitivity_tasks: int = 12  # validation tasks of the sensitivity lines
    steps: int = 60  # optimizer steps per noise level
    tasks_per_step: int = 12  # validation tasks per step (fresh every step)
    lr: float = 0.1  # adam step in knob units
    meta_lr: float = 1e-4  # adam step of theta_0 (joint)
    seed: int = 0
    chunk: int = 8  # tasks per compiled call of the evaluation sweeps


def check_study(study: Study) -> Study:
    """Raises ConfigError naming the flag that is out of range."""
    if not all(math.isfinite(s) and s >= 0 for s in study.sigma_w):
        raise errors.ConfigError(
            f"--sigma_w={','.join(map(str, study.sigma_w))}: each must be >= 0."
        )
    if not study.sigma_w:
        raise errors.ConfigError("--sigma_w must name at least one noise level.")
    if not study.rhos or not all(math.isfinite(r) and r > 0 for r in study.rhos):
        raise errors.ConfigError(
            f"--rhos={','.join(map(str, study.rhos))}: each must be finite, > 0."
        )
    unknown = sorted(set(study.parts) - set(PARTS))
    if unknown:
        raise errors.ConfigError(f"--parts: {unknown} are not among {PARTS}.")
    for name in ("val_tasks", "test_tasks", "check_tasks", "sensitivity_tasks", "steps"):
        if getattr(study, name) < 1:
            raise errors.ConfigError(f"--{name}={getattr(study, name)} must be >= 1.")
    if study.tasks_per_step < 2:
        raise errors.ConfigError(f"--tasks_per_step={study.tasks_per_step} must be >= 2.")
    if not study.check_granularity >= 0:
        raise errors.ConfigError(f"--check_granularity={study.check_granularity} must be >= 0.")
    for name in ("lr", "meta_lr"):
        value = getattr(study, name)
        if not (math.isfinite(value) and value > 0):
            raise errors.ConfigError(f"--{name}={value} must be finite and > 0.")
    return study


# The tasks and noise of each part come from fold_in(PRNGKey(seed), index): the rho choice's
# validation tasks as `comparison.evaluate`'s (0), the final comparison's test tasks (1), the
# check's and the sensitivity's validation tasks (2), the optimization's tasks (3).
_KEY_INDEX = {"rho": 0, "test": 1, "check": 2, "optimize": 3}


class Setup(NamedTuple):
    """What every part of the study reads."""

    study: Study
    problem: Problem
    cfg: config.Config  # the run's config: episode shape and pulse policy
    meta: maml.MetaParams  # the meta-trained theta_0 and LSLR
    splits: dict  # uint8 class arrays [C, I, H, W, ch] of 'train', 'val' and 'test'
    norm: tuple  # per-channel (mean, std)
    base: device.DeviceParams  # the preset: the start of every optimization

    def key(self, part: str) -> jax.Array:
        """The base key of `part`'s tasks and noise (one of `_KEY_INDEX`)."""
        return jax.random.fold_in(jax.random.PRNGKey(self.study.seed), _KEY_INDEX[part])

    @property
    def policy(self) -> device.PulsePolicy:
        return device.pulse_policy(self.cfg.pulse_policy)

    @property
    def episode_shape(self) -> tuple:
        return (self.cfg.n_way, self.cfg.k_shot, self.cfg.n_query)

    @property
    def setting(self) -> evaluation.Setting:
        """ROA's one write, as `evaluation.sweep` evaluates it."""
        return evaluation.Setting(
            "adapt", self.problem.model, *self.episode_shape, 1, self.study.chunk
        )


def preset_rho(setup: Setup) -> tuple[list[dict], dict[float, float]]:
    """ROA's rho for the preset at each noise level, on validation tasks (ROA's protocol).

    Returns:
      (one row per (sigma_w, rho) of `evaluation.summarize`, {sigma_w: the best rho} keyed by
      the study's sigma_w values).
    """
    study = setup.study
    # One grid per noise level, concatenated (= make_grid(sigma_w, rhos)): level i's
    # accuracies are the i-th block of len(rhos) rows, found by position, not by value.
    levels = [evaluation.make_grid([s], study.rhos, [0]) for s in study.sigma_w]
    grid = evaluation.Grid(*(np.concatenate(x) for x in zip(*levels, strict=True)))
    acc = evaluation.sweep(
        setup.key("rho"),
        setup.meta,
        setup.splits["val"],
        setup.norm,
        evaluation.stack([setup.base]),
        grid,
        study.val_tasks,
        setup.setting,
        setup.policy,
    )
    rho = {}
    for s, level, level_acc in zip(study.sigma_w, levels, np.split(acc, len(levels)), strict=True):
        (rho[s],) = evaluation.best_rho(evaluation.summarize(level_acc, level)).values()
    return evaluation.summarize(acc, grid), rho


def _check_tasks(setup: Setup, num_tasks: int):
    return sample_tasks(
        setup.key("check"), setup.splits["val"], setup.norm, num_tasks, setup.episode_shape
    )


def gradient_check_rows(setup: Setup, rho: dict) -> list[dict]:
    """`diagnostics.gradient_check` of the free-by-default knobs at each noise level, on the
    preset and on the preset `check_granularity` times finer, each at the preset's rho."""
    study, problem = setup.study, setup.problem
    episodes = _check_tasks(setup, study.check_tasks)
    devices = {"preset": setup.base}
    if study.check_granularity > 0:
        finer = device.with_granularity(setup.base, study.check_granularity)
        devices[f"{study.check_granularity:g}x finer"] = finer
    rows = []
    for label, params in devices.items():
        for s in study.sigma_w:
            for row in gradient_check(
                jax.random.fold_in(setup.key("check"), 1),
                knobs(params, rho[s]),
                setup.meta,
                episodes,
                params,
                jnp.float32(s),
                setup.policy,
                problem.model,
                DEFAULT_FREE,
                problem.fd_step,
                problem.strategy,
            ):
                rows.append({"device": label, "sigma_w": s, **row})
    return rows


def sensitivity_rows(setup: Setup, rho: dict, log=print) -> list[dict]:
    """`diagnostics.sensitivity` along `diagnostics.directions` through the preset at its rho,
    at each noise level."""
    episodes = _check_tasks(setup, setup.study.sensitivity_tasks)
    rows, t0 = [], time.time()
    for s in setup.study.sigma_w:
        for row in sensitivity(
            jax.random.fold_in(setup.key("check"), 1),
            knobs(setup.base, rho[s]),
            setup.meta,
            episodes,
            setup.base,
            jnp.float32(s),
            setup.policy,
            setup.problem.model,
            directions(setup.base),
            setup.problem.strategy,
        ):
            rows.append({"sigma_w": s, **row})
        log(f"sensitivity at sigma_w={s} done ({time.time() - t0:.0f} s)")
    return rows


def _tunes_rho_alone(problem: Problem) -> bool:
    """Whether the study also optimizes the preset's rho alone: the baseline that separates
    the device's share of a gain from rho's (on the same tasks)."""
    return "rho" in problem.free and set(problem.free) != {"rho"} and not problem.joint


def _optimize_at(setup: Setup, sigma_w, rho, problem: Problem, label: str, log) -> Result:
    """`optimize` from the preset at `rho`, on validation tasks (training tasks when joint:
    theta_0 must not learn the validation classes)."""
    study, start = setup.study, time.time()

    def progress(i, row):
        if i % 10 == 0 or i == 1:
            log(
                f"{label} sigma_w={sigma_w:g} step {i}: loss {row['loss']:.3f} acc "
                f"{row['accuracy']:.3f} rho {row['rho']:.3g} levels "
                f"{row['levels_up']:.1f}/{row['levels_down']:.1f} window {row['window']:.4f}"
            )

    result = optimize(
        jax.random.fold_in(setup.key("optimize"), int(round(1000 * sigma_w))),
        setup.base,
        rho,
        setup.meta,
        setup.splits["train" if problem.joint else "val"],
        setup.norm,
        setup.episode_shape,
        sigma_w,
        problem,
        study.steps,
        study.tasks_per_step,
        study.lr,
        study.meta_lr,
        setup.policy,
        progress,
    )
    log(f"{label} sigma_w={sigma_w:g}: optimized in {time.time() - start:.0f} s")
    return result


def optimize_devices(setup: Setup, rho: dict, log=print, found_one=None) -> tuple[dict, dict]:
    """The device (and rho) optimized at each noise level, from the preset at its rho;
    `found_one(sigma_w, result)`, where given, as each is found (so a long study cut later
    keeps the devices it found).

    Returns:
      ({sigma_w: `Result`}, {sigma_w: the preset's rho optimized alone}, empty unless the
      problem frees rho and a device knob and is not joint).
    """
    found, tuned = {}, {}
    for s in setup.study.sigma_w:
        found[s] = _optimize_at(setup, s, rho[s], setup.problem, "device", log)
        if found_one is not None:
            found_one(s, found[s])
        if _tunes_rho_alone(setup.problem):
            rho_only = setup.problem._replace(free=("rho",))
            tuned[s] = _optimize_at(setup, s, rho[s], rho_only, "rho only", log).rho
    return found, tuned


def history_rows(found: dict) -> list[dict]:
    """The optimizations' steps, one row each, with their sigma_w."""
    return [{"sigma_w": s, **row} for s, result in found.items() for row in result.history]


def _test_points(setup: Setup, rho: dict, found: dict, tuned: dict) -> list[tuple]:
    """(theta_0: the sigma_w it was optimized at, None for the trained one; device: 0 the
    preset, j the device found at the j-th sigma_w; sigma_w; rho) of every test accuracy."""
    sigma_w, joint = setup.study.sigma_w, setup.problem.joint
    points = []
    for s in sigma_w:
        points.append((None, 0, s, rho[s]))
        if s in tuned:
            points.append((None, 0, s, tuned[s]))
        for j, f in enumerate(sigma_w, 1):
            if f == s or not joint:
                points.append((f if joint else None, j, s, found[f].rho))
    return points


def _test_accuracies(setup: Setup, points: list[tuple], found: dict) -> dict:
    """{point: accuracy [test_tasks]} with the exact write: one sweep per theta_0 (one in all
    unless joint), the same tasks and noise for every point (gains paired per task)."""
    study = setup.study
    test = jax.device_put(setup.splits["test"])
    stacked = evaluation.stack([setup.base] + [found[s].params for s in study.sigma_w])
    acc = {}
    for theta in dict.fromkeys(p[0] for p in points):
        mine = [p for p in points if p[0] == theta]
        grid = evaluation.Grid(
            np.int32([p[1] for p in mine]),
            np.float32([p[2] for p in mine]),
            np.float32([p[3] for p in mine]),
            np.zeros(len(mine), np.int32),
        )
        meta = setup.meta if theta is None else found[theta].meta
        out = evaluation.sweep(
            setup.key("test"),
            meta,
            test,
            setup.norm,
            stacked,
            grid,
            study.test_tasks,
            setup.setting,
            setup.policy,
        )
        acc.update(dict(zip(mine, out, strict=True)))
    return acc


def comparison_rows(setup: Setup, rho: dict, found: dict, tuned: dict) -> list[dict]:
    """The found devices beside the preset on test tasks: one row per (device found at,
    sigma_w evaluated at); every found device at every noise level unless joint (where each
    theta_0 goes with its own device only)."""
    sigma_w, joint = setup.study.sigma_w, setup.problem.joint
    acc = _test_accuracies(setup, _test_points(setup, rho, found, tuned), found)
    rows = []
    for s in sigma_w:
        preset = acc[(None, 0, s, rho[s])]
        baseline = acc[(None, 0, s, tuned[s])] if s in tuned else None
        for j, f in enumerate(sigma_w, 1):
            if joint and f != s:
                continue
            found_acc = acc[(f if joint else None, j, s, found[f].rho)]
            rows.append(
                _compare_row(f, s, rho[s], preset, tuned.get(s), baseline, found[f], found_acc)
            )
    return rows


def _compare_row(
    optimized_at, sigma_w, preset_rho, preset_acc, tuned_rho, tuned_acc, result, found_acc
):
    """One row of the comparison: per-task accuracies [T] of the three, gains paired."""
    row = dict(
        optimized_at=float(optimized_at),
        sigma_w=float(sigma_w),
        preset_rho=preset_rho,
        **mean_ci_fields("preset", preset_acc),
        found_rho=result.rho,
        **mean_ci_fields("found", found_acc),
        **mean_ci_fields("gain", np.asarray(found_acc) - np.asarray(preset_acc)),
        tasks=int(np.size(found_acc)),
    )
    if tuned_acc is not None:
        row.update(
            preset_tuned_rho=tuned_rho,
            **mean_ci_fields("preset_tuned", tuned_acc),
            **mean_ci_fields("gain_over_tuned", np.asarray(found_acc) - np.asarray(tuned_acc)),
        )
    return row


@contextlib.contextmanager
def _timed(seconds: dict, part: str):
    start = time.time()
    yield
    seconds[part] = time.time() - start


def run_study(
    study: Study,
    problem: Problem,
    cfg,
    meta: maml.MetaParams,
    splits: dict,
    norm,
    base: device.DeviceParams,
    out_dir,
    log=print,
) -> dict:
    """Runs the parts in `study.parts` (the rho choice always) and writes their files to
    `out_dir`; returns the results (results.json). Keys of each part's tasks: `_KEY_INDEX`.
    """
    out = pathlib.Path(out_dir)
    (out / "devices").mkdir(parents=True, exist_ok=True)
    splits = dict(splits, val=jax.device_put(splits["val"]))  # read by three parts
    setup = Setup(study, problem, cfg, meta, splits, norm, base)
    seconds = {}
    results = {"study": study._asdict(), "problem": problem._replace(model=None)._asdict()}
    results["base"] = describe(base)

    with _timed(seconds, "rho"):
        rows, rho = preset_rho(setup)
    fields = ("sigma_w", "rho", "accuracy", "ci95")
    report.write_csv(out / "rho_val.csv", [{k: r[k] for k in fields} for r in rows])
    results["preset_rho"] = {str(s): rho[s] for s in sorted(rho)}
    log(f"preset rho on validation: {dict(sorted(rho.items()))} ({seconds['rho']:.0f} s)")

    if "check" in study.parts:
        with _timed(seconds, "check"):
            rows = gradient_check_rows(setup, rho)
            report.write_csv(out / "gradient_check.csv", rows)
            (out / "gradient_check.md").write_text(report.check_markdown(rows, problem.fd_step))
        log(f"gradient check: {len(rows)} rows ({seconds['check']:.0f} s)")

    if "sensitivity" in study.parts:
        with _timed(seconds, "sensitivity"):
            rows = sensitivity_rows(setup, rho, log)
            report.write_csv(out / "sensitivity.csv", rows)
            report.plot_sensitivity(rows, directions(base), out / "sensitivity.png")

    if "optimize" in study.parts:
        with _timed(seconds, "optimize"):
            save = lambda s, result: device.save_params(
                out / "devices" / f"found_sigma{s:g}.json", result.params
            )
            found, tuned = optimize_devices(setup, rho, log, found_one=save)
            history = history_rows(found)
            report.write_csv(out / "optimization.csv", history)
            report.plot_optimization(history, out / "optimization.png")
        with _timed(seconds, "test"):
            results["comparison"] = comparison_rows(setup, rho, found, tuned)
        results["found"] = {str(s): {"rho": r.rho, **describe(r.params)} for s, r in found.items()}
        (out / "comparison.md").write_text(report.comparison_markdown(results))
        log((out / "comparison.md").read_text())

    results["seconds"] = seconds
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return results
