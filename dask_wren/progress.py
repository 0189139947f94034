"""Progress bars: one ``tqdm.auto`` bar over the futures a wait waits for.

Each wait (``wait``, ``as_completed``, ``get_all_results``, and the executor's ``wait``,
``as_completed``, ``get_result``) shows at most one bar, a widget in a Jupyter notebook and text on
stderr elsewhere: calls finished of those waited for, calls a worker is running, calls failed and,
on AWS, what the finished calls cost so far (``dask_wren.cost.call_cost`` over their records: the
attempts that won; ``Executor.cost()`` counts every attempt and the host's own requests too).

Whether it shows: a wait's ``progress=`` decides when given.  Otherwise each job's preference
does, set by ``map(..., progress=)`` or else its executor's ``wren.progress``: ``True`` shows the
bar at once, ``False`` never, ``"auto"`` (the default) only in an interactive session (stderr is a
terminal, or a Jupyter kernel runs this) and only once the wait has lasted ``AUTO_DELAY`` seconds,
so short waits, tests, CI and batch jobs print nothing.  Any job asking for a bar gets one.

What it costs the host: with no bar, nothing but reading each waited future's preference (tqdm is
not imported, no callback is added).  With one, each waited future gets a done-callback that is a
list append on the thread that resolves it (the monitor's, usually), and a thread of the bar's
own redraws it every ``_REFRESH`` seconds: it takes what resolved since and now and then counts
the running calls (``Attempts.running``), spending at most ``_RUNNING_SHARE`` of its time on that.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("dask_wren")

AUTO = "auto"
#: Seconds a wait lasts before ``"auto"`` shows its bar.
AUTO_DELAY = 2.0
_REFRESH = 0.25  # seconds between redraws
_RUNNING_SHARE = 0.05  # most of the bar thread's time spent counting running calls
_DONE_STATES = (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED, cf._base.FINISHED)


def interactive() -> bool:
    """Someone is watching: stderr is a terminal, or this process is a Jupyter kernel."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stream
        pass
    ipython = sys.modules.get("IPython")  # imported already if a kernel runs us; never imported here
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


def delay_for(futures: Sequence[Any], progress: bool | None) -> float | None:
    """Seconds of waiting on ``futures`` before their bar shows; None: no bar."""
    if progress is not None:
        return 0.0 if progress else None
    wanted = {getattr(f, "_progress", None) for f in futures}  # a WrenFuture's job's preference
    if True in wanted:
        return 0.0
    if AUTO in wanted and interactive():
        return AUTO_DELAY
    return None


def bar(futures: Sequence[Any], progress: bool | None = None) -> Bar | None:
    """The bar for a wait on ``futures`` (use it as a context manager around the wait), or None."""
    delay = delay_for(futures, progress)
    if delay is None:
        return None
    shown = Bar(futures, delay)
    return shown if shown._pending else None  # nothing left to wait for: no bar


def _executor_of(future: Any) -> Any:
    """The executor that made ``future``: its cancel hook is that executor's bound method (None for a
    detached future or another kind)."""
    return getattr(getattr(future, "_on_cancel", None), "__self__", None)


