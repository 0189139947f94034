"""``CountingStorage``: a store that counts the requests made through it, for tests and benchmarks."""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

__all__ = ["S3_LIST_PAGE", "CountingStorage"]

S3_LIST_PAGE = 1000  # keys per LIST response on S3: a listing of more keys costs more requests

#: The storage protocol's methods that cost one request each (``list`` is counted by pages).
REQUESTS = ("put", "put_if_absent", "get", "get_range", "exists", "delete", "delete_prefix")


class CountingStorage:
    """Wraps a store and counts the requests made through it (by this process only; thread-safe).

    ``counts[name]``: requests by method.  ``list`` counts one request per started listing, or one
    per ``S3_LIST_PAGE`` keys listed, as S3 would charge; ``listed`` is the number of keys the
    listings returned.  ``calls[name]``: each request's first argument (its key, keys or prefix),
    in order.  ``snapshot()`` copies ``counts``.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self.counts: Counter[str] = Counter()
        self.calls: defaultdict[str, list[Any]] = defaultdict(list)
        self.listed = 0
        self._lock = threading.Lock()

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def __repr__(self) -> str:
        return f"CountingStorage({self.inner!r})"

    def _count(self, name: str, n: int = 1, argument: Any = None) -> None:
        with self._lock:
            self.counts[name] += n
            self.calls[name].append(argument)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in REQUESTS:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(name, argument=args[0] if args else None)
            return attr(*args, **kwargs)

        return counted

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        n = 0
        try:
            for item in self.inner.list(prefix, start_after=start_after):
                n += 1
                yield item
        finally:
            self._count("list", max(1, math.ceil(n / S3_LIST_PAGE)), prefix)
            with self._lock:
                self.listed += n

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)
