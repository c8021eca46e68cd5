"""The paper's comparison of methods (MODEL.md 5), resumable part by part: one protocol for every
checkpoint, whether one model (experiments/meta_train.py) or the paper's three
(experiments/reproduce.py, evaluate.py).

For every model (a meta-trained network) three parts are evaluated: its validation sweep
(noise x rho on the validation classes, one repeat: the rho search), its test sweep (noise x
rho x seed) and its origin (exact adaptation, every seed); plus the offline scheme once. rho is
then chosen per noise level on validation only (`evaluation.best_rho`: ties go to the smaller
rho), and the methods are read off the test sweeps at those rhos:

  ROA / ROA-FLR            model 'roa' (k = 4) at the tuned rho / at rho = 1
  ROA-WC / ROA-WC-FLR      model 'roa_wc' (k = 1); ROA-WC-FLR is the MAML++ baseline
  5-step / 5-step-FLR      model 'five_step' (five noisy writes), tuned as ROA (the paper
                           tuned both)
  offline                  a network trained per task, mapped by one write

Every part is saved to <out_dir>/parts/<part>.json with a fingerprint of what it depends on
(config, checkpoint values, grid, tasks, device), so a rerun loads it instead of computing it.
Test tasks and noise come from fold_in(PRNGKey(seed), 1), validation tasks from fold_in(., 0).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import pathlib
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from roa_jax import config as config_lib
from roa_jax import crossbar, device, distributed, errors, evaluation, models, rundir, train
from roa_jax import results as results_lib
from roa_jax.results import Results

METHODS = results_lib.METHODS  # (method, model, tuned rho?) in the order tables list them


def model_name(cfg: config_lib.Config) -> str:
    """The comparison's name for a model of `cfg`'s kind (meta_train.py's one model)."""
    if cfg.num_inner_steps > 1:
        return results_lib.FIVE_STEP_MODEL
    if cfg.constraint_k > 1 and cfg.constraint_lambda > 0:
        return results_lib.ROA_MODEL
    return results_lib.ROA_WC_MODEL


def _fingerprint(*objects) -> str:
    text = json.dumps([_jsonable(o) for o in objects], sort_keys=True, default=np.ndarray.tolist)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _digest(tree) -> str:
    """Hash of a pytree's array values: a retrained checkpoint invalidates its parts."""
    data = b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(tree))
    return hashlib.sha256(data).hexdigest()[:16]


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "_asdict"):
        return {k: _jsonable(v) for k, v in obj._asdict().items()}
    return obj


class Part(NamedTuple):
    name: str
    model: str | None  # None: the offline scheme
    split: str
    kind: str  # evaluation.KINDS
    grid: evaluation.Grid
    num_tasks: int


def parts(models_: dict, proto: config_lib.Protocol, num_devices: int = 1) -> list[Part]:
    """The parts to evaluate for {name: (cfg, meta)}, over `num_devices` stacked devices."""
    seeds, devices = range(proto.seeds), range(num_devices)
    out = []
    for name in models_:
        val_grid = evaluation.make_grid(proto.sigmas, proto.rhos, [0], devices)
        test_grid = evaluation.make_grid(proto.sigmas, proto.rhos, seeds, devices)
        origin = evaluation.make_grid([0.0], [1.0], seeds)  # no device: exact arithmetic
        out += [
            Part(f"{name}_val", name, "val", "adapt", val_grid, proto.val_tasks),
            Part(f"{name}_test", name, "test", "adapt", test_grid, proto.test_tasks),
            Part(f"{name}_origin", name, "test", "origin", origin, proto.test_tasks),
        ]
    if proto.offline_steps:
        grid = evaluation.make_grid(proto.sigmas, [1.0], seeds, devices)
        out.append(Part("offline_test", None, "test", "offline", grid, proto.test_tasks))
    return out


def _setting(part: Part, cfg: config_lib.Config, proto: config_lib.Protocol):
    if part.kind == "offline":
        # The offline network: the task's architecture with one BN set, trained per task.
        model, steps = models.build(cfg.architecture, cfg.n_way, cfg.width, 1), proto.offline_steps
    else:
        model, steps = train.build_model(cfg), cfg.num_inner_steps
    return evaluation.Setting(
        kind=part.kind,
        model=model,
        n_way=cfg.n_way,
        k_shot=cfg.k_shot,
        n_query=cfg.n_query,
        num_steps=steps,
        chunk=proto.chunk,
        offline_lr=cfg.inner_lr,
        task_batching=cfg.task_batching,
    )


def check_same_tasks(models_: dict) -> None:
    """All models must have been trained on the same task shape (they share test tasks)."""
    fields = ("dataset", "n_way", "k_shot", "n_query", "image_size")
    shapes = {name: tuple(getattr(c, f) for f in fields) for name, (c, _) in models_.items()}
    if len(set(shapes.values())) > 1:
        raise errors.RunFolderError(
            f"The models were trained on different tasks {fields}: {shapes}; compare models "
            "of one task."
        )


