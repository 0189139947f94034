"""dask's own test suites under ``scheduler=wren_get``, beside the same suites under ``"processes"``.

    python benchmarks/dask_suites.py                        # bag and delayed, both schedulers
    python benchmarks/dask_suites.py --suites bag --schedulers wren --timeout 120

Each suite ships inside the installed dask (``dask/bag/tests/test_bag.py``,
``dask/tests/test_delayed.py``) and runs in its own pytest process, with a plugin whose
session-scoped fixture sets the global scheduler (tests that pick their own scheduler keep it):
``wren_get`` on the local backend with 2 workers, or dask's ``"processes"`` with 2 workers.
Prints passed/failed/errors (and skipped, xfailed) per suite and scheduler, then the tests that
fail under wren_get but not under processes, with the first line of their error; exits with
status 1 if there are any.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

SUITES = {"bag": "bag/tests/test_bag.py", "delayed": "tests/test_delayed.py"}
SCHEDULERS = ("wren", "processes")

PLUGIN = '''
import os

import dask
import pytest


@pytest.fixture(scope="session", autouse=True)
def _global_scheduler():
    if os.environ["DASK_SUITES_SCHEDULER"] == "wren":
        from dask_wren import wren_get

        config = {
            "scheduler": wren_get,
            "wren.backend": "local",
            "wren.local.workers": 2,
            "wren.storage.local-dir": os.environ["DASK_SUITES_STORE"],
        }
    else:
        config = {"scheduler": "processes", "num_workers": 2}
    with dask.config.set(config):
        yield
'''


def run_suite(suite: str, scheduler: str, workdir: str, timeout: int) -> tuple[dict[str, int], dict[str, str], float]:
    """Run one suite under one scheduler: (tallies, {failed or erroring test: first error line}, seconds)."""
    import dask

    path = os.path.join(os.path.dirname(dask.__file__), SUITES[suite])
    report = os.path.join(workdir, f"{suite}-{scheduler}.xml")
    env = dict(
        os.environ,
        DASK_SUITES_SCHEDULER=scheduler,
        DASK_SUITES_STORE=os.path.join(workdir, "store"),
        PYTHONPATH=os.pathsep.join(p for p in (workdir, os.environ.get("PYTHONPATH")) if p),
    )
    cmd = [
        sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", "-p", "dask_suites_plugin",
        f"--timeout={timeout}", f"--junitxml={report}", "-o", "junit_family=xunit1",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    tallies = dict.fromkeys(("passed", "failed", "errors", "skipped", "xfailed"), 0)
    problems: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "?")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                problems[name] = (child.get("message") or "").strip().splitlines()[0][:160] if child.get("message") else ""
                break
            if child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        tallies[outcome] += 1
    return tallies, problems, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", choices=sorted(SUITES), default=sorted(SUITES))
    parser.add_argument("--schedulers", nargs="+", choices=SCHEDULERS, default=list(SCHEDULERS))
    parser.add_argument("--timeout", type=int, default=120, help="seconds per test (pytest-timeout)")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="dask-suites-") as workdir:
        with open(os.path.join(workdir, "dask_suites_plugin.py"), "w") as f:
            f.write(PLUGIN)
        for suite in args.suites:
            for scheduler in args.schedulers:
                results[suite, scheduler] = run_suite(suite, scheduler, workdir, args.timeout)
                tallies, _, seconds = results[suite, scheduler]
                print(f"{suite:8} {scheduler:10} " + "  ".join(f"{k} {v}" for k, v in tallies.items()) + f"  ({seconds:.0f} s)", flush=True)

    wren_only = 0
    if "wren" in args.schedulers and "processes" in args.schedulers:
        print("\nfailing under wren_get only:")
        for suite in args.suites:
            only = {n: m for n, m in results[suite, "wren"][1].items() if n not in results[suite, "processes"][1]}
            for name, message in sorted(only.items()):
                print(f"  {suite}: {name}: {message}")
            if not only:
                print(f"  {suite}: none")
            wren_only += len(only)
        print("\nfailing under both:")
        for suite in args.suites:
            both = sorted(set(results[suite, "wren"][1]) & set(results[suite, "processes"][1]))
            print(f"  {suite}: {', '.join(both) or 'none'}")
    sys.exit(1 if wren_only else 0)


if __name__ == "__main__":
    main()
