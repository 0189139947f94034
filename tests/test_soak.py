"""The fault soak (``benchmarks/bench_soak.py``): maps with injected worker and transport faults end
with every result exact and accepted once, and leave no job object and no process, on the local
backend and on the AWS path through the stand-in.  Wall times are printed, never asserted here."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_soak.py"
KINDS = ["SIGKILL", "os._exit", "segfault", "hang", "dropped invoke", "duplicate delivery", "S3 error", "429 storm"]


def soak(tmp_path, *args, timeout):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.rstrip().endswith("soak: ok")
    return out.stdout


def injected(stdout, kind):
    """The ``injected`` counts of a fault kind, one per backend that has it."""
    return [int(m) for m in re.findall(rf"^  {re.escape(kind)}[^\n]*?\s+(\d+)\s+\S+\s+\d+$", stdout, re.M)]


@pytest.mark.timeout(120)
def test_a_short_soak_with_every_fault_kind(tmp_path):
    # 100 calls, a fifth of them hit: a few faults of each kind; small timeouts keep it short
    stdout = soak(
        tmp_path, "--calls", "100", "--fault-share", "0.2", "--workers", "6", "--timeout", "2", "--grace", "0.5",
        "--storm", "1", "--work-ms", "5", timeout=110,
    )
    for kind in KINDS:
        counts = injected(stdout, kind)
        assert counts and all(n >= 1 for n in counts), f"no {kind} injected:\n{stdout}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_1000_call_soak(tmp_path):
    stdout = soak(tmp_path, "--calls", "1000", "--timeout", "3", "--grace", "1", timeout=1700)
    for kind in KINDS:
        assert injected(stdout, kind), f"no {kind} row:\n{stdout}"
