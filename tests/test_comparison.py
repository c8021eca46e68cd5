"""The comparison of methods (comparison.py): parts, the rho search on validation only, the
method rows, reuse of evaluated parts, and one protocol for meta_train.py and evaluate.py."""

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from roa_jax import comparison, config, errors, evaluation, train
from roa_jax import results as results_lib
from roa_jax.data import synthetic

ROOT = Path(__file__).resolve().parent.parent
PROTO = config.Protocol(
    sigmas=(0.0, 2.0), rhos=(1.0, 4.0), seeds=2, test_tasks=4, val_tasks=4, offline_steps=2, chunk=2
)
METHODS = set(results_lib.METHOD_NAMES)


def _tiny_models():
    """The three models, untrained: different initial networks stand in for trained ones."""
    models = {}
    for i, (name, steps) in enumerate((("roa", 1), ("roa_wc", 1), ("five_step", 2))):
        cfg = config.model_config("synthetic_5w1s", name, "tiny")
        cfg = dataclasses.replace(
            cfg, width=8, image_size=16, n_query=3, num_inner_steps=steps, seed=i
        )
        models[name] = (cfg, train.init_meta(cfg, (16, 16, 1)))
    return models


@pytest.fixture(scope="module")
def data():
    return synthetic.load_synthetic(seed=0, image_size=16), (0.0, 1.0)


@pytest.fixture(scope="module")
def evaluated(data, tmp_path_factory):
    splits, norm = data
    out = tmp_path_factory.mktemp("comparison")
    models = _tiny_models()
    results = comparison.evaluate(models, splits, norm, PROTO, out, title="tiny")
    return models, results, out


def test_parts_of_every_model_and_the_offline_scheme():
    models = _tiny_models()
    names = [p.name for p in comparison.parts(models, PROTO)]
    assert names == [
        *(f"{m}_{part}" for m in models for part in ("val", "test", "origin")),
        "offline_test",
    ]
    by_name = {p.name: p for p in comparison.parts(models, PROTO)}
    assert by_name["roa_val"].split == "val" and set(by_name["roa_val"].grid.seed) == {0}
    assert len(by_name["roa_test"].grid.seed) == 2 * 2 * 2  # sigmas x rhos x seeds
    assert by_name["roa_origin"].kind == "origin" and len(by_name["roa_origin"].grid.seed) == 2


def test_offline_steps_0_leaves_offline_out(data, evaluated):
    models, results, out = evaluated
    proto = PROTO._replace(offline_steps=0)
    assert "offline_test" not in [p.name for p in comparison.parts(models, proto)]
    splits, norm = data
    # The other parts do not depend on offline_steps: loaded, not recomputed.
    without = comparison.evaluate(models, splits, norm, proto, out, title="tiny")
    assert "offline_test" not in without.parts
    assert {r["method"] for r in without.methods} == METHODS - {results_lib.OFFLINE}


def test_rho_search_never_reads_the_test_classes(data, evaluated, tmp_path):
    splits, norm = data
    models, results, _ = evaluated
    other = np.asarray(splits["test"])[::-1].copy()  # other test classes
    changed = comparison.evaluate(
        {"roa": models["roa"]}, {**splits, "test": other}, norm, PROTO, tmp_path, title="x"
    )
    assert changed.best_rho["roa"] == results.best_rho["roa"]
    assert changed.parts["roa_val"]["rows"] == results.parts["roa_val"]["rows"]
    assert changed.parts["roa_test"]["rows"] != results.parts["roa_test"]["rows"]


def test_every_method_is_evaluated_at_every_noise_level(evaluated):
    _, results, _ = evaluated
    assert {r["method"] for r in results.methods} == METHODS
    for method in METHODS:
        rows = results.rows(method)
        assert sorted(r["sigma_w"] for r in rows) == list(PROTO.sigmas), method
        assert all(r["tasks"] == PROTO.seeds * PROTO.test_tasks for r in rows)
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    for method, model, tuned in results_lib.METHODS:
        for row in results.rows(method):
            rho = results.best_rho[model][results_lib.sigma_key(row["sigma_w"])] if tuned else 1.0
            assert row["rho"] == rho, method
    assert set(results.origin) == {"roa", "roa_wc", "five_step"}
    assert results.chance == pytest.approx(0.2)


def test_evaluated_parts_are_reused_and_recomputed_when_the_checkpoint_changes(
    data, evaluated, tmp_path, monkeypatch
):
    splits, norm = data
    models, results, out = evaluated
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    swept = []
    real_sweep = evaluation.sweep

    def counting(*args, **kwargs):
        swept.append(args[-1])  # the Setting
        return real_sweep(*args, **kwargs)

    monkeypatch.setattr(evaluation, "sweep", counting)
    again = comparison.evaluate(models, splits, norm, PROTO, tmp_path, title="tiny")
    assert swept == [] and again.methods == results.methods
    # A retrained roa checkpoint: its three parts are evaluated again, nothing else.
    cfg, meta = models["roa"]
    retrained = meta._replace(params=jax.tree.map(lambda x: x * 1.5, meta.params))
    changed = comparison.evaluate(
        {**models, "roa": (cfg, retrained)}, splits, norm, PROTO, tmp_path, title="tiny"
    )
    assert len(swept) == 3
    assert changed.parts["roa_test"]["rows"] != results.parts["roa_test"]["rows"]
    assert changed.parts["roa_wc_test"] == results.parts["roa_wc_test"]


