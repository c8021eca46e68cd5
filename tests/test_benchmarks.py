"""The benchmark scripts run and print their tables (tiny sizes; timings are not checked)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_meta_step_benchmark_prints_every_row():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "meta_step.py"),
            "--notorch",
            "--inner_steps=1",
            "--meta_batch=2",
            "--width=4",
            "--image_size=16",
            "--repeats=1",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for row in ("1 inner step(s), unroll ", "unroll, lax.conv rules", "origin", "hardware write"):
        assert row in out, out
