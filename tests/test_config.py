"""Configuration: the Config, its checks, tasks, scales and protocols (roa_jax/config.py)."""

import dataclasses
import itertools

import pytest

from roa_jax import config, tasks


def test_build_from_the_default_config_dict_is_the_default_config():
    assert config.build(config.default()) == config.Config()
    assert config.build(dataclasses.asdict(config.Config())) == config.Config()
    overridden = config.default()
    overridden.n_way, overridden.inner_lr = 20, 0.5
    assert config.build(overridden) == config.Config(n_way=20, inner_lr=0.5)
    assert config.build(config.Config(meta_lr=1)).meta_lr == 1  # an int where a float goes


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match=r"\['widht'\] are unknown"):
        config.build({**config.default().to_dict(), "widht": 3})


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_way=-1), r"config.n_way=-1 must be >= 1"),
        (dict(n_way=5.0), r"config.n_way=5.0 must be a int"),
        (dict(inner_lr=float("nan")), r"config.inner_lr=nan must be a finite number"),
        (dict(inner_lr=float("inf")), r"config.inner_lr=inf must be a finite number"),
        (dict(inner_lr=0.0), r"config.inner_lr=0.0 must be > 0"),
        (dict(min_meta_lr=1e-2), r"config.min_meta_lr=0.01 must be <= config.meta_lr=0.001"),
        (dict(num_inner_steps=-1), r"config.num_inner_steps=-1 must be >= 0"),
        (dict(constraint_k=0.5), r"config.constraint_k=0.5 must be >= 1"),
        (dict(constraint_lambda=-0.1), r"config.constraint_lambda=-0.1 must be >= 0"),
        (dict(exact_loss_weight=0.5), r"config.exact_loss_weight > 0 needs config.hardware_inner"),
        (
            dict(exact_loss_weight=1.5, hardware_inner=True),
            r"config.exact_loss_weight=1.5 must be in \[0, 1\]",
        ),
        (dict(dataset="cifar"), r"config.dataset='cifar' is not one of"),
        (dict(architecture="resnet"), r"config.architecture='resnet' is not one of"),
        (dict(task_batching="grouped"), r"config.task_batching='grouped' is not one of"),
        (dict(pulse_policy="closed"), r"config.pulse_policy='closed'"),
        (dict(device="nope"), r"config.device='nope'"),
        (dict(train_sigma_w=float("nan")), r"config.train_sigma_w=nan must be a finite number"),
        (
            dict(train_sigma_w=-1.0),
            r"config.train_sigma_w=-1.0: sigma_w=-1.0 must be finite and >= 0",
        ),
        (dict(msl_epochs=-1), r"config.msl_epochs and config.first_order_epochs must be >= 0"),
        (dict(init_from="/nonexistent/best"), r"config.init_from='/nonexistent/best': no such"),
    ],
)
def test_every_bad_value_is_rejected_naming_the_field(change, message):
    values = {**config.default().to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        config.build(values)
    with pytest.raises(ValueError, match=message):
        config.validate(dataclasses.replace(config.Config(), **change))


def test_init_from_an_existing_folder_is_accepted(tmp_path):
    assert config.build(config.Config(init_from=str(tmp_path))).init_from == str(tmp_path)


@pytest.mark.parametrize(
    "task, model, scale",
    list(itertools.product(tasks.TASKS, config.MODELS, config.SCALES)),
)
def test_every_model_config_validates(task, model, scale):
    cfg = config.model_config(task, model, scale)
    assert config.validate(cfg) is cfg
    assert cfg.num_inner_steps == config.MODELS[model]["num_inner_steps"]
    assert cfg.constraint_k == config.MODELS[model]["constraint_k"]
    assert cfg.total_steps >= 1


@pytest.mark.parametrize("scale", ["cpu", "cpu_long", "paper"])
def test_every_model_of_a_task_meets_the_same_tasks(scale):
    # Issue 33: the paper trains every scheme for the same epochs and iterations.
    for task, spec in tasks.TASKS.items():
        budgets = {
            model: (cfg.total_steps * cfg.meta_batch_size, cfg.first_order_epochs, cfg.width)
            for model in spec.models
            for cfg in [config.model_config(task, model, scale)]
        }
        assert len(set(budgets.values())) == 1, (task, budgets)


def test_the_tasks_as_the_paper_states_them():
    mini = config.model_config("miniimagenet_5w1s", "roa", "cpu")
    assert (mini.width, mini.image_size, mini.meta_batch_size) == (64, 84, 2)
    assert config.model_config("omniglot_20w1s_w128", "roa", "cpu").width == 128
    five_way = config.model_config("omniglot_5w1s", "five_step", "cpu_long")
    assert (five_way.total_steps, five_way.meta_batch_size, five_way.first_order_epochs) == (
        6000,
        8,
        10,
    )


def test_model_config_rejects_unknown_names():
    for args, message in (
        (("omniglot_3w1s", "roa", "tiny"), "--task='omniglot_3w1s'"),
        (("omniglot_5w1s", "roa_x", "tiny"), "model 'roa_x'"),
        (("omniglot_5w1s", "roa", "huge"), "--scale='huge'"),
    ):
        with pytest.raises(ValueError, match=message):
            config.model_config(*args)


def test_every_task_model_is_a_model():
    for spec in tasks.TASKS.values():
        assert set(spec.models) <= set(config.MODELS)
        assert spec.models[0] == "roa"
        assert len(set(spec.models)) == len(spec.models)


@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_every_task_entry_builds_its_configs_and_protocols(task):
    # Each registry field reaches what it sets: the config fields, the cpu scales' batch and
    # protocol fields, and an ablation-only task's missing offline baseline.
    spec = tasks.TASKS[task]
    fields = {f.name for f in dataclasses.fields(config.Config)}
    assert set(spec.overrides) <= fields and spec.dataset in config.DATASETS
    assert set(spec.cpu_protocol) <= set(config.Protocol._fields)
    for model in spec.models:
        cfg = config.model_config(task, model, "paper")
        assert {k: getattr(cfg, k) for k in spec.overrides} == spec.overrides
        cpu = config.model_config(task, model, "cpu")
        assert cpu.meta_batch_size == (spec.cpu_meta_batch_size or cfg.meta_batch_size)
    for scale in ("cpu", "cpu_long"):
        proto = config.protocol(scale, task)
        assert {k: getattr(proto, k) for k in spec.cpu_protocol} == spec.cpu_protocol
    for scale in config.SCALES:
        assert (config.protocol(scale, task).offline_steps == 0) == spec.ablation_only


def test_quick_and_cpu_are_first_order_throughout():
    # first_order_epochs is the paper's epochs, not the Config default's by accident, and no
    # quick or cpu run reaches a second-order epoch even if extended up to the paper's length.
    for task, model, scale in itertools.product(tasks.TASKS, config.MODELS, ("quick", "cpu")):
        cfg = config.model_config(task, model, scale)
        assert cfg.first_order_epochs == config.PAPER_EPOCHS >= cfg.epochs


@pytest.mark.parametrize("scale", config.SCALES)
@pytest.mark.parametrize("task", [None, *tasks.TASKS])
def test_every_protocol_passes_its_check(scale, task):
    proto = config.protocol(scale, task)
    assert config.check_protocol(proto) is proto
    assert 0.0 in proto.sigmas and 1.0 in proto.rhos


@pytest.mark.parametrize("scale", config.SCALES)
def test_only_the_wide_network_goes_without_an_offline_baseline(scale):
    # The paper shows the 128-filter network in Figure 5D only (no Figure 4 panel).
    wide = config.protocol(scale, "omniglot_20w1s_w128")
    assert wide.offline_steps == 0
    assert config.protocol(scale, "omniglot_20w1s").offline_steps > 0
    assert wide == config.protocol(scale, "omniglot_20w1s")._replace(offline_steps=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rhos=(2.0, 4.0)), "must include 1"),
        (dict(rhos=(1.0, -1.0)), "must all be > 0"),
        (dict(sigmas=(0.0, float("nan"))), "must be finite"),
        (dict(rhos=(1.0, float("inf"))), "must be finite"),
        (dict(sigmas=(0.0, -1.0)), "sigma_w"),
        (dict(sigmas=()), "must not be empty"),
        (dict(rhos=()), "must not be empty"),
        (dict(seeds=0), "seeds=0 must be >= 1"),
        (dict(test_tasks=0), "test_tasks=0 must be >= 1"),
        (dict(val_tasks=-1), "val_tasks=-1 must be >= 1"),
        (dict(chunk=0), "chunk=0 must be >= 1"),
        (dict(offline_steps=-1), "offline_steps=-1 must be >= 0"),
        (dict(device="nope"), "eval_device='nope'"),
    ],
)
def test_check_protocol_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        config.check_protocol(config.protocol("tiny")._replace(**change))
