"""``WrenFuture``: a ``concurrent.futures.Future`` whose result lives in object storage.

An executor's monitor resolves its futures as result records appear.  A future can be pickled
and loaded in another process that reaches the same storage; such a *detached* future reads its
record from storage when asked.  Large results stay in storage until ``result()`` is called.

A future's state (the stdlib's names, ``_state``):
    PENDING     submitted; no record seen yet.  ``cancel()`` may still win
    CANCELLED   cancelled before its record arrived (a late record is ignored); the backend was
                told, so a queued call never starts and a running one is stopped where it can be
    FINISHED    resolved from its record: a value (or, for a large result, its storage key: the
                value loads on the first ``result()``) or an exception
The Condition and the waiter/callback lists exist only once someone waits on the future or adds
a callback (most futures of a Dask compute are never observed one by one); an unobserved future
is finished under one module lock instead.  A *detached* future (unpickled elsewhere) has no
monitor: ``done()``/``result()`` look for its record in storage themselves.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dask_wren import errors
from dask_wren.progress import bar as progress_bar
from lambda_worker import protocol, serialize
from lambda_worker.signing import SigningKey
from lambda_worker.storage import KeyNotFound, Storage, storage_from_spec

ALL_COMPLETED = cf.ALL_COMPLETED
ANY_COMPLETED = cf.FIRST_COMPLETED
FIRST_COMPLETED = cf.FIRST_COMPLETED
ALWAYS = "ALWAYS"

_NOT_LOADED = object()
_CONDITION_LOCK = threading.Lock()  # creates each future's Condition exactly once
_CANCELLED_STATES = (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED)
_DONE_STATES = (*_CANCELLED_STATES, cf._base.FINISHED)
_DETACHED_POLL = (0.005, 0.5)  # first and longest pause between storage checks of a detached future
#: First and longest pause between two listings of later attempts by a detached future whose call
#: has no first-attempt record yet (a backup may have won: the loser writes none).  A LIST costs
#: S3 12.5x a GET: a future waiting on a long call lists a few dozen times, not twice a second.
_DETACHED_LIST = (1.0, 30.0)


class WrenFuture(cf.Future):
    """The future of one remote call.

    Beyond ``concurrent.futures.Future``: ``succeeded()``/``errored()`` (PyWren), ``stats``
    (timings and sizes from host and worker; the two clocks differ), ``stdout``/``stderr`` (the
    tail the worker captured), ``job_id``/``call_id``/``key``.  ``cancel()`` works until the
    result is in: a queued call never starts and a running one is stopped where the backend can.
    """

    #: Whether waits on this future show a progress bar: its job's preference (``dask_wren.progress``);
    #: a class default, so the usual "auto" takes no room in each future.
    _progress: bool | str = "auto"

    def __init__(self, storage: Storage, key: str, job_id: str, call_id: str, signing_key: SigningKey | None = None):
        # cf.Future.__init__ without its Condition and lists, which ``_condition`` creates on
        # first use (every stdlib path that adds a waiter or callback takes the Condition first):
        # a Dask compute makes 100,000 futures, most never waited on one by one, and fewer
        # objects per future keep the garbage collector's passes short.
        self._state = cf._base.PENDING
        self._result = None
        self._exception = None
        self._waiters: Any = ()
        self._done_callbacks: Any = ()
        self.storage = storage
        self.key = key
        self.job_id = job_id
        self.call_id = call_id
        self.signing_key = signing_key  # checks its records; None: this process has no key for them
        self.stats: dict[str, Any] = {}
        self.header: dict[str, Any] | None = None
        self.stdout = ""
        self.stderr = ""
        self._value: Any = _NOT_LOADED
        self._on_cancel: Callable[[WrenFuture], None] | None = None
        self._detached = False
        self.tag: Any = None  # whatever the submitter wants to find again (wren_get: the task key)

    @property
    def _condition(self) -> threading.Condition:
        cond = self.__dict__.get("_cond")
        if cond is None:
            with _CONDITION_LOCK:
                cond = self.__dict__.get("_cond")
                if cond is None:
                    self._waiters, self._done_callbacks = [], []
                    cond = self.__dict__["_cond"] = threading.Condition()
        return cond

    def _finish_unobserved(self, result: Any, exception: BaseException | None) -> bool:
        """Finish without creating the Condition if there is none yet.  That means nobody has
        waited, registered a callback or cancelled (each of those creates it first, under the
        same lock), so there is no one to notify.  False: take the stdlib path."""
        with _CONDITION_LOCK:
            if "_cond" in self.__dict__:
                return False
            if self._state in _DONE_STATES:
                raise cf.InvalidStateError(f"{self._state}: {self!r}")
            self._result, self._exception, self._state = result, exception, cf._base.FINISHED
        return True

    def set_result(self, result: Any) -> None:
        if not self._finish_unobserved(result, None):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._finish_unobserved(None, exception):
            super().set_exception(exception)

    def __repr__(self) -> str:
        return f"<WrenFuture {self.job_id}/{self.call_id} {self._state.lower()}>"

    # -- resolution (the monitor, or a detached future itself) -------------------------------

    def _resolve(self, record: bytes, size: int | None = None) -> None:
        """Resolve from the result record under ``key``: the whole object, or just its header when
        ``size`` says the payload was left in storage."""
        header, start = protocol.decode_header(record, key=self.signing_key, storage_key=self.key)
        self._apply(header, start, record, size)

    def _apply(self, header: dict[str, Any], start: int, record: bytes, size: int | None = None, exc: BaseException | None = None) -> None:
        """Resolve from a decoded record (``exc``: its exception, when the caller built it already)."""
        self.header = header
        self.stdout = header.get("stdout", "")
        self.stderr = header.get("stderr", "")
        self.stats.update(header.get("timings", ()))
        self.stats["host_result_seen"] = time.time()
        for k in ("result_bytes", "storage_requests", "worker_pid", "request_id"):
            if k in header:
                self.stats[k] = header[k]
        try:
            if header.get("status") == protocol.STATUS_OK:
                if size is None or len(record) >= size:
                    self._value = serialize.loads(self._payload(header, memoryview(record)[start:]))
                self.set_result(None)
            else:
                self.set_exception(exc if exc is not None else self._failure(header, start, record, size))
        except cf.InvalidStateError:
            pass  # cancelled meanwhile, or a duplicate record: the first outcome stands

    def _failure(self, header: dict[str, Any], start: int, record: bytes, size: int | None = None) -> BaseException:
        """The exception a failed record stands for (its payload read from storage if left there)."""
        payload = record[start:] if size is None or len(record) >= size else self.storage.get(self.key)[start:]
        try:
            payload = self._payload(header, payload)
        except errors.IntegrityError as e:
            return e
        return _exception_from(header, payload, self)

    def _payload(self, header: dict[str, Any], payload: bytes | memoryview) -> bytes | memoryview:
        """The record's payload, checked against its verified header before anything unpickles it."""
        return protocol.open_payload(header, payload, key=self.signing_key, storage_key=self.key)

    def result(self, timeout: float | None = None) -> Any:
        if self._detached:
            self._await_detached(timeout)
        if self._state != cf._base.FINISHED or self._exception is not None:
            super().result(timeout)  # waits, or raises the call's exception
        if self._value is not _NOT_LOADED:
            return self._value
        with self._condition:  # one download, however many threads ask
            if self._value is _NOT_LOADED:
                try:
                    record = self.storage.get(self.key)
                except KeyNotFound:
                    raise errors.WrenError(
                        f"the result of {self.job_id}/{self.call_id} is no longer in storage: "
                        "its executor cleaned up; call .result() before shutting the executor down"
                    ) from None
                header, start = protocol.decode_header(record, key=self.signing_key, storage_key=self.key)
                self._value = serialize.loads(self._payload(header, memoryview(record)[start:]))
            return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._detached:
            self._await_detached(timeout)
        if self._state == cf._base.FINISHED:
            return self._exception
        return super().exception(timeout)

    # Reading the state needs no lock (one attribute, written last): checking thousands of
    # futures then creates no Conditions.
    def done(self) -> bool:
        if self._detached and self._state not in _DONE_STATES:
            self._poll_detached()
        return self._state in _DONE_STATES

    def cancelled(self) -> bool:
        return self._state in _CANCELLED_STATES

    def succeeded(self) -> bool:
        return self.done() and not self.cancelled() and self.exception() is None

    def errored(self) -> bool:
        return self.done() and not self.cancelled() and self.exception() is not None

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        if self._on_cancel is not None:
            self._on_cancel(self)
        return True

    # -- detached futures ---------------------------------------------------------------------

    def __reduce__(self):
        key_id = self.signing_key.id if self.signing_key is not None else None  # never the key itself
        return _rebuild_future, (self.storage.spec(), self.key, self.job_id, self.call_id, dict(self.stats), key_id)

    def _poll_detached(self) -> bool:
        """Look for the call's outcome in storage; True once the future is resolved.

        A future pickled after its call resolved knows the deciding record.  One pickled before
        knows only the first attempt's key, and its host may have run the call again (a retry, a
        backup), each attempt under a key of its own: an ``ok`` record of any attempt resolves it;
        a failure does so once no later attempt can come, by the rule ``dask_wren.attach`` uses:
        the failure is not one a host retries, or the call failed more often than the job's
        ``retries`` (its manifest)."""
        try:
            record = self.storage.get(self.key)
        except KeyNotFound:
            record = None
        try:
            if protocol.parse_result_key(self.key)[1] > 0:  # the deciding attempt: pickled once resolved
                if record is None:
                    return False
                self._resolve(record)
                return True
            return self._judge_attempts(record)
        except errors.IntegrityError as e:
            self.set_exception(e)
        return True

    def _judge_attempts(self, first: bytes | None) -> bool:
        from dask_wren.attempts import no_later_attempt  # it imports this module

        attempts = [] if first is None else [(0, self.key, first, self._header(self.key, first))]
        if first is None:  # still running, most likely: list now and then only
            now = time.monotonic()
            if now < self._next_list:
                return False
            self._list_pause = min(self._list_pause * 2, _DETACHED_LIST[1])
            self._next_list = now + self._list_pause
        if not attempts or not _is_ok(attempts[0][3]):
            for key, _ in self.storage.list(f"{protocol.attempts_prefix(self._prefix(), self.job_id)}{self.call_id}."):
                try:
                    record = self.storage.get(key)
                except KeyNotFound:
                    continue
                attempts.append((protocol.parse_result_key(key)[1], key, record, self._header(key, record)))
        if not attempts:
            return False
        attempts.sort(key=lambda a: a[0])
        ok = [a for a in attempts if _is_ok(a[3])]
        _, key, record, header = ok[0] if ok else attempts[-1]
        kind = (header.get("error") or {}).get("kind", "exception")
        if not ok and not no_later_attempt(kind, len(attempts), self._retries()):
            return False  # its host may run it again
        self.key = key  # what the record verifies against, and where a large value is
        self._resolve(record)
        return True

    def _header(self, key: str, record: bytes) -> dict[str, Any]:
        return protocol.decode_header(record, key=self.signing_key, storage_key=key)[0]

    def _prefix(self) -> str:
        """The storage prefix its job lies under (its key is ``{prefix}/{job_id}/...``)."""
        return self.key.split(f"/{self.job_id}/", 1)[0]

    def _retries(self) -> int:
        """The job's ``retries`` (its manifest; read once), else the default."""
        if self._detached_retries is None:
            from dask_wren.attempts import RetryPolicy
            from dask_wren.jobs import read_manifest

            manifest = read_manifest(self.storage, self._prefix(), self.job_id) or {}
            self._detached_retries = int(manifest.get("retries", RetryPolicy.retries))
        return self._detached_retries

    def _await_detached(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _DETACHED_POLL[0]
        while self._state not in _DONE_STATES and not self._poll_detached():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise cf.TimeoutError(f"no result for {self.job_id}/{self.call_id} within {timeout} s")
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, _DETACHED_POLL[1])


