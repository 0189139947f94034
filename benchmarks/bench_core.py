"""Core dask-wren benchmarks on the local backend, side by side with baselines in one run.

A. 1,000 trivial calls end to end: dask-wren (warm pool, and cold: pool started inside the
   timing) vs dask's ``scheduler="processes"`` and ``concurrent.futures.ProcessPoolExecutor``.
B. 100 calls of ~0.2 s of numpy work: dask-wren ``map`` vs the same calls serially in this process.
C. Storage requests per call for a 1,000-call map (host requests + each worker's own count).

The machine may be shared and noisy: compare the ratios printed side by side, not the absolute
figures.  ``--quick`` is a smoke run of a few seconds (for tests); ``--strict`` exits 1 when a
target is missed.  ``--progress on|off`` sets ``wren.progress`` (on: every dask-wren wait draws
its progress bar on stderr) to measure what the bar costs; ``--sections A`` runs only those.

    python benchmarks/bench_core.py [--quick] [--repeat 3] [--workers N] [--strict] [--progress on|off] [--sections ABC]
"""

import os

# One BLAS/OpenMP thread per process, set before numpy is imported here.  Local worker processes
# inherit this process's environment when they start, so this covers them too.  (``extra_env``
# would not: it applies during a call, after a warm worker may have loaded numpy.)  Section B's
# work is elementwise numpy, which does not use BLAS threads anyway.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import contextlib  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import dask  # noqa: E402
import numpy as np  # noqa: E402
from _common import fmt_s, print_summary  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from dask_wren.backends.local import LocalBackend  # noqa: E402
from dask_wren.config import Settings  # noqa: E402
from dask_wren.executor import Executor  # noqa: E402
from dask_wren.testing.counting import CountingStorage  # noqa: E402
from lambda_worker.storage.local import LocalStorage  # noqa: E402

TARGET_TRIVIAL_S = 1.0  # 1,000 trivial calls end to end
TARGET_SPEEDUP = 1.9  # section B on 2 cores
TARGET_REQUESTS = 4.0  # storage requests per call


# -- the work ---------------------------------------------------------------------------------


def inc(x):
    return x + 1


_WORK_SIZE = 100_000


def numpy_work(iters):
    """Elementwise numpy on a 100,000-element array (not BLAS, so single-threaded); a checksum."""
    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(1)
    except ImportError:
        limit = contextlib.nullcontext()
    with limit:
        x = np.linspace(0.0, 1.0, _WORK_SIZE)
        y = np.empty_like(x)
        for _ in range(iters):
            np.sin(x, out=y)
            np.multiply(y, 0.5, out=y)
            np.add(x, y, out=x)
            np.sqrt(x, out=x)
        return float(x.sum())


def calibrate(seconds):
    """Iterations of ``numpy_work`` that take about ``seconds`` here; and the measured time."""
    numpy_work(5)  # warm up
    iters = 10
    while True:
        t0 = time.perf_counter()
        numpy_work(iters)
        took = time.perf_counter() - t0
        if took >= 0.05:
            break
        iters *= 4
    iters = max(1, round(iters * seconds / took))
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        numpy_work(iters)
        runs.append(time.perf_counter() - t0)
    return iters, statistics.median(runs)


# -- storage request counting -----------------------------------------------------------------


# -- measurements -----------------------------------------------------------------------------


