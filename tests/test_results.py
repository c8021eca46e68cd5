"""The results type (results.py): every committed results.json reads and writes back byte for
byte, and a malformed file is an error that names its field."""

import json
import pathlib

import pytest

from roa_jax import comparison, errors
from roa_jax import results as results_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# results/codesign/results.json is the co-design study's own file, not a comparison's.
COMMITTED = sorted(p for p in (ROOT / "results").rglob("results.json") if "codesign" not in p.parts)


def test_there_are_committed_results():
    assert len(COMMITTED) >= 6


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_every_committed_results_file_reads_and_writes_back_unchanged(path):
    text = path.read_text()
    results = results_lib.read(path)
    assert "format" not in json.loads(text)  # written before the field: read as version 1
    assert results.to_json() == text
    assert set(results_lib.METHOD_NAMES) >= {r["method"] for r in results.methods}
    for model, best in results.best_rho.items():
        for row in results.part_rows(model, "val"):
            assert results_lib.sigma_key(row["sigma_w"]) in best  # one normalisation


def test_sigma_key_makes_json_strings_and_float32_values_one_key():
    import numpy as np

    assert results_lib.sigma_key("0.1") == results_lib.sigma_key(np.float32(0.1)) == 0.1
    assert results_lib.sigma_key(float(np.float32(2.5))) == 2.5


def _committed() -> dict:
    return json.loads(COMMITTED[0].read_text())


@pytest.mark.parametrize(
    "damage, field",
    [
        (lambda d: d.pop("methods"), "'methods' is missing"),
        (lambda d: d["methods"][3].pop("accuracy"), r"'methods\[3\].accuracy' is missing"),
        (lambda d: d["methods"][0].update(method="ROA2"), r"'methods\[0\].method' is 'ROA2'"),
        (lambda d: d["parts"]["roa_val"]["rows"][1].update(rho="x"), r"roa_val.rows\[1\].rho"),
        (lambda d: d["best_rho"]["roa"].update(low=1.0), "'best_rho.roa' has the key 'low'"),
        (lambda d: d["origin"]["roa"].pop("ci95"), "'origin.roa.ci95' is missing"),
        (lambda d: d.update(chance="0.2"), "'chance' is '0.2', not a number"),
        (lambda d: d.update(format="roa_jax.Results/2"), "'format' is 'roa_jax.Results/2'"),
        (lambda d: d.update(extra=1), "'extra' is not a field"),
    ],
)
def test_a_malformed_file_is_an_error_naming_the_field(tmp_path, damage, field):
    data = _committed()
    damage(data)
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(errors.RunFolderError, match=field):
        comparison.load(tmp_path)


def test_the_current_format_reads_and_unreadable_files_are_errors(tmp_path):
    data = {**_committed(), "format": results_lib.FORMAT}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    assert results_lib.read(path).methods == data["methods"]
    path.write_text("{")
    with pytest.raises(errors.RunFolderError, match="not a readable results file"):
        results_lib.read(path)
    with pytest.raises(errors.RunFolderError, match="is missing"):
        results_lib.read(tmp_path / "nowhere.json")
