"""The task registry (roa_jax/tasks.py): every entry complete and consistent with its readers."""

import ast
import math
import pathlib

import pytest

from roa_jax import claims, config, figures, tasks
from roa_jax import results as results_lib

ENTRIES = list(tasks.TASKS.items())
IDS = list(tasks.TASKS)


@pytest.mark.parametrize("name, task", ENTRIES, ids=IDS)
def test_every_entry_is_complete(name, task):
    # The name says what the fields say (claims reads the classes from a suffixed name).
    assert name.startswith(f"{task.dataset}_{task.n_way}w1s")
    assert task.dataset in config.DATASETS and task.n_way >= 2
    assert not {"dataset", "n_way"} & set(task.config), "dataset and n_way are fields"
    assert task.title and task.models and set(task.models) <= set(config.MODELS)
    assert task.models[0] == "roa"  # reproduce.py and the comparison need the ROA network
    assert task.cpu_meta_batch_size is None or task.cpu_meta_batch_size >= 1
    assert set(task.cpu_protocol) <= set(config.Protocol._fields)
    assert task.claims.constraint in (None, "gain", "similar")
    if task.mamlpp_accuracy is not None:
        assert task.paper and 100 / task.n_way < task.mamlpp_accuracy < 100


@pytest.mark.parametrize("name, task", ENTRIES, ids=IDS)
def test_the_paper_flags_agree(name, task):
    if task.ablation_only:
        # Figure 5D only: no 5-step model and no Figure 3 or 4 panel.
        assert task.paper and "five_step" not in task.models and not task.in_figure3
    else:
        assert task.models == tuple(config.MODELS)
        assert task.in_figure3 == task.paper
    # The paper states numbers for the tasks it ran, none for the others.
    stated = [x for x in task.claims if x is not None]
    assert bool(stated) == task.paper, task.claims
    if task.paper:
        assert task.claims.rho_gain_pp > 0 and task.claims.best_rho > 0


def test_the_paper_tasks_in_order_and_titles_unique():
    assert tasks.PAPER_TASKS == tuple(n for n, t in ENTRIES if t.paper)
    assert tasks.FIGURE3_TASKS == tuple(n for n in tasks.PAPER_TASKS if tasks.TASKS[n].in_figure3)
    assert len({t.title for t in tasks.TASKS.values()}) == len(tasks.TASKS)
    assert len(tasks.FIGURE3_TASKS) == 4  # Figures 3 and 4: panels A-D


@pytest.mark.parametrize("name, task", ENTRIES, ids=IDS)
def test_find_returns_each_task_from_its_own_fields(name, task):
    assert tasks.find(task.dataset, task.n_way, **task.config) == name


def test_find_refuses_a_task_not_in_the_registry():
    with pytest.raises(KeyError, match="no task on omniglot with 3 classes"):
        tasks.find("omniglot", 3)


def test_the_cross_task_claims_tasks_are_registered():
    # claims.evaluate_across names its tasks by what they are: Omniglot 5, 10, 20-way (in
    # Figure 3) and the 20-way network with 128 filters (ablation only).
    series = [tasks.find("omniglot", n) for n in (5, 10, 20)]
    assert all(tasks.TASKS[n].in_figure3 for n in series)
    wide = tasks.TASKS[tasks.find("omniglot", 20, width=128)]
    assert wide.ablation_only and wide.n_way == 20


@pytest.mark.parametrize("name", [*IDS, *(f"{n}_cpu" for n in IDS)])
def test_claims_and_figures_read_the_registry(name):
    task = tasks.TASKS[name.removesuffix("_cpu")]
    assert claims.task_claims(name) == task.claims
    # Chance from the name (claims' fallback) is the registry's 1 / n_way.
    verdicts = claims.evaluate(results_lib.Results(), name)
    assert len(verdicts) == len(claims.CLAIM_IDS)
    assert math.isclose(claims._chance(results_lib.Results(), name), 100 / task.n_way)


def test_maml_sanity_table_shows_the_registrys_published_accuracy():
    results = results_lib.Results(
        models={"roa": {"epochs": 1, "iterations_per_epoch": 2, "meta_batch_size": 3}},
        protocol={"seeds": 1, "test_tasks": 4},
    )
    table = figures.maml_sanity_table(dict.fromkeys(tasks.TASKS, results))
    for name in tasks.PAPER_TASKS:
        task = tasks.TASKS[name]
        published = f"{task.mamlpp_accuracy:.2f}" if task.mamlpp_accuracy else "– (not reported)"
        assert f"| {task.title} | {published} |" in table
    assert all(tasks.TASKS[n].title not in table for n in tasks.TASKS if n not in tasks.PAPER_TASKS)


def test_the_registry_imports_nothing_of_the_library():
    # The light readers (claims, figures) import it; it must not pull in config or models.
    tree = ast.parse(pathlib.Path(tasks.__file__).read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any(m.startswith("roa_jax") for m in imported), imported