def evaluate(
    models_: dict,
    splits: dict,
    norm,
    proto: config_lib.Protocol,
    out_dir,
    title: str,
    seed=0,
    devices: dict | None = None,
    saved_only: bool = False,
) -> Results:
    """Evaluates every method on `models_` {name: (cfg, meta)}; returns the finished Results.

    Parts already evaluated with the same settings (out_dir/parts/*.json) are loaded, not
    recomputed. rho is chosen per noise level on the validation classes only.

    Args:
      models_: {name: (config, meta-parameters)} of the meta-trained networks.
      splits: {'val', 'test'} class arrays (a calibration passes validation classes twice).
      norm: per-channel (mean, std).
      proto: the protocol.
      out_dir: where the parts are saved.
      title: of the figures and tables.
      seed: base seed of tasks and noise.
      devices: {label: DeviceParams} to evaluate all in one sweep per part (the grid's device
        axis); default {proto.device: its preset}. With more than one, rows carry a 'device'
        index and `select` gives the results of one device.
      saved_only: evaluate nothing: load every part saved in out_dir whatever its fingerprint
        (to score an earlier run again after a change of the claims); a part that is missing
        or was evaluated on other devices (labels) is an error.

    Raises:
      rundir.FolderInUse: another process is writing `out_dir`.
    """
    with rundir.lock(out_dir):
        return _evaluate(models_, splits, norm, proto, out_dir, title, seed, devices, saved_only)


