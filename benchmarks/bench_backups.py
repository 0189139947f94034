"""Straggler backups: the same map with and without them, in one run, on the local backend.

The map: ``--calls`` calls of ``--seconds`` s each (a sleep: no CPU, so the worker count, not the
machine's cores, sets the pace), of which ``--hangs`` hang for ``--hang`` s on their first run only
(spread over the job).  Three runs of the same map:

1. fault-free, backups on: how many backups the rule launches when nothing is wrong;
2. with the hangs, backups on (the default);
3. with the hangs, ``backups=False``.

It prints each wall time, the backups launched, the ratio run 3 / run 2, and the ideal (the
calls' total work spread over the workers), which bounds what any scheduler can do: with
``--workers 2`` the 200 x 0.5 s of work alone takes 50 s, and without backups the 4 hangs add
about 4 x 60 s / 2 workers = 120 s, so no backup rule can make the job more than ~3.4x shorter
on 2 workers.  ``--workers 16`` (sleeps, so 2 cores carry it) is the machine that shows the rest.

    python benchmarks/bench_backups.py [--workers 2] [--calls 200] [--seconds 0.5] [--hangs 4] [--hang 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import dask_wren


def sleeper(args):
    """Sleep ``seconds``; the first run of a hanging call sleeps ``hang`` instead (a marker file,
    on this machine's shared temp dir, tells the first run from a backup)."""
    i, seconds, hang, marker_dir = args
    if hang:
        try:
            os.close(os.open(os.path.join(marker_dir, f"ran-{i}"), os.O_CREAT | os.O_EXCL))
            time.sleep(hang)
            return i
        except FileExistsError:
            pass
    time.sleep(seconds)
    return i


def run(ex, calls: int, seconds: float, hangs: set[int], hang: float, backups: bool) -> tuple[float, int]:
    """Wall time of one map, and the backups it launched."""
    marker_dir = tempfile.mkdtemp(prefix="wren-backups-")
    try:
        before = ex.attempts.launched["backup"]
        start = time.perf_counter()
        futures = ex.map(sleeper, [(i, seconds, hang if i in hangs else 0, marker_dir) for i in range(calls)], backups=backups)
        results = [f.result() for f in futures]
        wall = time.perf_counter() - start
        assert results == list(range(calls)), "a result is wrong"
        return wall, ex.attempts.launched["backup"] - before
    finally:
        shutil.rmtree(marker_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--hangs", type=int, default=4)
    parser.add_argument("--hang", type=float, default=60.0)
    args = parser.parse_args()
    n, w = args.calls, args.workers
    hangs = {int(n * (k + 0.5) / args.hangs) for k in range(args.hangs)}
    with dask_wren.default_executor(workers=w, timeout=max(300, 2 * args.hang)) as ex:
        ex.map(sleeper, [(i, 0, 0, "") for i in range(w)])  # warm the pool
        ex.wait()
        clean, clean_backups = run(ex, n, args.seconds, set(), 0, True)
        with_backups, launched = run(ex, n, args.seconds, hangs, args.hang, True)
        without, none = run(ex, n, args.seconds, hangs, args.hang, False)
    ideal = n * args.seconds / w
    no_backup_bound = max(((n - len(hangs)) * args.seconds + len(hangs) * args.hang) / w, args.hang)
    print(f"{n} calls of {args.seconds:g} s on {w} local workers; calls {sorted(hangs)} hang {args.hang:g} s on their first run")
    print(f"  fault-free, backups on : {clean:7.1f} s, {clean_backups} backups ({100 * clean_backups / n:.1f}% of calls; target <= 3%)")
    print(f"  hangs, backups on      : {with_backups:7.1f} s, {launched} backups")
    print(f"  hangs, backups=False   : {without:7.1f} s, {none} backups")
    print(f"  backups make the job {without / with_backups:.1f}x shorter (target >= 5x)")
    print(
        f"  bounds on {w} workers: the work alone takes {ideal:.1f} s; without backups the hangs add about "
        f"{no_backup_bound - ideal:.0f} s ({no_backup_bound:.0f} s), so the best possible ratio here is "
        f"{no_backup_bound / ideal:.1f}x"
    )


if __name__ == "__main__":
    main()
