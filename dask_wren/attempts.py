"""Attempts: the host decides every re-run of a call, retries and straggler backups, on every backend.

Every call starts as attempt 0.  A later attempt is a new invocation of the same call (same
function object, same argument bytes) that writes its record under a key of its own
(``protocol.result_key``), so attempts never overwrite each other and each is seen once:

- a **retry** follows a failed attempt, after a jittered exponential backoff, when the failure is
  one the policy retries: infrastructure failures by default (``INFRASTRUCTURE``: the worker died,
  the invocation was lost, the invoke or storage failed after the clients' own retries), a
  timeout only with ``retry_timeouts``, the function's own exception only when it is an instance
  of ``retry_on``; at most ``retries`` of them per call;
- a **backup** is a second copy of a *straggler*: once at least ``min(10, half the job)`` of a
  job's calls have finished, a call whose attempt has run (since a worker took it) longer than
  ``max(backup_factor x median, median + BACKUP_MIN_EXTRA)`` of the finished calls' run times
  gets one backup (Cubed's rule, with a floor for very short calls).

The first successful record wins; the other attempts still running are cancelled through the
backend (their late records are never read).  A call fails when its failure is not retried and
no other attempt of it is running; its exception then carries a note naming every attempt.  A
failure the policy retries that comes while another attempt runs is owed: if that other attempt
then fails too, in any way (a straggler's timeout after its backup's worker died or its invoke
was dropped), the call is retried, as it would have been had the records arrived the other way
round (the later failure, one the policy retries, would then have found no attempt running).
``future.stats["attempts"]`` lists the attempts: number, kind (first/retry/backup), request id
and outcome.

State (guarded by ``_lock``; ``on_record`` and ``tick`` run on the monitor thread):
    jobs   job id -> ``_Job``: what a new attempt needs (base event, each call's entry, timeout),
           the policy, the futures, the first attempts' invocations (when a worker took each:
           ``Invocation.dispatched``) and the run times of calls that finished at their first attempt
    calls  (job id, call id) -> ``_Call``, made only for a call that gets a second attempt: its
           attempts and which of them still run
    due    heap of (time, job id, call id): retries waiting out their backoff
A job leaves ``jobs`` when its last future resolves or is cancelled.
"""

from __future__ import annotations

import concurrent.futures as cf
import heapq
import itertools
import logging
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dask_wren.backends import Invocation
from dask_wren.budget import Budget
from dask_wren.errors import BudgetExceededError
from dask_wren.futures import WrenFuture
from lambda_worker import protocol
from lambda_worker.errors import IntegrityError

logger = logging.getLogger("dask_wren")

#: Failure kinds retried by default: the call itself did nothing wrong.
INFRASTRUCTURE = frozenset(
    {protocol.FAIL_WORKER_DIED, protocol.FAIL_LOST, protocol.FAIL_INVOKE, protocol.FAIL_HANDLER, protocol.FAIL_STORAGE}
)
#: A straggler has run at least this many seconds longer than the median, however short the calls.
BACKUP_MIN_EXTRA = 1.0
#: Calls that must have finished before a job's median means anything (or half the job, if fewer).
BACKUP_MIN_DONE = 10
_BACKUP_CHECK_INTERVAL = 0.2  # seconds between two straggler checks
#: Calls not taken by a worker yet that a straggler check looks past: a local worker's pipe holds
#: a call sent ahead behind the one it runs, so a straggler's neighbour waits untaken.
_BACKUP_SCAN_UNTAKEN = 256
_RUN_TIMES_KEPT = 1001  # the median of the latest run times is the job's median


@dataclass(frozen=True)
class RetryPolicy:
    """What is run again, and when (``wren.retries``, ``wren.backups`` ... and ``map()``'s keywords)."""

    retries: int = 2
    retry_on: tuple[type[BaseException], ...] = ()
    retry_timeouts: bool = False
    backoff: float = 0.5
    backoff_max: float = 30.0
    backups: bool = True
    backup_factor: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, not {self.retries!r}")
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise TypeError(f"retry_on must be a tuple of exception classes, not {self.retry_on!r}")
        if self.backup_factor <= 1:
            raise ValueError(f"backup_factor must be more than 1, not {self.backup_factor!r}")

    def retried(self, kind: str | None, exc: BaseException | None) -> bool:
        """Whether a failure of ``kind`` (``exception``: the function raised ``exc``) is run again."""
        if kind in INFRASTRUCTURE:
            return True
        if kind == protocol.FAIL_TIMEOUT:
            return self.retry_timeouts
        if kind == "exception":
            return bool(self.retry_on) and isinstance(exc, self.retry_on)
        return False

    def delay(self, retries_made: int) -> float:
        """Seconds before the next retry: exponential backoff with jitter (half to all of the step)."""
        step = min(self.backoff_max, self.backoff * 2**retries_made)
        return random.uniform(step / 2, step)


