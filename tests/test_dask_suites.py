"""dask's own bag and delayed test suites pass under wren_get wherever they pass under "processes"."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "dask_suites.py"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dask_suites_fail_under_wren_get_only_where_they_fail_under_processes(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=1150)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    only = out.stdout.split("failing under wren_get only:")[1].split("failing under both:")[0]
    assert only.split() == ["bag:", "none", "delayed:", "none"], out.stdout
