"""PyWren's job timeline: when each call of a map was submitted, started, and finished.

Runs ``--tasks`` calls of 0.1 to 0.3 s of random work (a seeded sleep) and plots, per call, the
span from submission to the start of the function (queueing plus setup), the function itself,
and the gap until the host saw the result, all relative to the first submission.  The plot needs
matplotlib (``pip install matplotlib``; it is not a dask-wren dependency); without it the script
prints a text timeline instead.

    python examples/timeline.py [--tasks 64] [--out timeline.png] [--text]

Host and worker clocks are the same clock here (local workers); on remote workers they differ.
"""

import argparse
import statistics
import time

import dask_wren


def random_work(seed):
    """Sleep 0.1 to 0.3 s, a duration drawn from ``seed``; return it."""
    import random

    duration = random.Random(seed).uniform(0.1, 0.3)
    time.sleep(duration)
    return duration


def rows_from(futures):
    """Per call, times in seconds relative to the first submission."""
    t0 = min(f.stats["host_submitted"] for f in futures)
    keys = ("host_submitted", "worker_setup_done", "worker_call_start", "worker_call_end", "host_result_seen")
    return [{k: f.stats[k] - t0 for k in keys} | {"pid": f.stats.get("worker_pid")} for f in futures]


def plot(rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = range(len(rows))
    fig, ax = plt.subplots(figsize=(10, max(4, len(rows) * 0.12)))
    col = {k: [r[k] for r in rows] for k in rows[0]}
    ax.hlines(idx, col["host_submitted"], col["worker_call_start"], color="0.8", lw=2, label="waiting (queued + setup)")
    ax.hlines(idx, col["worker_call_start"], col["worker_call_end"], color="tab:blue", lw=3, label="running")
    ax.hlines(idx, col["worker_call_end"], col["host_result_seen"], color="tab:orange", lw=2, label="result to host")
    ax.scatter(col["host_submitted"], idx, s=6, color="k", label="submitted")
    ax.scatter(col["worker_setup_done"], idx, s=6, color="tab:green", label="setup done")
    ax.scatter(col["host_result_seen"], idx, s=6, color="tab:red", label="result seen")
    ax.set_xlabel("seconds since the first submission")
    ax.set_ylabel("call index")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.invert_yaxis()
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(f"dask-wren timeline: {len(rows)} calls")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def text_timeline(rows, width=72):
    """One line per call: '.' waiting, '#' running, '>' result on its way to the host."""
    end = max(r["host_result_seen"] for r in rows)
    scale = width / end if end > 0 else 1.0

    def col(t):
        return min(width - 1, int(t * scale))

    print(f"{'call':>4} {'start':>6} {'end':>6}  0 s{' ' * (width - 10)}{end:5.2f} s")
    for i, r in enumerate(rows):
        line = [" "] * width
        for a, b, ch in (("host_submitted", "worker_call_start", "."), ("worker_call_start", "worker_call_end", "#"),
                         ("worker_call_end", "host_result_seen", ">")):
            for c in range(col(r[a]), col(r[b]) + 1):
                line[c] = ch
        print(f"{i:4d} {r['worker_call_start']:6.2f} {r['host_result_seen']:6.2f}  {''.join(line)}")
    print("legend: '.' queued/setup, '#' running, '>' result to host")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="number of calls (default 64)")
    parser.add_argument("--out", default="timeline.png", help="plot file (default timeline.png)")
    parser.add_argument("--text", action="store_true", help="print the text timeline even if matplotlib is there")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per CPU)")
    args = parser.parse_args()

    t0 = time.time()
    with dask_wren.default_executor(workers=args.workers) as wrenexec:
        futures = wrenexec.map(random_work, range(args.tasks))
        work = sum(f.result() for f in futures)
        wall = time.time() - t0
    rows = rows_from(futures)

    waits = [r["worker_call_start"] - r["host_submitted"] for r in rows]
    setups = [r["worker_setup_done"] - r["host_submitted"] for r in rows]
    lags = [r["host_result_seen"] - r["worker_call_end"] for r in rows]
    print(f"{args.tasks} calls, {work:.1f} s of work in {wall:.2f} s wall time "
          f"({len({r['pid'] for r in rows})} worker processes, {work / wall:.2f}x parallel)")
    print(f"submitted -> setup done: median {statistics.median(setups) * 1000:.0f} ms, max {max(setups):.2f} s")
    print(f"submitted -> call start: median {statistics.median(waits):.2f} s, max {max(waits):.2f} s (queueing)")
    print(f"call end -> result seen by host: median {statistics.median(lags) * 1000:.1f} ms, "
          f"max {max(lags) * 1000:.1f} ms")
    print(f"last result seen {max(r['host_result_seen'] for r in rows):.2f} s after the first submission")

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print()
        text_timeline(rows)
        print("\nmatplotlib is not installed: `pip install matplotlib` to get the plot")
        return 0
    if args.text:
        text_timeline(rows)
    plot(rows, args.out)
    print(f"timeline plot saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
