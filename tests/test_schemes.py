"""The learning rules with values: LSLR, rho, ROA's write, the 5-step update and the offline
scheme, each on a two-layer linear network whose result is computed here by hand in float64
numpy (the softmax gradient written out, the device's Eqs. 1-6 written out), never through the
code under test. Each test also shows that its case is sensitive: a plausible mistake (a rate
from the wrong layer or step, steps halved) changes the hand result by more than the tolerance.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from roa_jax import device, maml, roa, writers
from roa_jax.data.episodes import Episode

N_WAY, DIM, HIDDEN = 5, 8, 6


class _Linear(nn.Module):
    """x -> x W1 + b1 -> (.) W2 + b2: no nonlinearity, so every gradient is a matrix product."""

    @nn.compact
    def __call__(self, x, step=0):
        hidden = nn.Dense(HIDDEN, name="hidden")(x.reshape(x.shape[0], -1))
        return nn.Dense(N_WAY, name="head")(hidden)


def _episode(seed=0, shots=2, queries=20) -> Episode:
    rng = np.random.default_rng(seed)
    means = 1.5 * rng.standard_normal((N_WAY, DIM))

    def sample(per_class):
        y = np.repeat(np.arange(N_WAY), per_class)
        return (means[y] + rng.standard_normal((y.size, DIM))).astype(np.float32), y

    (sx, sy), (qx, qy) = sample(shots), sample(queries)
    return Episode(jnp.asarray(sx), jnp.asarray(sy, jnp.int32), jnp.asarray(qx), jnp.asarray(qy))


def _numpy(params) -> dict:
    return {p: np.asarray(v, np.float64) for p, v in traverse_util.flatten_dict(params).items()}


def _logits(theta, x):
    x = np.asarray(x, np.float64)
    hidden = x @ theta["hidden", "kernel"] + theta["hidden", "bias"]
    return hidden @ theta["head", "kernel"] + theta["head", "bias"]


def _loss(theta, x, y):
    z = _logits(theta, x)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(len(y)), np.asarray(y)])


def _accuracy(theta, x, y):
    z = np.sort(_logits(theta, x), axis=1)
    assert np.min(z[:, -1] - z[:, -2]) > 1e-4, "a near-tied query: pick another case"
    return np.mean(np.argmax(_logits(theta, x), axis=1) == np.asarray(y))


def _gradient(theta, x, y) -> dict:
    """d(mean cross-entropy)/d(theta) of the linear network, by the chain rule."""
    x = np.asarray(x, np.float64)
    hidden = x @ theta["hidden", "kernel"] + theta["hidden", "bias"]
    z = hidden @ theta["head", "kernel"] + theta["head", "bias"]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = (p - np.eye(N_WAY)[np.asarray(y)]) / len(y)
    dh = dz @ theta["head", "kernel"].T
    return {
        ("head", "kernel"): hidden.T @ dz,
        ("head", "bias"): dz.sum(axis=0),
        ("hidden", "kernel"): x.T @ dh,
        ("hidden", "bias"): dh.sum(axis=0),
    }


def _meta(rates: dict, seed=0) -> maml.MetaParams:
    """theta_0 of the linear network with the LSLR rates `rates` {(layer, leaf): [S]}."""
    num_steps = len(next(iter(rates.values())))
    meta = maml.init(jax.random.PRNGKey(seed), _Linear(), jnp.zeros((1, DIM)), num_steps, 0.0)
    lslr = {p: jnp.asarray(r, jnp.float32) for p, r in rates.items()}
    return meta._replace(lslr=traverse_util.unflatten_dict(lslr))


# Distinct per layer, leaf and step: a rate read from the wrong one changes the result.
RATES = {
    ("hidden", "kernel"): [0.9, 0.3, 0.6],
    ("hidden", "bias"): [0.7, 0.2, 0.4],
    ("head", "kernel"): [1.3, 0.5, 0.8],
    ("head", "bias"): [1.1, 0.25, 0.45],
}


class _Device:
    """The `paper` device's Eqs. 2-6 written out in float64 from its constants."""

    def __init__(self, params: device.DeviceParams):
        p = {k: float(v) for k, v in params._asdict().items()}
        v = p["v_read"]
        self.g_min = p["alpha"] * (1 - np.exp(-p["beta"] * v)) / v
        self.g_max = p["gamma"] * np.sinh(p["delta"] * v) / v
        self.span = self.g_max - self.g_min
        self.mid, self.half = (self.g_max + self.g_min) / 2, self.span / 2
        rate = lambda volts: p["lam"] * abs(np.exp(p["eta1"] * volts) - np.exp(-p["eta2"] * volts))
        self.a_up, self.a_down = rate(p["v_set"]) * p["t_p"], rate(p["v_reset"]) * p["t_p"]
        assert p["window"] == 1.0

    def write(self, weights, dw):
        """One open-loop write of dw onto weights mapped around the midpoint, no noise."""
        g = self.mid + np.clip(weights, -1, 1) * self.half
        dg = dw * self.half
        # The nominal steps: one pulse from w = 0.5.
        up, down = (
            0.5 * self.span * -np.expm1(-self.a_up),
            0.5 * self.span * -np.expm1(-self.a_down),
        )
        wanted = np.where(dg >= 0, dg / up, dg / down)
        fraction = np.abs(wanted - np.floor(wanted) - 0.5)
        assert fraction.min() > 1e-4, "a pulse count near a rounding tie: pick another case"
        n = np.round(wanted)
        w = (g - self.g_min) / self.span
        w_new = np.where(n >= 0, 1 - (1 - w) * np.exp(-self.a_up * n), w * np.exp(self.a_down * n))
        return (self.g_min + self.span * w_new - self.mid) / self.half, n


