"""The paper's experiment for one task: which models to meta-train, at which scale, and the
evaluation of every method over noise x rho x seed (MODEL.md 5), resumable part by part.

Models (each a meta-training run):
  - 'roa': one inner step, the ROA constraint (k = 4). Gives ROA (rho tuned on val per noise
    level), ROA-FLR (rho = 1) and the ideal 'origin' line.
  - 'roa_wc': the same with k = 1 (no effective constraint). Gives ROA-WC (rho tuned) and
    ROA-WC-FLR, which is the MAML++ baseline (no constraint, fixed rate).
  - 'five_step': five inner steps with the constraint: the online baseline, five noisy writes.
The offline scheme needs no meta-training (evaluation.offline_adapt).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from roa_jax import device, evaluation, train

MODELS = ("roa", "roa_wc", "five_step")
SCALES = ("cpu", "paper", "tiny")


class Protocol(NamedTuple):
    """How the methods are evaluated."""

    sigmas: tuple  # write-noise levels
    rhos: tuple  # relative learning rates searched on val (1 must be among them: FLR)
    seeds: int  # repeats; each draws its own tasks and noise
    test_tasks: int  # test tasks per repeat
    val_tasks: int  # validation tasks of the rho search (one repeat)
    offline_steps: int = 5  # SGD steps of the offline network ("5-step update offline")
    eval_device: str = "paper"
    chunk: int = 8


def _omniglot(n_way, width=64):
    return train.Config(dataset="omniglot", n_way=n_way, width=width)


def _miniimagenet():
    # MAML++ miniImageNet 5-way 1-shot (Antoniou et al. 2018); experiments/configs/
    # miniimagenet_5w1s.py builds on this.
    return train.Config(
        dataset="miniimagenet",
        image_size=84,
        width=48,
        inner_lr=0.01,
        meta_batch_size=2,
        first_order_epochs=0,
    )


TASKS = {
    "omniglot_5w1s": lambda: _omniglot(5),
    "omniglot_10w1s": lambda: _omniglot(10),
    "omniglot_20w1s": lambda: _omniglot(20),
    "omniglot_20w1s_w128": lambda: _omniglot(20, width=128),
    "miniimagenet_5w1s": _miniimagenet,
    "synthetic_5w1s": lambda: train.Config(dataset="synthetic", width=16),  # tests and demos
}

PAPER_SIGMAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def protocol(scale: str) -> Protocol:
    if scale == "paper":
        return Protocol(PAPER_SIGMAS, (0.25, 0.5, 1.0, 2.0, 4.0, 8.0), 4, 600, 600)
    if scale == "cpu":
        return Protocol((0.0, 0.25, 0.5, 1.0, 2.0, 3.0), (0.5, 1.0, 2.0, 4.0), 4, 75, 100)
    if scale == "tiny":
        return Protocol((0.0, 1.0), (1.0, 2.0), 2, 8, 8, offline_steps=2, chunk=4)
    raise ValueError(f"--scale={scale!r} is not one of {SCALES}.")


def model_config(task: str, model: str, scale: str) -> train.Config:
    """Meta-training config of `model` for `task` at `scale` (what each scale reduces is here).

    paper: MAML++ protocol, 100 epochs x 500 meta-steps, 600 validation tasks, MSL over 15
      epochs, first order for 10 epochs (Omniglot), 5-step models second order afterwards.
    cpu: the CPU budget of this project (2 cores; ~1 h of meta-training for three models):
      1-step models 6 epochs x 100 meta-steps of 8 tasks, 5-step model 3 epochs x 100 of 4
      tasks, first order throughout, no MSL annealing, 100 validation tasks per epoch.
    tiny: seconds, for tests.
    """
    if task not in TASKS:
        raise ValueError(f"--task={task!r} is not one of {sorted(TASKS)}.")
    if model not in MODELS:
        raise ValueError(f"model {model!r} is not one of {MODELS}.")
    cfg = TASKS[task]()
    steps = 5 if model == "five_step" else 1
    cfg = dataclasses.replace(
        cfg,
        num_inner_steps=steps,
        constraint_k=1.0 if model == "roa_wc" else 4.0,
        constraint_lambda=0.1,
    )
    if scale == "paper":
        return dataclasses.replace(cfg, epochs=100, iterations_per_epoch=500, val_tasks=600)
    if scale == "cpu":
        return dataclasses.replace(
            cfg,
            epochs=3 if steps > 1 else 6,
            iterations_per_epoch=100,
            meta_batch_size=4 if steps > 1 else cfg.meta_batch_size,
            first_order_epochs=100,
            msl_epochs=0,
            val_tasks=100,
        )
    if scale == "tiny":
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
    raise ValueError(f"--scale={scale!r} is not one of {SCALES}.")


# ----------------------------------------------------------------------------------------------
# Evaluation of every method, part by part, each part saved as soon as it is done.


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


class _Part(NamedTuple):
    name: str
    model: str | None
    split: str
    kind: str
    num_steps: int
    grid: evaluation.Grid
    num_tasks: int


def _parts(models: dict, proto: Protocol) -> list[_Part]:
    seeds = range(proto.seeds)
    sweep = lambda rhos: evaluation.make_grid(proto.sigmas, rhos, seeds)
    parts = []
    for name in ("roa", "roa_wc"):
        if name in models:
            val_grid = evaluation.make_grid(proto.sigmas, proto.rhos, [0])
            parts.append(_Part(f"{name}_val", name, "val", "adapt", 1, val_grid, proto.val_tasks))
            parts.append(
                _Part(f"{name}_test", name, "test", "adapt", 1, sweep(proto.rhos), proto.test_tasks)
            )
    origin = evaluation.make_grid([0.0], [1.0], seeds)
    for name in models:
        steps = models[name][0].num_inner_steps
        parts.append(
            _Part(f"{name}_origin", name, "test", "origin", steps, origin, proto.test_tasks)
        )
    if "five_step" in models:
        parts.append(
            _Part(
                "five_step_test",
                "five_step",
                "test",
                "adapt",
                models["five_step"][0].num_inner_steps,
                sweep([1.0]),
                proto.test_tasks,
            )
        )
    parts.append(
        _Part(
            "offline_test",
            None,
            "test",
            "offline",
            proto.offline_steps,
            sweep([1.0]),
            proto.test_tasks,
        )
    )
    return parts


def evaluate_models(
    models: dict, splits: dict, norm, proto: Protocol, out_dir, title: str, seed: int = 0
) -> dict:
    """Evaluates every method on `models` {name: (cfg, meta)} and returns the results dict.

    Parts already evaluated with the same settings (out_dir/parts/*.json) are loaded, not
    recomputed. rho is chosen per noise level on the validation classes only.
    """
    parts_dir = pathlib.Path(out_dir, "parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    params = device.preset(proto.eval_device)
    images = {split: jax.device_put(splits[split]) for split in ("val", "test")}
    any_cfg = next(iter(models.values()))[0]
    base = jax.random.PRNGKey(seed)
    split_keys = {"val": jax.random.fold_in(base, 0), "test": jax.random.fold_in(base, 1)}
    results = {
        "title": title,
        "chance": 1.0 / any_cfg.n_way,
        "seeds": proto.seeds,
        "protocol": proto._asdict(),
        "models": {name: dataclasses.asdict(cfg) for name, (cfg, _) in models.items()},
        "parts": {},
    }
    for part in _parts(models, proto):
        cfg, meta = models[part.model] if part.model else (any_cfg, None)
        setting = evaluation.Setting(
            kind=part.kind,
            n_way=cfg.n_way,
            k_shot=cfg.k_shot,
            n_query=cfg.n_query,
            num_steps=part.num_steps,
            chunk=proto.chunk,
            policy=cfg.pulse_policy,
            width=cfg.width,
            offline_lr=cfg.inner_lr,
            task_batching=cfg.task_batching,
        )
        file = parts_dir / f"{part.name}.json"
        fingerprint = _fingerprint(
            setting,
            part.grid._asdict(),
            part.num_tasks,
            proto.eval_device,
            seed,
            cfg,
            _digest(meta),
        )
        if file.exists():
            saved = json.loads(file.read_text())
            if saved.get("fingerprint") == fingerprint:
                results["parts"][part.name] = saved
                logging.info("Part %s: loaded from %s.", part.name, file)
                continue
        start = last_log = time.time()

        def progress(done, total, name=part.name, start=start):
            nonlocal last_log
            if done == total or time.time() - last_log > 60:
                last_log = time.time()
                rate = done / (last_log - start)
                logging.info(
                    "Part %s: chunk %d/%d, %.2f chunks/s, ETA %.1f min",
                    name,
                    done,
                    total,
                    rate,
                    (total - done) / rate / 60,
                )

        accs = evaluation.sweep(
            split_keys[part.split],
            meta,
            images[part.split],
            norm,
            params,
            part.grid,
            part.num_tasks,
            setting,
            progress=progress,
        )
        record = {
            "fingerprint": fingerprint,
            "model": part.model,
            "split": part.split,
            "kind": part.kind,
            "num_steps": part.num_steps,
            "seconds": time.time() - start,
            "rows": evaluation.summarize(accs, part.grid),
        }
        file.write_text(json.dumps(record, indent=1))
        results["parts"][part.name] = record
    results["best_rho"] = {
        name: evaluation.best_rho(results["parts"][f"{name}_val"]["rows"])
        for name in ("roa", "roa_wc")
        if f"{name}_val" in results["parts"]
    }
    results["methods"] = method_rows(results)
    return results


def method_rows(results: dict) -> list[dict]:
    """The paper's methods, one row per noise level, picked from the evaluated parts."""
    parts, best = results["parts"], results["best_rho"]

    def pick(part, rho_of):
        if part not in parts:
            return []
        rows = parts[part]["rows"]
        return [r for r in rows if r["rho"] == rho_of(r["sigma_w"])]

    methods = [
        ("ROA", "roa_test", lambda s: best["roa"][s]),
        ("ROA-FLR", "roa_test", lambda s: 1.0),
        ("ROA-WC", "roa_wc_test", lambda s: best["roa_wc"][s]),
        ("ROA-WC-FLR (MAML++)", "roa_wc_test", lambda s: 1.0),
        ("5-step", "five_step_test", lambda s: 1.0),
        ("offline", "offline_test", lambda s: 1.0),
    ]
    out = []
    for method, part, rho_of in methods:
        out += [{"method": method, **row} for row in pick(part, rho_of)]
    return out


def write_csv(results: dict, path) -> None:
    """Every evaluated number: one row per (part, sigma_w, rho), then the method rows."""
    import csv

    fields = ["table", "name", "split", "kind", "num_steps", "sigma_w", "rho", "accuracy", "ci95"]
    fields += ["tasks", "seed_accuracies"]

    def line(row, **labels):
        numbers = {k: row[k] for k in ("sigma_w", "rho", "accuracy", "ci95", "tasks")}
        seeds = " ".join(f"{a:.4f}" for a in row["seed_accuracies"])
        return {**labels, **numbers, "seed_accuracies": seeds}

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for name, part in results["parts"].items():
            labels = {k: part[k] for k in ("split", "kind", "num_steps")}
            writer.writerows(line(row, table="part", name=name, **labels) for row in part["rows"])
        for row in results["methods"]:
            writer.writerow(line(row, table="method", name=row["method"], split="test"))


def check_protocol(proto: Protocol) -> None:
    """Raises ValueError naming the protocol field that is out of range."""
    if 1.0 not in proto.rhos:
        raise ValueError(f"rhos={proto.rhos} must include 1 (the fixed-rate, FLR, methods).")
    if any(r <= 0 for r in proto.rhos) or any(s < 0 for s in proto.sigmas):
        raise ValueError("rhos must be > 0 and sigma_w >= 0.")
    if min(proto.seeds, proto.test_tasks, proto.val_tasks, proto.offline_steps) < 1:
        raise ValueError("seeds, test_tasks, val_tasks and offline_steps must be >= 1.")
    for sigma_w in proto.sigmas:
        device.validate_sigma_w(sigma_w)
    device.validate(device.preset(proto.eval_device))


def load_config(path) -> train.Config:
    """The Config of a meta_train.py run folder (its config.json)."""
    file = train.Workdir(path).config_json
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: {path} is not a meta_train.py run folder.")
    return train.Config(**json.loads(file.read_text()))


def load_models(workdirs: dict, image_shape) -> dict:
    """{name: (cfg, meta)} from run folders {name: workdir} (their config.json and best/)."""
    models = {}
    for name, path in workdirs.items():
        cfg = load_config(path)
        models[name] = (cfg, train.load_meta(train.Workdir(path).best, cfg, image_shape))
    return models


def check_same_tasks(models: dict) -> None:
    """All models must have been trained on the same task shape (they share test tasks)."""
    shapes = {(c.dataset, c.n_way, c.k_shot, c.n_query, c.image_size) for c, _ in models.values()}
    if len(shapes) > 1:
        raise ValueError(f"The models were trained on different task shapes: {shapes}.")


def save_results(results: dict, out_dir) -> None:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_csv(results, out / "results.csv")


def load_results(out_dir) -> dict:
    results = json.loads(pathlib.Path(out_dir, "results.json").read_text())
    # JSON turned the float noise-level keys of best_rho into strings.
    best = results["best_rho"]
    results["best_rho"] = {m: {float(s): r for s, r in d.items()} for m, d in best.items()}
    return results