class Bar:
    """A tqdm bar over ``futures`` while its ``with`` block runs; closed however the block ends
    (a result, an exception, a timeout, KeyboardInterrupt)."""

    def __init__(self, futures: Sequence[Any], delay: float = 0.0):
        self.total = len(futures)
        self._pending = dict.fromkeys(f for f in futures if getattr(f, "_state", None) not in _DONE_STATES)
        self._finished = [f for f in futures if f not in self._pending]  # before the wait: counted on entry
        self.done = 0
        self.failed = 0
        self.cancelled = 0
        self.running = 0
        self.cost: float | None = None  # dollars, once a finished call of an AWS executor has a price
        self._delay = delay
        self._resolved: list[Any] = []  # appended to by the futures' done-callbacks, on any thread
        self._taken = 0
        self._prices: dict[int, Any] = {}  # id(executor) -> its Prices, or None (not on AWS)
        self._next_count = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tqdm: Any = None
        jobs = {getattr(f, "job_id", None) for f in futures}
        self._desc = f"dask-wren {jobs.pop()}" if len(jobs) == 1 and None not in jobs else "dask-wren"

    def __enter__(self) -> Bar:
        from tqdm.auto import tqdm

        for f in self._finished:
            self._count(f)
        self._finished = []
        self._tqdm = tqdm(
            total=self.total, initial=self.done, desc=self._desc, unit="call", delay=self._delay,
            miniters=0, dynamic_ncols=True,  # miniters 0: every redraw past the delay draws, even with no new call done
        )
        for f in list(self._pending):
            f.add_done_callback(self._resolved.append)  # at once if it finished meanwhile
        self._thread = threading.Thread(target=self._run, name="dask-wren-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._draw(time.monotonic(), count_running=True)
        except Exception:  # as in _run: the wait's own outcome stands
            logger.debug("dask-wren: the progress bar's last redraw failed", exc_info=True)
        finally:
            self._tqdm.close()
            self._pending.clear()
            self._resolved.clear()  # futures resolving later still append to it; nothing reads it

    @property
    def postfix(self) -> str:
        parts = [f"running={self.running}", f"failed={self.failed}"]
        if self.cancelled:
            parts.append(f"cancelled={self.cancelled}")
        if self.cost is not None:
            from dask_wren.cost import money

            parts.append(f"cost={money(self.cost)}")
        return ", ".join(parts)

    def _run(self) -> None:
        try:
            while not self._stop.wait(_REFRESH):
                self._draw(time.monotonic())
        except Exception:  # a bar must never break the wait it decorates
            logger.debug("dask-wren: the progress bar stopped drawing", exc_info=True)

    def _draw(self, now: float, count_running: bool = False) -> None:
        self._take()
        if count_running or now >= self._next_count:
            self.running = self._count_running()
            took = time.monotonic() - now
            self._next_count = now + max(_REFRESH, took / _RUNNING_SHARE)
        self._tqdm.set_postfix_str(self.postfix, refresh=False)
        self._tqdm.update(self.done - self._tqdm.n)  # draws once the delay has passed

    def _take(self) -> None:
        """Count the futures resolved since the last look."""
        new = self._resolved[self._taken :]  # only appended to: a slice is a consistent snapshot
        self._taken += len(new)
        for f in new:
            self._pending.pop(f, None)
            self._count(f)

    def _count(self, future: Any) -> None:
        self.done += 1
        if future.cancelled():
            self.cancelled += 1
        elif future.exception() is not None:
            self.failed += 1
        self._add_cost(future)

    def _count_running(self) -> int:
        by_executor: dict[int, tuple[Any, list[Any]]] = {}
        for f in self._pending:
            ex = _executor_of(f)
            if ex is not None:
                by_executor.setdefault(id(ex), (ex, []))[1].append(f)
        return sum(ex.attempts.running(fs) for ex, fs in by_executor.values())

    def _add_cost(self, future: Any) -> None:
        header = getattr(future, "header", None)
        ex = _executor_of(future)
        if not header or ex is None:
            return
        key = id(ex)
        if key not in self._prices:
            self._prices[key] = _prices(ex)
        prices = self._prices[key]
        if prices is None:
            return
        from dask_wren.cost import call_cost

        try:
            cost = call_cost(header, prices)  # 0 for a record without billing (a backend's failure record)
        except ValueError as e:  # the price table lacks the record's region (ConfigError): no running cost
            logger.debug("dask-wren: no running cost in the progress bar: %s", e)
            self._prices[key] = None
            return
        self.cost = (self.cost or 0.0) + cost


def _prices(executor: Any) -> Any:
    """The price table for the running cost of ``executor``'s calls; None off AWS."""
    if executor.settings.backend != "aws":
        return None
    return executor._price_table()  # the executor's own, loaded once
