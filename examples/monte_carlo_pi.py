"""A Monte Carlo parameter sweep on local workers: estimate pi from random points.

Each of ``--tasks`` calls draws ``--samples`` points in the unit square with its own seed
(``np.random.default_rng(task_index)``, so a rerun gives the same estimate) and counts those
inside the quarter circle.  ``reduce`` then adds the counts on a worker: the per-task counts go
from the workers through storage to the reducer without passing through this process.

    python examples/monte_carlo_pi.py [--tasks 200] [--samples 1000000] [--workers N]

Exits 0 when the estimate is within 0.01 of pi.
"""

import argparse
import math
import statistics
import time

import dask_wren

BATCH = 250_000  # points drawn at a time: bounds each call's memory whatever --samples is


def count_inside(task):
    """Points of ``samples`` random ones in [0, 1)^2 inside the unit circle (seeded by ``seed``)."""
    import numpy as np

    seed, samples = task
    rng = np.random.default_rng(seed)
    inside = 0
    left = samples
    while left > 0:
        n = min(BATCH, left)
        x = rng.random(n)
        y = rng.random(n)
        inside += int(np.count_nonzero(x * x + y * y < 1.0))
        left -= n
    return inside


def add_counts(counts):
    return sum(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="number of calls (default 200)")
    parser.add_argument("--samples", type=int, default=1_000_000, help="points per call (default 1,000,000)")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per CPU)")
    args = parser.parse_args()

    t0 = time.time()
    with dask_wren.default_executor(workers=args.workers) as wrenexec:
        futures = wrenexec.map(count_inside, [(seed, args.samples) for seed in range(args.tasks)])
        total = wrenexec.reduce(add_counts, futures)
        inside = total.result()
        wall = time.time() - t0
        stats = [f.stats for f in futures]

    samples = args.tasks * args.samples
    estimate = 4.0 * inside / samples
    error = estimate - math.pi
    call_times = [s["worker_call_end"] - s["worker_call_start"] for s in stats]
    cold = sum(1 for s in stats if s.get("worker_cold"))
    pids = {s.get("worker_pid") for s in stats}

    print(f"pi ~= {estimate:.6f}  (error {error:+.6f} vs math.pi = {math.pi:.6f})")
    print(f"tasks: {args.tasks}, samples: {samples:,} ({args.samples:,} per task), inside: {inside:,}")
    print(f"wall time: {wall:.2f} s (map + remote reduce + result)")
    print(f"timing: median worker call {statistics.median(call_times) * 1000:.1f} ms, "
          f"max {max(call_times) * 1000:.1f} ms, {cold} cold start(s), {len(pids)} worker process(es)")
    ok = abs(error) < 0.01
    print("OK: within 0.01 of pi" if ok else "FAIL: more than 0.01 from pi")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