def test_saved_only_scores_saved_parts_without_evaluating(data, evaluated, tmp_path, monkeypatch):
    splits, norm = data
    models, results, out = evaluated
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)

    def no_sweep(*args, **kwargs):
        raise AssertionError("saved_only evaluated a part")

    monkeypatch.setattr(evaluation, "sweep", no_sweep)
    # Another checkpoint would be evaluated again; saved_only takes the saved parts as they are.
    cfg, meta = models["roa"]
    other = {
        **models,
        "roa": (cfg, meta._replace(params=jax.tree.map(lambda x: 2 * x, meta.params))),
    }
    again = comparison.evaluate(other, splits, norm, PROTO, tmp_path, "tiny", saved_only=True)
    assert again.methods == results.methods
    with pytest.raises(ValueError, match="saved for devices"):
        comparison.evaluate(
            models, splits, norm, PROTO._replace(device="paper"), tmp_path, "t", saved_only=True
        )
    (tmp_path / "parts" / "roa_val.json").unlink()
    with pytest.raises(errors.RunFolderError, match="roa_val.json"):
        comparison.evaluate(models, splits, norm, PROTO, tmp_path, "tiny", saved_only=True)


def test_saved_results_load_back(evaluated, tmp_path):
    _, results, _ = evaluated
    comparison.save(results, tmp_path)
    loaded = comparison.load(tmp_path)
    assert loaded.best_rho == results.best_rho  # noise levels are floats again
    assert loaded.methods == results.methods
    assert loaded.to_json() == (tmp_path / "results.json").read_text() == results.to_json()
    lines = (tmp_path / "results.csv").read_text().splitlines()
    part_rows = sum(len(p["rows"]) for p in results.parts.values())
    assert len(lines) == 1 + part_rows + len(results.methods)
    with pytest.raises(errors.RunFolderError, match="results.json"):
        comparison.load(tmp_path / "nowhere")


def test_protocol_and_task_validation():
    with pytest.raises(ValueError, match="must include 1"):
        config.check_protocol(PROTO._replace(rhos=(2.0, 4.0)))
    with pytest.raises(ValueError, match="sigma_w"):
        config.check_protocol(PROTO._replace(sigmas=(0.0, -1.0)))
    with pytest.raises(ValueError, match="test_tasks"):
        config.check_protocol(PROTO._replace(test_tasks=0))
    with pytest.raises(ValueError, match="eval_device"):
        config.check_protocol(PROTO._replace(device="nonexistent"))
    with pytest.raises(ValueError, match="--task"):
        config.model_config("omniglot_7w1s", "roa", "cpu")
    with pytest.raises(ValueError, match="--scale"):
        config.protocol("huge")
    assert config.model_config("omniglot_5w1s", "roa_wc", "cpu").constraint_k == 1.0
    assert config.model_config("omniglot_5w1s", "five_step", "paper").num_inner_steps == 5
    models = _tiny_models()
    cfg, meta = models["five_step"]
    with pytest.raises(ValueError, match="five_step"):
        comparison.check_same_tasks(
            {**models, "five_step": (dataclasses.replace(cfg, n_way=3), meta)}
        )
    names = {m: comparison.model_name(c) for m, (c, _) in models.items()}
    assert names == {"roa": "roa", "roa_wc": "roa_wc", "five_step": "five_step"}


# The same model evaluated by the two binaries: meta_train.py at the end of its (resumed, here
# already finished) run, and evaluate.py from the run folder.
TINY_TRAINING = dict(
    width=8,
    image_size=16,
    n_query=3,
    epochs=1,
    iterations_per_epoch=2,
    meta_batch_size=2,
    val_tasks=4,
    eval_chunk=4,
    log_every=1,
)
SMOKE = ROOT / "experiments" / "configs" / "synthetic_smoke.py"


def _config_file(path, **overrides) -> config.Config:
    """The Config that `--config=path --config.<field>=<value>...` gives a binary."""
    spec = importlib.util.spec_from_file_location("config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.update(overrides)
    return config.build(cfg)


def _binary(name, *flags):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / name), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # two binaries end to end; comparison.evaluate itself is tested above
def test_meta_train_and_evaluate_give_the_same_results_for_one_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    fitted = train.fit(_config_file(SMOKE, **TINY_TRAINING), workdir)
    assert fitted["step"] == 2
    trained_log = (workdir / "train.csv").read_text()
    protocol = ["--eval_scale=tiny", "--offline_steps=0"]
    overrides = [f"--config.{k}={v}" for k, v in TINY_TRAINING.items()]
    _binary("meta_train.py", f"--config={SMOKE}", *overrides, f"--workdir={workdir}", *protocol)
    assert (workdir / "train.csv").read_text() == trained_log  # resumed: nothing retrained
    _binary("evaluate.py", f"--roa={workdir}", f"--out_dir={tmp_path / 'eval'}", *protocol)
    by_meta_train = json.loads((workdir / "evaluation" / "results.json").read_text())
    by_evaluate = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert by_meta_train["origin"] == by_evaluate["origin"]
    origin = by_meta_train["parts"]["roa_origin"]["rows"]
    assert origin == by_evaluate["parts"]["roa_origin"]["rows"]
    assert origin[0]["tasks"] == 2 * 8  # the tiny protocol: 2 seeds x 8 test tasks
    assert by_meta_train["best_rho"] == by_evaluate["best_rho"]
    assert by_meta_train["methods"] == by_evaluate["methods"]
    assert {r["method"] for r in by_meta_train["methods"]} == {"ROA", "ROA-FLR"}
