"""Meta-training: the meta-step, the meta-loss and the checkpointed loop (roa_jax/train.py)."""

import dataclasses
import functools
import json
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from roa_jax import config, data, device, errors, maml, models, roa, rundir, train, writers

SHAPE = (16, 16, 1)

# A tiny MLP run, first order throughout: 2 epochs of 4 meta-steps, checkpoints at 3, 4
# (epoch end), 6 and 8.
TINY = config.Config(
    dataset="synthetic",
    image_size=16,
    architecture="mlp",
    width=8,
    meta_batch_size=2,
    epochs=2,
    iterations_per_epoch=4,
    first_order_epochs=2,
    msl_epochs=0,
    val_tasks=4,
    eval_chunk=4,
    log_every=2,
    checkpoint_every=3,
    task_batching="unroll",
)

# Settings that learn within 40 first-order meta-steps (measured at 5-way, chance 0.2: conv4
# 0.29 -> 0.43, mlp 0.31 -> 0.46 validation accuracy).
FAST = dict(inner_lr=0.4, meta_lr=1e-2, meta_batch_size=4, epochs=1, val_tasks=16, eval_chunk=8)


def _final_state(cfg, workdir):
    meta = train.init_meta(cfg, SHAPE)
    target = train.TrainState(meta, train.make_optimizer(cfg).init(meta), jnp.int32(0))
    return rundir.Checkpoints(rundir.Workdir(workdir)).restore_latest(target)


def _episodes(split="train", num_tasks=2, seed=0, n_way=5):
    images = data.load_synthetic(seed=0, image_size=16)[split]
    return data.sample_episodes(jax.random.PRNGKey(seed), images, num_tasks, n_way, 1, 5)


def _val_accuracy_at_init(cfg):
    splits, norm = data.load_splits(cfg)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 2)  # fit's validation key
    return train.validate(key, train.init_meta(cfg, SHAPE), splits["val"], norm, cfg)[0]


def test_resume_equals_uninterrupted(tmp_path):
    whole = train.fit(TINY, tmp_path / "whole")
    first = train.fit(TINY, tmp_path / "split", stop_after_steps=5)
    assert first["step"] == 5
    second = train.fit(TINY, tmp_path / "split")
    assert second == whole
    chex.assert_trees_all_equal(
        _final_state(TINY, tmp_path / "whole"), _final_state(TINY, tmp_path / "split")
    )
    read = lambda run, name: (tmp_path / run / name).read_text().splitlines()
    assert read("whole", "val.csv") == read("split", "val.csv")
    assert len(read("whole", "val.csv")) == 1 + TINY.epochs
    # Train metrics are identical row for row, but for the last column (steps/s).
    drop_rate = lambda rows: [r.rsplit(",", 1)[0] for r in rows]
    assert drop_rate(read("whole", "train.csv")) == drop_rate(read("split", "train.csv"))
    best = json.loads((tmp_path / "split" / "best.json").read_text())
    assert best["step"] == whole["best_step"]


def test_an_exported_run_resumes_elsewhere_as_the_original(tmp_path):
    whole = train.fit(TINY, tmp_path / "whole")
    train.fit(TINY, tmp_path / "first", stop_after_steps=5)
    kept = rundir.export(tmp_path / "first", tmp_path / "kept" / "roa")
    assert not (kept / "tb").exists()
    # Nothing in the copy names the folder it came from (orbax's commit_success.txt does).
    for file in kept.rglob("*"):
        assert file.is_dir() or str(tmp_path).encode() not in file.read_bytes(), file
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["5"]  # latest only
    assert rundir.adopt(kept, tmp_path / "second")
    assert not rundir.adopt(kept, tmp_path / "second")  # a folder with a run is left alone
    assert train.fit(TINY, tmp_path / "second") == whole
    chex.assert_trees_all_equal(
        _final_state(TINY, tmp_path / "whole"), _final_state(TINY, tmp_path / "second")
    )
    assert rundir.finished(rundir.export(tmp_path / "second", kept))
    with pytest.raises(errors.RunFolderError, match="no checkpoint"):
        rundir.export(tmp_path / "empty", tmp_path / "kept" / "empty")


