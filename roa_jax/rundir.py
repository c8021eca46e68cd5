"""The files of one meta-training run: config, checkpoints (orbax), best model, CSV, TensorBoard.

<workdir>/config.json     the run's `Config`; a rerun with another config is refused
         checkpoints/     orbax checkpoints of the whole train state (resume)
         best/, best.json the best-validation meta-parameters and their score
         train.csv, val.csv, tb/   metrics

`export` copies a run without its TensorBoard events and older checkpoints (a few MB), e.g.
into results/ beside the numbers it produced; `adopt` puts such a copy back as a run folder,
which then resumes (or counts as finished) as the original would.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import shutil

import orbax.checkpoint as ocp
from absl import logging

from roa_jax import config as config_lib
from roa_jax import distributed


class Workdir:
    """Paths of one run folder (created if missing)."""

    def __init__(self, path):
        self.path = pathlib.Path(path).expanduser().absolute()
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints = self.path / "checkpoints"
        self.best = self.path / "best"
        self.best_json = self.path / "best.json"
        self.config_json = self.path / "config.json"
        self.train_csv = self.path / "train.csv"
        self.val_csv = self.path / "val.csv"
        self.tensorboard = self.path / "tb"


def read_config(path) -> config_lib.Config:
    """The `Config` of a run folder (its config.json); a field added since counts at its default."""
    file = pathlib.Path(path, "config.json")
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: {path} is not a meta_train.py run folder.")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); delete the run folder.") from None
    return config_lib.build({**dataclasses.asdict(config_lib.Config()), **values})


def claim(workdir: Workdir, cfg: config_lib.Config) -> None:
    """Writes `cfg` to the run folder, or refuses a folder that holds a run of another config.

    The number of epochs may differ (a run may be extended), and data_parallel (it changes
    how the steps are computed, not what). Only process 0 writes.
    """
    if workdir.config_json.exists():
        old = dataclasses.asdict(read_config(workdir.path))
        new = dataclasses.asdict(cfg)
        free = ("epochs", "data_parallel")
        diff = {k: (old[k], v) for k, v in new.items() if old[k] != v and k not in free}
        if diff:
            raise ValueError(
                f"{workdir.path} holds a run with a different config (field: (saved, new)) "
                f"{diff}; use a new --workdir or the same settings to resume."
            )
    if distributed.is_main():
        workdir.config_json.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))


class Csv:
    """Appends rows to a CSV; on resume drops rows from steps after the restored checkpoint.

    Only process 0 writes the file.
    """

    def __init__(self, path, fields, keep_until_step):
        self.path, self.fields = pathlib.Path(path), fields
        self._write = distributed.is_main()
        rows = []
        if self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until_step]
        if self._write:
            with self.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(rows)
        self.rows = rows

    def write(self, row):
        if self._write:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.fields).writerow(row)
        self.rows.append(row)


class TensorBoard:
    """TensorBoard event files through tf.summary (TensorFlow is already a tfds dependency).

    Uses the low-level `tf.summary.write` with the scalars plugin's metadata, so that the
    `tensorboard` package itself is only needed to view the files, not to write them. Only
    process 0 writes.
    """

    def __init__(self, path):
        self._writer = None
        if not distributed.is_main():
            return
        import tensorflow as tf  # Heavy: only when a run writes metrics.
        from tensorflow.core.framework import summary_pb2

        tf.config.set_visible_devices([], "GPU")
        self._tf = tf
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        self._writer = tf.summary.create_file_writer(str(path))

    def scalars(self, step, values: dict):
        if self._writer is None:
            return
        tf = self._tf
        with self._writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.write(name, tf.constant(float(value)), metadata=self._metadata)
        self._writer.flush()


class _DropOrbaxInfo:
    """absl-handler filter: orbax logs several INFO lines per save; keep its warnings."""

    def filter(self, record):
        return record.levelno > 20 or "/orbax/" not in record.pathname


def quiet_orbax() -> None:
    """Called by binaries: hides orbax's per-save INFO lines from the log."""
    logging.get_absl_handler().addFilter(_DropOrbaxInfo())


