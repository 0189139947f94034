"""PyWren's DGEMM benchmark: every task multiplies two random N x N float64 matrices ``loops``
times and reports the GFLOP/s it reached; the host adds them up.

    python examples/big_flops.py [--tasks 8] [--size 512] [--loops 10] [--blas-threads 1]

The PyWren paper used N = 4096 on Lambda; the default here is 512 so the run takes seconds.

BLAS threads: OpenBLAS/MKL read ``OMP_NUM_THREADS`` & co. once, when numpy is first imported.
``map(..., extra_env=...)`` applies variables only while a call runs, after a warm worker may
already have imported numpy, so it cannot set the thread count.  Local worker processes inherit
the host's environment when they start, so this script sets the variables in ``os.environ``
before creating the executor (``--blas-threads``, default 1: one worker per core, one thread
per worker).  If ``threadpoolctl`` is installed the task also limits the threads with it, which
works even in an already warm worker.  (Neither is a dependency of dask-wren.)
"""

import argparse
import os
import statistics
import time

_BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def compute_flops(task):
    """One task: ``task`` is ``(seed, n, loops, blas_threads)``; returns flops and timings."""
    import contextlib

    import numpy as np

    seed, n, loops, blas_threads = task
    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(blas_threads) if blas_threads else contextlib.nullcontext()
    except ImportError:
        limit = contextlib.nullcontext()
    rng = np.random.default_rng(seed)
    a = rng.random((n, n))
    b = rng.random((n, n))
    with limit:
        t0 = time.time()
        checksum = 0.0
        for _ in range(loops):
            checksum += float(np.sum(a @ b))
        t1 = time.time()
    flops = 2.0 * n**3 * loops
    return {
        "seed": seed,
        "flops": flops,
        "start": t0,
        "end": t1,
        "seconds": t1 - t0,
        "gflops": flops / (t1 - t0) / 1e9,
        "checksum": checksum,
        "pid": os.getpid(),
        "blas_env": {k: os.environ.get(k) for k in _BLAS_VARS},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="number of tasks (default 8)")
    parser.add_argument("--size", type=int, default=512, help="matrix size N (default 512; PyWren used 4096)")
    parser.add_argument("--loops", type=int, default=10, help="multiplications per task (default 10)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads per worker, set before the workers start (default 1; 0 = leave as is)")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per CPU)")
    args = parser.parse_args()

    if args.blas_threads:
        # Before the executor exists, so the worker processes it starts inherit these.
        for var in _BLAS_VARS:
            os.environ[var] = str(args.blas_threads)

    import dask_wren

    with dask_wren.default_executor(workers=args.workers) as wrenexec:
        t0 = time.time()
        futures = wrenexec.map(compute_flops, [(i, args.size, args.loops, args.blas_threads) for i in range(args.tasks)])
        results = [f.result() for f in futures]
        wall = time.time() - t0

    total_flops = sum(r["flops"] for r in results)
    # Aggregate rate: all flops over the span from the first task start to the last task end
    # (same machine, so worker clocks agree); the wall time also counts submission and results.
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    per_task = [r["gflops"] for r in results]
    print(f"DGEMM: {args.tasks} tasks x {args.loops} multiplications of {args.size}x{args.size} float64 matrices")
    print(f"BLAS env in workers: {results[0]['blas_env']}")
    print(f"worker processes used: {len({r['pid'] for r in results})}")
    print(f"per-task GFLOP/s: median {statistics.median(per_task):.2f}, min {min(per_task):.2f}, max {max(per_task):.2f}")
    print(f"total: {total_flops / 1e9:.1f} GFLOP")
    print(f"aggregate GFLOP/s: {total_flops / span / 1e9:.2f} over the compute span ({span:.2f} s), "
          f"{total_flops / wall / 1e9:.2f} over the wall time")
    print(f"wall time: {wall:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
