"""The files of one meta-training run: config, checkpoints (orbax), best model, CSV, TensorBoard.

<workdir>/config.json     the run's `Config`; a rerun with another config is refused
         .lock            held (flock) by the one process writing the folder
         checkpoints/     orbax checkpoints of the whole train state (resume)
         checkpoints.damaged/   checkpoints that failed to restore, moved aside
         best/, best.json the best-validation meta-parameters and their score
         train.csv, val.csv, tb/   metrics

`export` copies a run without its TensorBoard events and older checkpoints (a few MB), e.g.
into results/ beside the numbers it produced; `adopt` puts such a copy back as a run folder,
which then resumes (or counts as finished) as the original would.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import pathlib
import shutil
import typing

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from roa_jax import distributed, errors

if typing.TYPE_CHECKING:  # config imports the model code: read_config imports it when called
    from roa_jax import config as config_lib


class FolderInUse(errors.RunFolderError):
    """Another process holds the folder's lock."""


_HELD: dict[str, list] = {}  # folder -> [open lock file, depth] of the locks this process holds


@contextlib.contextmanager
def lock(folder):
    """Holds `folder`'s lock (created if missing) while the block runs: one writer at a time.

    An exclusive `flock` on `<folder>/.lock`, which holds the holder's pid: the OS releases
    it when the process ends, however it ends (kill -9 leaves no stale lock). A second
    process raises `FolderInUse` naming the folder and the holder; the same process may
    take it again (nested). Only process 0 of a multi-process run takes it (only it writes).
    """
    key = hold(folder)
    try:
        yield
    finally:
        if key is not None:
            _HELD[key][1] -= 1
            if not _HELD[key][1]:
                _HELD.pop(key)[0].close()  # closing releases the flock


def hold(folder) -> str | None:
    """Takes `folder`'s lock (as `lock`) until the process ends; its key, None off process 0."""
    if not distributed.is_main():
        return None
    folder = pathlib.Path(folder).expanduser().absolute()
    key = str(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    folder.mkdir(parents=True, exist_ok=True)
    file = open(folder / ".lock", "a+")  # noqa: SIM115 - held open while locked
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise FolderInUse(
            f"{folder} is in use by another process (pid {holder}); wait for it to end, or "
            "use another folder."
        ) from None
    file.truncate(0)
    file.write(f"{os.getpid()}\n")
    file.flush()
    _HELD[key] = [file, 1]
    return key


def write_atomic(path, text: str) -> None:
    """Writes `text` to `path` through a file beside it: a kill leaves the old file or the new."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        raise errors.RunFolderError(f"{file} is missing: {path} is not a meta_train.py run folder.")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise errors.RunFolderError(
            f"{file} is not valid JSON ({e}); delete the run folder."
        ) from None
    from roa_jax import config as config_lib  # here: the folder's other uses need no model code

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
            raise errors.RunFolderError(
                f"{workdir.path} holds a run with a different config (field: (saved, new)) "
                f"{diff}; use a new --workdir or the same settings to resume."
            )
    if distributed.is_main():
        write_atomic(workdir.config_json, json.dumps(dataclasses.asdict(cfg), indent=1))


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
    """The run's orbax checkpoints: save every so often, restore the newest sound one on resume."""

    def __init__(self, workdir: Workdir, max_to_keep: int = 2):
        self._dir = workdir.checkpoints
        self._damaged = workdir.path / "checkpoints.damaged"
        with _orbax_silenced():  # it reads every checkpoint's metadata, damaged ones too
            self._manager = ocp.CheckpointManager(
                self._dir, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
            )

    def save(self, step: int, state) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, state):
        """The newest checkpoint that restores and checks (`state`'s shapes, finite values),
        or `state` (step 0) if there is none.

        Damaged newer ones (a kill during a disk write, a disk fault) are moved aside to
        checkpoints.damaged/, with one warning naming them.
        """
        damaged, restored = {}, state
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                with _orbax_silenced():
                    restored = self._manager.restore(step, args=ocp.args.StandardRestore(state))
                _check_like(restored, state)
                break
            except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
                damaged[step] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
                restored = state
        if damaged:
            self._set_aside(damaged)
        return restored

    def _set_aside(self, damaged: dict) -> None:
        if distributed.is_main():
            self._damaged.mkdir(exist_ok=True)
            for step in damaged:
                dest, n = self._damaged / str(step), 1
                while dest.exists():
                    dest, n = self._damaged / f"{step}.{n}", n + 1
                shutil.move(self._dir / str(step), dest)
        distributed.barrier("rundir.restore_latest: damaged set aside")
        self._manager.reload()
        logging.warning(
            "Checkpoints %s of %s do not restore (%s): moved to %s; resuming from %s.",
            sorted(damaged),
            self._dir,
            "; ".join(f"{s}: {why}" for s, why in sorted(damaged.items())),
            self._damaged,
            f"step {self._manager.latest_step()}" if self._manager.latest_step() else "the start",
        )


def _check_like(restored, target) -> None:
    """Raises if `restored` differs from `target` in structure, shapes or dtypes, or holds a
    non-finite value."""
    if jax.tree.structure(restored) != jax.tree.structure(target):
        raise ValueError("its tree differs from the run's")
    leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
    for (path, x), y in zip(leaves, jax.tree.leaves(target), strict=True):
        name = jax.tree_util.keystr(path)
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ValueError(f"{name} is {x.shape} {x.dtype}, not {y.shape} {y.dtype}")
        if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
            raise ValueError(f"{name} holds a non-finite value")


class _DropAll:
    def filter(self, record):
        return "/orbax/" not in record.pathname


@contextlib.contextmanager
def _orbax_silenced():
    """Hides orbax's own error lines and tracebacks while a restore is tried: a damaged
    checkpoint is reported once, by `Checkpoints.restore_latest`."""
    drop = _DropAll()
    logging.get_absl_logger().addFilter(drop)
    try:
        yield
    finally:
        logging.get_absl_logger().removeFilter(drop)


def load_best(path, target):
    """Meta-parameters saved by `save_best` under `path` (a run's best/ folder), as `target`."""
    path = pathlib.Path(path).expanduser().absolute()
    if not path.exists():
        raise errors.RunFolderError(
            f"No checkpoint at {path}: run experiments/meta_train.py first."
        )
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except Exception as e:  # noqa: BLE001
        raise errors.RunFolderError(
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
        write_atomic(workdir.best_json, json.dumps(record, indent=1))
    distributed.barrier("rundir.save_best: renamed")


def finished(path) -> bool:
    """Whether the run in `path` has trained all its steps (its latest checkpoint is the last)."""
    path = pathlib.Path(path)
    if not all((path / name).exists() for name in ("config.json", "best", "checkpoints")):
        return False
    return latest_step(path) == read_config(path).total_steps


def latest_step(path) -> int | None:
    """The step of the latest checkpoint of the run in `path`, or None if it has none."""
    folder = (pathlib.Path(path) / "checkpoints").absolute()
    if not folder.exists():
        return None
    with _orbax_silenced():
        return ocp.CheckpointManager(folder).latest_step()


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
    latest = latest_step(path)
    if latest is None:
        raise errors.RunFolderError(f"{path} has no checkpoint to export.")
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
