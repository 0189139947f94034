"""Pieces the benchmark scripts share: the summary table (the request-counting store is
``dask_wren.testing.counting.CountingStorage``, shared with the tests)."""

from __future__ import annotations

import statistics


def fmt_s(xs):
    return f"{statistics.median(xs):7.3f} s median, {min(xs):7.3f} s min"


def print_summary(summary, seconds: float, quick: bool, note: str) -> list[str]:
    """Print the closing table; rows are (measure, figure, compared, target, ok).  Returns the
    measures that missed their target (none are judged in a quick run or without a target)."""
    print(f"\nSummary ({seconds:.1f} s in all{', quick run' if quick else ''})")
    header = ("measure", "dask-wren", "compared", "target", "ok")
    verdict = {True: "yes", False: "NO"}
    table = [header] + [(a, b, c, d, "-" if quick or d == "-" else verdict[ok]) for a, b, c, d, ok in summary]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print(("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    if quick:
        print(f"  ({note})")
    return [] if quick else [row[0] for row in summary if row[3] != "-" and not row[4]]
