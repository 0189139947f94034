"""What signed payloads cost: the same work on the local backend with and without MACs, in one run.

A. 1,000 trivial calls end to end on a warm pool (bench_core's section A).
B. One call returning a 100 MB result, ``result()`` included: the worker MACs the payload, the
   host checks it before unpickling.
C. What B's MACs cost in CPU, whatever the machine: one 100 MB MAC on one thread (CPU seconds
   per GB), and as the MAC runs it (4 MB pieces on threads); from those and B's unsigned time,
   the ratio B would show on hosts and workers with more free cores.  B's target needs more cores
   than this machine has: the figure C prints says how many.

"Without signing" is this script's own switch, not a setting: it replaces ``SigningKey.mac`` and
``SigningKey.check`` with no-ops in this process and, through the command that starts its pool's
workers, in them (objects keep their format, so only the hashing is left out).  The two modes
alternate, run after run, so a shared machine's noise falls on both; compare the ratios.

    python benchmarks/bench_signing.py [--quick] [--repeat 9] [--workers N] [--mb 100] [--strict]
"""

import argparse
import hmac
import os
import shutil
import statistics
import sys
import tempfile
import time

from _common import fmt_s, print_summary  # benchmarks/ is on sys.path when run as a script

import dask_wren.backends.local as local_backend
from dask_wren.backends.local import LocalBackend
from dask_wren.config import Settings
from dask_wren.executor import Executor
from lambda_worker.signing import MAC_BYTES, SigningKey

TARGET_RATIO = 1.05  # signing costs under 5%

# Run as a worker's ``-c`` program: the MACs become no-ops, then the worker runtime runs as usual.
_UNSIGNED_WORKER = (
    "import runpy, sys; from lambda_worker.signing import SigningKey; "
    f"SigningKey.mac = lambda self, label, data: bytes({MAC_BYTES}); SigningKey.check = lambda self, *a: None; "
    "sys.argv[0] = 'lambda_worker.local_runtime'; runpy.run_module('lambda_worker.local_runtime', run_name='__main__')"
)


def inc(x):
    return x + 1


def blob(n):
    return b"r" * n


class Unsigned:
    """While active: this process skips MACs, and pools started now run workers that skip them too."""

    def __enter__(self):
        self.saved = SigningKey.mac, SigningKey.check, local_backend.python_command
        SigningKey.mac = lambda self, label, data: bytes(MAC_BYTES)
        SigningKey.check = lambda self, *a: None
        real = self.saved[2]
        local_backend.python_command = lambda *args: real("-c", _UNSIGNED_WORKER, *args[2:])  # drops "-m", module
        return self

    def __exit__(self, *exc):
        SigningKey.mac, SigningKey.check, local_backend.python_command = self.saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer calls, a smaller result, one repeat")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each mode per measurement (default 9)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes per pool (default: CPUs)")
    parser.add_argument("--mb", type=int, default=None, help="size of section B's result in MB (default 100)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    quick = args.quick
    workers = args.workers or os.cpu_count() or 1
    repeat = args.repeat or (1 if quick else 9)
    calls = 200 if quick else 1000
    size = (args.mb or (8 if quick else 100)) << 20

    root = tempfile.mkdtemp(prefix="dask-wren-bench-signing-")
    settings = Settings.from_config(storage_dir=root, workers=workers)
    started = time.perf_counter()
    print(f"dask-wren signing cost: {workers} workers, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.2f}; storage {root}")
    pools = {}
    try:
        pools["signed"] = LocalBackend(workers=workers, memory_mb=settings.memory_mb)
        with Unsigned():
            pools["unsigned"] = LocalBackend(workers=workers, memory_mb=settings.memory_mb)
        executors = {mode: Executor(settings, backend=pool) for mode, pool in pools.items()}

        def run(mode, fn):
            if mode == "signed":
                return fn(executors[mode])
            with Unsigned():
                return fn(executors[mode])

        def trivial(ex):
            t0 = time.perf_counter()
            if [f.result() for f in ex.map(inc, range(calls))] != list(range(1, calls + 1)):
                raise AssertionError("wrong results")
            return time.perf_counter() - t0

        def large(ex):
            t0 = time.perf_counter()
            if len(ex.call_async(blob, size).result()) != size:
                raise AssertionError("wrong result")
            return time.perf_counter() - t0

        summary = []
        for label, fn in ((f"A. {calls:,} trivial calls", trivial), (f"B. one {size >> 20} MB result", large)):
            for mode in pools:  # warm: pool started, modules imported, the first result's path taken
                run(mode, fn)
            times = {mode: [] for mode in pools}
            for _ in range(repeat):
                for mode in pools:
                    times[mode].append(run(mode, fn))
            ratio = statistics.median(times["signed"]) / statistics.median(times["unsigned"])
            print(f"\n{label} ({repeat} run(s) of each, alternating)")
            for mode, xs in times.items():
                print(f"   {mode:<9} {fmt_s(xs)}")
            print(f"   signed / unsigned: {ratio:.3f} (target < {TARGET_RATIO:g})")
            summary.append((label[3:], f"{statistics.median(times['signed']):.3f} s",
                            f"{ratio:.3f}x unsigned", f"< {TARGET_RATIO:g}x", ratio < TARGET_RATIO))
            if label.startswith("B"):
                unsigned_b = statistics.median(times["unsigned"])
        summary.append(_mac_cpu(size, unsigned_b, repeat))
        for ex in executors.values():
            ex.shutdown()
    finally:
        for pool in pools.values():
            pool.shutdown()
            shutil.rmtree(pool._log_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    missed = print_summary(summary, time.perf_counter() - started, quick, "quick run: the targets are not judged")
    return 1 if missed and args.strict else 0


def _mac_cpu(size: int, unsigned: float, repeat: int) -> tuple:
    """Section C: the MAC's CPU cost per byte, and the B ratio it implies on machines with more cores."""
    key = SigningKey.generate()
    data = b"r" * size
    one, threaded = [], []
    for _ in range(max(3, repeat)):
        t0 = time.perf_counter()
        hmac.digest(b"k" * 32, data, "sha256")  # one thread: the CPU it costs
        one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        key.mac("label", data)  # as the worker and the host run it
        threaded.append(time.perf_counter() - t0)
    cpu = min(one)
    print(f"\nC. MAC cost of {size >> 20} MB (min of {len(one)})")
    print(f"   one thread: {cpu * 1000:.0f} ms = {cpu / (size / 1e9):.2f} CPU s per GB; as the MAC runs it "
          f"(4 MB pieces on threads, {os.cpu_count()} CPUs): {min(threaded) * 1000:.0f} ms")
    print(f"   B signs once on the worker and checks once on the host, one after the other; unsigned B took "
          f"{unsigned:.3f} s. With N free cores on each side, B would show about 1 + 2 x {cpu:.3f} / N / {unsigned:.3f}:")
    needed = None
    for n in (1, 2, 4, 8, 16, 32):
        ratio = 1 + 2 * cpu / n / unsigned
        if needed is None and ratio < TARGET_RATIO:
            needed = n
        print(f"     N = {n:>2}: {ratio:.3f}")
    return ("free cores per side for B < 5%", f"{needed or '> 32'}", f"{cpu / (size / 1e9):.2f} CPU s/GB", "-", True)


if __name__ == "__main__":
    raise SystemExit(main())
