"""Configuration in one place: the meta-training `Config`, its checks, and the scales of the
reproduction (which models, how long, which evaluation protocol) applied to the paper's tasks
(tasks.py).

Config files (experiments/configs/*.py) are Python with a `get_config()` that returns an
`ml_collections.ConfigDict` (start from `default()`); binaries load them with
`config_flags.DEFINE_config_file`, so any field can be overridden on the command line with
`--config.field=value`. `build` turns that ConfigDict into a frozen, validated `Config`: every
library function takes the typed `Config` (or the objects made from it), never the flags.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import NamedTuple

import ml_collections

from roa_jax import batching, crossbar, device, errors, models, tasks

DATASETS = ("omniglot", "synthetic", "miniimagenet")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a meta-training run depends on."""

    dataset: str = "omniglot"  # one of DATASETS
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15  # query images per class
    image_size: int = 28
    rotations: bool = False  # MAML++ rotation augmentation of the training classes
    architecture: str = "conv4"  # one of models.ARCHITECTURES
    width: int = 64  # conv filters (128: the paper's wide variant)
    num_inner_steps: int = 1  # S: 1 for ROA, 5 for the online baseline
    inner_lr: float = 0.1  # initial LSLR rate
    meta_lr: float = 1e-3  # cosine-annealed to min_meta_lr
    min_meta_lr: float = 1e-5
    meta_batch_size: int = 8
    epochs: int = 100
    iterations_per_epoch: int = 500
    msl_epochs: int = 15  # multi-step-loss annealing epochs
    first_order_epochs: int = 10  # derivative-order annealing: first order before this epoch
    constraint_k: float = 4.0  # ROA constraint range [-1/k, 1/k]; k = 1 is ROA-WC
    constraint_lambda: float = 0.1  # lambda_c; 0 disables the constraint
    hardware_inner: bool = False  # meta-train through the differentiable hardware write
    # With hardware_inner: weight of the exact-update query loss beside the hardware one, so
    # theta_0 stays good for exact adaptation ("origin") while it learns to survive the write.
    exact_loss_weight: float = 0.0
    device: str = "paper"  # preset name or .json (hardware-aware meta-training)
    train_sigma_w: float = 0.0  # write noise of hardware-aware meta-training
    pulse_policy: str = "open_loop"  # of every write, in training and in evaluation
    val_tasks: int = 600  # validation tasks per epoch (best-checkpoint selection)
    eval_chunk: int = 8  # tasks per compiled evaluation call
    seed: int = 0
    task_batching: str = "auto"  # see batching.map_tasks
    # Meta-batch tasks split over all devices (of all processes), state replicated
    # (distributed.py); meta_batch_size must be a multiple of the device count.
    data_parallel: bool = False
    log_every: int = 50
    checkpoint_every: int = 250  # steps; also at every epoch end
    init_from: str = ""  # a best/ checkpoint to start theta_0 and LSLR from (fine-tuning)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iterations_per_epoch


def default() -> ml_collections.ConfigDict:
    """Every `Config` field at its default, as the ConfigDict a config file starts from."""
    return ml_collections.ConfigDict(dataclasses.asdict(Config()))


def build(config) -> Config:
    """A validated `Config` from a ConfigDict, a dict or a `Config`; errors name the field."""
    if isinstance(config, Config):
        return validate(config)
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    fields = {f.name for f in dataclasses.fields(Config)}
    if unknown := sorted(set(values) - fields):
        raise errors.ConfigError(
            f"config fields {unknown} are unknown; the fields are {sorted(fields)}."
        )
    return validate(Config(**values))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise errors.ConfigError(message)


def validate(cfg: Config) -> Config:
    """Raises ConfigError naming the offending field (= `--config.<field>`) and its range."""
    _check_types(cfg)
    _check_ranges(cfg)
    _check_choices(cfg)
    return cfg


def _check_types(cfg: Config) -> None:
    """Every field has its default's type (an int is a float too), and floats are finite."""
    for f in dataclasses.fields(Config):
        value, kind = getattr(cfg, f.name), type(f.default)
        _check(
            type(value) is kind or (kind is float and type(value) is int),
            f"config.{f.name}={value!r} must be a {kind.__name__} (default {f.default!r}).",
        )
        if kind is float:
            _check(math.isfinite(value), f"config.{f.name}={value} must be a finite number.")


