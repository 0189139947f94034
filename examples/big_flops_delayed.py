"""PyWren's DGEMM benchmark written with ``dask.delayed`` and run by the ``wren_get`` scheduler.

Every task multiplies two random N x N float64 matrices (entries drawn with its own standard
deviation) ``loops`` times and reports the GFLOP/s it reached; the host adds them up.

    python examples/big_flops_delayed.py [--tasks 8] [--size 512] [--loops 10] [--blas-threads 1]

``big_flops`` is defined in this script (``__main__``), which the workers cannot import:
dask-wren ships it to them by value.  Each delayed call has no dependencies, so each runs on a
worker process.  See ``big_flops.py`` for the same benchmark with the futures API and for why the
BLAS thread variables are set in ``os.environ`` before the first compute starts the workers.
"""

import argparse
import os
import statistics
import time

_BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def big_flops(std_dev, n=512, loops=10):
    """Multiply two N(0, std_dev) matrices ``loops`` times; return the flops and timings."""
    import numpy as np

    rng = np.random.default_rng()
    a = rng.normal(0.0, std_dev, (n, n))
    b = rng.normal(0.0, std_dev, (n, n))
    t0 = time.time()
    checksum = 0.0
    for _ in range(loops):
        checksum += float(np.sum(a @ b))
    t1 = time.time()
    flops = 2.0 * n**3 * loops
    return {
        "std_dev": std_dev,
        "flops": flops,
        "start": t0,
        "end": t1,
        "gflops": flops / max(t1 - t0, 1e-9) / 1e9,
        "checksum": checksum,
        "pid": os.getpid(),
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
        # Before dask_wren starts any worker, so the worker processes inherit these.
        for var in _BLAS_VARS:
            os.environ[var] = str(args.blas_threads)

    import dask

    from dask_wren import wren_get

    std_devs = [1.0 + i for i in range(args.tasks)]
    tasks = [dask.delayed(big_flops)(s, args.size, args.loops) for s in std_devs]
    t0 = time.time()
    with dask.config.set(scheduler=wren_get):
        results = dask.compute(*tasks, workers=args.workers)
    wall = time.time() - t0

    total_flops = sum(r["flops"] for r in results)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    per_task = [r["gflops"] for r in results]
    print(f"DGEMM: {args.tasks} dask.delayed tasks x {args.loops} multiplications "
          f"of {args.size}x{args.size} float64 matrices")
    print(f"worker processes used: {len({r['pid'] for r in results})}")
    print(f"per-task GFLOP/s: median {statistics.median(per_task):.2f}, min {min(per_task):.2f}, max {max(per_task):.2f}")
    print(f"total: {total_flops / 1e9:.1f} GFLOP")
    print(f"aggregate GFLOP/s: {total_flops / max(span, 1e-9) / 1e9:.2f} over the compute span ({span:.2f} s), "
          f"{total_flops / wall / 1e9:.2f} over the wall time")
    print(f"wall time: {wall:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