@dataclass
class _Attempt:
    number: int
    kind: str  # "first", "retry" or "backup"
    request_id: str
    outcome: str | None = None  # None while it runs; "ok", or "<kind>: <message>"
    invocation: Invocation | None = None
    ran: tuple[float, float] | None = None  # when its function ran (worker clock), from its record

    def summary(self) -> dict[str, Any]:
        return {"attempt": self.number, "kind": self.kind, "request_id": self.request_id, "outcome": self.outcome or "running"}


@dataclass
class _Call:
    attempts: list[_Attempt]
    retries: int = 0  # retries launched
    backed_up: bool = False
    due: bool = False  # a retry waits out its backoff
    owed: bool = False  # an attempt failed in a way the policy retries while another still ran

    def running(self, besides: int | None = None) -> list[_Attempt]:
        return [a for a in self.attempts if a.outcome is None and a.number != besides]


@dataclass
class _Job:
    base: dict[str, Any]  # the event without its calls
    entries: list[dict[str, Any]]  # each call's entry in an event, by call index
    timeout: float
    policy: RetryPolicy
    futures: list[WrenFuture]  # by call index
    invocations: list[Invocation]  # first attempts
    chunksize: int
    pending: dict[str, None]  # call ids neither resolved nor cancelled, in call order
    #: run times of the latest first attempts that succeeded (bounded: its median is taken often)
    run_times: deque[float] = field(default_factory=lambda: deque(maxlen=_RUN_TIMES_KEPT))
    done: int = 0  # first attempts that succeeded
    later: bool = False  # a call has had a second attempt


