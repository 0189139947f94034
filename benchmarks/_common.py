"""Pieces the benchmark scripts share: a request-counting store and the summary table."""

from __future__ import annotations

import math
import statistics
import threading
from collections import Counter

S3_LIST_PAGE = 1000  # keys per LIST response on S3: a listing of more keys costs more requests


class CountingStorage:
    """Wraps a store and counts the requests made through it (by this process only).

    ``list`` counts one request per started listing, or one per ``S3_LIST_PAGE`` keys listed,
    as S3 would charge; ``listed`` is the number of keys the listings returned.
    """

    _METHODS = ("put", "put_if_absent", "get", "get_range", "exists", "delete_prefix")

    def __init__(self, inner):
        self.inner = inner
        self.counts = Counter()
        self.listed = 0
        self._lock = threading.Lock()

    def spec(self):
        return self.inner.spec()

    def __repr__(self):
        return f"CountingStorage({self.inner!r})"

    def _count(self, name, n=1):
        with self._lock:
            self.counts[name] += n

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in self._METHODS:
            def counted(*args, **kwargs):
                self._count(name)
                return attr(*args, **kwargs)
            return counted
        return attr

    def list(self, prefix, start_after=None):
        n = 0
        try:
            for item in self.inner.list(prefix, start_after=start_after):
                n += 1
                yield item
        finally:
            self._count("list", max(1, math.ceil(n / S3_LIST_PAGE)))
            with self._lock:
                self.listed += n

    def snapshot(self):
        with self._lock:
            return Counter(self.counts)


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
