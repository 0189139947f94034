"""How each failure reaches the host, on both backends: how long after the call's timeout its
error arrives, and how many times the call ran.

The AWS column runs through the Lambda-faithful stand-in (``dask_wren.testing.aws_standin``):
it writes no failure records, kills at the function's Timeout and MemorySize, and applies the
function's async retry configuration (0, as ``dask-wren deploy`` sets it), as Lambda does.  Each
call appends a line to a file when it starts, so runs are counted on the worker side for both
backends (the stand-in's own execution log is printed next to it as a cross-check).

All failures of one backend run in one map, one per worker, so the whole run takes about
``(1 + retries) x (timeout + grace)`` plus the retries' backoff.  With the shipped defaults (timeout 300 s,
grace 60 s, 2 retries) the lost-call rows would take 3 x 360 s: the settings below
are smaller and the formula is printed with the figures.

    python benchmarks/bench_failures.py [--timeout 3] [--function-timeout 8] [--grace 6] [--retries 1]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time

import dask_wren
from dask_wren.testing import aws_standin

SCENARIOS = {
    "timeout (Python code)": "sleep",
    "sys.exit(5)": "sys.exit",
    "os._exit(7)": "exit",
    "out of memory": "memory",
    "stuck in C past the timeout": "gil",
}


def misbehave(args):
    how, log = args
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    if how == "sleep":
        time.sleep(600)
    if how == "exit":
        os._exit(7)
    if how == "sys.exit":
        sys.exit(5)
    if how == "memory":
        hog = bytearray(1200 << 20)  # the stand-in function has 512 MB
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(600)
    if how == "gil":
        ctypes.PyDLL(None).sleep(600)  # holds the GIL: the handler's watchdog cannot run
    return how


def run(ex, scenarios: dict[str, str], workdir: str, timeout: float, standin=None) -> list[tuple]:
    logs = {name: os.path.join(workdir, f"{how}.log") for name, how in scenarios.items()}
    futures = ex.map(misbehave, [(how, logs[name]) for name, how in scenarios.items()], timeout=timeout)
    rows = []
    for (name, _), f in zip(scenarios.items(), futures, strict=True):
        try:
            f.result(timeout=3600)
            outcome = "no error (!)"
        except BaseException as e:  # noqa: B036  (we report what arrived, whatever it is)
            outcome = type(e).__name__
        seen = time.time()
        with open(logs[name]) as log:
            runs = len(log.read().split())
        lambda_runs = len(standin.executions(job_id=f.job_id, call_id=f.call_id)) if standin else None
        rows.append((name, outcome, seen - f.stats["host_invoked"] - timeout, runs, lambda_runs, len(f.stats.get("attempts") or ())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=3.0, help="the calls' own timeout (s)")
    parser.add_argument("--function-timeout", type=int, default=8, help="the stand-in function's Timeout (s)")
    parser.add_argument("--grace", type=float, default=6.0, help="wren.aws.lost-call-grace (s)")
    parser.add_argument("--retries", type=int, default=1, help="wren.retries (both backends)")
    args = parser.parse_args(argv)
    if args.timeout + args.grace <= args.function_timeout:
        parser.error("timeout + grace must outlast the function's Timeout, or a stuck call is re-invoked while it runs")
    table = []
    with tempfile.TemporaryDirectory(prefix="wren-bench-failures-") as tmp:
        local = {k: v for k, v in SCENARIOS.items() if v != "memory"}  # memory is not enforced locally
        os.mkdir(os.path.join(tmp, "local"))
        with dask_wren.local_executor(workers=len(local), storage_dir=os.path.join(tmp, "store"), retries=args.retries) as ex:
            table += [("local", *row) for row in run(ex, local, os.path.join(tmp, "local"), args.timeout)]
        os.mkdir(os.path.join(tmp, "aws"))
        with aws_standin(workers=len(SCENARIOS), timeout=args.function_timeout, memory_mb=512) as standin:
            settings = dict(standin.settings_overrides, lost_call_grace=args.grace, retries=args.retries)
            with dask_wren.default_executor(**settings) as ex:
                table += [("aws (stand-in)", *row) for row in run(ex, SCENARIOS, os.path.join(tmp, "aws"), args.timeout, standin)]
    lost = (1 + args.retries) * (args.timeout + args.grace) - args.timeout
    print(
        f"call timeout {args.timeout:g} s, function Timeout {args.function_timeout} s, lost-call grace {args.grace:g} s, "
        f"retries {args.retries}; a lost call fails (1 + retries) x (timeout + grace) - timeout = {lost:g} s "
        "after its timeout, plus the retries' backoff (about a second)"
    )
    print(f"{'backend':<15} {'failure':<28} {'error on the host':<18} {'s after timeout':>15} {'runs':>5} {'stand-in runs':>13} {'attempts':>8}")
    for backend, name, outcome, late, runs, lambda_runs, attempts in table:
        print(
            f"{backend:<15} {name:<28} {outcome:<18} {late:>15.1f} {runs:>5} "
            f"{'-' if lambda_runs is None else lambda_runs:>13} {attempts if attempts is not None else '-':>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
