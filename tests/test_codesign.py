"""Co-design (roa_jax/codesign/): knobs, the post-write loss, its gradients, the optimizer, and
each part of the study on a tiny network."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roa_jax import codesign, config, device, errors, evaluation, models, roa, train, writers
from roa_jax.data import episodes as episodes_lib
from roa_jax.data import synthetic

# A tiny conv4 (width 8) on 16x16 synthetic tasks, untrained: its one-step updates are up to
# ~0.07 in weight units, so a 1000x finer `paper` device writes most weights with many
# pulses, while at rho = 1/4 the `paper` device itself (step 0.095) writes none.
CFG = dataclasses.replace(
    config.model_config("synthetic_5w1s", "roa", "tiny"), width=8, image_size=16, n_query=3
)
MODEL = train.build_model(CFG)
POLICY = device.open_loop()
# A 1000x finer `paper` device with a half-strength window (a window of 1 is a saturated
# logit, where the window's knob barely moves the loss).
FINE = device.with_granularity(device.paper()._replace(window=jnp.float32(0.5)), 1000.0)


@pytest.fixture(scope="module")
def meta():
    # Crossbar weights inside [-0.9, 0.9], as the ROA constraint keeps a trained theta_0: the
    # He initialization puts some first-layer weights beyond the mapped range [-1, 1], where
    # programming clips them to a bound and Eq. 7's square root is differentiated at a zero
    # change (finite, but 1e5 times the float error in the range's directions).
    meta = train.init_meta(CFG, (16, 16, 1))
    clip = lambda path, x: jnp.clip(x, -0.9, 0.9) if path[-1].key == "kernel" else x
    return meta._replace(params=jax.tree_util.tree_map_with_path(clip, meta.params))


@pytest.fixture(scope="module")
def episodes():
    images = synthetic.load_synthetic(seed=0, image_size=16)["test"]
    return episodes_lib.sample_episodes(jax.random.PRNGKey(0), images, 4, 5, 1, 3)


def _losses(k, meta, episodes, base, sigma_w):
    return codesign.task_losses(
        k, meta, jax.random.PRNGKey(1), episodes, base, jnp.float32(sigma_w), POLICY, MODEL
    )


@pytest.mark.parametrize("name", ["paper", "soft_bounds", "linear_step"])
def test_knobs_round_trip_the_device_physics(name):
    base = device.preset(name)
    params = codesign.device_params(codesign.knobs(base), base)
    device.validate(params)
    chex.assert_trees_all_close(device.pulse_rates(params), device.pulse_rates(base), rtol=1e-5)
    chex.assert_trees_all_close(
        device.conductance_range(params), device.conductance_range(base), rtol=1e-5
    )
    np.testing.assert_allclose(params.window, np.clip(base.window, 1e-3, 1 - 1e-3), rtol=1e-6)
    # The closed-form eta2 is the preset's own (lam and eta2 are unique for given rates).
    np.testing.assert_allclose([params.lam, params.eta2], [base.lam, base.eta2], rtol=1e-4)
    assert params.noise_law == base.noise_law and params.noise_scale == base.noise_scale


def test_each_knob_moves_its_own_physical_value():
    base = device.paper()
    k = codesign.knobs(base, rho=2.0)
    a_plus, a_minus = device.pulse_rates(base)
    moved = codesign.device_params(codesign.shifted(k, "a_plus", np.log(2.0)), base)
    np.testing.assert_allclose(device.pulse_rates(moved), (2 * a_plus, a_minus), rtol=1e-5)
    moved = codesign.device_params(codesign.shifted(k, "a_minus", -np.log(3.0)), base)
    np.testing.assert_allclose(device.pulse_rates(moved), (a_plus, a_minus / 3), rtol=1e-5)
    g_min, g_max = device.conductance_range(base)
    moved = codesign.device_params(codesign.shifted(k, "g_min", np.log(2.0)), base)
    np.testing.assert_allclose(
        device.conductance_range(moved), (2 * g_min, g_max + g_min), rtol=1e-5
    )
    np.testing.assert_allclose(np.exp(k.log_rho), 2.0, rtol=1e-6)
    # Any knob value is a physical device (within the asymmetry eta2 > 0 allows).
    wild = codesign.Knobs(*(jnp.float32(x) for x in (-6.0, -4.0, -20.0, -30.0, -5.0, 0.0)))
    device.validate(codesign.device_params(wild, base))


def test_check_base_rejects_what_the_closed_form_cannot_set():
    with pytest.raises(errors.DeviceError, match="v_set = -v_reset"):
        codesign.check_base(device.paper()._replace(v_reset=jnp.float32(-1.5)))
    per_device = device.sample_variation(jax.random.PRNGKey(0), device.paper(), (3,), 0.1)
    with pytest.raises(errors.DeviceError, match="scalar parameters"):
        codesign.check_base(per_device)


def test_check_problem_names_the_bad_field():
    with pytest.raises(errors.ConfigError, match="not among"):
        codesign.check_problem(codesign.Problem(MODEL, free=("levels",)))
    with pytest.raises(errors.ConfigError, match="estimator"):
        codesign.check_problem(codesign.Problem(MODEL, estimator="spsa"))
    with pytest.raises(errors.ConfigError, match="nothing to optimize"):
        codesign.check_problem(codesign.Problem(MODEL, free=()))


def test_the_loss_is_roas_evaluation(meta, episodes):
    # Same device, key and tasks: the accuracies of roa.adapt_tasks (what evaluation.sweep runs).
    base = device.paper()
    k = codesign.knobs(FINE, rho=2.0)
    params = codesign.device_params(k, base)
    _, acc = _losses(k, meta, episodes, base, 0.5)
    hw = writers.Hardware(params, jnp.float32(0.5), POLICY)
    adapt = jax.jit(roa.adapt_tasks, static_argnums=(1, 4))
    expected = adapt(jax.random.PRNGKey(1), MODEL, meta, episodes, 1, hw, 2.0)
    np.testing.assert_allclose(acc, expected, atol=1e-6)


def test_the_conductance_range_does_not_enter_the_loss(meta, episodes):
    # Weights are mapped relative to (G_min, G_max) and Eq. 7 scales with the range.
    k = codesign.knobs(FINE)
    loss, _ = _losses(k, meta, episodes, FINE, 1.0)
    other = codesign.shifted(codesign.shifted(k, "g_min", 1.5), "g_span", -2.0)
    np.testing.assert_allclose(_losses(other, meta, episodes, FINE, 1.0)[0], loss, rtol=1e-4)
    _, _, grad, _ = codesign.task_gradients(
        k, meta, jax.random.PRNGKey(1), episodes, FINE, jnp.float32(1.0), POLICY, MODEL
    )
    scale = np.max(np.abs(np.asarray([grad.log_a_plus, grad.logit_window, grad.log_rho])))
    assert np.max(np.abs(np.asarray([grad.log_g_min, grad.log_g_span]))) < 1e-3 * scale


@pytest.mark.parametrize("sigma_w", [0.0, 0.5])
def test_straight_through_gradient_matches_finite_differences_on_a_fine_device(
    meta, episodes, sigma_w
):
    # Every wanted change spans many steps: rounding is negligible and the exact loss smooth
    # in every knob, through the nonlinear response and the reparameterized noise.
    k = codesign.knobs(FINE, rho=1.0)
    names = ("a_plus", "a_minus", "window", "rho")
    rows = codesign.gradient_check(
        jax.random.PRNGKey(1),
        k,
        meta,
        episodes,
        FINE,
        jnp.float32(sigma_w),
        POLICY,
        MODEL,
        names,
        step=0.02,
    )
    for row in rows:
        # Agreement within 10 % or the 95 % CI of the paired difference over the 4 tasks.
        assert abs(row["diff"]) <= 0.1 * abs(row["fd"]) + row["diff_ci"] + 1e-3, row
    by_knob = {r["knob"]: r for r in rows}
    # Not trivially: rho moves the loss, and the rates hardly do (a finer step with
    # proportionally more pulses writes the same change).
    assert abs(by_knob["rho"]["fd"]) > 0.1
    assert max(abs(by_knob[n]["fd"]) for n in ("a_plus", "a_minus")) < 0.05 * abs(
        by_knob["rho"]["fd"]
    )


def test_straight_through_gradient_sees_writes_that_round_to_zero_pulses(meta, episodes):
    # On the coarse `paper` device at rho = 1/4 every update of this net rounds to zero
    # pulses: the exact loss does not change with the rates (finite differences are exactly
    # 0), but the straight-through gradient is that of a continuous pulse count. Why 'fd'
    # exists.
    base = device.paper()
    k = codesign.knobs(base, rho=0.25)
    rows = codesign.gradient_check(
        jax.random.PRNGKey(1),
        k,
        meta,
        episodes,
        base,
        jnp.float32(1.0),
        POLICY,
        MODEL,
        ("a_plus", "a_minus"),
        step=0.05,
    )
    for row in rows:
        assert row["fd"] == 0.0 and row["fd_ci"] == 0.0, row
        assert abs(row["ste"]) > 1e-4, row


def test_optimize_moves_only_the_free_knobs_and_lowers_the_loss(meta, episodes):
    images = synthetic.load_synthetic(seed=0, image_size=16)["val"]
    base = FINE
    problem = codesign.Problem(MODEL, free=("rho", "window"))
    result = codesign.optimize(
        jax.random.PRNGKey(2),
        base,
        8.0,
        meta,
        images,
        (0.0, 1.0),
        (5, 1, 3),
        0.0,
        problem,
        num_steps=6,
        tasks_per_step=4,
        lr=0.2,
    )
    assert len(result.history) == 6
    chex.assert_trees_all_close(
        device.pulse_rates(result.params), device.pulse_rates(base), rtol=1e-5
    )
    chex.assert_trees_all_close(
        device.conductance_range(result.params), device.conductance_range(base), rtol=1e-5
    )
    chex.assert_trees_all_equal(result.meta, meta)  # not joint: theta_0 untouched
    assert result.rho < 8.0  # rho 8 overshoots on a fine device
    before = _losses(codesign.knobs(base, 8.0), meta, episodes, base, 0.0)[0]
    after = _losses(codesign.knobs(result.params, result.rho), meta, episodes, base, 0.0)[0]
    assert float(jnp.mean(after)) < float(jnp.mean(before))


def test_joint_optimization_changes_theta_0(meta):
    images = synthetic.load_synthetic(seed=0, image_size=16)["train"]
    problem = codesign.Problem(MODEL, free=("a_plus",), joint=True)
    result = codesign.optimize(
        jax.random.PRNGKey(3),
        FINE,
        1.0,
        meta,
        images,
        (0.0, 1.0),
        (5, 1, 3),
        0.5,
        problem,
        num_steps=2,
        tasks_per_step=2,
        meta_lr=1e-2,
    )
    crossbar = models.split(meta.params)[models.CROSSBAR]
    moved = models.split(result.meta.params)[models.CROSSBAR]
    assert any(not np.allclose(crossbar[p], moved[p]) for p in crossbar)
    assert result.history[0]["grad_window"] == 0.0  # held


def test_sensitivity_lines_move_what_they_name():
    base = device.paper()
    k0 = codesign.knobs(base, rho=2.0)
    lines = {d.name: d for d in codesign.directions(base)}
    for d in lines.values():
        assert 0.0 in d.offsets
        chex.assert_trees_all_close(d.at(k0, jnp.float32(0.0)), k0, atol=1e-5)
    finer = codesign.device_params(lines["levels"].at(k0, jnp.float32(np.log(2.0))), base)
    np.testing.assert_allclose(
        device.pulse_rates(finer), np.asarray(device.pulse_rates(base)) / 2, rtol=1e-5
    )
    # The nonlinearity alone: a linear-ish window with the same open-loop (mid-range) steps.
    k = lines["window_at_levels"].at(k0, jnp.float32(-8.0))
    linear = codesign.device_params(k, base)
    assert float(linear.window) < 0.3
    start = codesign.device_params(k0, base)
    chex.assert_trees_all_close(
        device.nominal_steps(linear), device.nominal_steps(start), rtol=1e-4
    )
    # The derivative along a curved line is the chain rule through its tangent.
    grad = codesign.Knobs(*(jnp.float32(x) for x in (1.0, 2.0, 3.0, 0.0, 0.0, 0.0)))
    along = codesign.directional(grad, lines["window_at_levels"], k0, -8.0)
    h = 1e-2
    ks = [lines["window_at_levels"].at(k0, jnp.float32(-8.0 + e)) for e in (h, -h)]
    slope = sum(g * (u - v) / (2 * h) for g, u, v in zip(grad, *ks, strict=True))
    np.testing.assert_allclose(along, slope, rtol=1e-2)


def test_check_study_names_the_flag():
    good = codesign.Study(sigma_w=(0.5, 1.0), rhos=(1.0, 2.0))
    assert codesign.check_study(good) is good
    for bad, flag in (
        (good._replace(sigma_w=(-1.0,)), "--sigma_w"),
        (good._replace(rhos=(0.0,)), "--rhos"),
        (good._replace(parts=("check", "plots")), "--parts"),
        (good._replace(steps=0), "--steps"),
        (good._replace(tasks_per_step=1), "--tasks_per_step"),
        (good._replace(lr=float("nan")), "--lr"),
    ):
        with pytest.raises(errors.ConfigError, match=flag):
            codesign.check_study(bad)


# The study (codesign/study.py), part by part, on the tiny network.

NORM = (0.0, 1.0)


@pytest.fixture(scope="module")
def setup(meta):
    # 0.1 is no float32 number: the preset's rho must still be found under the study's 0.1.
    study = codesign.Study(
        sigma_w=(0.1, 1.0),
        rhos=(0.5, 2.0),
        val_tasks=2,
        test_tasks=2,
        check_tasks=2,
        sensitivity_tasks=2,
        steps=2,
        tasks_per_step=2,
        chunk=2,
    )
    splits = synthetic.load_synthetic(seed=0, image_size=16)
    return codesign.Setup(study, codesign.Problem(MODEL), CFG, meta, splits, NORM, device.paper())


def _one_level(setup, sigma_w=1.0, **problem):
    study = setup.study._replace(sigma_w=(sigma_w,))
    return setup._replace(study=study, problem=setup.problem._replace(**problem))


def test_preset_rho_is_chosen_per_level_by_position(setup, monkeypatch):
    # Fake accuracies: at 0.1 rho 2 wins, at 1 rho 0.5 (the smaller rho wins ties otherwise).
    def sweep(key, meta, images, norm, devices, grid, num_tasks, *args):
        wins = ((grid.sigma_w == np.float32(0.1)) & (grid.rho == 2.0)) | (
            (grid.sigma_w == 1.0) & (grid.rho == 0.5)
        )
        return np.repeat(wins.astype(np.float32)[:, None], num_tasks, axis=1)

    monkeypatch.setattr(evaluation, "sweep", sweep)
    rows, rho = codesign.preset_rho(setup)
    assert rho == {0.1: 2.0, 1.0: 0.5}
    assert [(np.float32(r["sigma_w"]), r["rho"]) for r in rows] == [
        (np.float32(0.1), 0.5),
        (np.float32(0.1), 2.0),
        (1.0, 0.5),
        (1.0, 2.0),
    ]


def test_preset_rho_is_roas_choice_on_validation(setup):
    rows, rho = codesign.preset_rho(setup)
    assert list(rho) == [0.1, 1.0]  # the study's values, not float32 roundings
    # evaluation keys its choice by the grid's float32 noise level; the same rho per level.
    whole = evaluation.best_rho(rows)
    assert rho == {s: whole[float(np.float32(s))] for s in setup.study.sigma_w}
    assert all(r["tasks"] == setup.study.val_tasks for r in rows)


def test_gradient_check_rows_are_the_check_of_each_device_at_the_presets_rho(setup):
    one = _one_level(setup)
    rows = codesign.gradient_check_rows(one, {1.0: 2.0})
    assert [(r["device"], r["knob"]) for r in rows] == [
        (d, k) for d in ("preset", "1000x finer") for k in codesign.DEFAULT_FREE
    ]
    assert all(r["sigma_w"] == 1.0 and r["tasks"] == 2 for r in rows)
    # The preset's rows: `gradient_check` on the check's tasks and keys (study.py, _KEY_INDEX).
    key = one.key("check")
    episodes = codesign.sample_tasks(key, one.splits["val"], NORM, 2, (5, 1, 3))
    expected = codesign.gradient_check(
        jax.random.fold_in(key, 1),
        codesign.knobs(one.base, 2.0),
        one.meta,
        episodes,
        one.base,
        jnp.float32(1.0),
        POLICY,
        MODEL,
        codesign.DEFAULT_FREE,
        one.problem.fd_step,
    )
    assert rows[:4] == [{"device": "preset", "sigma_w": 1.0, **r} for r in expected]
    # A 1000x finer device is another device: its check differs.
    assert rows[4]["loss"] != rows[0]["loss"]


def test_sensitivity_rows_meet_at_the_preset(setup):
    one = _one_level(setup)
    rows = codesign.sensitivity_rows(one, {1.0: 2.0}, log=lambda _: None)
    dirs = codesign.directions(one.base)
    assert len(rows) == sum(len(d.offsets) for d in dirs)
    start = [r for r in rows if r["offset"] == 0.0]
    # Every line passes through the preset at its rho: the same loss and accuracy there.
    assert len(start) == len(dirs)
    assert len({(r["loss"], r["accuracy"]) for r in start}) == 1
    (rho_row,) = [r for r in start if r["direction"] == "rho"]
    np.testing.assert_allclose(rho_row["value"], 2.0, rtol=1e-6)
    # and not everywhere the same: rho moves the loss.
    assert len({r["loss"] for r in rows if r["direction"] == "rho"}) > 1


def test_optimize_devices_runs_optimize_from_the_preset_and_tunes_rho_alone(setup):
    one = _one_level(setup, sigma_w=0.5, free=("a_plus", "rho"))
    found, tuned = codesign.optimize_devices(one, {0.5: 2.0}, log=lambda _: None)
    assert list(found) == [0.5] and list(tuned) == [0.5]
    # The device found: `optimize` from the preset at its rho, with the documented key.
    key = jax.random.fold_in(one.key("optimize"), 500)
    args = (one.base, 2.0, one.meta, one.splits["val"], NORM, (5, 1, 3), 0.5)
    study = one.study
    steps = (study.steps, study.tasks_per_step, study.lr, study.meta_lr)
    expected = codesign.optimize(key, *args, one.problem, *steps)
    chex.assert_trees_all_equal(found[0.5].params, expected.params)
    assert found[0.5].history == expected.history
    rho_only = codesign.optimize(key, *args, one.problem._replace(free=("rho",)), *steps)
    assert tuned[0.5] == rho_only.rho != found[0.5].rho
    rows = codesign.history_rows(found)
    assert [(r["sigma_w"], r["step"]) for r in rows] == [(0.5, 1), (0.5, 2)]
    # No rho-only baseline where rho is all that moves, or where theta_0 moves too.
    for problem in (dict(free=("rho",)), dict(free=("a_plus", "rho"), joint=True)):
        assert not codesign.study._tunes_rho_alone(one.problem._replace(**problem))


def test_comparison_rows_pair_the_tasks_of_every_device(setup):
    # Devices "found" equal to the preset at its rho: the same tasks and noise, so every gain
    # is exactly 0 (paired per task), at every noise level.
    rho = {0.1: 2.0, 1.0: 2.0}
    found = {s: codesign.Result(setup.base, 2.0, setup.meta, []) for s in rho}
    rows = codesign.comparison_rows(setup, rho, found, dict(rho))
    assert [(r["optimized_at"], r["sigma_w"]) for r in rows] == [
        (0.1, 0.1),
        (1.0, 0.1),
        (0.1, 1.0),
        (1.0, 1.0),
    ]
    for r in rows:
        assert r["gain"] == 0.0 and r["gain_ci"] == 0.0, r
        assert r["gain_over_tuned"] == 0.0 and r["preset_tuned_rho"] == 2.0, r
        assert r["tasks"] == setup.study.test_tasks
    # Joint: each found theta_0 goes with its own device only; no rho-only baseline.
    joint = setup._replace(problem=setup.problem._replace(joint=True))
    rows = codesign.comparison_rows(joint, rho, found, {})
    assert [(r["optimized_at"], r["sigma_w"]) for r in rows] == [(0.1, 0.1), (1.0, 1.0)]
    assert all("gain_over_tuned" not in r for r in rows)


def test_run_study_writes_every_part(setup, tmp_path):
    study = setup.study._replace(sigma_w=(1.0,), check_granularity=0.0, steps=1)
    problem = setup.problem._replace(free=("a_plus", "rho"))
    logged = []
    results = codesign.run_study(
        study, problem, CFG, setup.meta, setup.splits, NORM, setup.base, tmp_path, logged.append
    )
    assert json.loads((tmp_path / "results.json").read_text())["preset_rho"] == {
        "1.0": results["preset_rho"]["1.0"]
    }
    assert set(results["seconds"]) == {"rho", "check", "sensitivity", "optimize", "test"}
    lines = lambda name: (tmp_path / name).read_text().splitlines()
    assert len(lines("rho_val.csv")) == 1 + len(study.rhos)
    assert len(lines("gradient_check.csv")) == 1 + len(codesign.DEFAULT_FREE)  # preset only
    assert len(lines("optimization.csv")) == 1 + study.steps
    assert len(results["comparison"]) == 1 and "gain_over_tuned" in results["comparison"][0]
    assert device.load_params(tmp_path / "devices" / "found_sigma1.json").lam > 0
    for name in ("sensitivity.png", "optimization.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| found at |" in (tmp_path / "comparison.md").read_text()
    assert any(m.startswith("preset rho on validation: {1.0: ") for m in logged)