def _is_ok(header: dict[str, Any]) -> bool:
    return header.get("status") == protocol.STATUS_OK


def _rebuild_future(spec: dict[str, Any], key: str, job_id: str, call_id: str, stats: dict, key_id: str | None = None) -> WrenFuture:
    from dask_wren.signing import key_with_id  # reads dask.config: only where a future is loaded

    f = WrenFuture(storage_from_spec(spec), key, job_id, call_id, key_with_id(key_id))
    f.stats.update(stats)
    f._detached = True
    f._detached_retries = None  # the job's retries, read from its manifest when first needed
    f._list_pause = _DETACHED_LIST[0] / 2  # doubled before each use
    f._next_list = time.monotonic() + _DETACHED_LIST[0]
    return f


def _exception_from(header: dict[str, Any], payload: bytes, future: WrenFuture) -> BaseException:
    """The exception a failed call raises on the host: the original one where possible."""
    error = header.get("error") or {}
    where = f"dask-wren call {future.job_id}/{future.call_id}"
    if header.get("worker_pid"):
        where += f" (worker pid {header['worker_pid']})"
    exc: BaseException | None = None
    if payload:
        try:
            exc = serialize.loads_exception(payload)
        except Exception:
            exc = None
    kind = error.get("kind")
    if exc is not None:
        if header.get("status") == protocol.STATUS_FAILED:
            _note(exc, f"{error.get('message', 'the call failed')} [{where}]")
        else:
            _note(exc, f"raised remotely in {where}")
        return exc
    if kind == "exception":
        return errors.RemoteError(error.get("type", "Exception"), error.get("message", ""), error.get("traceback", ""))
    message = f"{where}: {error.get('message', 'the call failed')}"
    if kind in (protocol.FAIL_TIMEOUT, protocol.FAIL_LOST):
        return errors.WrenTimeoutError(message + "; pass a larger timeout= or split the work")
    if kind in (protocol.FAIL_WORKER_DIED, protocol.FAIL_EXIT):
        return errors.WorkerDiedError(message)
    if kind == protocol.FAIL_VERSION:
        return errors.VersionMismatchError(message)
    if kind == protocol.FAIL_BACKEND:
        return errors.BackendError(message)
    if kind == protocol.FAIL_INTEGRITY:
        return errors.IntegrityError(message)
    if error.get("traceback"):
        message += f"\n\nRemote traceback:\n{error['traceback'].rstrip()}"
    return errors.WrenError(message)


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(text)


