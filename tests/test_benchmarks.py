"""The benchmark scripts run and print their tables (tiny sizes; timings are not checked).

Marked slow (minutes of compiles; the library code they time has its own tests): `pytest -m slow`.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_meta_step_benchmark_prints_every_row():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "meta_step.py"),
            "--notorch",
            "--inner_steps=1",
            "--shapes=omniglot_5w,miniimagenet",
            "--meta_batch=2",
            "--width=4",
            "--image_size=16",
            "--repeats=1",
            "--lax_conv",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for shape in ("omniglot_5w", "miniimagenet"):
        for row in (
            "meta-step, unroll ",
            "meta-step, first order",
            "meta-step, lax.conv rules",
            "eval chunk, origin",
            "eval chunk, hardware",
        ):
            assert f"{shape}, 1 step(s), {row}" in out, out
    # The reference rows (the code before the speed work) have a finite ratio.
    ref_rows = [line.split() for line in out.splitlines() if line.endswith("4412a0a")]
    assert len(ref_rows) == 6 and all(float(r[-2]) > 0 for r in ref_rows), out


def _benchmark(name, *flags):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *flags],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_levers_benchmark_prints_every_lever_with_equal_results():
    out = _benchmark("levers.py", "--width=4", "--repeats=1")
    assert out.count("meta-parameters equal: True") == 2, out
    assert out.count("accuracies equal: True") == 6, out
    assert "threads, two 5-step sweeps" in out, out


def test_sweep_benchmark_prints_every_strategy():
    out = _benchmark(
        "sweep.py", "--levels=2", "--tasks=2", "--chunk=2", "--width=4", "--strategies=map,loop"
    )
    assert "2 noise levels x 2 tasks, conv4-4" in out, out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"map", "loop"}, out
    assert float(rows["loop"][1]) == 1.0  # loop / loop
    assert float(rows["map"][2]) == 0.0  # the same accuracies as the loop


def test_device_write_benchmark_prints_every_case():
    out = _benchmark("device_write.py", "--repeats=1", "--rounds=1")
    assert "conv4-64 omniglot 5-way: 111,488 weights" in out, out
    for row in ("write", "plain", "normal draw only"):
        assert out.count(f" {row} ") >= 2, out  # one line per case
    assert out.count("threefry unrolled") == 4, out
    assert out.count("the unrolled threefry gives the same bits: True") == 4, out
    ratios = [line.split()[-1] for line in out.splitlines() if line.startswith("1024x1024")]
    assert len(ratios) == 1 and float(ratios[0]) > 0, out


def test_program_tasks_benchmark_prints_every_row():
    out = _benchmark(
        "program_tasks.py", "--steps=1", "--program_tasks=1,2", "--tasks=8", "--points=1"
    )
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("1 ")]
    assert [r[1] for r in rows] == ["1", "2"], out


def test_technology_write_benchmark_prints_each_technology():
    out = _benchmark(
        "technology_write.py", "--rounds=1", "--repeats=1", "--scale=1", "--technologies=pcm"
    )
    row = next(line.split() for line in out.splitlines() if line.startswith("pcm "))
    assert float(row[-1].rstrip("x")) > 0, out
