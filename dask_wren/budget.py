"""``wren.budget``: an executor stops sending invocations once its spending would pass a cap.

Backends are shared between executors, so the cap travels with each invocation: an executor with
a budget sets ``Invocation.admit`` (``Budget.admit``), and the backend calls it right before it
sends the invocation (the local pool before a worker gets it, the AWS backend before the invoke
request); retries and backups are invocations too.  The hook compares

    spent (what the records of finished attempts billed: ``cost.call_cost``)
    + in flight (each admitted attempt not finished yet, at the estimate it was admitted with)
    + this invocation's estimate: this executor's mean cost per finished call x its calls (at
      least one request charge); before any call has finished, the most Lambda can bill for it
      (its calls' timeout x the workers' memory, plus the request), so that the first wave
      cannot overrun the cap however long its calls run

with the budget, and answers one of three things:
- within it: send (the hook then leaves the invocation: a throttled re-send is not checked again);
- past it while attempts are in flight: *not yet* (the backend holds it back, with this
  executor's later invocations behind it, and asks again shortly; other executors' invocations
  go past: ``InvocationQueue``): what is in flight may cost less than counted, and the estimate
  improves as calls finish;
- past it with nothing in flight: the budget is exceeded for good: that invocation and every
  later one are dropped, the monitor is woken, and ``Attempts`` fails each call none of whose
  attempts was sent with ``BudgetExceededError``.
Calls in flight always finish.  An attempt whose record carries no billing (its worker died, or
was lost) counts at its estimate; so do the other attempts of a call once the call is settled
(its future resolved or cancelled: a losing backup, a cancelled call), which leaves nothing in
flight that no record will ever end.  An executor without a budget sets no hook and pays nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from dask_wren.backends import Invocation
from dask_wren.cost import Prices, Rates, call_cost, money
from dask_wren.errors import ConfigError


class Budget:
    """One executor's budget (thread-safe: backends' threads admit, the monitor thread spends)."""

    def __init__(self, limit: float, prices: Prices, rates: Rates, memory_mb: Callable[[], int], wake: Callable[[], None]):
        """``rates``: what an invocation is estimated at; ``memory_mb``: the workers' memory (asked when
        needed: on AWS the preflight reads the function's); ``wake``: the monitor's, to fail the calls not sent."""
        self.limit = float(limit)
        self.prices = prices
        self._request = rates.request
        self._gb_second = rates.gb_second
        self._memory_mb = memory_mb
        self._wake = wake
        self._lock = threading.Lock()
        self.spent = 0.0
        self.in_flight = 0.0
        self._shares: dict[tuple[Any, Any], dict[int, float]] = {}  # (job, call) -> attempt admitted, not finished -> estimate
        self._billed_calls = 0
        self._billed_cost = 0.0
        self.exceeded = False
        self._refused = False  # refused invocations whose calls Attempts has not failed yet
        self._when_exceeded = (0.0, 0.0)  # spent, and the estimate that did not fit

    def admit(self, inv: Invocation) -> bool | None:
        """The backend is about to send ``inv`` (its thread): True to send it, None not yet (keep it
        queued, ask again), False to drop it."""
        calls = [c for c in inv.call_ids if c not in inv.cancelled]
        with self._lock:
            if not self.exceeded:
                if self._billed_calls:
                    estimate = max(self._request, self._billed_cost / self._billed_calls * len(calls))
                else:  # nothing learnt yet: the most Lambda can bill for it
                    estimate = self._request + len(calls) * inv.timeout * self._memory_mb() / 1024 * self._gb_second
                if self.spent + self.in_flight + estimate <= self.limit:
                    self.in_flight += estimate
                    share = estimate / max(1, len(calls))
                    job_id = inv.event.get("job_id")
                    for call_id in calls:
                        self._shares.setdefault((job_id, call_id), {})[inv.attempt] = share
                    inv.admit = None
                    return True
                if self._shares:  # what is in flight may cost less than counted: decide as it finishes
                    return None
                self.exceeded = True
                self._when_exceeded = (self.spent, estimate)
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
        call = (header.get("job_id"), header.get("call_id"))
        with self._lock:
            attempts = self._shares.get(call)
            share = attempts.pop(int(header.get("attempt") or 0), None) if attempts is not None else None
            if share is not None:
                self.in_flight -= share
                if not attempts:
                    del self._shares[call]
            if billed:
                self.spent += cost
                self._billed_calls += 1
                self._billed_cost += cost
            elif share is not None:
                self.spent += share

    def settle(self, job_id: str, call_id: str) -> None:
        """A call is settled (its future resolved or was cancelled): attempts of it still counted in
        flight (a losing backup, a cancelled run) count as spent at their estimate: no record of
        theirs will be read."""
        with self._lock:
            attempts = self._shares.pop((job_id, call_id), None)
            if attempts:
                left = sum(attempts.values())
                self.in_flight -= left
                self.spent += left

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
        spent, estimate = self._when_exceeded
        basis = (
            "the mean of the finished calls" if self._billed_calls
            else "no call had finished: the most Lambda can bill it, its timeout x memory; a shorter timeout= lowers it"
        )
        return (
            f"not sent: the executor's budget of {money(self.limit)} (wren.budget) would have been passed: "
            f"{money(spent)} spent, with nothing left in flight, and the next invocation estimated at "
            f"{money(estimate)} ({basis}), so {not_sent:,} calls were not sent. Raise the budget with "
            "dask.config.set({'wren.budget': DOLLARS}) or default_executor(budget=DOLLARS) (null: no cap); "
            "dask_wren.estimate() prices a job before it runs"
        )
