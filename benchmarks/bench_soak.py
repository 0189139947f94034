"""The fault soak (issue 9, item 8): a map with injected faults ends exact, on both backends.

Each backend runs the same map twice, fault-free and then with a share (``--fault-share``, 5%) of
its calls hit by injected faults, and the faulty run must end with every result exact and
accepted once, no job object and no process left, in at most ``--max-ratio`` (3) times the
fault-free wall time.  The faults:

- on the worker, chosen by call index (seeded), on the call's first run only: SIGKILL of the
  worker, ``os._exit(3)``, a segfault, a hang past the call's timeout.  The first run of such a
  call creates a marker file (in a directory the host and the workers share on this machine)
  before it faults; a later run of the call finds the marker and returns the exact value;
- on the AWS path (through the offline stand-in), in the transport: a dropped invoke (202, never
  run) and a duplicate delivery (run twice), at the stand-in's rates; S3 errors (503 SlowDown /
  500 InternalError) on a share of the S3 requests of the host and the workers
  (``dask_wren.testing.s3_faults.FaultyS3`` in front of moto); and one 429 storm window, every
  invoke throttled for ``--storm`` seconds, opened when a third of the calls are done.

The per-call faults share the fault share evenly (on AWS: 4 worker kinds, drops, duplicates and
S3 errors, 1/7 each; locally the 4 worker kinds, 1/4 each).  For each fault kind the table says
how many were injected, how many of those were retried (another attempt of the call, or the
same request sent again) and how many recovered (the call's result exact, or the request served
in the end).  Each call sleeps ``--work-ms`` so that the map has work to wait for, as real maps do.

    python benchmarks/bench_soak.py --calls 10000          # the benchmark (a few minutes per backend)
    python benchmarks/bench_soak.py --calls 150 --fault-share 0.3 --quick   # the fast test's run

``--quick`` judges everything but the wall-time ratio (tests assert no wall times).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import dask_wren
from dask_wren.testing import aws_standin
from dask_wren.testing.s3_faults import FaultyS3
from lambda_worker import protocol

WORKER_KINDS = ("SIGKILL", "os._exit", "segfault", "hang")
DROP, DUPLICATE, S3_ERROR, STORM = "dropped invoke", "duplicate delivery", "S3 error", "429 storm"


@dataclasses.dataclass(frozen=True)
class FaultyCall:
    """The mapped function: ``i * i + 1`` after ``work_s`` of sleep; call ``i`` in ``faults``
    first does its fault, on its first run only (the marker file tells later runs)."""

    faults: dict[int, str]
    marker_dir: str
    work_s: float
    hang_s: float

    def __call__(self, i: int) -> int:
        kind = self.faults.get(i)
        if kind is not None:
            try:
                os.close(os.open(os.path.join(self.marker_dir, str(i)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                kind = None  # an earlier run faulted already
        if kind == "SIGKILL":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "os._exit":
            os._exit(3)
        elif kind == "segfault":
            ctypes.string_at(0)
        elif kind == "hang":
            time.sleep(self.hang_s)
        time.sleep(self.work_s)
        return i * i + 1


def plan_worker_faults(calls: int, share: float, seed: int) -> dict[int, str]:
    """``share`` of the call indices (seeded), each given one of the worker kinds in turn."""
    chosen = random.Random(seed).sample(range(calls), round(calls * share))
    return {i: WORKER_KINDS[n % len(WORKER_KINDS)] for n, i in enumerate(chosen)}


@dataclasses.dataclass
class Run:
    wall: float
    results: list[Any]  # the value, or the exception
    attempts: list[list[dict[str, Any]]]  # each call's future.stats["attempts"]
    job_id: str
    errors_logged: list[str]
    backend: Any  # shared by the executors of one configuration: shut down at the end
    storage: Any
    prefix: str

    def objects_left(self) -> tuple[list[str], list[str]]:
        """The job's objects still in storage (its executor deleted them when it closed), and apart
        from them its cancel marker, which stays by design for a cancelled attempt that may still
        run (``dask_wren.cancelling``; swept once this host has ended)."""
        marker = protocol.cancel_key(self.prefix, self.job_id)
        left = [key for key, _ in self.storage.list(protocol.job_prefix(self.prefix, self.job_id))]
        return [k for k in left if k != marker], [k for k in left if k == marker]


class _Errors(logging.Handler):
    """Collects the dask_wren logger's errors during a run (a result delivered twice would log one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_map(settings: dict[str, Any], fn: FaultyCall, calls: int, timeout: float, on_done: Any = None) -> Run:
    """Map ``fn`` over ``range(calls)``; the wall time runs until the last future resolved."""
    errors = _Errors()
    logging.getLogger("dask_wren").addHandler(errors)
    try:
        start = time.perf_counter()
        with dask_wren.default_executor(**settings) as ex:
            futures = ex.map(fn, range(calls), timeout=timeout)
            if on_done is not None:
                for f in futures:
                    f.add_done_callback(on_done)
            dask_wren.wait(futures, timeout=3600)
            wall = time.perf_counter() - start
            storage, prefix, backend = ex.storage, ex.settings.prefix, ex.backend
        job_id = futures[0].job_id
    finally:
        logging.getLogger("dask_wren").removeHandler(errors)
    results = [f.exception() or f.result() for f in futures]
    attempts = [f.stats.get("attempts") or [] for f in futures]
    return Run(wall, results, attempts, job_id, errors.messages, backend, storage, prefix)


