"""The monitor: discovers finished calls by listing result prefixes and resolves their futures.

One background thread per executor.  Each round lists the result prefix of every job that still
has unresolved futures (one LIST finds many results) and fetches each new record once: the whole
record when it is small, only its header when the payload should stay in storage.  Backends hint
when results may have appeared, so the local backend is not slowed to the polling interval.

State (guarded by ``_lock``; the monitor thread is the only one that reads storage):
    jobs     job id -> ``_Watched``: the result prefix, the futures still unresolved, the call
             ids already seen, and ``low``, below which every call id was seen, so a listing
             starts after it (results of a job are keys in call order)
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

from dask_wren import errors
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
    futures: dict[str, WrenFuture]  # call_id -> future, unresolved only
    seen: set[str] = field(default_factory=set)
    low: int = 0  # every call id below this one has been seen: list only past it
    list_failures: int = 0  # consecutive rounds whose listing failed

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
        on_resolved: Callable[[list[WrenFuture]], None] | None = None,
    ):
        self.storage = storage
        self.on_resolved = on_resolved
        self.poll_interval = poll_interval
        self.inline_limit = inline_limit
        self._jobs: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._failure: errors.BackendError | None = None  # the thread died: no more watching
        self._thread: threading.Thread | None = None

    def watch(self, results_prefix: str, job_id: str, futures: dict[str, WrenFuture]) -> None:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            job = self._jobs.get(job_id)
            if job is None:
                self._jobs[job_id] = _Watched(results_prefix, dict(futures))
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

    def _scan(self, job_id: str, job: _Watched) -> None:
        found = []
        try:
            for key, size in self.storage.list(job.prefix, start_after=job.start_after()):
                call_id = key.rsplit("/", 1)[-1]
                if call_id not in job.seen:
                    found.append((key, call_id, size))
            job.list_failures = 0
        except Exception as e:
            # The store's client has already retried; a few failed rounds in a row mean the
            # results cannot be read at all, and waiting longer would only hang the caller.
            job.list_failures += 1
            if job.list_failures >= _LIST_FAILURES_ALLOWED:
                self._fail_job(job_id, job, e)
            return
        with self._lock:
            pending = [(key, job.futures.pop(call_id, None), size) for key, call_id, size in found]
        job.seen.update(call_id for _, call_id, _ in found)
        resolved = []
        for key, future, size in pending:
            if future is None:
                continue
            try:
                if size <= self.inline_limit:
                    future._resolve(self.storage.get(key))
                else:
                    future._resolve(self._read_header(key), size)
            except Exception as e:  # an unreadable record must not leave the future hanging
                if not future.done():
                    future.set_exception(e)
            resolved.append(future)
        if resolved:
            self._tell(resolved)  # once per round: its consumers take a batch at a time
        with self._lock:
            if not job.futures and self._jobs.get(job_id) is job:
                del self._jobs[job_id]