def test_fit_exports_the_run_at_every_checkpoint(tmp_path, monkeypatch):
    cfg = dataclasses.replace(TINY, checkpoint_every=3)
    kept, exported = tmp_path / "kept", []
    export = rundir.export
    monkeypatch.setattr(
        rundir,
        "export",
        lambda path, dest: exported.append(rundir.latest_step(path)) or export(path, dest),
    )
    train.fit(cfg, tmp_path / "run", stop_after_steps=4, export_to=kept)
    assert exported == [3, 4]  # checkpoint_every, then the stop
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["4"]
    assert (kept / "train.csv").read_text() == (tmp_path / "run" / "train.csv").read_text()
    # (An export resumes as the original: test_an_exported_run_resumes_elsewhere_as_the_original.)


def test_too_many_ways_for_a_split_fails_before_training(tmp_path):
    cfg = dataclasses.replace(TINY, n_way=60)  # the synthetic val split has 50 classes
    with pytest.raises(ValueError, match="n_way"):
        train.fit(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_meta_training_conv4_on_synthetic_tasks_beats_chance(tmp_path):
    cfg = dataclasses.replace(TINY, architecture="conv4", iterations_per_epoch=40, **FAST)
    before = _val_accuracy_at_init(cfg)
    result = train.fit(cfg, tmp_path)
    assert result["best_val_accuracy"] > 0.35  # 5-way: chance is 0.2
    assert result["best_val_accuracy"] > before + 0.05


def test_mlp_meta_trains_and_adapts_on_crossbars(tmp_path):
    cfg = dataclasses.replace(TINY, architecture="mlp", iterations_per_epoch=40, **FAST)
    before = _val_accuracy_at_init(cfg)
    result = train.fit(cfg, tmp_path)
    assert result["best_val_accuracy"] > 0.4
    assert result["best_val_accuracy"] > before + 0.1
    # The trained MLP, adapted on test tasks by one write onto crossbars.
    cfg, meta = train.load_trained(tmp_path)
    model = train.build_model(cfg)
    assert isinstance(model, models.MLP)
    episodes = _episodes("test", num_tasks=16, seed=3)

    @jax.jit
    def accuracy(hw):
        return roa.adapt_tasks(jax.random.PRNGKey(1), model, meta, episodes, 1, hw)

    exact = accuracy(None)
    on_crossbars = accuracy(writers.hardware(device.ideal(), 0.0))
    assert float(on_crossbars.mean()) > 0.4
    np.testing.assert_allclose(on_crossbars.mean(), exact.mean(), atol=0.02)
    # The paper's device with strong write noise does worse.
    noisy = accuracy(writers.hardware(device.paper(), 3.0))
    assert float(noisy.mean()) < float(on_crossbars.mean())


class TinyNet(nn.Module):
    """A user's own network: one conv (kernel on crossbars, bias digital), two pools, a head."""

    n_way: int

    @nn.compact
    def __call__(self, x, step: int = 0):
        del step  # no per-step batch norm
        x = models.max_pool(jax.nn.relu(nn.Conv(8, (3, 3), name="conv")(x)))
        x = models.max_pool(x)
        return nn.Dense(self.n_way, name="head")(x.reshape(x.shape[0], -1))


def test_user_written_flax_module_meta_trains_and_adapts_on_crossbars():
    model = TinyNet(5)
    meta = maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, *SHAPE)), 1, 0.4)
    assert sorted(models.split(meta.params)[models.CROSSBAR]) == [
        ("conv", "kernel"),
        ("head", "kernel"),
    ]
    optimizer = optax.adam(1e-2)
    objective = train.Objective(model=model, num_inner_steps=1, task_batching="unroll")
    step = jax.jit(
        functools.partial(
            train.train_step, objective=objective, optimizer=optimizer, first_order=False
        )
    )
    state = train.TrainState(meta, optimizer.init(meta), jnp.int32(0))
    images = jnp.asarray(data.load_synthetic(seed=0, image_size=16)["train"])
    msl_w = maml.msl_weights(1, 0, 0)
    for i in range(40):
        batch = data.sample_episodes(jax.random.PRNGKey(i), images, 4, 5, 1, 5)
        state, metrics = step(state, batch, jax.random.PRNGKey(1000 + i), msl_w, None)
    chex.assert_tree_all_finite(metrics)
    assert int(state.step) == 40

    episodes = _episodes("val", num_tasks=32, seed=99)
    hw = writers.hardware(device.ideal(), 0.0)
    adapt = jax.jit(lambda m: roa.adapt_tasks(jax.random.PRNGKey(1), model, m, episodes, 1, hw))
    before, after = float(adapt(meta).mean()), float(adapt(state.meta).mean())
    assert after > 0.3  # chance 0.2
    assert after > before + 0.04  # measured 0.31 -> 0.375


