"""The comparison's results (comparison.evaluate): one typed value, its method ids, its JSON.

`Results` is what `comparison.evaluate` returns, what reproduce.py writes as results.json and
what claims, figures and calibration read. Rows stay the records `evaluation.summarize` makes,
{'sigma_w', 'rho', 'accuracy', 'ci95', 'seed_accuracies', 'tasks', 'task_accuracies'}
(accuracies as fractions; 'task_accuracies', per task, is absent from files written before it),
and a method row adds {'method'} (one of METHOD_NAMES).

The JSON is `json.dumps(fields, indent=1)` in the field order below, with 'seconds' only where
set. Format version 1 is written without a 'format' field and a file without one reads as
version 1, so results.json files written before and after this module agree byte for byte; a
file naming another format is an error. Noise levels (sigma_w) as keys go through `sigma_key`,
the one place they are normalised (JSON keys are strings, evaluated ones float32 values).

Usage:
    results = results_lib.read("results/omniglot_5w1s_cpu/results.json")
    roa = results.rows(results_lib.ROA)
    results_lib.write(results, path)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib

from roa_jax import errors

FORMAT = "roa_jax.Results/1"

# The models of the comparison (config.MODELS) and the methods read off them.
ROA_MODEL, ROA_WC_MODEL, FIVE_STEP_MODEL = "roa", "roa_wc", "five_step"

ROA = "ROA"  # 1 step, the constraint (k = 4), rho tuned on validation
ROA_FLR = "ROA-FLR"  # as ROA, rho = 1
ROA_WC = "ROA-WC"  # no constraint (k = 1), rho tuned
ROA_WC_FLR = "ROA-WC-FLR (MAML++)"  # no constraint, rho = 1: the MAML++ baseline
FIVE_STEP = "5-step"  # five noisy writes, rho tuned
FIVE_STEP_FLR = "5-step-FLR"  # five noisy writes, rho = 1
OFFLINE = "offline"  # a network trained per task, mapped by one write

# (method, model, tuned rho?) in the order tables and figures list them.
METHODS = (
    (ROA, ROA_MODEL, True),
    (FIVE_STEP, FIVE_STEP_MODEL, True),
    (ROA_WC, ROA_WC_MODEL, True),
    (ROA_FLR, ROA_MODEL, False),
    (ROA_WC_FLR, ROA_WC_MODEL, False),
    (FIVE_STEP_FLR, FIVE_STEP_MODEL, False),
)
METHOD_NAMES = (*(m for m, _, _ in METHODS), OFFLINE)
MODEL_OF = {method: model for method, model, _ in METHODS}  # offline has no meta-trained model


def sigma_key(sigma_w) -> float:
    """A noise level as a key: the float of a JSON string or a float32 value, to 6 decimals."""
    return round(float(sigma_w), 6)


@dataclasses.dataclass(frozen=True)
class Results:
    """The comparison of methods on one task (module docstring); fields in JSON order."""

    title: str = ""  # of the figures and tables
    chance: float | None = None  # 1 / n_way (a fraction); None: unknown
    seeds: int = 0  # repeats of the test tasks
    protocol: dict = dataclasses.field(default_factory=dict)  # config.Protocol._asdict()
    devices: dict = dataclasses.field(default_factory=dict)  # {label: {param: float}}
    models: dict = dataclasses.field(default_factory=dict)  # {model: Config as a dict}
    parts: dict = dataclasses.field(default_factory=dict)  # {part: saved part, with 'rows'}
    best_rho: dict = dataclasses.field(default_factory=dict)  # {model: {sigma_key: rho}}
    origin: dict = dataclasses.field(default_factory=dict)  # {model: {'accuracy', 'ci95'}}
    methods: list = dataclasses.field(default_factory=list)  # method rows
    seconds: float | None = None  # wall time of reproduce.py; not written where None

    def rows(self, method: str) -> list[dict]:
        """The rows of `method` (one of METHOD_NAMES), in their stored order."""
        return [r for r in self.methods if r["method"] == method]

    @property
    def device_note(self) -> str:
        """The device preset(s) evaluated, each with a digest of its parameters ("calibrated
        [3f2a91]"): a preset whose parameters change gets another digest, so results of two
        versions of one name are told apart in every table."""
        return ", ".join(
            f"{label} [{hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:6]}]"
            for label, p in self.devices.items()
        )

    def part_rows(self, model: str, split: str) -> list[dict] | None:
        """The rows of part '<model>_<split>' ('val', 'test', 'origin'), None if not evaluated."""
        part = self.parts.get(f"{model}_{split}")
        return None if part is None else part["rows"]

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.seconds is None:
            del fields["seconds"]
        return json.dumps(fields, indent=1)


def write(results: Results, path) -> None:
    pathlib.Path(path).write_text(results.to_json())


def read(path) -> Results:
    """results.json at `path`; a missing, unparsable or malformed file is a RunFolderError."""
    path = pathlib.Path(path)
    if not path.exists():
        raise errors.RunFolderError(
            f"{path} is missing: run experiments/reproduce.py for it first."
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise errors.RunFolderError(f"{path}: not a readable results file ({e}).") from None
    return from_json(data, str(path))


def from_json(data, source: str = "results") -> Results:
    """Results from parsed JSON, each field checked; `source` names the file in errors."""

    def fail(field, why):
        raise errors.RunFolderError(f"{source}: field {field!r} {why}.")

    if not isinstance(data, dict):
        fail("(top level)", "is not a JSON object")
    version = data.get("format", FORMAT)
    if version != FORMAT:
        fail("format", f"is {version!r}; this version reads {FORMAT!r}")
    names = [f.name for f in dataclasses.fields(Results)]
    for key in data:
        if key not in (*names, "format"):
            fail(key, f"is not a field of {FORMAT} ({', '.join(names)})")
    for key in names[:-1]:  # all but seconds
        if key not in data:
            fail(key, "is missing")
    kinds = {"title": str, "seeds": int, "protocol": dict, "devices": dict, "models": dict}
    kinds.update(parts=dict, best_rho=dict, origin=dict, methods=list)
    for key, kind in kinds.items():
        if not isinstance(data[key], kind):
            fail(key, f"is not a {kind.__name__}")
    _number(data["chance"], "chance", fail, optional=True)
    _number(data.get("seconds"), "seconds", fail, optional=True)
    for name, part in data["parts"].items():
        if not isinstance(part, dict) or not isinstance(part.get("rows"), list):
            fail(f"parts.{name}.rows", "is missing or not a list")
        for i, row in enumerate(part["rows"]):
            _row(row, f"parts.{name}.rows[{i}]", fail)
    for i, row in enumerate(data["methods"]):
        _row(row, f"methods[{i}]", fail)
        if row.get("method") not in METHOD_NAMES:
            fail(f"methods[{i}].method", f"is {row.get('method')!r}, not one of {METHOD_NAMES}")
    best = {}
    for model, by_sigma in data["best_rho"].items():
        if not isinstance(by_sigma, dict):
            fail(f"best_rho.{model}", "is not a dict")
        best[model] = {}
        for s, rho in by_sigma.items():
            try:
                key = sigma_key(s)
            except ValueError:
                fail(f"best_rho.{model}", f"has the key {s!r}, not a noise level")
            best[model][key] = _number(rho, f"best_rho.{model}.{s}", fail)
    for model, record in data["origin"].items():
        if not isinstance(record, dict):
            fail(f"origin.{model}", "is not a dict")
        for k in ("accuracy", "ci95"):
            _number(record.get(k), f"origin.{model}.{k}", fail)
    fields = {k: data[k] for k in names if k in data}
    return Results(**{**fields, "best_rho": best})


def _number(x, field, fail, optional=False):
    if x is None and optional:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(x):
        fail(field, "is missing or not a number" if x is None else f"is {x!r}, not a number")
    return x


def _row(row, field, fail):
    if not isinstance(row, dict):
        fail(field, "is not a row (a dict)")
    for k in ("sigma_w", "rho", "accuracy", "ci95"):
        _number(row.get(k), f"{field}.{k}", fail)
