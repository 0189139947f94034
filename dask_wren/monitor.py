"""The monitor: discovers finished calls by listing result prefixes and resolves their futures.

One background thread per executor.  Each round lists the result prefix of every job that still
has unresolved futures (one LIST finds many results) and fetches each new record once: the whole
record when it is small, only its header when the payload should stay in storage.  Backends hint
when results may have appeared, so the local backend is not slowed to the polling interval.

State (guarded by ``_lock``; the monitor thread is the only one that reads storage):
    jobs     job id -> ``_Watched``: the result prefix, the futures still unresolved, the call
             ids already seen, and ``low``, below which every call id was seen, so a listing
             starts after it (results of a job are keys in call order); the records of later
             attempts (``a/``, few) are listed whole, and only while the job has any
Each record goes to ``attempts`` (``dask_wren.attempts``), which resolves the future or keeps it
waiting for a retry or a backup; each round ends with its ``tick`` (the retries that are due).  A
job another host submitted (``dask_wren.attach``) has a judge of its own in ``attempts``'s place
(same three methods), which lists ``a/`` always and runs no call again.
A job leaves ``jobs`` when its last future resolves, or when its listing failed
``_LIST_FAILURES_ALLOWED`` rounds in a row: then every future of the job fails with the
``StorageError`` rather than waiting forever.  Each round's resolved futures go to
``on_resolved`` as one batch per job; what it raises is logged and the rounds go on.  If the
thread itself raises, every watched future fails with ``BackendError`` and ``watch`` refuses
new jobs with it (the executor is finished; a new one has its own monitor).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dask_wren import errors
from dask_wren.attempts import Attempts
from dask_wren.futures import WrenFuture
from lambda_worker import protocol
from lambda_worker.storage import Storage, StorageError

logger = logging.getLogger("dask_wren")

_MIN_ROUND_GAP = 0.01  # seconds; bounds LIST requests when many calls finish at once
_ROUND_COST_FACTOR = 4
_LIST_FAILURES_ALLOWED = 3


@dataclass
class _Watched:
    prefix: str
    later_prefix: str  # records of later attempts
    futures: dict[str, WrenFuture]  # call_id -> future, unresolved only
    seen: set[str] = field(default_factory=set)
    later_seen: set[str] = field(default_factory=set)
    low: int = 0  # every call id below this one has been seen: list only past it
    list_failures: int = 0  # consecutive rounds whose listing failed
    judge: Any = None  # an attached job's judge (``dask_wren.attach``); None: the executor's ``attempts``
    tally: Any = None  # the job's ``cost.Tally``: the LISTs and GETs made for it are counted there

    def start_after(self) -> str | None:
        while protocol.call_id_for(self.low) in self.seen:
            self.low += 1
        return self.prefix + protocol.result_name(protocol.call_id_for(self.low - 1)) if self.low else None


class Monitor:
    def __init__(
        self,
        storage: Storage,
        poll_interval: float,
        inline_limit: int,
        attempts: Attempts,
        on_resolved: Callable[[list[WrenFuture]], None] | None = None,
    ):
        self.storage = storage
        self.attempts = attempts
        self.on_resolved = on_resolved
        self.poll_interval = poll_interval
        self.inline_limit = inline_limit
        self._jobs: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._failure: errors.BackendError | None = None  # the thread died: no more watching
        self._thread: threading.Thread | None = None

    def watch(self, prefix: str, job_id: str, futures: dict[str, WrenFuture], judge: Any = None, tally: Any = None) -> None:
        """Resolve ``futures`` (call id -> future) of job ``job_id`` under storage prefix ``prefix``
        (``judge``: an attached job's, in place of ``attempts``; ``tally``: counts the requests made for it)."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            job = self._jobs.get(job_id)
            if job is None:
                self._jobs[job_id] = _Watched(
                    protocol.results_prefix(prefix, job_id), protocol.attempts_prefix(prefix, job_id), dict(futures),
                    judge=judge, tally=tally,
                )
            else:
                job.futures.update(futures)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dask-wren-monitor", daemon=True)
                self._thread.start()
        self._wake.set()

    @property
    def watched_jobs(self) -> list[str]:
        """The jobs that still have futures waiting for their records."""
        with self._lock:
            return list(self._jobs)

    def waiting(self, job_id: str) -> int:
        """How many calls of ``job_id`` still wait for their records (cancelled ones are forgotten)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return len(job.futures) if job is not None else 0

    def forget(self, job_id: str, call_id: str) -> None:
        """Stop watching one call (it was cancelled)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.futures.pop(call_id, None)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            self._rounds()
        except BaseException as e:  # a bug here must fail the futures, never leave them waiting
            logger.error("dask-wren: the result monitor failed", exc_info=e)
            with self._lock:
                self._failure = errors.BackendError(
                    f"the result monitor failed ({type(e).__name__}: {e}); create a new executor"
                )
                jobs, self._jobs = list(self._jobs.items()), {}
            for _job_id, job in jobs:
                self._fail(list(job.futures.values()), self._failure)

    def _rounds(self) -> None:
        while not self._stopped:
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            began = time.monotonic()
            with self._lock:
                jobs = [(job_id, job) for job_id, job in self._jobs.items()]
            for job_id, job in jobs:
                self._scan(job_id, job)
            self._settled(self.attempts.tick())
            for _, job in jobs:
                if job.judge is not None:
                    self._settled(job.judge.tick())
            # Hints can arrive per finished call; listing a large prefix that often would take the
            # host's time from dispatching.  Space rounds by a few times the last round's cost.
            gap = max(_MIN_ROUND_GAP, _ROUND_COST_FACTOR * (time.monotonic() - began))
            time.sleep(min(gap, self.poll_interval))

    def _fail_job(self, job_id: str, job: _Watched, error: Exception) -> None:
        with self._lock:
            futures = list(job.futures.values())
            job.futures.clear()
            if self._jobs.get(job_id) is job:
                del self._jobs[job_id]
        self._fail(futures, StorageError(f"cannot list the results of job {job_id} under {job.prefix!r}: {error}"))

    def _fail(self, futures: list[WrenFuture], error: Exception) -> None:
        for future in futures:
            if not future.done():
                try:
                    future.set_exception(error)
                except cf.InvalidStateError:
                    pass  # cancelled meanwhile: it is done either way
        if futures:
            self._tell(futures)

    def _tell(self, futures: list[WrenFuture]) -> None:
        """Hand resolved futures to ``on_resolved``; what it raises is logged, and the monitor goes on."""
        if self.on_resolved is None:
            return
        try:
            self.on_resolved(futures)
        except Exception:
            logger.exception("dask-wren: a listener of resolved calls failed (job %s)", futures[0].job_id)

    def _read_header(self, key: str) -> bytes:
        """The start of a large record: its whole header and as little payload as possible."""
        probe = self.storage.get_range(key, 0, min(protocol.HEADER_PROBE_BYTES, self.inline_limit))
        needed = protocol.header_length(probe)
        if needed > len(probe):
            probe = self.storage.get_range(key, 0, needed)
        return probe

    def _settled(self, futures: list[WrenFuture]) -> None:
        """``futures`` were resolved outside a record (a retry the backend refused): stop watching them."""
        by_job: dict[str, list[WrenFuture]] = {}
        with self._lock:
            for future in futures:
                job = self._jobs.get(future.job_id)
                if job is not None and job.futures.pop(future.call_id, None) is not None:
                    by_job.setdefault(future.job_id, []).append(future)
                if job is not None and not job.futures:
                    del self._jobs[future.job_id]
        for batch in by_job.values():
            self._tell(batch)

    def _list(self, job_id: str, job: _Watched) -> list[tuple[str, str, int]] | None:
        """New records of the job: ``(key, name, size)``; None when listing failed."""
        found = []
        lists = 1
        try:
            for key, size in self.storage.list(job.prefix, start_after=job.start_after()):
                call_id = key.rsplit("/", 1)[-1]
                if call_id not in job.seen:
                    found.append((key, call_id, size))
            if (job.judge or self.attempts).has_later_attempts(job_id):
                lists += 1
                for key, size in self.storage.list(job.later_prefix):
                    name = key.rsplit("/", 1)[-1]
                    if name not in job.later_seen:
                        found.append((key, name, size))
            job.list_failures = 0
            if job.tally is not None:
                job.tally.host_list += lists + len(found) // 1000  # one LIST request returns 1,000 keys at most
        except Exception as e:
            # The store's client has already retried; a few failed rounds in a row mean the
            # results cannot be read at all, and waiting longer would only hang the caller.
            job.list_failures += 1
            if job.list_failures >= _LIST_FAILURES_ALLOWED:
                self._fail_job(job_id, job, e)
            return None
        for _, name, _ in found:
            (job.later_seen if "." in name else job.seen).add(name)
        return found

    def _scan(self, job_id: str, job: _Watched) -> None:
        found = self._list(job_id, job)
        if found is None:
            return
        parsed = [(key, protocol.parse_result_key(name), size) for key, name, size in found]
        with self._lock:
            pending = [(key, job.futures.get(call_id), attempt, size) for key, (call_id, attempt), size in parsed]
        resolved = []
        for key, future, attempt, size in pending:
            if future is None:
                continue
            try:
                record = self.storage.get(key) if size <= self.inline_limit else self._read_header(key)
                if job.tally is not None:
                    job.tally.host_get += 1  # a large record's header may take a second (range) GET: not counted
                final = (job.judge or self.attempts).on_record(future, key, attempt, record, size)
            except Exception as e:  # an unreadable record must not leave the future hanging
                if not future.done():
                    future.set_exception(e)
                final = True
            if final:
                resolved.append(future)
        with self._lock:
            for future in resolved:
                job.futures.pop(future.call_id, None)
            if not job.futures and self._jobs.get(job_id) is job:
                del self._jobs[job_id]
        if resolved:
            self._tell(resolved)  # once per round: its consumers take a batch at a time
