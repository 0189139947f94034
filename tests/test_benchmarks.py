"""The benchmark scripts run (in their --quick mode), so they cannot rot unnoticed."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "script",
    [
        "bench_core.py", "bench_scheduler.py", pytest.param("bench_aws.py", marks=pytest.mark.slow),
        pytest.param("bench_cost.py", marks=pytest.mark.slow),
    ],
)
def test_benchmark_quick_run(script, tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"], cwd=tmp_path, capture_output=True, text=True, timeout=280
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Summary" in out.stdout and "quick run" in out.stdout