def _mlp_objective(**kw):
    model = models.MLP(5, (16, 8), num_bn_steps=2)
    return train.Objective(model, 1, constraint_lambda=0.0, task_batching="unroll", **kw)


def _mlp_meta(inner_lr=2.0):
    model = models.MLP(5, (16, 8), num_bn_steps=2)
    return maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, *SHAPE)), 1, inner_lr)


def test_exact_loss_weight_mixes_exact_and_hardware_losses():
    meta, episodes = _mlp_meta(), _episodes()
    hw = writers.hardware(device.paper(), 0.5)
    msl_w, key = jnp.ones((1,)), jax.random.PRNGKey(4)

    def loss(hw, weight):
        objective = _mlp_objective(exact_loss_weight=weight)
        return float(train.meta_loss(meta, episodes, key, msl_w, hw, objective, False)[0])

    exact, hardware = loss(None, 0.0), loss(hw, 0.0)
    assert abs(exact - hardware) > 1e-3
    assert loss(None, 0.5) == exact  # without hardware there is nothing to mix
    np.testing.assert_allclose(loss(hw, 1.0), exact, rtol=1e-5)
    np.testing.assert_allclose(loss(hw, 0.25), 0.75 * hardware + 0.25 * exact, rtol=1e-5)


@pytest.mark.parametrize("first_order", [True, False])
def test_without_msl_the_last_query_alone_gives_the_same_meta_gradient(first_order):
    model = models.MLP(5, (16, 8), num_bn_steps=3)
    meta = maml.init(jax.random.PRNGKey(0), model, jnp.zeros((1, *SHAPE)), 2, 2.0)
    episodes, key = _episodes(), jax.random.PRNGKey(4)
    hw = writers.hardware(device.paper(), 0.5)
    msl_w = maml.msl_weights(2, 0, 0)  # (0, 1): what every scale without MSL annealing uses

    def grads(every_step):
        objective = train.Objective(
            model, 2, every_step, exact_loss_weight=0.25, task_batching="unroll"
        )
        return jax.grad(train.meta_loss, has_aux=True)(
            meta, episodes, key, msl_w, hw, objective, first_order
        )

    (all_steps, all_metrics), (last, last_metrics) = grads(True), grads(False)
    chex.assert_trees_all_close(last, all_steps, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(last_metrics, all_metrics, rtol=1e-6)
    # With MSL weights on every step the two differ: the flag is what changes the loss.
    spread = jnp.array([0.5, 0.5])
    loss = lambda o: train.meta_loss(meta, episodes, key, spread, hw, o, first_order)[0]
    objective = lambda every: train.Objective(model, 2, every, task_batching="unroll")
    assert abs(float(loss(objective(True)) - loss(objective(False)))) > 1e-4


def test_validation_scores_the_same_mix_as_the_loss():
    cfg = dataclasses.replace(
        TINY, inner_lr=2.0, hardware_inner=True, train_sigma_w=1.0, val_tasks=4, eval_chunk=4
    )
    images = data.load_synthetic(seed=0, image_size=16)["val"]
    meta = train.init_meta(cfg, SHAPE)
    key, norm = jax.random.PRNGKey(5), (0.0, 1.0)
    score = lambda weight: train.validate(
        key, meta, images, norm, dataclasses.replace(cfg, exact_loss_weight=weight)
    )[0]
    hardware, exact = score(0.0), score(1.0)
    assert abs(hardware - exact) > 1e-3
    np.testing.assert_allclose(score(0.25), 0.75 * hardware + 0.25 * exact, rtol=1e-5)
    # Exact validation (no hardware_inner) scores exact adaptation.
    plain = dataclasses.replace(cfg, hardware_inner=False, train_sigma_w=0.0)
    np.testing.assert_allclose(train.validate(key, meta, images, norm, plain)[0], exact)


def test_hardware_aware_meta_step_learns_through_the_write_without_retracing():
    objective, meta = _mlp_objective(), _mlp_meta(inner_lr=0.4)
    # Crossbars hold [-1, 1] (beyond, the device saturates): start well inside.
    meta = meta._replace(params=jax.tree.map(lambda w: jnp.clip(w, -0.5, 0.5), meta.params))
    optimizer = optax.sgd(1.0)  # the update is the meta-gradient (Adam's would be its sign)
    state = train.TrainState(meta, optimizer.init(meta), jnp.int32(0))
    msl_w = maml.msl_weights(1, 0, 0)

    def step(state, batch, key, msl_w, hw):
        return train.train_step(
            state,
            batch,
            key,
            msl_w,
            hw,
            objective=objective,
            optimizer=optimizer,
            first_order=False,
        )

    exact_step = jax.jit(step)
    hardware_step = jax.jit(chex.assert_max_traces(step, n=1))  # hardware is traced
    batch, key = _episodes(), jax.random.PRNGKey(0)
    exact, _ = exact_step(state, batch, key, msl_w, None)
    # On the ideal device at zero noise the write is the exact update, and so is its gradient.
    ideal, _ = hardware_step(state, batch, key, msl_w, writers.hardware(device.ideal(), 0.0))
    chex.assert_trees_all_close(ideal.meta, exact.meta, atol=1e-5)
    # Noisy writes on the paper's device: another, finite meta-step; the same compiled step.
    s = state
    for i, sigma_w in enumerate((0.5, 1.0, 2.0)):
        hw = writers.hardware(device.paper(), sigma_w)
        s, metrics = hardware_step(s, _episodes(seed=i), jax.random.PRNGKey(i), msl_w, hw)
        chex.assert_tree_all_finite((s, metrics))
    assert int(s.step) == 3
    moved = lambda a, b: float(jnp.max(jnp.abs(a - b)))
    assert moved(s.meta.lslr["head"]["kernel"], meta.lslr["head"]["kernel"]) > 1e-3
    first, _ = hardware_step(state, batch, key, msl_w, writers.hardware(device.paper(), 0.5))
    assert moved(first.meta.params["head"]["kernel"], exact.meta.params["head"]["kernel"]) > 1e-4


def test_first_order_annealing():
    cfg = dataclasses.replace(TINY, first_order_epochs=2)
    assert [train.first_order_at(cfg, e) for e in range(4)] == [True, True, False, False]
    assert not train.first_order_at(dataclasses.replace(cfg, num_inner_steps=0), 0)


def test_a_diverging_run_stops_naming_the_flags(tmp_path):
    cfg = dataclasses.replace(TINY, inner_lr=1e6)
    with pytest.raises(FloatingPointError, match="diverged at step 2") as error:
        train.fit(cfg, tmp_path / "run")
    assert "--config.inner_lr (1e+06)" in str(error.value)
    assert str(tmp_path / "run" / "checkpoints") in str(error.value)


def test_check_loss_limit_is_ten_times_chance_cross_entropy(tmp_path):
    workdir = rundir.Workdir(tmp_path)
    limit = 10 * np.log(TINY.n_way)
    train.check_loss({"loss": limit, "accuracy": 0.2}, 2, TINY, workdir)
    for loss, what in ((limit * 1.001, "diverged"), (float("nan"), "non-finite")):
        with pytest.raises(FloatingPointError, match=what):
            train.check_loss({"loss": loss, "accuracy": 0.2}, 2, TINY, workdir)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train.check_loss({"loss": 1.0, "accuracy": float("inf")}, 2, TINY, workdir)


def test_fit_refuses_a_folder_another_process_writes(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.FolderInUse, match=f"pid {holder.pid}"):
            train.fit(TINY, tmp_path / "run")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # untouched
    finally:
        holder.kill()
        holder.wait()
    assert train.fit(TINY, tmp_path / "run")["step"] == TINY.total_steps


_HOLD = """
import sys, time
from roa_jax import rundir
with rundir.lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""