def shut_down(*runs: Run) -> None:
    """Shut the runs' backends down (executors share them and leave them running): what is left
    after that is what leaked."""
    for backend in {id(r.backend): r.backend for r in runs}.values():
        backend.shutdown()


def descendants() -> list[int]:
    """Live processes below this one (from /proc; zombies do not count: they run nothing)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            except OSError:
                continue
            if state not in ("Z", "X"):
                children[int(ppid)].append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


@dataclasses.dataclass
class Report:
    backend: str
    rows: list[tuple[str, int, int | str, int]]  # fault kind, injected, retried, recovered
    exact: int
    calls: int
    accepted_once: bool
    objects_left: int
    cancel_markers_left: int
    processes_left: int
    fault_free: float
    faulty: float
    problems: list[str]


def account_worker_faults(plan: dict[int, str], marker_dir: str, run: Run) -> list[tuple[str, int, int, int]]:
    fired = {int(name) for name in os.listdir(marker_dir)}
    rows = []
    for kind in WORKER_KINDS:
        calls = [i for i, k in plan.items() if k == kind and i in fired]
        retried = sum(1 for i in calls if len(run.attempts[i]) > 1)
        recovered = sum(1 for i in calls if run.results[i] == i * i + 1)
        rows.append((kind, len(calls), retried, recovered))
    return rows


def judge(backend: str, calls: int, free: Run, faulty: Run, rows: list) -> Report:
    """Everything but the processes left, which are counted once the backend (and stand-in) ended."""
    problems = []
    for name, run in (("fault-free", free), ("faulty", faulty)):
        wrong = [i for i in range(calls) if run.results[i] != i * i + 1]
        if wrong:
            i = wrong[0]
            problems.append(f"{name} run: {len(wrong)} results not exact, e.g. call {i}: {run.results[i]!r}")
        left, _ = run.objects_left()
        if left:
            problems.append(f"{name} run: {len(left)} job objects left in storage: {', '.join(left[:4])}")
        if run.errors_logged:
            problems.append(f"{name} run: {len(run.errors_logged)} errors logged, e.g. {run.errors_logged[0]}")
    # the host takes the first successful record of a call and stops its other attempts; a second
    # delivery to a future would log an error
    accepted_once = all(sum(1 for a in attempts if a.get("outcome") == "ok") <= 1 for attempts in faulty.attempts)
    accepted_once = accepted_once and not faulty.errors_logged
    if not accepted_once:
        problems.append("a call's result was accepted more than once")
    exact = sum(1 for i in range(calls) if faulty.results[i] == i * i + 1)
    left, markers = faulty.objects_left()
    return Report(backend, rows, exact, calls, accepted_once, len(left), len(markers), 0, free.wall, faulty.wall, problems)


def soak_local(args: argparse.Namespace, workdir: str) -> Report:
    plan = plan_worker_faults(args.calls, args.fault_share, args.seed)
    settings = {
        "backend": "local", "workers": args.workers, "storage_dir": os.path.join(workdir, "store"),
    }
    free = run_map(settings, FaultyCall({}, workdir, args.work_ms / 1000, 0), args.calls, args.timeout)
    markers = os.path.join(workdir, "markers-local")
    os.mkdir(markers)
    faulty = run_map(settings, FaultyCall(plan, markers, args.work_ms / 1000, 3 * args.timeout), args.calls, args.timeout)
    shut_down(free, faulty)
    report = judge("local", args.calls, free, faulty, account_worker_faults(plan, markers, faulty))
    return count_processes_left(report)


def count_processes_left(report: Report) -> Report:
    report.processes_left = len(descendants())
    if report.processes_left:
        report.problems.append(f"{report.processes_left} processes left")
    return report


class Storm:
    """Opens one 429 window on the stand-in (every invoke throttled) once ``after`` calls are done."""

    def __init__(self, faults: Any, after: int, seconds: float):
        self.faults, self.after, self.seconds = faults, after, seconds
        self.done = 0
        self.throttled = 0
        self.timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def __call__(self, future: Any) -> None:
        with self._lock:
            self.done += 1
            if self.done != self.after:
                return
        before = self.faults.snapshot().throttled
        self.faults.throttle_rate = 1.0

        def close() -> None:
            self.faults.throttle_rate = 0.0
            self.throttled = self.faults.snapshot().throttled - before

        self.timer = threading.Timer(self.seconds, close)
        self.timer.start()


def soak_aws(args: argparse.Namespace, workdir: str) -> Report:
    per_call_kinds = len(WORKER_KINDS) + 3  # + drops, duplicates, S3 errors
    share = args.fault_share / per_call_kinds
    plan = plan_worker_faults(args.calls, share * len(WORKER_KINDS), args.seed)
    with aws_standin(workers=args.workers, timeout=max(10, int(3 * args.timeout))) as standin:
        proxy = FaultyS3(standin.s3_url, seed=args.seed).start()
        try:
            settings = dict(standin.settings_overrides, endpoint_url=proxy.url, lost_call_grace=args.grace)
            free = run_map(settings, FaultyCall({}, workdir, args.work_ms / 1000, 0), args.calls, args.timeout)
            markers = os.path.join(workdir, "markers-aws")
            os.mkdir(markers)
            standin.faults.reset()
            standin.faults.set(drop_rate=share, duplicate_rate=share, seed=args.seed)
            proxy.error_rate = share
            storm = Storm(standin.faults, args.calls // 3, args.storm)
            fn = FaultyCall(plan, markers, args.work_ms / 1000, 3 * args.timeout)
            faulty = run_map(settings, fn, args.calls, args.timeout, on_done=storm)
            if storm.timer is not None:
                storm.timer.join()
            standin.faults.clear()
            proxy.error_rate = 0.0
            seen, s3 = standin.faults.snapshot(), proxy.snapshot()
            executions = settled_executions(standin, faulty.job_id)  # late losers write no more after this
            shut_down(free, faulty)
            rows = account_worker_faults(plan, markers, faulty) + account_transport(faulty, seen, s3, executions, storm)
            report = judge("aws (stand-in)", args.calls, free, faulty, rows)
        finally:
            proxy.stop()
    return count_processes_left(report)


def settled_executions(standin: Any, job_id: str, quiet: float = 2.0) -> list[Any]:
    """The job's executions once the stand-in has run what it accepted (losing attempts run on,
    as on Lambda): none running, and no new one for ``quiet`` seconds."""
    deadline = time.monotonic() + 60
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        executions = standin.executions(job_id=job_id)
        if len(executions) != seen or any(e.outcome is None for e in executions):
            seen, since = len(executions), time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.1)
    return executions


def account_transport(run: Run, seen: Any, s3: Any, executions: list[Any], storm: Storm) -> list[tuple]:
    exact = {i for i, r in enumerate(run.results) if r == i * i + 1}
    runs: collections.Counter[str] = collections.Counter(e.request_id for e in executions)
    ran: collections.defaultdict[str, set[str]] = collections.defaultdict(set)  # call id -> requests that ran it
    for e in executions:
        for c in e.call_ids:
            ran[c].add(e.request_id)
    # each attempt is one invoke request: those of a call that never ran were dropped
    dropped = {i: max(0, len(attempts) - len(ran[protocol.call_id_for(i)])) for i, attempts in enumerate(run.attempts)}
    duplicated = {int(c) for e in executions if runs[e.request_id] > 1 for c in e.call_ids}
    invoke_failures = sum(1 for r in run.results if isinstance(r, dask_wren.WrenError) and "invoke request" in str(r))
    return [
        # a dropped attempt was made up for by another attempt (a retry, or a backup) when the call ran at all
        (DROP, seen.dropped, sum(d for i, d in dropped.items() if d and ran[protocol.call_id_for(i)]),
         sum(d for i, d in dropped.items() if i in exact)),
        (DUPLICATE, seen.duplicated, "-", len(duplicated & exact)),
        (S3_ERROR, s3.injected, s3.retried, s3.recovered),
        # every throttled request is sent again (by botocore, or by the host after a pause) until accepted
        (f"{STORM} ({storm.seconds:g} s)", storm.throttled, storm.throttled - invoke_failures, storm.throttled - invoke_failures),
    ]


def print_report(report: Report, max_ratio: float, quick: bool) -> list[str]:
    print(f"\n{report.backend}: {report.calls} calls")
    print(f"  {'fault':<22} {'injected':>8} {'retried':>8} {'recovered':>9}")
    for kind, injected, retried, recovered in report.rows:
        print(f"  {kind:<22} {injected:>8} {retried!s:>8} {recovered:>9}")
    ratio = report.faulty / report.fault_free
    print(
        f"  results exact {report.exact}/{report.calls}, accepted once: {'yes' if report.accepted_once else 'NO'}, "
        f"job objects left {report.objects_left} (+ cancel markers kept: {report.cancel_markers_left}), "
        f"processes left {report.processes_left}"
    )
    print(
        f"  wall: fault-free {report.fault_free:.1f} s, with faults {report.faulty:.1f} s, ratio {ratio:.2f} "
        f"(target <= {max_ratio:g}{', not judged in a quick run' if quick else ''})"
    )
    problems = list(report.problems)
    if not quick and ratio > max_ratio:
        problems.append(f"the faulty run took {ratio:.2f} x the fault-free run (target <= {max_ratio:g})")
    for p in problems:
        print(f"  PROBLEM: {p}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--fault-share", type=float, default=0.05, help="share of the calls hit by a per-call fault")
    parser.add_argument("--backends", default="local,aws", help="comma-separated: local, aws")
    parser.add_argument("--workers", type=int, default=4, help="local workers, and the stand-in's")
    parser.add_argument("--work-ms", type=float, default=20.0, help="each call's own work (a sleep)")
    parser.add_argument("--timeout", type=float, default=4.0, help="the calls' timeout (s); a hang sleeps 3x it")
    parser.add_argument("--grace", type=float, default=2.0, help="wren.aws.lost-call-grace (s)")
    parser.add_argument("--storm", type=float, default=2.0, help="the 429 window (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-ratio", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="judge everything but the wall-time ratio")
    args = parser.parse_args(argv)
    problems = []
    with tempfile.TemporaryDirectory(prefix="wren-soak-") as workdir:
        for backend in args.backends.split(","):
            soak = {"local": soak_local, "aws": soak_aws}[backend.strip()]
            os.mkdir(os.path.join(workdir, backend))
            report = soak(args, os.path.join(workdir, backend))
            problems += print_report(report, args.max_ratio, args.quick)
    print("\nsoak: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