def _evaluate(models_, splits, norm, proto, out_dir, title, seed, devices, saved_only) -> Results:
    check_same_tasks(models_)
    parts_dir = pathlib.Path(out_dir, "parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    devices = devices or {proto.device: crossbar.preset(proto.device)}
    # The offline part uses no meta-trained network, only the task's shape; it takes ROA's config
    # where there is one, so its fingerprint does not depend on the order of the models.
    task_cfg = models_.get(results_lib.ROA_MODEL, next(iter(models_.values())))[0]
    header = _header(models_, proto, devices, title, task_cfg)
    sweep = _sweeper(splits, norm, devices, seed)
    evaluated = {}  # {part name: its record}
    for part in parts(models_, proto, len(devices)):
        cfg, meta = models_[part.model] if part.model else (task_cfg, None)
        file = parts_dir / f"{part.name}.json"
        if saved_only:
            evaluated[part.name] = load_saved_part(file, list(devices))
            continue
        setting = _setting(part, cfg, proto)
        fingerprint = _fingerprint(
            setting._replace(model=repr(setting.model)),
            part.grid._asdict(),
            part.num_tasks,
            header.devices,
            seed,
            cfg,
            _digest(meta),
        )
        saved = _read_saved(file) if file.exists() else {}
        if saved.get("fingerprint") == fingerprint:
            evaluated[part.name] = saved
            logging.info("Part %s: loaded from %s.", part.name, file)
            continue
        record = {"fingerprint": fingerprint, **sweep(part, setting, meta, cfg)}
        if distributed.is_main():
            rundir.write_atomic(file, json.dumps(record, indent=1))
        evaluated[part.name] = record
    results = dataclasses.replace(header, parts=evaluated)
    return finish(results) if len(devices) == 1 else results


def _header(models_, proto, devices, title, task_cfg) -> Results:
    """Results with what was evaluated, how, and no parts yet."""
    return Results(
        title=title,
        chance=1.0 / task_cfg.n_way,
        seeds=proto.seeds,
        protocol=proto._asdict(),
        devices={
            label: {k: np.asarray(v).tolist() for k, v in params._asdict().items()}
            for label, params in devices.items()
        },
        models={name: dataclasses.asdict(cfg) for name, (cfg, _) in models_.items()},
    )


def _sweeper(splits, norm, devices, seed):
    """sweep(part, setting, meta, cfg) -> the part's record (without its fingerprint).

    Test tasks and noise come from fold_in(PRNGKey(seed), 1), validation's from fold_in(., 0).
    """
    stacked = evaluation.stack(list(devices.values()))
    images = {split: jax.device_put(splits[split]) for split in ("val", "test")}
    base = jax.random.PRNGKey(seed)
    split_keys = {"val": jax.random.fold_in(base, 0), "test": jax.random.fold_in(base, 1)}

    def sweep(part: Part, setting: evaluation.Setting, meta, cfg) -> dict:
        start = time.time()
        accs = evaluation.sweep(
            split_keys[part.split],
            meta,
            images[part.split],
            norm,
            stacked,
            part.grid,
            part.num_tasks,
            setting,
            device.pulse_policy(cfg.pulse_policy),
            progress=_progress(part.name),
            mesh=distributed.mesh(),  # the grid split over all devices, where several
        )
        return {
            "model": part.model,
            "split": part.split,
            "kind": part.kind,
            "num_steps": setting.num_steps,
            "seconds": time.time() - start,
            "devices": list(devices),
            "rows": evaluation.summarize(accs, part.grid),
        }

    return sweep


def _read_saved(file) -> dict:
    """A saved part, or {} (evaluated again) where it does not parse."""
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError:
        logging.warning("Part %s does not parse: evaluating it again.", file)
        return {}


def _read_part(file) -> dict:
    try:
        return json.loads(pathlib.Path(file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise errors.RunFolderError(f"{file}: no readable saved part ({e}).") from None


def _labels(file, part: dict) -> list[str]:
    if part.get("devices") is None:
        raise errors.RunFolderError(f"{file}: the saved part does not record its device labels.")
    return part["devices"]


def saved_devices(file) -> list[str]:
    """The device labels a saved part was evaluated on, in its rows' order."""
    return _labels(file, _read_part(file))


def load_saved_part(file, labels: list[str]) -> dict:
    """A saved part, checked to hold the devices `labels` in that order."""
    part = _read_part(file)
    saved = _labels(file, part)
    if saved != labels:
        raise errors.RunFolderError(
            f"{file}: saved for devices {saved}, not {labels}; evaluate again without "
            "reusing saved parts."
        )
    logging.info("Part %s: loaded from %s (saved only).", pathlib.Path(file).stem, file)
    return part


def select(results: Results, index: int) -> Results:
    """The finished results of device `index` of a multi-device `evaluate`."""
    label = list(results.devices)[index]
    parts_ = {}
    for name, part in results.parts.items():
        rows = part["rows"]
        if rows and "device" in rows[0]:
            rows = [{k: v for k, v in r.items() if k != "device"} for r in rows]
            rows = [
                r for r, full in zip(rows, part["rows"], strict=True) if full["device"] == index
            ]
        parts_[name] = {**part, "rows": rows}
    return finish(
        dataclasses.replace(results, devices={label: results.devices[label]}, parts=parts_)
    )


def _progress(name):
    """Logs a sweep's progress (chunks, rate, ETA) at most once a minute."""
    start = last = time.time()

    def progress(done, total):
        nonlocal last
        if done == total or time.time() - last > 60:
            last = time.time()
            rate = done / (last - start)
            eta = (total - done) / rate / 60
            logging.info(
                "Part %s: chunk %d/%d, %.2f chunks/s, ETA %.1f min", name, done, total, rate, eta
            )

    return progress


def finish(results: Results) -> Results:
    """`results` with best_rho, origin and the method rows derived from its evaluated parts."""
    models_ = results.models
    best = {
        name: {results_lib.sigma_key(s): rho for s, rho in evaluation.best_rho(rows).items()}
        for name in models_
        if (rows := results.part_rows(name, "val")) is not None
    }
    origin = {
        name: {k: rows[0][k] for k in ("accuracy", "ci95")}
        for name in models_
        if (rows := results.part_rows(name, "origin")) is not None
    }
    results = dataclasses.replace(results, best_rho=best, origin=origin)
    return dataclasses.replace(results, methods=method_rows(results))


def merge(results: Results, extra: Results) -> Results:
    """`results` with the parts and models of `extra` (evaluated apart, on the same tasks),
    finished again."""
    merged = dataclasses.replace(
        results,
        parts={**results.parts, **extra.parts},
        models={**results.models, **extra.models},
    )
    return finish(merged)


def method_rows(results: Results) -> list[dict]:
    """The paper's methods, one row per noise level, picked from the evaluated parts."""
    out = []
    for method, model, tuned in METHODS:
        rows = results.part_rows(model, "test")
        if rows is None:
            continue
        best = results.best_rho.get(model, {})
        for r in rows:
            if r["rho"] == (best[results_lib.sigma_key(r["sigma_w"])] if tuned else 1.0):
                out.append({"method": method, **r})
    offline = results.parts.get("offline_test")
    if offline is not None:
        out += [{"method": results_lib.OFFLINE, **r} for r in offline["rows"]]
    return out


def write_csv(results: Results, path) -> None:
    """Every evaluated number: one row per (part, sigma_w, rho), then the method rows."""
    fields = ["table", "name", "split", "kind", "num_steps", "sigma_w", "rho", "accuracy", "ci95"]
    fields += ["tasks", "seed_accuracies"]

    def line(row, **labels):
        numbers = {k: row[k] for k in ("sigma_w", "rho", "accuracy", "ci95", "tasks")}
        seeds = " ".join(f"{a:.4f}" for a in row["seed_accuracies"])
        return {**labels, **numbers, "seed_accuracies": seeds}

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for name, part in results.parts.items():
            labels = {k: part[k] for k in ("split", "kind", "num_steps")}
            writer.writerows(line(row, table="part", name=name, **labels) for row in part["rows"])
        for row in results.methods:
            writer.writerow(line(row, table="method", name=row["method"], split="test"))


def save(results: Results, out_dir) -> None:
    """results.json and results.csv in `out_dir` (by process 0 only)."""
    if not distributed.is_main():
        return
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_lib.write(results, out / "results.json")
    write_csv(results, out / "results.csv")


def load(out_dir) -> Results:
    """The Results `save` wrote to `out_dir` (results_lib.read: checked field by field)."""
    return results_lib.read(pathlib.Path(out_dir, "results.json"))
