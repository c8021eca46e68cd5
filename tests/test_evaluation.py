"""The evaluation engine (evaluation.py): grids, sweeps, summaries and the rho rule."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roa_jax import config, device, evaluation, train
from roa_jax.data import synthetic

# A tiny untrained conv4 (8 filters) on Omniglot-sized synthetic tasks; an inner rate of 0.5
# makes one step change its predictions (at 0.1 most points score chance on every task).
CFG = dataclasses.replace(
    config.model_config("synthetic_5w1s", "roa", "tiny"), width=8, n_query=3, inner_lr=0.5
)
PAPER = evaluation.stack([device.paper()])
# Two devices that differ only in their write-noise law.
TWO_LAWS = [device.paper(), device.with_noise(device.paper(), "linear")]


@pytest.fixture(scope="module")
def images():
    return synthetic.load_synthetic(seed=0)["test"]


@pytest.fixture(scope="module")
def meta():
    return train.init_meta(CFG, (28, 28, 1))


def _setting(kind="adapt", num_steps=1):
    return evaluation.Setting(
        kind=kind,
        model=train.build_model(CFG),
        n_way=5,
        k_shot=1,
        n_query=3,
        num_steps=num_steps,
        chunk=2,
    )


def _sweep(images, meta, devices, grid, num_tasks, setting, strategy="loop"):
    key = jax.random.PRNGKey(3)
    return evaluation.sweep(
        key, meta, images, (0.0, 1.0), devices, grid, num_tasks, setting, strategy=strategy
    )


# Points that differ in device, noise, rho and seed (not a product: fewer compiles).
POINTS = evaluation.Grid(
    device=np.array([0, 1, 0, 1, 0], np.int32),
    sigma_w=np.array([0.0, 1.5, 1.5, 1.5, 1.5], np.float32),
    rho=np.array([1.0, 1.0, 1.0, 2.0, 2.0], np.float32),
    seed=np.array([0, 0, 0, 0, 1], np.int32),
)


@pytest.fixture(scope="module")
def looped(images, meta):
    return _sweep(images, meta, evaluation.stack(TWO_LAWS), POINTS, 3, _setting(), "loop")


# jax/jaxlib 0.10.2: XLA:CPU miscompiled jit(vmap(...)) of a one-step-adapted conv4 while its
# max-pool was a reshaped max (results far from the per-point programs); with the pool's forward
# a reduce-window (models._signed_max_pool) the vmapped sweep equals the loop on CPU too.
@pytest.mark.parametrize("strategy", ["map", "vmap", "unroll"])
def test_sweep_equals_a_loop_of_single_point_evaluations(images, meta, looped, strategy):
    swept = _sweep(images, meta, evaluation.stack(TWO_LAWS), POINTS, 3, _setting(), strategy)
    assert swept.shape == looped.shape == (5, 3)  # 3 tasks: two chunks of 2, cut
    # Every strategy, on every backend: the same per-task accuracies (on accelerators the sweep
    # runs in full float32, batching.sweep_precision; TF32 had flipped ~11 queries in 15 tasks).
    np.testing.assert_allclose(swept, looped, rtol=0, atol=1e-6)


def test_the_point_decides_the_result(looped):
    # sigma_w, device and rho each change the accuracies of the same tasks; a seed its tasks.
    assert len({tuple(row) for row in looped}) == len(looped)


def test_grid_is_the_cartesian_product_devices_slowest():
    grid = evaluation.make_grid([0.0, 1.0], [1.0, 2.0, 4.0], [0, 1], devices=(0, 1))
    points = list(zip(*(x.tolist() for x in grid), strict=True))
    assert len(points) == len(set(points)) == 2 * 2 * 3 * 2
    assert (1, 1.0, 4.0, 1) in points
    assert [p[0] for p in points] == [0] * 12 + [1] * 12
    single = evaluation.make_grid([0.0], [1.0], [0, 1])
    assert single.device.tolist() == [0, 0]


def test_summary_averages_seeds_and_pools_tasks_for_the_interval():
    grid = evaluation.make_grid([0.0], [1.0], [0, 1])
    acc = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    (row,) = evaluation.summarize(acc, grid)
    assert "device" not in row
    assert row["accuracy"] == pytest.approx(0.75)
    assert row["seed_accuracies"] == [0.5, 1.0]
    assert row["tasks"] == 8
    assert row["task_accuracies"] == acc.ravel().tolist()  # seed by seed, for paired differences
    # The interval of the 8 pooled tasks, not of the 2 seed means.
    expected = 1.96 * np.std(acc.ravel(), ddof=1) / np.sqrt(8)
    assert row["ci95"] == pytest.approx(expected, rel=1e-5)


def test_summary_rows_carry_the_device_of_a_multi_device_grid():
    grid = evaluation.make_grid([0.0, 1.0], [1.0], [0], devices=(0, 1))
    acc = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0], [1.0, 1.0]])
    rows = evaluation.summarize(acc, grid)
    keys = [(r["device"], r["sigma_w"]) for r in rows]
    assert keys == [(0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)]
    assert [r["accuracy"] for r in rows] == [0.5, 0.5, 0.0, 1.0]


def test_best_rho_is_the_argmax_per_noise_level_ties_to_the_smaller_rho():
    rows = [
        {"sigma_w": 0.0, "rho": 2.0, "accuracy": 0.9},  # a tie, listed first
        {"sigma_w": 0.0, "rho": 1.0, "accuracy": 0.9},
        {"sigma_w": 0.0, "rho": 4.0, "accuracy": 0.8},
        {"sigma_w": 1.0, "rho": 1.0, "accuracy": 0.5},
        {"sigma_w": 1.0, "rho": 4.0, "accuracy": 0.7},
        {"sigma_w": 1.0, "rho": 2.0, "accuracy": 0.6},
    ]
    assert evaluation.best_rho(rows) == {0.0: 1.0, 1.0: 4.0}


def test_best_rho_per_device_and_noise_level():
    rows = [
        {"device": d, "sigma_w": 1.0, "rho": rho, "accuracy": acc}
        for d, rho, acc in [(0, 1.0, 0.5), (0, 2.0, 0.6), (1, 1.0, 0.7), (1, 2.0, 0.6)]
    ]
    assert evaluation.best_rho(rows) == {(0, 1.0): 2.0, (1, 1.0): 1.0}


def test_ideal_device_hardware_adaptation_equals_origin(images, meta):
    # Inside the crossbars' weight range [-1, 1] (as the ROA constraint keeps a trained net).
    meta = meta._replace(params=jax.tree.map(lambda x: jnp.clip(x, -0.5, 0.5), meta.params))
    grid = evaluation.make_grid([0.0], [1.0], [0])
    ideal = evaluation.stack([device.ideal()])
    hardware = _sweep(images, meta, ideal, grid, 4, _setting("adapt"))
    origin = _sweep(images, meta, ideal, grid, 4, _setting("origin"))
    np.testing.assert_allclose(hardware, origin)
    # ... while the paper's device at the same (zero) noise is not exact.
    paper = _sweep(images, meta, PAPER, grid, 4, _setting("adapt"))
    assert not np.array_equal(paper, origin)


def test_multi_device_rows_equal_separate_single_device_sweeps(images, meta):
    sigmas, rhos = [1.0], [1.0, 2.0]
    grid = evaluation.make_grid(sigmas, rhos, [0], devices=(0, 1))
    both = evaluation.summarize(
        _sweep(images, meta, evaluation.stack(TWO_LAWS), grid, 4, _setting()), grid
    )
    single = evaluation.make_grid(sigmas, rhos, [0])
    for d, params in enumerate(TWO_LAWS):
        alone = _sweep(images, meta, evaluation.stack([params]), single, 4, _setting())
        rows = [{k: v for k, v in r.items() if k != "device"} for r in both if r["device"] == d]
        assert rows == evaluation.summarize(alone, single)
    # The noise law matters: the two devices' rows differ.
    assert [r["accuracy"] for r in both[:2]] != [r["accuracy"] for r in both[2:]]


def test_offline_depends_on_noise(images):
    grid = evaluation.make_grid([0.0, 3.0], [1.0], [0])
    acc = _sweep(images, None, PAPER, grid, 4, _setting("offline", num_steps=3))
    assert acc.shape == (2, 4)
    assert np.all((acc >= 0) & (acc <= 1))
    assert not np.array_equal(acc[0], acc[1])  # same tasks; sigma_w = 3 changes the mapping


def test_the_loop_compiles_one_scheme_program_for_splits_of_any_size(images, meta):
    # A validation and a test split differ in their number of classes: only the (cheap) task
    # draw is compiled per split, the adaptation program once for both.
    setting, grid = _setting(num_steps=2), evaluation.make_grid([0.5], [1.0], [0, 1])
    before = evaluation._tasks_round._cache_size()
    for classes in (images[:12], images):
        _sweep(classes, meta, PAPER, grid, 2, setting)
    assert evaluation._tasks_round._cache_size() == before + 1