def _check_ranges(cfg: Config) -> None:
    """The numeric fields are in range, alone and against each other."""
    positive = (
        "n_way k_shot n_query image_size width meta_batch_size epochs iterations_per_epoch "
        "val_tasks eval_chunk log_every checkpoint_every"
    )
    for name in positive.split():
        _check(getattr(cfg, name) >= 1, f"config.{name}={getattr(cfg, name)} must be >= 1.")
    for name in ("inner_lr", "meta_lr", "min_meta_lr"):
        _check(getattr(cfg, name) > 0, f"config.{name}={getattr(cfg, name)} must be > 0.")
    _check(
        cfg.min_meta_lr <= cfg.meta_lr,
        f"config.min_meta_lr={cfg.min_meta_lr} must be <= config.meta_lr={cfg.meta_lr}.",
    )
    _check(cfg.num_inner_steps >= 0, f"config.num_inner_steps={cfg.num_inner_steps} must be >= 0.")
    _check(
        cfg.constraint_k >= 1,
        f"config.constraint_k={cfg.constraint_k} must be >= 1 (k = 1: the full weight range).",
    )
    _check(
        0.0 <= cfg.exact_loss_weight <= 1.0,
        f"config.exact_loss_weight={cfg.exact_loss_weight} must be in [0, 1].",
    )
    _check(
        cfg.exact_loss_weight == 0 or cfg.hardware_inner,
        "config.exact_loss_weight > 0 needs config.hardware_inner=True (else it is the loss).",
    )
    _check(
        cfg.constraint_lambda >= 0,
        f"config.constraint_lambda={cfg.constraint_lambda} must be >= 0.",
    )
    _check(cfg.seed >= 0, f"config.seed={cfg.seed} must be >= 0.")
    _check(
        cfg.msl_epochs >= 0 and cfg.first_order_epochs >= 0,
        "config.msl_epochs and config.first_order_epochs must be >= 0.",
    )


def _check_choices(cfg: Config) -> None:
    """The fields checked against the library and the disk: dataset, architecture,
    task_batching, train_sigma_w, pulse_policy, device and init_from."""
    _check(cfg.dataset in DATASETS, f"config.dataset={cfg.dataset!r} is not one of {DATASETS}.")
    _check(
        cfg.architecture in models.ARCHITECTURES,
        f"config.architecture={cfg.architecture!r} is not one of {models.ARCHITECTURES}.",
    )
    _check(
        cfg.task_batching == "auto" or cfg.task_batching in batching.STRATEGIES,
        f"config.task_batching={cfg.task_batching!r} is not one of {batching.STRATEGIES} or "
        "'auto'.",
    )
    _named("config.train_sigma_w", device.validate_sigma_w, cfg.train_sigma_w)
    _named("config.pulse_policy", device.pulse_policy, cfg.pulse_policy)
    _named("config.device", lambda d: device.validate(crossbar.preset(d)), cfg.device)
    _check(
        not cfg.init_from or pathlib.Path(cfg.init_from).exists(),
        f"config.init_from={cfg.init_from!r}: no such checkpoint folder (a run's best/ folder).",
    )


def _named(name, check, value):
    """Runs `check(value)`, prefixing an error's message with the field's name."""
    try:
        check(value)
    except errors.UserError as e:
        raise type(e)(f"{name}={value!r}: {e}") from None


# The models the comparison meta-trains (each a run). The offline scheme needs none.
#   roa: one inner step with the ROA constraint (k = 4): ROA, ROA-FLR and origin;
#   roa_wc: the same with k = 1 (no effective constraint): ROA-WC and ROA-WC-FLR, which is
#     the MAML++ baseline;
#   five_step: five inner steps with the constraint: the online baseline (five noisy writes).
MODELS = {
    "roa": dict(num_inner_steps=1, constraint_k=4.0),
    "roa_wc": dict(num_inner_steps=1, constraint_k=1.0),
    "five_step": dict(num_inner_steps=5, constraint_k=4.0),
}
SCALES = ("quick", "cpu", "cpu_long", "paper", "tiny")
# The paper's (MAML++'s) meta-training: epochs x meta-steps per epoch.
PAPER_EPOCHS, PAPER_ITERATIONS = 100, 500


