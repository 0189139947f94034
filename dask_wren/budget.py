"""``wren.budget``: an executor stops sending invocations once its spending would pass a cap.

Backends are shared between executors, so the cap travels with each invocation: an executor with
a budget sets ``Invocation.admit`` (``Budget.admit``), and the backend calls it right before it
sends the invocation (the local pool before a worker gets it, the AWS backend before the invoke
request); retries and backups are invocations too.  The hook compares

    spent (what the records of finished attempts billed: ``cost.call_cost``)
    + in flight (each admitted attempt not finished yet, at the estimate it was admitted with)
    + this invocation's estimate (this executor's mean cost per finished call x its calls, and at
      least one request charge)

with the budget.  Within it, the invocation is sent (the hook then leaves it: one check per
invocation, a throttled re-send is not checked again).  Past it, the budget is exceeded for good:
that invocation and every later one are dropped, the monitor is woken, and ``Attempts`` fails
each call none of whose attempts was sent with ``BudgetExceededError``.  Calls in flight finish
normally.  An executor without a budget sets no hook and pays nothing.

An attempt whose record carries no billing (its worker died, or was lost) counts at its estimate;
one whose record the host never reads (the losing attempt of a backup) keeps counting at it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from dask_wren.backends import Invocation
from dask_wren.cost import Prices, call_cost, money
from dask_wren.errors import ConfigError


class Budget:
    """One executor's budget (thread-safe: backends' threads admit, the monitor thread spends)."""

    def __init__(self, limit: float, prices: Prices, request_price: float, wake: Callable[[], None]):
        """``request_price``: the least an invocation costs; ``wake``: the monitor's, to fail the calls not sent."""
        self.limit = float(limit)
        self.prices = prices
        self._request = request_price
        self._wake = wake
        self._lock = threading.Lock()
        self.spent = 0.0
        self.in_flight = 0.0
        self._shares: dict[tuple[Any, Any, int], float] = {}  # (job, call, attempt) admitted, not finished -> estimate
        self._billed_calls = 0
        self._billed_cost = 0.0
        self.exceeded = False
        self._refused = False  # refused invocations whose calls Attempts has not failed yet
        self._when_exceeded = (0.0, 0.0, 0)  # spent, in flight, calls in flight

    def admit(self, inv: Invocation) -> bool:
        """The backend is about to send ``inv`` (its thread): True to send it, False to drop it."""
        calls = [c for c in inv.call_ids if c not in inv.cancelled]
        with self._lock:
            if not self.exceeded:
                mean = self._billed_cost / self._billed_calls if self._billed_calls else 0.0
                estimate = max(self._request, mean * len(calls))
                if self.spent + self.in_flight + estimate <= self.limit:
                    self.in_flight += estimate
                    share = estimate / max(1, len(calls))
                    job_id = inv.event.get("job_id")
                    for call_id in calls:
                        self._shares[(job_id, call_id, inv.attempt)] = share
                    inv.admit = None
                    return True
                self.exceeded = True
                self._when_exceeded = (self.spent, self.in_flight, len(self._shares))
            self._refused = True
        self._wake()
        return False

    def spend(self, header: Mapping[str, Any]) -> None:
        """A record of this executor's arrived (monitor thread): its attempt is no longer in flight."""
        billed = header.get("billing") is not None
        cost = 0.0
        if billed:
            try:
                cost = call_cost(header, self.prices)
            except ConfigError:  # a region the table lacks: the attempt counts at its estimate
                billed = False
        key = (header.get("job_id"), header.get("call_id"), int(header.get("attempt") or 0))
        with self._lock:
            share = self._shares.pop(key, None)
            if share is not None:
                self.in_flight -= share
            if billed:
                self.spent += cost
                self._billed_calls += 1
                self._billed_cost += cost
            elif share is not None:
                self.spent += share

    def submitted(self) -> None:
        """A job's invocations go to the backend: once exceeded, its calls fail without waiting for it."""
        if self.exceeded:
            with self._lock:
                self._refused = True
            self._wake()

    def take_refusals(self) -> bool:
        """Whether calls were refused since the last look (``Attempts.tick``: then it fails them)."""
        with self._lock:
            refused, self._refused = self._refused, False
        return refused

    def message(self, not_sent: int) -> str:
        spent, in_flight, calls = self._when_exceeded
        return (
            f"not sent: the executor's budget of {money(self.limit)} (wren.budget) would have been passed: "
            f"{money(spent)} spent by finished calls and {money(in_flight)} estimated for {calls:,} calls in "
            f"flight (they finish), so {not_sent:,} calls were not sent. Raise the budget with "
            "dask.config.set({'wren.budget': DOLLARS}) or default_executor(budget=DOLLARS) (null: no cap); "
            "dask_wren.estimate() prices a job before it runs"
        )