class Checkpoints:
    """The run's orbax checkpoints: save every so often, restore the latest on resume."""

    def __init__(self, workdir: Workdir, max_to_keep: int = 2):
        self._dir = workdir.checkpoints
        self._manager = ocp.CheckpointManager(
            self._dir, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        )

    def save(self, step: int, state) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, state):
        """The latest checkpoint (with `state`'s structure), or `state` if there is none."""
        step = self._manager.latest_step()
        if step is None:
            return state
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(state))
        except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
            raise ValueError(
                f"Checkpoint {self._dir}/{step} could not be restored ({type(e).__name__}: "
                f"{str(e)[:200]}). Delete that folder to resume from the previous one, or use "
                "a new --workdir."
            ) from None


def load_best(path, target):
    """Meta-parameters saved by `save_best` under `path` (a run's best/ folder), as `target`."""
    path = pathlib.Path(path).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}: run experiments/meta_train.py first.")
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"Checkpoint {path} could not be restored ({type(e).__name__}: {str(e)[:200]}); "
            "it is damaged or from another network: meta-train it again."
        ) from None


def save_best(workdir: Workdir, meta, record: dict) -> None:
    """Replaces best/ by `meta` (written beside it first, then renamed) and best.json.

    Every process calls it (orbax's save is collective); process 0 moves the files.
    """
    tmp = workdir.path / "best.tmp"
    if tmp.exists() and distributed.is_main():
        shutil.rmtree(tmp)
    distributed.barrier("rundir.save_best: tmp removed")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp, meta)
    checkpointer.wait_until_finished()
    if distributed.is_main():
        if workdir.best.exists():
            shutil.rmtree(workdir.best)
        tmp.rename(workdir.best)
        workdir.best_json.write_text(json.dumps(record, indent=1))
    distributed.barrier("rundir.save_best: renamed")


def finished(path) -> bool:
    """Whether the run in `path` has trained all its steps (its latest checkpoint is the last)."""
    path = pathlib.Path(path)
    if not all((path / name).exists() for name in ("config.json", "best", "checkpoints")):
        return False
    return _latest_step(path) == read_config(path).total_steps


def _latest_step(path) -> int | None:
    """The step of the latest checkpoint of the run in `path`, or None if it has none."""
    folder = (pathlib.Path(path) / "checkpoints").absolute()
    return ocp.CheckpointManager(folder).latest_step() if folder.exists() else None


def read_best(workdir: Workdir) -> dict:
    """best.json ({'val_accuracy', 'ci95', 'step', 'epoch'}), or {} before the first epoch."""
    return json.loads(workdir.best_json.read_text()) if workdir.best_json.exists() else {}


_EXPORTED = ("config.json", "best", "best.json", "train.csv", "val.csv")
# orbax's commit_success.txt names the absolute folder it was written to: not exported (local
# folders do not need it).
_NOT_EXPORTED = shutil.ignore_patterns("commit_success.txt")


def export(path, dest) -> pathlib.Path:
    """Copies the run in `path` to `dest` (replaced): config, best, metrics, last checkpoint."""
    path, dest = pathlib.Path(path), pathlib.Path(dest)
    latest = _latest_step(path)
    if latest is None:
        raise FileNotFoundError(f"{path} has no checkpoint to export.")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _EXPORTED:
        src = path / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, ignore=_NOT_EXPORTED)
        elif src.exists():
            shutil.copy2(src, tmp / name)
    last = path / "checkpoints" / str(latest)
    shutil.copytree(last, tmp / "checkpoints" / str(latest), ignore=_NOT_EXPORTED)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def adopt(exported, path) -> bool:
    """Copies an `export`ed run into `path` if `path` holds no run yet; whether it did."""
    exported, path = pathlib.Path(exported), pathlib.Path(path)
    if (path / "config.json").exists() or not (exported / "config.json").exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(exported, path)
    return True