def _adapt_by_hand(theta, episode, rates, num_steps, rho=1.0, hw: _Device | None = None):
    """The query loss after each of `num_steps` inner updates; step t uses rate min(t, S-1)."""
    theta, losses = dict(theta), []
    if hw is not None:  # programming clips the weights to the crossbar's range
        theta = {p: np.clip(v, -1, 1) if p[-1] == "kernel" else v for p, v in theta.items()}
    for t in range(num_steps):
        grads = _gradient(theta, episode.support_x, episode.support_y)
        for p, g in grads.items():
            step = -rho * rates[p][min(t, len(rates[p]) - 1)] * g
            written = hw is not None and p[-1] == "kernel"
            theta[p] = hw.write(theta[p], step)[0] if written else theta[p] + step
        losses.append(_loss(theta, episode.query_x, episode.query_y))
    return np.array(losses), theta


def _adapt(meta, episode, num_steps, rho=1.0, hw=None):
    writer = writers.writer(hw)
    return maml.adapt(jax.random.PRNGKey(3), _Linear(), meta, episode, num_steps, writer, rho)


def test_lslr_each_layer_leaf_and_step_its_own_rate_times_rho():
    meta, episode = _meta(RATES), _episode()
    theta = _numpy(meta.params)
    # Four steps of a three-step meta-training: the fourth reuses the last rate.
    expected, _ = _adapt_by_hand(theta, episode, RATES, 4, rho=1.5)
    result = _adapt(meta, episode, 4, rho=1.5)
    np.testing.assert_allclose(result.loss, expected, rtol=2e-5)
    # Sensitive: the first layer's rates everywhere, or the steps shifted by one, differ.
    first = {p: RATES["hidden", p[1]] for p in RATES}
    shifted = {p: r[1:] + r[-1:] for p, r in RATES.items()}
    for wrong in (first, shifted):
        assert (
            np.max(np.abs(_adapt_by_hand(theta, episode, wrong, 4, rho=1.5)[0] - expected)) > 1e-3
        )
    assert np.max(np.abs(_adapt_by_hand(theta, episode, RATES, 4)[0] - expected)) > 1e-3


def test_roa_one_write_and_the_five_step_update_on_the_paper_device():
    # sigma_w = 0: the write is the quantized, non-linear open-loop update alone.
    params = device.paper()
    rates = {p: [0.6 * r for r in RATES[p]] + [0.3, 0.2] for p in RATES}  # five steps
    meta, episode = _meta(rates, seed=1), _episode(seed=1)
    theta, hand = _numpy(meta.params), _Device(params)
    hw = writers.hardware(params, 0.0)
    for num_steps, rho in ((1, 2.0), (5, 1.0)):
        expected, adapted = _adapt_by_hand(theta, episode, rates, num_steps, rho, hand)
        result = _adapt(meta, episode, num_steps, rho, hw)
        np.testing.assert_allclose(result.loss, expected, rtol=1e-4)
        # Sensitive: the exact update lands elsewhere, by more than the tolerance.
        exact, _ = _adapt_by_hand(theta, episode, rates, num_steps, rho)
        assert abs(exact[-1] - expected[-1]) > 1e-2 * expected[-1]
        # Several pulses per write, of both polarities, and some updates under half a step.
        _, counts = hand.write(
            theta["head", "kernel"],
            -rho
            * rates["head", "kernel"][0]
            * _gradient(theta, episode.support_x, episode.support_y)["head", "kernel"],
        )
        assert counts.min() < 0 < counts.max() and np.any(counts == 0)
        assert not np.allclose(adapted["hidden", "kernel"], theta["hidden", "kernel"])


@pytest.mark.parametrize("num_steps", [4, 12])
def test_offline_sgd_in_software_then_one_write_from_blank_crossbars(num_steps):
    params, episode = device.paper(), _episode(seed=2, queries=40)
    key, lr = jax.random.PRNGKey(5), 0.5
    # The code's own Gaussian initialization, from the key's first half as offline_adapt splits it.
    init = _numpy(_Linear().init(jax.random.split(key)[0], episode.support_x)["params"])
    hand = _Device(params)

    def by_hand(steps):
        theta = dict(init)
        for _ in range(steps):
            grads = _gradient(theta, episode.support_x, episode.support_y)
            theta = {p: v - lr * grads[p] for p, v in theta.items()}
        mapped = {
            p: hand.write(np.zeros_like(v), v)[0] if p[-1] == "kernel" else v
            for p, v in theta.items()
        }
        return _accuracy(mapped, episode.query_x, episode.query_y)

    expected = by_hand(num_steps)
    got = roa.offline_adapt(key, _Linear(), episode, num_steps, lr, writers.hardware(params, 0.0))
    assert float(got) == pytest.approx(expected, abs=1e-6)
    assert by_hand(num_steps // 2) != expected  # sensitive to the number of steps