def model_config(task: str, model: str, scale: str) -> Config:
    """Meta-training config of `model` for `task` at `scale` (what each scale reduces is here).

    paper: the MAML++ protocol, 100 epochs x 500 meta-steps, 600 validation tasks per epoch,
      MSL over 15 epochs, first order for the first 10 (Omniglot), second order afterwards.
    cpu: this project's 2-core budget, first order throughout, no MSL annealing, 100
      validation tasks per epoch; every model 6 epochs x 100 meta-steps of 8 tasks (5-way),
      the larger tasks fewer tasks per step (`Task.cpu_meta_batch_size`): each model meets
      the same tasks, as in the paper, which trains every scheme for the same epochs and
      iterations.
    quick: the README's main job (minutes): 1-step models 4 epochs x 100 of 8 tasks, the
      5-step one 2 x 100 of 4 (the one scale where the 5-step model meets fewer tasks, to
      keep the main job short, BUILD_NOTES.md "Fair budgets"), 50 validation tasks.
    cpu_long: the well-trained runs: cpu with 10x the epochs, and MAML++'s
      derivative-order annealing (first order for 10 epochs, then second order).
    tiny: seconds, for tests.
    """
    _check(task in tasks.TASKS, f"--task={task!r} is not one of {sorted(tasks.TASKS)}.")
    _check(model in MODELS, f"model {model!r} is not one of {sorted(MODELS)}.")
    _check(scale in SCALES, f"--scale={scale!r} is not one of {SCALES}.")
    spec = tasks.TASKS[task]
    cfg = Config(**{**spec.overrides, **MODELS[model], "constraint_lambda": 0.1})
    steps = cfg.num_inner_steps
    if scale == "paper":
        return dataclasses.replace(
            cfg, epochs=PAPER_EPOCHS, iterations_per_epoch=PAPER_ITERATIONS, val_tasks=600
        )
    if scale in ("quick", "cpu", "cpu_long"):
        batch = spec.cpu_meta_batch_size or cfg.meta_batch_size
        epochs = {"cpu": 6, "cpu_long": 60}.get(scale, 4)
        if scale == "quick" and steps > 1:
            epochs, batch = 2, 4
        # cpu_long anneals as MAML++ (first order for its first 10 epochs); quick and cpu are
        # first order throughout, also when a run is extended (rundir.claim lets the epochs
        # change) up to the paper's epochs.
        first_order_epochs = 10 if scale == "cpu_long" else PAPER_EPOCHS
        return dataclasses.replace(
            cfg,
            epochs=epochs,
            iterations_per_epoch=100,
            meta_batch_size=batch,
            first_order_epochs=first_order_epochs,
            msl_epochs=0,
            val_tasks=50 if scale == "quick" else 100,
        )
    return dataclasses.replace(
        cfg,
        epochs=1,
        iterations_per_epoch=4,
        meta_batch_size=2,
        first_order_epochs=1,
        msl_epochs=0,
        val_tasks=4,
        eval_chunk=4,
        log_every=2,
    )


class Protocol(NamedTuple):
    """How the methods are evaluated (MODEL.md 5)."""

    sigmas: tuple  # write-noise levels
    rhos: tuple  # relative learning rates searched on val (1 must be among them: FLR)
    seeds: int  # repeats; each draws its own tasks and noise
    test_tasks: int  # test tasks per repeat
    val_tasks: int  # validation tasks of the rho search (one repeat)
    offline_steps: int = 5  # SGD steps of the offline network (0: no offline baseline)
    device: str = "calibrated"  # device preset (or .json) of the adaptation crossbars
    chunk: int = 8  # tasks per compiled call


PAPER_SIGMAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def protocol(scale: str, task: str | None = None) -> Protocol:
    """The evaluation protocol of a scale (cpu_long evaluates as cpu), for `task`.

    At the cpu scales a task changes what its `Task.cpu_protocol` says (the larger tasks
    evaluate fewer tasks: each adaptation costs more). An ablation-only task has no offline
    baseline at any scale. `task` None (or a name not in tasks.TASKS): the scale's protocol.
    """
    proto = _scale_protocol(scale)
    spec = tasks.TASKS.get(task)
    if spec is None:
        return proto
    if scale in ("cpu", "cpu_long"):
        proto = proto._replace(**spec.cpu_protocol)
    return proto._replace(offline_steps=0) if spec.ablation_only else proto


def _scale_protocol(scale: str) -> Protocol:
    _check(scale in SCALES, f"--scale={scale!r} is not one of {SCALES}.")
    if scale == "paper":
        return Protocol(PAPER_SIGMAS, (0.25, 0.5, 1.0, 2.0, 4.0, 8.0), 4, 600, 600)
    if scale in ("cpu", "cpu_long"):
        return Protocol((0.0, 0.25, 0.5, 1.0, 2.0, 3.0), (0.5, 1.0, 2.0, 4.0), 4, 75, 100)
    if scale == "quick":
        # 48 tasks: whole chunks of 8 (50 would evaluate 56 and keep 50).
        return Protocol((0.0, 0.5, 1.0, 2.0, 3.0), (0.5, 1.0, 2.0, 4.0), 2, 48, 48)
    return Protocol((0.0, 1.0), (1.0, 2.0), 2, 8, 8, offline_steps=2, chunk=4)


def check_protocol(proto: Protocol) -> Protocol:
    """Raises ValueError naming the protocol field (= evaluation flag) that is out of range."""
    numbers = [*proto.sigmas, *proto.rhos]
    _check(all(math.isfinite(x) for x in numbers), f"sigma_w and rhos must be finite: {proto}.")
    _check(len(proto.sigmas) > 0 and len(proto.rhos) > 0, "sigma_w and rhos must not be empty.")
    _check(1.0 in proto.rhos, f"rhos={proto.rhos} must include 1 (the fixed-rate, FLR, methods).")
    _check(all(r > 0 for r in proto.rhos), f"rhos={proto.rhos} must all be > 0.")
    device.validate_sigma_w(proto.sigmas)
    for name in ("seeds", "test_tasks", "val_tasks", "chunk"):
        _check(getattr(proto, name) >= 1, f"{name}={getattr(proto, name)} must be >= 1.")
    _check(proto.offline_steps >= 0, f"offline_steps={proto.offline_steps} must be >= 0.")
    _named("eval_device", lambda d: device.validate(crossbar.preset(d)), proto.device)
    return proto
