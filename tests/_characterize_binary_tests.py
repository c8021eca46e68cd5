"""experiments/characterize_device.py, run as a subprocess (to be merged into test_binaries.py).

Bad flags exit non-zero with one line on stderr that names the flag and nothing written; a
tiny good run writes its files.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHARACTERIZE = ROOT / "experiments" / "characterize_device.py"


def _characterize(*args):
    return subprocess.run(
        [sys.executable, str(CHARACTERIZE), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--sigma_w=0,-1"], "--sigma_w=0,-1"),
        (["--sigma_w=1,x"], "--sigma_w=1,x"),
        (["--sigma_w=nan"], "--sigma_w=nan"),
        (["--num_pulses=0"], "--num_pulses=0 must be in [1, 100000]"),
        (["--num_devices=1"], "--num_devices=1"),
        (["--seed=-1"], "--seed=-1"),
        (["--fit_steps=0"], "--fit_steps=0"),
        (["--out_dir="], "--out_dir"),
        (["--device=nope"], "--device=nope"),
        (["--device=/no/such.json"], "--device=/no/such.json"),
        (["--noise_law=cubic"], "--noise_law=cubic"),
        (["--noise_scale=-1"], "--noise_scale=-1"),
        (["--noise_scale=inf"], "--noise_scale=inf"),
        (["--fit=/no/such.csv"], "--fit=/no/such.csv"),
        (["--save_fitted=x.json"], "--save_fitted=x.json needs --fit"),
        (["--fit=/no/such.csv", "--save_fitted=x.txt"], "--save_fitted=x.txt must end in .json"),
    ],
)
def test_characterize_bad_flag_is_one_line(tmp_path, args, flag):
    out = tmp_path / "out"
    args = [f"--out_dir={out}", *args] if "--out_dir=" not in args else args
    result = _characterize(*args)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("characterize_device.py: error: --"), lines[0]
    assert flag in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()


def test_characterize_tiny_run_writes_its_files(tmp_path):
    out = tmp_path / "out"
    result = _characterize(
        f"--out_dir={out}",
        "--num_pulses=5",
        "--sigma_w=0,1",
        "--num_devices=100",
        "--noise_law=per_pulse",
        "--noise_scale=2",
    )
    assert result.returncode == 0, result.stderr
    for name in ("pulse_response", "write_noise"):
        assert (out / f"{name}.csv").read_text().count("\n") > 1
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "paper" and summary["noise_law"] == "per_pulse"
    assert summary["params"]["noise_scale"] == 2.0
    assert not (out / "fit.csv").exists()