def timed(fn, repeat, cpu=None):
    """Run ``fn`` ``repeat`` times; return the list of seconds (``fn`` returns its own seconds
    when it wants to exclude setup or teardown, else None and the whole call is timed).  ``cpu``:
    a list that gets this process's CPU seconds (all its threads; not the workers') of each run."""
    out = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        own = fn()
        out.append(own if own is not None else time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return out


def check(results, n):
    if list(results) != list(range(1, n + 1)):
        raise AssertionError("wrong results")


def bench_trivial(settings, executor, n, workers, repeat):
    rows = {}
    notes = []

    def wren_warm():
        fs = executor.map(inc, range(n))
        check(executor.get_result(fs), n)

    def wren_warm_chunked():
        fs = executor.map(inc, range(n), chunksize=10)
        check(executor.get_result(fs), n)

    teardowns = []

    def wren_cold():
        t0 = time.perf_counter()
        backend = LocalBackend(workers=workers, memory_mb=settings.memory_mb)
        ex = Executor(settings, backend=backend)
        fs = ex.map(inc, range(n))
        check(ex.get_result(fs), n)
        took = time.perf_counter() - t0
        t1 = time.perf_counter()
        ex.shutdown()
        backend.shutdown()
        teardowns.append(time.perf_counter() - t1)
        # LocalBackend.shutdown() leaves its worker-log directory behind; do not pile them up in /tmp.
        shutil.rmtree(backend._log_dir, ignore_errors=True)
        return took

    def dask_processes():
        out = dask.compute(*[dask.delayed(inc)(i) for i in range(n)], scheduler="processes", num_workers=workers)
        check(out, n)

    def ppe_cold():
        with cf.ProcessPoolExecutor(workers) as pool:
            check(pool.map(inc, range(n)), n)

    warm_pool = cf.ProcessPoolExecutor(workers)
    list(warm_pool.map(inc, range(workers * 4)))

    def ppe_warm():
        check(warm_pool.map(inc, range(n)), n)

    try:
        host_cpu = []
        rows["dask-wren warm"] = timed(wren_warm, repeat, host_cpu)
        rows["dask-wren cold"] = timed(wren_cold, repeat)
        rows["dask-wren warm chunksize=10"] = timed(wren_warm_chunked, repeat)
        rows["dask processes"] = timed(dask_processes, repeat)
        rows["ProcessPoolExecutor cold"] = timed(ppe_cold, repeat)
        rows["ProcessPoolExecutor warm"] = timed(ppe_warm, repeat)
    finally:
        warm_pool.shutdown()
    notes.append(f"dask-wren warm: the host's own CPU time {statistics.median(host_cpu) / n * 1e6:.0f} us per call "
                 "(median; this process, all its threads, not the workers): less disturbed by other load than the wall time")
    notes.append(f"dask-wren cold: pool start to last result; its teardown (worker exit + storage cleanup) "
                 f"took a further {statistics.median(teardowns):.2f} s (median), not counted")
    notes.append(f"dask processes starts a new {dask.config.get('multiprocessing.context', 'spawn')} pool per "
                 f"compute (its default); ProcessPoolExecutor cold uses {multiprocessing.get_start_method()} "
                 "and includes its shutdown")
    return rows, notes


def bench_numpy(executor, n, seconds, workers):
    iters, per_call = calibrate(seconds)
    # Import numpy in every worker first (the host has it loaded): B compares steady-state work.
    [f.result() for f in executor.map(numpy_work, [1] * (4 * workers))]
    t0 = time.perf_counter()
    serial = [numpy_work(iters) for _ in range(n)]
    t_serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    fs = executor.map(numpy_work, [iters] * n)
    parallel = [f.result() for f in fs]
    t_parallel = time.perf_counter() - t0
    if not np.allclose(serial, parallel):
        raise AssertionError("workers computed different checksums")
    # What the cores allow: the same calls through a warm stdlib process pool, no storage at all.
    with cf.ProcessPoolExecutor(workers) as pool:
        list(pool.map(numpy_work, [1] * (4 * workers)))
        t0 = time.perf_counter()
        pooled = list(pool.map(numpy_work, [iters] * n))
        t_pool = time.perf_counter() - t0
    if not np.allclose(serial, pooled):
        raise AssertionError("the process pool computed different checksums")
    calls = [f.stats["worker_call_end"] - f.stats["worker_call_start"] for f in fs]
    pids = {f.stats.get("worker_pid") for f in fs}
    return {
        "iters": iters,
        "per_call": per_call,
        "serial": t_serial,
        "parallel": t_parallel,
        "speedup": t_serial / t_parallel,
        "pool": t_pool,
        "pool_speedup": t_serial / t_pool,
        "worker_call_median": statistics.median(calls),
        "pids": len(pids),
        # Share of the parallel wall time the workers spent inside the function: low means dispatch
        # overhead; high with slow calls means the cores were shared (other load on the machine).
        "busy": sum(calls) / (t_parallel * len(pids)),
    }


def bench_requests(settings, n):
    storage = CountingStorage(LocalStorage(settings.storage_dir))
    ex = Executor(settings, storage=storage)
    try:
        fs = ex.map(inc, range(n))
        check([f.result() for f in fs], n)
        host = storage.snapshot()
        worker = sum(f.stats["storage_requests"] for f in fs)
        worker_first = Counter(f.stats["storage_requests"] for f in fs)
    finally:
        ex.shutdown()
    cleanup = storage.snapshot() - host
    return {
        "host": host,
        "host_total": sum(host.values()),
        "worker_total": worker,
        "worker_per_call": dict(sorted(worker_first.items())),
        "per_call": (sum(host.values()) + worker) / n,
        "cleanup": sum(cleanup.values()),
        "listed": storage.listed,
    }


# -- report -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer, shorter calls, one repeat")
    parser.add_argument("--repeat", type=int, default=None, help="repeats of each section A measurement (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes on every side (default: CPUs)")
    parser.add_argument("--calls", type=int, default=None, help="trivial calls in A and C (default 1000)")
    parser.add_argument("--b-calls", type=int, default=None, help="numpy calls in B (default 100)")
    parser.add_argument("--b-seconds", type=float, default=None, help="seconds per numpy call in B (default 0.2)")
    parser.add_argument("--storage-dir", default=None,
                        help="parent directory of the benchmark's local store (default: system temp dir; "
                             "/dev/shm shows the cost of file creation on disk)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--progress", choices=("on", "off"), default=None,
                        help="wren.progress for every executor (default: the configured one, auto)")
    parser.add_argument("--sections", default="ABC", help="sections to run (default ABC)")
    args = parser.parse_args()
    if args.progress is not None:
        dask.config.set({"wren.progress": args.progress == "on"})
    sections = args.sections.upper()

    cpus = os.cpu_count() or 1
    workers = args.workers or cpus
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    calls = args.calls or (200 if quick else 1000)
    b_calls = args.b_calls or (4 * workers if quick else 100)
    b_seconds = args.b_seconds or (0.05 if quick else 0.2)

    root = tempfile.mkdtemp(prefix="dask-wren-bench-", dir=args.storage_dir)
    settings = Settings.from_config(storage_dir=root, workers=workers)
    started = time.perf_counter()
    print(f"dask-wren core benchmarks: {workers} workers, {cpus} CPUs, Python {sys.version.split()[0]}, "
          f"numpy {np.__version__}, dask {dask.__version__}, load average {os.getloadavg()[0]:.2f}, "
          f"wren.progress {dask.config.get('wren.progress', None)}")
    print(f"storage: {root}")
    print(f"BLAS threads per process: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    summary = []
    try:
        executor = Executor(settings)
        [f.result() for f in executor.map(inc, range(workers * 4))]  # start and warm the shared pool

        if "A" in sections:
            print(f"\nA. {calls:,} trivial calls end to end ({repeat} repeat(s))")
            rows, notes = bench_trivial(settings, executor, calls, workers, repeat)
            ref = statistics.median(rows["dask processes"])
            for name, xs in rows.items():
                print(f"   {name:<28} {fmt_s(xs)}   {statistics.median(xs) / ref:5.2f}x dask processes")
            for note in notes:
                print(f"   note: {note}")
            print(f"   target: 1,000 trivial calls under {TARGET_TRIVIAL_S:g} s end to end "
                  "(reference: dask processes ~0.5 s; Lithops localhost 6.5 s to 160 s)")
            warm = statistics.median(rows["dask-wren warm"])
            cold = statistics.median(rows["dask-wren cold"])
            scale = 1000 / calls
            summary.append((f"{calls:,} trivial calls, warm", f"{warm:.3f} s", f"{warm / ref:.2f}x dask",
                            f"< {TARGET_TRIVIAL_S / scale:g} s", warm < TARGET_TRIVIAL_S / scale))
            summary.append((f"{calls:,} trivial calls, cold", f"{cold:.3f} s", f"{cold / ref:.2f}x dask",
                            f"< {TARGET_TRIVIAL_S / scale:g} s", cold < TARGET_TRIVIAL_S / scale))

        if "B" in sections:
            print(f"\nB. {b_calls} calls of ~{b_seconds:g} s numpy work: dask-wren map vs serial in this process")
            b = bench_numpy(executor, b_calls, b_seconds, workers)
            ideal = min(workers, cpus)
            print(f"   calibrated: {b['iters']} iterations = {b['per_call'] * 1000:.0f} ms per call here "
                  f"(median worker call time {b['worker_call_median'] * 1000:.0f} ms)")
            print(f"   serial    {b['serial']:7.2f} s")
            print(f"   dask-wren {b['parallel']:7.2f} s on {b['pids']} worker processes "
                  f"(busy {b['busy']:.0%} of the time in the function; load average now {os.getloadavg()[0]:.2f})")
            print(f"   process pool {b['pool']:4.2f} s (stdlib ProcessPoolExecutor, warm: what these cores allow, "
                  f"{b['pool_speedup']:.2f}x)")
            print(f"   speedup   {b['speedup']:7.2f}x (ideal {ideal}x; {b['speedup'] / b['pool_speedup']:.2f} of the process "
                  f"pool's); target >= {TARGET_SPEEDUP}x on 2 cores: {'met' if b['speedup'] >= TARGET_SPEEDUP else 'NOT met'}")
            target_b = TARGET_SPEEDUP if ideal >= 2 else 0.9 * ideal
            summary.append((f"{b_calls} x {b_seconds:g} s numpy calls", f"{b['speedup']:.2f}x", f"ideal {ideal}x",
                            f">= {target_b:g}x", b["speedup"] >= target_b))

        if "C" in sections:
            print(f"\nC. storage requests for a {calls:,}-call map")
            c = bench_requests(settings, calls)
            host = ", ".join(f"{k} {v}" for k, v in sorted(c["host"].items()))
            print(f"   host   {c['host_total']:6,}  ({host}; listings returned {c['listed']:,} keys)")
            print(f"   worker {c['worker_total']:6,}  (calls by their request count: {c['worker_per_call']})")
            print(f"   per call {c['per_call']:.2f} (target <= {TARGET_REQUESTS:g}); executor cleanup afterwards: "
                  f"{c['cleanup']} request(s)")
            summary.append(("storage requests per call", f"{c['per_call']:.2f}", f"host {c['host_total'] / calls:.2f} "
                            f"+ worker {c['worker_total'] / calls:.2f}", f"<= {TARGET_REQUESTS:g}",
                            c["per_call"] <= TARGET_REQUESTS))
        executor.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    missed = print_summary(summary, time.perf_counter() - started, quick, "quick run: fewer and shorter calls, so the targets, set for the full run, are not judged")
    if missed and args.strict:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
