"""Writers: exact updates and crossbar writes (roa_jax/writers.py)."""

import chex
import jax
import jax.numpy as jnp
import pytest

from roa_jax import crossbar, device, writers


def _weights(seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        ("conv0", "kernel"): 0.3 * jax.random.normal(k1, (3, 3, 1, 4)),
        ("head", "kernel"): 0.3 * jax.random.normal(k2, (16, 5)),
    }


def _update(weights, scale=0.05, seed=1):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(weights))
    return {
        p: scale * jax.random.normal(k, w.shape)
        for (p, w), k in zip(weights.items(), keys, strict=True)
    }


def test_software_writer_is_exact():
    w, dw = _weights(), _update(_weights())
    writer = writers.software()
    state = writer.start(jax.random.PRNGKey(0), w)
    chex.assert_trees_all_equal(writer.read(state), w)
    state = writer.write(jax.random.PRNGKey(1), state, dw)
    chex.assert_trees_all_equal(writer.read(state), jax.tree.map(jnp.add, w, dw))
    chex.assert_trees_all_equal(writers.writer(None).write(None, w, dw), writer.write(None, w, dw))


@pytest.mark.parametrize("differential", [False, True])
def test_ideal_device_at_zero_noise_reproduces_the_update(differential):
    w, dw = _weights(), _update(_weights())
    exact = jax.tree.map(jnp.add, w, dw)
    ideal = writers.crossbars(writers.hardware(device.ideal(), 0.0), differential)
    state = ideal.start(jax.random.PRNGKey(0), w)
    clipped = jax.tree.map(lambda x: jnp.clip(x, -1, 1), w)
    chex.assert_trees_all_close(ideal.read(state), clipped, atol=1e-6)  # float32 conductances
    state = ideal.write(jax.random.PRNGKey(1), state, dw)
    # 1e6 steps across [-1, 1]: rounding moves a weight by at most ~1e-6.
    chex.assert_trees_all_close(ideal.read(state), exact, atol=2e-5)
    # The paper's device (30 pulses across the range) quantizes the same update visibly.
    paper = writers.crossbars(writers.hardware(device.paper(), 0.0), differential)
    written = paper.read(paper.write(jax.random.PRNGKey(1), paper.start(None, w), dw))
    error = max(float(jnp.max(jnp.abs(written[p] - exact[p]))) for p in exact)
    assert error > 0.01


def test_write_verify_programming_reaches_tolerance():
    w = _weights()
    writer = writers.crossbars(writers.hardware(device.paper(), 0.02), verify_tol=0.05)
    programmed = writer.read(writer.start(jax.random.PRNGKey(3), w))
    for p, target in w.items():
        error = jnp.abs(programmed[p] - jnp.clip(target, -1, 1))
        assert float(jnp.max(error)) <= 0.05
        assert float(jnp.max(error)) > 1e-4  # programmed for real, not exactly
    # The same from a blank array by `crossbar.write_verify` itself.
    params = device.paper()
    blank = crossbar.program(jnp.zeros_like(w["head", "kernel"]), params)
    _, stats = crossbar.write_verify(
        jax.random.PRNGKey(0), blank, w["head", "kernel"], params, 0.02, tol=0.05
    )
    assert float(stats.max_error) <= 0.05 and int(stats.iterations) >= 1


def test_write_keys_are_independent_of_dict_order():
    w, dw = _weights(), _update(_weights(), scale=0.2)
    writer = writers.crossbars(writers.hardware(device.paper(), 1.0))
    state = writer.start(None, w)
    reverse = lambda d: dict(reversed(list(d.items())))
    assert list(reverse(state)) != list(state)
    key = jax.random.PRNGKey(7)
    forward = writer.read(writer.write(key, state, dw))
    backward = writer.read(writer.write(key, reverse(state), reverse(dw)))
    chex.assert_trees_all_equal(forward, dict(backward))
    # Each name gets its own key: identical arrays under two names get different noise.
    same = {("a",): w["head", "kernel"], ("b",): w["head", "kernel"]}
    step = {p: dw["head", "kernel"] for p in same}
    out = writer.read(writer.write(key, writer.start(None, same), step))
    assert float(jnp.max(jnp.abs(out["a",] - out["b",]))) > 0.01
    # ... and the noise is keyed: another key, another draw.
    other = writer.read(writer.write(jax.random.PRNGKey(8), state, dw))
    assert float(jnp.max(jnp.abs(other["head", "kernel"] - forward["head", "kernel"]))) > 0.01


def test_hardware_is_traced_sweeping_it_does_not_retrace():
    w, dw = _weights(), _update(_weights(), scale=0.2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def written(hw, key):
        writer = writers.crossbars(hw)
        return writer.read(writer.write(key, writer.start(None, w), dw))

    key = jax.random.PRNGKey(0)
    quiet = written(writers.hardware(device.paper(), 0.0), key)
    noisy = written(writers.hardware(device.paper(), 2.0), key)
    other = written(writers.hardware(device.soft_bounds(), 2.0, "model_inverse"), key)
    for a, b in ((quiet, noisy), (noisy, other)):
        assert float(jnp.max(jnp.abs(a["head", "kernel"] - b["head", "kernel"]))) > 0.01