# -- waiting on many futures ----------------------------------------------------------------


def wait(
    futures: Iterable[cf.Future],
    return_when: str = ALL_COMPLETED,
    timeout: float | None = None,
    *,
    progress: bool | None = None,
) -> tuple[list[cf.Future], list[cf.Future]]:
    """Wait for futures (of any executors); return ``(done, not_done)`` in input order.

    ``return_when``: ``ALL_COMPLETED`` (default), ``ANY_COMPLETED`` (also ``FIRST_COMPLETED``),
    or ``ALWAYS`` to return at once with the current state.  ``progress``: show a progress bar
    (True), none (False), or as the futures' jobs prefer (None; ``dask_wren.progress``).
    """
    futures = list(futures)
    if return_when not in (ALL_COMPLETED, ANY_COMPLETED, ALWAYS):
        raise ValueError(f"return_when must be ALL_COMPLETED, ANY_COMPLETED or ALWAYS, not {return_when!r}")
    bar = None if return_when == ALWAYS else progress_bar(futures, progress)
    if bar is None:
        return _wait(futures, return_when, timeout)
    with bar:
        return _wait(futures, return_when, timeout)


def _wait(futures: list[cf.Future], return_when: str, timeout: float | None) -> tuple[list[cf.Future], list[cf.Future]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = _DETACHED_POLL[0]
    while True:
        done = [f for f in futures if f.done()]
        if (
            return_when == ALWAYS
            or len(done) == len(futures)
            or (return_when == ANY_COMPLETED and done)
        ):
            break
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        pending = [f for f in futures if not f.done()]
        attached = [f for f in pending if not getattr(f, "_detached", False)]
        polled = len(attached) < len(pending)
        slice_ = min(pause, left) if polled and left is not None else (pause if polled else left)
        if attached:
            cf.wait(attached, timeout=slice_, return_when=return_when)
        else:
            time.sleep(slice_)
        if polled:
            pause = min(pause * 2, _DETACHED_POLL[1])
    done_ids = {id(f) for f in done}
    return done, [f for f in futures if id(f) not in done_ids]


def as_completed(
    futures: Iterable[cf.Future], timeout: float | None = None, *, progress: bool | None = None
) -> Iterator[cf.Future]:
    """Yield futures as they finish (of any executors, attached or detached); ``progress`` as for ``wait``."""
    futures = list({id(f): f for f in futures}.values())  # each future once, as the stdlib does
    bar = progress_bar(futures, progress)
    if bar is None:
        yield from _as_completed(futures, timeout)
        return
    with bar:  # closed however the loop over this generator ends
        yield from _as_completed(futures, timeout)


def _as_completed(futures: list[cf.Future], timeout: float | None) -> Iterator[cf.Future]:
    if not any(getattr(f, "_detached", False) for f in futures):
        yield from cf.as_completed(futures, timeout=timeout)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    remaining = futures
    while remaining:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise cf.TimeoutError(f"{len(remaining)} of {len(futures)} futures unfinished")
        done, remaining = _wait(remaining, ANY_COMPLETED, left)
        yield from done


def get_all_results(futures: Iterable[cf.Future], timeout: float | None = None, *, progress: bool | None = None) -> list[Any]:
    """Wait for all futures and return their results in order; the first error is raised.
    ``progress`` as for ``wait``."""
    futures = list(futures)
    _, not_done = wait(futures, ALL_COMPLETED, timeout, progress=progress)
    if not_done:
        raise cf.TimeoutError(f"{len(not_done)} of {len(futures)} futures unfinished after {timeout} s")
    return [f.result() for f in futures]
