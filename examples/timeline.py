"""PyWren's job timeline: when each call of a map was submitted, started, and finished.

Runs ``--tasks`` calls of 0.1 to 0.3 s of random work (a seeded sleep), prints where the time went
and draws the job with ``dask_wren.plot`` (needs matplotlib: ``pip install 'dask-wren[plot]'``).
With ``--keep`` the job's objects stay in storage, so ``dask-wren plot JOB`` draws it again from
there alone, in another process (which needs the same signing key: export
``$DASK_WREN_SIGNING_KEY`` first, as the README's timeline section shows).

    python examples/timeline.py [--tasks 64] [--workers N] [--out timeline.png] [--keep]
"""

import argparse
import os
import statistics
import time

import dask_wren


def random_work(seed):
    """Sleep 0.1 to 0.3 s, a duration drawn from ``seed``; return it."""
    import random

    duration = random.Random(seed).uniform(0.1, 0.3)
    time.sleep(duration)
    return duration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="number of calls (default 64)")
    parser.add_argument("--out", default="timeline.png", help="plot file, .png or .svg (default timeline.png)")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per CPU)")
    parser.add_argument("--keep", action="store_true", help="keep the job in storage for `dask-wren plot JOB`")
    args = parser.parse_args()

    t0 = time.time()
    with dask_wren.default_executor(workers=args.workers, cleanup=not args.keep) as wrenexec:
        futures = wrenexec.map(random_work, range(args.tasks))
        work = sum(f.result() for f in futures)
        wall = time.time() - t0

    s = [f.stats for f in futures]
    waits = [x["worker_call_start"] - x["host_submitted"] for x in s]
    lags = [x["host_result_seen"] - x["worker_call_end"] for x in s]
    print(f"{args.tasks} calls, {work:.1f} s of work in {wall:.2f} s wall time "
          f"({len({x['worker_pid'] for x in s})} worker processes, {sum(x['worker_cold'] for x in s)} cold starts, "
          f"{work / wall:.2f}x parallel)")
    print(f"submitted -> call start: median {statistics.median(waits):.2f} s, max {max(waits):.2f} s (queueing)")
    print(f"call end -> result seen by host: median {statistics.median(lags) * 1000:.1f} ms")

    dask_wren.plot(futures, args.out)
    print(f"timeline plot saved to {args.out}")
    if args.keep:
        job = futures[0].job_id
        print(f"job {job} kept in storage: `dask-wren plot {job} -o {job}.png` draws it from there")
        if not os.environ.get("DASK_WREN_SIGNING_KEY"):
            print("(another process verifies its records only with this one's key: export DASK_WREN_SIGNING_KEY first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