class Attempts:
    """Retries and backups for one executor's jobs (see the module docstring)."""

    def __init__(
        self, invoke: Callable[[list[Invocation]], None], cancel: Callable[[str, WrenFuture], None], call_done: Callable[[str, str], None],
        *, on_header: Callable[[str, dict[str, Any]], None] | None = None, budget: Budget | None = None,
    ):
        """``invoke``: the backend's; ``cancel(request_id, future)``: stop an attempt of the future's
        call that lost (backend and cancel marker); ``call_done``: the backend's; ``on_header(job_id,
        header)``: each record's verified header (what it cost); ``budget``: gates later attempts too,
        and the calls it refuses fail here."""
        self._invoke = invoke
        self._tell_cancel = cancel
        self._tell_done = call_done
        self._on_header = on_header
        self._budget = budget
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._calls: dict[tuple[str, str], _Call] = {}
        self._due: list[tuple[float, int, str, str]] = []
        self._order = itertools.count()
        self._next_backup_check = 0.0
        self.launched = {"retry": 0, "backup": 0}  # for benchmarks and tests

    # -- the executor ---------------------------------------------------------------------------

    def register(
        self, job_id: str, base: dict[str, Any], entries: list[dict[str, Any]], timeout: float, policy: RetryPolicy,
        futures: list[WrenFuture], invocations: list[Invocation], chunksize: int,
    ) -> None:
        """A job is about to be invoked: keep what a later attempt of any of its calls needs."""
        with self._lock:
            pending = dict.fromkeys(f.call_id for f in futures)
            self._jobs[job_id] = _Job(base, entries, timeout, policy, futures, invocations, chunksize, pending)

    def running(self, futures: list[WrenFuture]) -> int:
        """How many of ``futures`` (unresolved, of this executor) have an attempt that a worker took
        (``Invocation.dispatched``) and that has not ended: for a progress bar, so read without
        the lock (each read is atomic; a count a moment old is good enough)."""
        count = 0
        for future in futures:
            job = self._jobs.get(future.job_id)
            if job is None or future.call_id not in job.pending:
                continue
            call = self._calls.get((future.job_id, future.call_id))
            if call is None:
                count += job.invocations[int(future.call_id) // job.chunksize].dispatched is not None
            else:
                count += any(a.invocation is not None and a.invocation.dispatched is not None for a in call.running())
        return count

    def has_later_attempts(self, job_id: str) -> bool:
        """Whether a later attempt of an unresolved call of the job waits for its record (the monitor
        then lists ``a/`` too)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.later:
                return False
            return any(
                key[0] == job_id and any(a.number and a.outcome is None for a in call.attempts)
                for key, call in self._calls.items()
            )

    def cancelled(self, future: WrenFuture) -> list[tuple[str, str]]:
        """The future was cancelled: ``(request id, call id)`` of each of its attempts still running."""
        with self._lock:
            job = self._jobs.get(future.job_id)
            if job is None:
                return []
            call = self._calls.pop((future.job_id, future.call_id), None)
            self._finished(future.job_id, job, future.call_id)
            if call is None:
                return [(self._first_request_id(job, future.call_id), future.call_id)]
            return [(a.request_id, future.call_id) for a in call.running()]

    # -- the monitor ----------------------------------------------------------------------------

    def on_record(self, future: WrenFuture, key: str, attempt: int, record: bytes, size: int | None) -> bool:
        """A record of ``future``'s call arrived (its whole bytes, or its header when ``size`` says
        the payload stayed in storage).  True: the future is resolved; False: it waits on."""
        if future.cancelled():
            return True
        future.key = key  # the record of this attempt: what it verifies against, and where its value is
        try:
            header, start = protocol.decode_header(record, key=future.signing_key, storage_key=key)
        except IntegrityError:  # the call fails with it (the monitor sets it): its attempts are over
            for request_id, call_id in self.cancelled(future):
                self._call_done(request_id, call_id)
            raise
        job_id, call_id = future.job_id, future.call_id
        if self._on_header is not None:
            self._on_header(job_id, header)
        ok = header.get("status") == protocol.STATUS_OK
        with self._lock:
            job = self._jobs.get(job_id)
            call = self._calls.get((job_id, call_id))
            if job is not None and call is None and attempt == 0 and ok:  # the common case
                rid = self._first_request_id(job, call_id)
                inv = job.invocations[int(call_id) // job.chunksize]
                if inv.dispatched is not None and job.policy.backups:
                    job.run_times.append(time.monotonic() - inv.dispatched)
                    job.done += 1
                self._finished(job_id, job, call_id)
                summary = [{"attempt": 0, "kind": "first", "request_id": rid, "outcome": "ok"}]
            elif job is None:
                rid, summary = header.get("request_id", ""), None
        if job is None or call is None and attempt == 0 and ok:
            self._call_done(rid, call_id)
            if summary is not None:
                future.stats["attempts"] = summary
            future._apply(header, start, record, size)
            return True
        return self._judge(future, job, key, attempt, header, start, record, size)

    def tick(self) -> list[WrenFuture]:
        """Launch the retries that are due and the backups that stragglers need (monitor thread).
        Returns the futures this resolved (a refused invoke fails its call), for the monitor to report."""
        now = time.monotonic()
        launch: list[tuple[WrenFuture, str]] = []
        unsent = self._fail_unsent() if self._budget is not None and self._budget.take_refusals() else []
        with self._lock:
            while self._due and self._due[0][0] <= now:
                _, _, job_id, call_id = heapq.heappop(self._due)
                job, call = self._jobs.get(job_id), self._calls.get((job_id, call_id))
                if job is None or call is None:
                    continue
                call.due = False
                future = job.futures[int(call_id)]
                if not future.done():
                    launch.append((future, "retry"))
            if now >= self._next_backup_check:
                self._next_backup_check = now + _BACKUP_CHECK_INTERVAL
                launch.extend((f, "backup") for f in self._stragglers(now))
        return unsent + [future for future, kind in launch if self._launch(future, kind)]

    def _fail_unsent(self) -> list[WrenFuture]:
        """The budget refused invocations: every call none of whose attempts was sent (or will be:
        the budget is spent for good) fails with ``BudgetExceededError``.  A retry waiting out its
        backoff is refused when it is due."""
        unsent: list[WrenFuture] = []
        with self._lock:
            for job_id, job in list(self._jobs.items()):
                for call_id in list(job.pending):
                    call = self._calls.get((job_id, call_id))
                    if call is None:
                        sent = job.invocations[int(call_id) // job.chunksize].admit is None
                    else:
                        sent = call.due or any(a.invocation is None or a.invocation.admit is None for a in call.running())
                    if sent:
                        continue
                    if call is not None:
                        for a in call.running():
                            a.outcome = "not sent: over the budget"
                        job.futures[int(call_id)].stats["attempts"] = [a.summary() for a in call.attempts]
                        self._calls.pop((job_id, call_id), None)
                    self._finished(job_id, job, call_id)
                    unsent.append(job.futures[int(call_id)])
        if not unsent:
            return []
        error = BudgetExceededError(self._budget.message(len(unsent)))
        logger.warning("dask-wren: %s", error)
        failed = []
        for future in unsent:
            try:
                future.set_exception(error)
                failed.append(future)
            except cf.InvalidStateError:  # cancelled meanwhile
                continue
        return failed

    # -- internals ------------------------------------------------------------------------------

    def _call_done(self, request_id: str, call_id: str) -> None:
        """Tell the backend an attempt is over; its bookkeeping failing must not fail the call."""
        try:
            self._tell_done(request_id, call_id)
        except Exception:
            logger.exception("dask-wren: the backend failed to note the end of %s (call %s)", request_id, call_id)

    def _cancel(self, request_id: str, future: WrenFuture) -> None:
        try:
            self._tell_cancel(request_id, future)
        except Exception:
            logger.exception("dask-wren: could not stop %s (call %s)", request_id, future.call_id)

    def _first_request_id(self, job: _Job, call_id: str) -> str:
        return job.invocations[int(call_id) // job.chunksize].request_id

    def _finished(self, job_id: str, job: _Job, call_id: str) -> None:
        """The call is resolved or cancelled (hold ``_lock``); the job goes with its last call."""
        job.pending.pop(call_id, None)
        if not job.pending and self._jobs.get(job_id) is job:
            del self._jobs[job_id]
            for key in [k for k in self._calls if k[0] == job_id]:
                del self._calls[key]

    def _call_of(self, job: _Job, call_id: str) -> _Call:
        """The call's attempt record, made on its first need (hold ``_lock``)."""
        call = self._calls.get((job.base["job_id"], call_id))
        if call is None:
            inv = job.invocations[int(call_id) // job.chunksize]
            call = self._calls[(job.base["job_id"], call_id)] = _Call([_Attempt(0, "first", inv.request_id, None, inv)])
            job.later = True
        return call

    def _judge(self, future: WrenFuture, job: _Job, key: str, number: int, header: dict, start: int, record: bytes, size: int | None) -> bool:
        call_id = future.call_id
        status = header.get("status")
        error = header.get("error") or {}
        kind = None if status == protocol.STATUS_OK else error.get("kind", "exception")
        exc = None if kind is None else future._failure(header, start, record, size)
        with self._lock:
            call = self._call_of(job, call_id)
            attempt = next((a for a in call.attempts if a.number == number), None)
            if attempt is None:  # a record of an attempt this host did not make: take it as it is
                attempt = _Attempt(number, "unknown", header.get("request_id", ""))
                call.attempts.append(attempt)
            attempt.outcome = "ok" if kind is None else f"{kind}: {error.get('message', '')}".strip()
            attempt.ran = ran_span(header.get("timings") or {})
            others = call.running(besides=number)
            retried = kind is not None and job.policy.retried(kind, exc)
            if kind is None:
                verdict = "resolve"
            elif others or call.due:
                verdict = "wait"  # another attempt may still succeed (a straggler's timeout, its backup runs)
                call.owed = call.owed or retried  # if the other fails too, the call is still owed this retry
            elif not (retried or call.owed):
                verdict = "resolve"
            elif call.retries < job.policy.retries:
                call.retries += 1
                call.due = True
                call.owed = False
                delay = job.policy.delay(call.retries - 1)
                heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), job.base["job_id"], call_id))
                verdict = "retry"
            else:
                verdict = "resolve"
            if verdict == "resolve":
                self._finished(job.base["job_id"], job, call_id)
                self._calls.pop((job.base["job_id"], call_id), None)
            summary = [a.summary() for a in call.attempts]
            earlier = [list(a.ran) for a in call.attempts if a.ran is not None and a is not attempt]
        self._call_done(attempt.request_id, call_id)
        future.stats["attempts"] = summary
        if verdict == "resolve" and earlier:
            future.stats["earlier_runs"] = earlier  # the timeline plot draws them beside the final run
        if verdict == "retry":
            logger.info("dask-wren: call %s/%s failed (%s); retrying", future.job_id, call_id, attempt.outcome[:200])
        if verdict != "resolve":
            return False
        for other in others:
            self._cancel(other.request_id, future)
        if exc is not None and len(summary) > 1:
            _note(exc, "dask-wren attempts of this call:\n" + "\n".join(
                f"  #{a['attempt']} ({a['kind']}, {a['request_id']}): {a['outcome'][:300]}" for a in summary
            ))
        future._apply(header, start, record, size, exc)
        return True

    def _stragglers(self, now: float) -> list[WrenFuture]:
        """Futures whose only running attempt has run far longer than their job's median (hold ``_lock``).

        A job's pending calls are in call order, which is the order workers take first attempts
        in: the scan stops at the first one taken too recently to be late, or once it has passed
        ``_BACKUP_SCAN_UNTAKEN`` calls not taken yet; calls whose first attempt is over are passed."""
        found = []
        for job_id, job in self._jobs.items():
            if not job.policy.backups or job.done < min(BACKUP_MIN_DONE, -(-len(job.futures) // 2)):
                continue
            limit, untaken = None, 0
            for call_id in job.pending:
                call = self._calls.get((job_id, call_id))
                if call is not None and (call.backed_up or call.due or [a.number for a in call.running()] != [0]):
                    continue  # one backup per call; a retry started late, it is not slow (nor does it end the scan)
                index = int(call_id)
                dispatched = job.invocations[index // job.chunksize].dispatched
                if dispatched is None:  # not taken: the rest of the job, or one sent ahead behind a straggler
                    untaken += 1
                    if untaken > _BACKUP_SCAN_UNTAKEN:
                        break
                    continue
                if now - dispatched < BACKUP_MIN_EXTRA:
                    break
                if limit is None:  # only now is the median worth its cost
                    median = statistics.median(job.run_times)
                    limit = max(job.policy.backup_factor * median, median + BACKUP_MIN_EXTRA)
                if now - dispatched < limit:
                    break
                if not job.futures[index].done():
                    found.append(job.futures[index])
        return found

    def _launch(self, future: WrenFuture, kind: str) -> bool:
        """Invoke a new attempt of ``future``'s call (monitor thread); True if that failed the call."""
        job_id, call_id = future.job_id, future.call_id
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or future.done():
                return False
            call = self._call_of(job, call_id)
            if kind == "backup":
                call.backed_up = True
            number = max(a.number for a in call.attempts) + 1
            event = dict(job.base, calls=[job.entries[int(call_id)]], attempt=number)
            inv = Invocation(f"{job_id}-{call_id}-a{number}", event, [call_id], job.timeout, attempt=number)
            if self._budget is not None:
                inv.admit = self._budget.admit
            call.attempts.append(_Attempt(number, kind, inv.request_id, None, inv))
            self.launched[kind] += 1
        if kind == "backup":
            logger.info("dask-wren: call %s/%s is a straggler; a backup runs beside it", job_id, call_id)
        try:
            self._invoke([inv])
        except Exception as e:  # the backend refuses (it broke): the call fails with that
            with self._lock:
                call.attempts[-1].outcome = f"invoke refused: {e}"
                if self._jobs.get(job_id) is not job or call.running():
                    return False
                self._finished(job_id, job, call_id)
                self._calls.pop((job_id, call_id), None)
                future.stats["attempts"] = [a.summary() for a in call.attempts]
            try:
                future.set_exception(e)
            except cf.InvalidStateError:
                return False  # cancelled meanwhile
            return True
        return False


def no_later_attempt(kind: str, failures: int, retries: int) -> bool:
    """Whether a call whose latest failure is of ``kind``, after ``failures`` failed attempts, is
    over for a reader that sees only its records (``dask_wren.attach``, a loaded future): the
    failure is not one a host retries, or the job's ``retries`` are used up."""
    return kind not in INFRASTRUCTURE or failures > retries


def ran_span(timings: dict[str, Any]) -> tuple[float, float] | None:
    """When an attempt's function ran, from its record's timings: start to end (a call stopped at
    its timeout has no end: its record's write ends it); None if it never started."""
    start = timings.get("worker_call_start")
    end = timings.get("worker_call_end") or timings.get("worker_result_write")
    return None if start is None or end is None else (float(start), float(end))


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(text)
