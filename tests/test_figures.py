"""Figures 3-6, the overview and Table 2 (figures.py) from a tiny comparison."""

import dataclasses

import matplotlib.image
import pytest

from roa_jax import comparison, config, figures, train
from roa_jax import results as results_lib
from roa_jax.data import synthetic

PROTO = config.Protocol(
    sigmas=(0.0, 2.0), rhos=(1.0, 4.0), seeds=2, test_tasks=2, val_tasks=2, offline_steps=1, chunk=2
)


def _results(tmp_path, names=("roa", "roa_wc", "five_step")):
    """A tiny comparison of untrained networks (different seeds stand in for training)."""
    models = {}
    for i, name in enumerate(names):
        cfg = config.model_config("synthetic_5w1s", name, "tiny")
        steps = 2 if name == "five_step" else 1
        cfg = dataclasses.replace(
            cfg, width=8, image_size=16, n_query=2, num_inner_steps=steps, seed=i
        )
        models[name] = (cfg, train.init_meta(cfg, (16, 16, 1)))
    splits = synthetic.load_synthetic(seed=0, image_size=16)
    results = comparison.evaluate(models, splits, (0.0, 1.0), PROTO, tmp_path, title="tiny")
    comparison.save(results, tmp_path)
    return comparison.load(tmp_path)  # as a figure script reads them back


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _results(tmp_path_factory.mktemp("figures"))


def test_figures_and_table_from_a_tiny_run(results, tmp_path):
    paths = figures.make_all(results, tmp_path)
    names = [p.name for p in paths]
    assert names == [
        "figure3.png",
        "figure4.png",
        "figure5.png",
        "figure6.png",
        "overview.png",
        "table2.md",
    ]
    for path in paths[:-1]:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05, path  # not blank
    table = (tmp_path / "table2.md").read_text()
    for method in results_lib.METHOD_NAMES:
        assert f"| {method} |" in table
    assert "| ROA's rho (val) |" in table and "| 5-step's rho (val) |" in table
    origin = results.origin[results_lib.ROA_MODEL]
    assert f"Origin (ideal weights) {100 * origin['accuracy']:.1f}" in table
    assert "σw=0 | σw=2 |" in table


def test_a_figure_of_a_comparison_not_evaluated_is_left_out(results, tmp_path):
    # The 128-filter task: ROA and ROA-WC only, no 5-step model, no offline baseline.
    dropped = (results_lib.FIVE_STEP, results_lib.FIVE_STEP_FLR, results_lib.OFFLINE)
    kept = [r for r in results.methods if r["method"] not in dropped]
    parts = {k: v for k, v in results.parts.items() if k.startswith("roa")}
    paths = figures.make_all(dataclasses.replace(results, methods=kept, parts=parts), tmp_path)
    names = [p.name for p in paths]
    assert names == ["figure5.png", "figure6.png", "overview.png", "table2.md"]
    assert not (tmp_path / "figure3.png").exists() and not (tmp_path / "figure4.png").exists()
    table = (tmp_path / "table2.md").read_text()
    assert "| ROA-WC |" in table and "| 5-step |" not in table and "| offline |" not in table


def test_figure6_has_a_panel_per_model_evaluated(results, tmp_path, monkeypatch):
    figs = []
    real_save = figures._save
    monkeypatch.setattr(
        figures, "_save", lambda fig, path: figs.append(fig) or real_save(fig, path)
    )

    def panels(results):
        figures.figure6(results, tmp_path / "figure6.png")
        # The heatmaps' titles (their colour bars have none), up to the comma.
        return [ax.get_title().split(",")[0] for ax in figs[-1].axes if ax.get_title()]

    assert panels(results) == ["(A) ROA", "(B) ROA-WC", "(C) 5-step"]
    without_five_step = {k: v for k, v in results.parts.items() if "five_step" not in k}
    only_one_step = dataclasses.replace(results, parts=without_five_step)
    assert panels(only_one_step) == ["(A) ROA", "(B) ROA-WC"]
