"""ROA, its constraint, and the schemes it is compared with (roa_jax/roa.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from roa_jax import device, maml, models, roa, writers
from roa_jax.data import episodes as episodes_lib
from roa_jax.data import synthetic

N_WAY = 3


def _episodes(num_tasks=3, seed=0):
    images = synthetic.synthetic_classes(seed, 10, 20, image_size=16)
    return episodes_lib.sample_episodes(jax.random.PRNGKey(seed), images, num_tasks, N_WAY, 1, 4)


def _meta(model, inner_lr=0.4):
    return maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, 16, 16, 1)), 1, inner_lr)


def test_constraint_zero_inside_positive_outside_the_bound():
    inside = {"a": {"kernel": jnp.array([0.2, -0.25, 0.0])}}
    outside = {"a": {"kernel": jnp.array([0.2, -0.35, 0.5])}}
    assert float(roa.constraint(inside, 4.0)) == 0.0
    np.testing.assert_allclose(roa.constraint(outside, 4.0), 0.1**2 + 0.25**2, rtol=1e-5)
    assert float(roa.constraint(outside, 1.0)) == 0.0  # k = 1: the full range (ROA-WC)
    # Only crossbar weights count: biases (periphery) and BN (frozen) are not bounded.
    others = {"a": {"bias": jnp.array([5.0])}, "bn": {"scale": jnp.array([3.0])}}
    assert float(roa.constraint({**inside, **others}, 4.0)) == 0.0
    # A custom placement that puts the bias on crossbars bounds it too.
    bias_too = lambda path: models.CROSSBAR if path[-1] == "bias" else models.FROZEN
    np.testing.assert_allclose(roa.constraint(others, 1.0, bias_too), 4.0**2, rtol=1e-6)


def test_weight_shares_count_what_the_constraint_acts_on():
    params = {
        "conv0": {"kernel": jnp.array([0.1, -0.3, 0.95, -1.0]), "bias": jnp.array([9.0])},
        "head": {"kernel": jnp.array([[0.2, 0.26], [-0.5, 0.0]])},
        "bn": {"scale": jnp.array([3.0])},
    }
    shares = roa.weight_shares(params, 4.0)
    assert set(shares) == {"conv0/kernel", "head/kernel"}  # crossbar weights only
    conv = shares["conv0/kernel"]
    assert (conv["beyond"], conv["near_ends"], conv["size"]) == (0.75, 0.5, 4)
    assert conv["median"] == np.median([0.1, 0.3, 0.95, 1.0])
    assert shares["head/kernel"]["beyond"] == 0.5 and shares["head/kernel"]["near_ends"] == 0.0
    assert roa.weight_shares(params, 2.0)["conv0/kernel"]["beyond"] == 0.5
    # Exactly where the penalty is positive: the same bound as roa.constraint.
    w = params["conv0"]["kernel"]
    assert float(roa.constraint({"c": {"kernel": w[:1]}}, 4.0)) == 0.0
    assert float(roa.constraint({"c": {"kernel": w[1:2]}}, 4.0)) > 0.0


def test_adapt_tasks_without_hardware_is_exact_adaptation():
    model = models.Conv4(N_WAY, 8, 2)
    meta, episodes = _meta(model), _episodes()
    key = jax.random.PRNGKey(3)
    adapt_tasks = jax.jit(
        lambda meta, rho: roa.adapt_tasks(key, model, meta, episodes, 1, None, rho, "unroll")
    )
    accs = adapt_tasks(meta, 1.0)
    keys = jax.random.split(key, 3)
    adapt = jax.jit(lambda k, ep: maml.adapt(k, model, meta, ep, 1).accuracy[-1])
    expected = [adapt(keys[i], jax.tree.map(lambda x, i=i: x[i], episodes)) for i in range(3)]
    chex.assert_shape(accs, (3,))
    chex.assert_trees_all_close(accs, jnp.stack(expected))
    # rho multiplies every rate.
    doubled = meta._replace(lslr=jax.tree.map(lambda r: 2 * r, meta.lslr))
    chex.assert_trees_all_close(adapt_tasks(meta, 2.0), adapt_tasks(doubled, 1.0))
    assert not np.array_equal(adapt_tasks(meta, 2.0), accs) or not np.array_equal(
        adapt_tasks(meta, 8.0), accs
    )


def test_offline_depends_on_noise_and_is_keyed():
    model = models.Conv4(N_WAY, 8)
    episodes = _episodes(num_tasks=4)

    @jax.jit
    @chex.assert_max_traces(n=1)  # the noise level is traced
    def offline(key, sigma_w):
        hw = writers.hardware(device.paper(), sigma_w)
        return roa.offline_tasks(key, model, episodes, 3, 0.5, hw, task_batching="unroll")

    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    quiet, noisy = offline(k1, 0.0), offline(k1, 3.0)
    chex.assert_shape(noisy, (4,))
    assert np.all((np.asarray(noisy) >= 0) & (np.asarray(noisy) <= 1))
    chex.assert_trees_all_equal(noisy, offline(k1, 3.0))
    assert not np.array_equal(quiet, noisy)
    assert not np.array_equal(noisy, offline(k2, 3.0))
    # Each task has its own key: offline_tasks is offline_adapt per task on split keys.
    keys = jax.random.split(k1, 4)
    hw = writers.hardware(device.paper(), 3.0)
    first = jax.jit(roa.offline_adapt, static_argnums=(1, 3))(
        keys[0], model, jax.tree.map(lambda x: x[0], episodes), 3, 0.5, hw
    )
    chex.assert_trees_all_close(first, noisy[0])


def test_offline_more_sgd_steps_fit_the_support_set_on_an_ideal_device():
    model = models.Conv4(N_WAY, 8)
    ep = jax.tree.map(lambda x: x[0], _episodes(num_tasks=1))
    # Score the support set itself: how well the mapped network fits what it was trained on.
    on_support = ep._replace(query_x=ep.support_x, query_y=ep.support_y)
    hw = writers.hardware(device.ideal(), 0.0)
    key = jax.random.PRNGKey(4)
    offline = jax.jit(roa.offline_adapt, static_argnums=(1, 3))
    fit = [float(offline(key, model, on_support, n, 0.5, hw)) for n in (0, 20)]
    assert fit[0] < 1.0
    assert fit[1] == 1.0


def test_write_pulses_count_what_one_write_changes():
    model = models.Conv4(N_WAY, 8)
    meta, ep = _meta(model, inner_lr=0.05), jax.tree.map(lambda x: x[0], _episodes(num_tasks=1))
    params = device.calibrated()
    pulses = jax.jit(
        lambda rho, s: roa.write_pulses(model, meta, ep, writers.hardware(params, s), rho)
    )
    counts = pulses(1.0, 0.0)
    chex.assert_trees_all_equal(counts, pulses(1.0, 2.0))  # noise does not change the counts
    assert all(float(jnp.sum(n)) == 0.0 for n in pulses(1e-6, 0.0).values())
    totals = [sum(float(jnp.sum(n)) for n in pulses(r, 0.0).values()) for r in (1.0, 4.0, 16.0)]
    assert 0 < totals[0] < totals[1] < totals[2]
    # A device gets no pulse exactly where its wanted change is under half a nominal step
    # (open loop), and one where it is between half and 1.5 steps.
    groups = models.split(meta.params)
    weights = {p: jnp.clip(w, -1, 1) for p, w in groups[models.CROSSBAR].items()}
    dw = maml.inner_update(model, meta, ep, weights, groups[models.DIGITAL], 0)
    step_up, step_down = device.nominal_steps(params)
    g_min, g_max = device.conductance_range(params)
    for p, n in counts.items():
        steps = dw[p] * (g_max - g_min) / 2 / jnp.where(dw[p] >= 0, step_up, -step_down)
        clear = jnp.abs(jnp.abs(steps) - 0.5) > 1e-3  # away from the rounding's tie
        chex.assert_trees_all_equal((n == 0)[clear], (jnp.abs(steps) < 0.5)[clear])
        one = clear & (jnp.abs(steps) > 0.5) & (jnp.abs(steps) < 1.499)
        assert bool(jnp.all(n[one] == 1))
