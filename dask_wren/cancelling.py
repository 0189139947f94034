"""Cancel markers: how a cancelled call that runs on a worker learns it should stop.

The local backend kills a cancelled invocation's worker itself; Lambda offers no way to stop a
running execution.  So the host writes one object per job, ``cancel.json``
(``lambda_worker.protocol.cancel_key``), and the handler's watchdog reads it every
``wren.cancel-poll-interval`` seconds while a call runs, ending the invocation once every call
it has left is cancelled.  The marker names the job's cancelled calls, or says ``all`` once no
call of the job waits any more: a whole job costs one PUT, however many calls it cancels.

``CancelMarkers`` belongs to one executor:

- ``add(future)`` (the futures' cancel hook) writes the job's marker at once, unless
  ``batch()`` is open on this thread: then each job's marker is written once when it closes
  (``Executor.cancel``, ``shutdown(cancel_futures=True)``, a failed ``wren_get``);
- ``cancel_waiting(jobs)`` (the executor's finalizer: ``shutdown(wait=False)``, the interpreter's
  exit after Ctrl-C) marks every job that still has calls waiting;
- ``restore()``, after the executor deleted its jobs, writes the markers back: a cancelled call
  may still run until its next look, and must find its marker then.  They are left for the next
  executor start's sweep of dead hosts (``dask_wren.orphans``) to remove.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from dask_wren.futures import WrenFuture
from dask_wren.monitor import Monitor
from lambda_worker import protocol
from lambda_worker.storage import Storage

logger = logging.getLogger("dask_wren")


class CancelMarkers:
    def __init__(self, storage: Storage, prefix: str, monitor: Monitor):
        self.storage = storage
        self.prefix = prefix
        self._monitor = weakref.ref(monitor)  # the executor's finalizer holds this object: no cycle
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one marker write at a time: a later one knows more
        self._cancelled: dict[str, set[str]] = {}  # job -> cancelled call ids
        self._written: dict[str, bytes] = {}  # job -> its marker as last written
        self._local = threading.local()

    def add(self, future: WrenFuture) -> None:
        """``future`` was cancelled: its call must stop if a worker runs it."""
        if "request_id_sent" not in future.stats:  # never invoked: no worker to tell
            return
        with self._lock:
            self._cancelled.setdefault(future.job_id, set()).add(future.call_id)
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.add(future.job_id)
        else:
            self._write([future.job_id])

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Cancels on this thread inside the block write their jobs' markers once, at its end."""
        outer = getattr(self._local, "pending", None)
        if outer is not None:  # nested: the outer block writes
            yield
            return
        self._local.pending = pending = set()
        try:
            yield
        finally:
            self._local.pending = None
            self._write(sorted(pending))

    def cancel_waiting(self, jobs: Iterable[str]) -> None:
        """Mark each of ``jobs`` (the executor's own: not a job it attached while its host runs) that
        still has calls waiting for their records: nobody will read them."""
        monitor = self._monitor()
        if monitor is None:
            return
        own = set(jobs)
        for job_id in [j for j in monitor.watched_jobs if j in own]:
            if monitor.waiting(job_id):
                with self._writing:
                    self._put(job_id, protocol.cancel_marker(protocol.CANCEL_ALL))

    def restore(self) -> bool:
        """Write every marker again (after the jobs' objects were deleted); True if there were any."""
        with self._lock:
            written = dict(self._written)
        with self._writing:
            for job_id, marker in written.items():
                self._put(job_id, marker)
        return bool(written)

    def _write(self, job_ids: list[str]) -> None:
        monitor = self._monitor()
        for job_id in job_ids:
            with self._writing:
                with self._lock:
                    if self._written.get(job_id) == protocol.cancel_marker(protocol.CANCEL_ALL):
                        continue
                    ids = sorted(self._cancelled.get(job_id, ()))
                everything = monitor is None or not monitor.waiting(job_id)
                self._put(job_id, protocol.cancel_marker(protocol.CANCEL_ALL if everything else ids))

    def _put(self, job_id: str, marker: bytes) -> None:
        """Write a job's marker (holding ``_writing``); a failure is logged: the cancel stands."""
        try:
            self.storage.put(protocol.cancel_key(self.prefix, job_id), marker)
        except Exception as e:
            logger.warning("dask-wren: job %s: the cancel marker could not be written (its running calls go on): %s", job_id, e)
            return
        with self._lock:
            self._written[job_id] = marker
