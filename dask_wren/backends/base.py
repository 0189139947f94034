"""The contract between the executor and a backend."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from lambda_worker import protocol
from lambda_worker.signing import SigningKey
from lambda_worker.storage import storage_from_spec

logger = logging.getLogger("dask_wren")


@dataclass
class Invocation:
    """One worker invocation: an event for ``lambda_handler`` covering one or more calls."""

    request_id: str
    event: dict[str, Any]
    call_ids: list[str]
    timeout: float
    cancelled: set[str] = field(default_factory=set)
    attempt: int = 0  # 0, or the attempt number of its calls' retry or backup (``dask_wren.attempts``)
    #: ``time.monotonic()`` when a worker began running it (set by the backend): stragglers count from here
    dispatched: float | None = None
    #: Set by an executor with a budget (``dask_wren.budget``): the backend calls ``admit(self)`` right
    #: before it sends the invocation (``InvocationQueue.take``); it drops it on False (the hook
    #: fails its calls) and holds it back on None (not yet: asks again within ``ADMIT_RETRY`` s);
    #: an admitted invocation's hook is cleared, so a re-send is not checked again
    admit: Callable[[Invocation], bool | None] | None = None


#: Seconds before a backend asks a budget again about an invocation it held back.
ADMIT_RETRY = 0.05


class InvocationQueue:
    """A backend's invocations not sent yet, in order, with each budget's held back apart.

    Backends are shared between executors, so one executor at its budget (its hook answers "not
    yet") must not stall the others: its held invocation, and its later ones as they come to the
    front, wait in a line of their own, and ``take`` asks only that line's first one again.  Each
    invocation moves at most once, so a long held line costs nothing per look.  ``appendleft``
    (a retry, a backup, a re-send) stays first within its own line.
    """

    def __init__(self) -> None:
        self._ready: deque[Invocation] = deque()
        self._held: dict[Any, deque[Invocation]] = {}  # budget -> its invocations, oldest first

    @staticmethod
    def _owner(inv: Invocation) -> Any:
        return None if inv.admit is None else getattr(inv.admit, "__self__", inv.admit)

    def append(self, inv: Invocation) -> None:
        self._ready.append(inv)

    def appendleft(self, inv: Invocation) -> None:
        line = self._held.get(self._owner(inv))
        (self._ready if line is None else line).appendleft(inv)

    def take(self) -> tuple[Invocation | None, bool]:
        """The first invocation that may be sent now (or None), and whether a budget holds any back.
        Invocations a budget refuses are dropped (it fails their calls)."""
        for owner, line in list(self._held.items()) if self._held else ():
            while line:
                verdict = True if line[0].admit is None else line[0].admit(line[0])
                if verdict is None:
                    break
                inv = line.popleft()
                if verdict:
                    if not line:
                        del self._held[owner]
                    return inv, bool(self._held)
            else:
                del self._held[owner]
        while self._ready:
            inv = self._ready.popleft()
            if inv.admit is None:  # no budget (or admitted already): the common case
                return inv, bool(self._held)
            owner = self._owner(inv)
            if owner in self._held:
                self._held[owner].append(inv)
                continue
            verdict = inv.admit(inv)
            if verdict:
                return inv, bool(self._held)
            if verdict is None:
                self._held[owner] = deque([inv])
        return None, bool(self._held)

    def cancel(self, request_id: str, call_id: str) -> bool:
        """Drop ``call_id`` from the queued invocation ``request_id``; False if not queued."""
        for line in (self._ready, *self._held.values()):
            for inv in line:
                if inv.request_id == request_id:
                    inv.cancelled.add(call_id)
                    if inv.cancelled >= set(inv.call_ids):
                        line.remove(inv)
                    elif "calls" in inv.event:
                        inv.event = dict(inv.event, calls=[c for c in inv.event["calls"] if c["id"] not in inv.cancelled])
                    return True
        return False

    def drain(self) -> list[Invocation]:
        """Empty the queue; the invocations it held (to fail them, or to forget them)."""
        out = [inv for line in self._held.values() for inv in line] + list(self._ready)
        self._held.clear()
        self._ready.clear()
        return out

    def __len__(self) -> int:
        return len(self._ready) + (sum(map(len, self._held.values())) if self._held else 0)

    def __bool__(self) -> bool:
        return bool(self._ready) or any(self._held.values())


class ProgressListeners:
    """The callbacks a backend calls when results may have appeared (thread-safe)."""

    def __init__(self) -> None:
        self._listeners_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def add_progress_listener(self, listener: Callable[[], None]) -> None:
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_progress_listener(self, listener: Callable[[], None]) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def notify(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()


class Backend(Protocol):
    """Runs invocations somewhere.  Contract: every call of an accepted invocation ends with a
    result record in storage (written by the worker, or by the backend for a worker it lost),
    unless the call was cancelled."""

    def invoke(self, invocations: list[Invocation]) -> None:
        """Run ``invocations``; those of a later attempt (retries, backups) go before any queued first attempt."""

    #: True when ``cancel`` stops a running invocation itself (the local pool kills its worker);
    #: False when only the job's cancel marker can (Lambda offers no way to stop an execution).
    stops_running_calls: bool

    def cancel(self, request_id: str, call_id: str) -> None:
        """Best effort: drop the call if it has not started, stop it if it is running alone."""

    def call_done(self, request_id: str, call_id: str) -> None:
        """The call's result has been seen (backends that count calls in flight use this)."""

    def add_progress_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called whenever results may have appeared (a hint, not a promise)."""

    def remove_progress_listener(self, listener: Callable[[], None]) -> None: ...

    def shutdown(self) -> None:
        """Stop its threads and processes; invocations not yet started are dropped."""


class _Shareable(Protocol):
    @property
    def closed(self) -> bool: ...

    def shutdown(self) -> None: ...


_B = TypeVar("_B", bound=_Shareable)
_shared: dict[str, Any] = {}
_shared_lock = threading.Lock()


def shared_backend(kind: str, config: Sequence[Any], environment: Mapping[str, str], make: Callable[[], _B]) -> _B:
    """The process's one backend of ``kind`` for ``config`` and ``environment``; ``make()`` builds it.

    Executors come and go (``wren_get`` makes one per compute) and do not shut their backend
    down: sharing keeps one set of threads and processes per configuration.  ``environment`` is
    what the backend's processes and clients see, so a changed environment (new credentials, say)
    gets a new backend rather than one that cannot see it.  The key is a digest: no secret is kept
    in clear.  A backend that was shut down is replaced; the rest are shut down at exit.
    """
    key = hashlib.sha256(json.dumps([kind, list(config), sorted(environment.items())], default=str).encode()).hexdigest()
    with _shared_lock:
        backend = _shared.get(key)
        if backend is None or backend.closed:
            backend = _shared[key] = make()
            # Registered again after each new backend: exit handlers run last-registered first, so
            # the backends stop before the exit handlers of modules they imported run (the AWS
            # invoker pools' closer), and their threads never see those closed under them.
            atexit.unregister(_shutdown_shared_backends)
            atexit.register(_shutdown_shared_backends)
        return backend


def _shutdown_shared_backends() -> None:
    with _shared_lock:
        backends = list(_shared.values())
        _shared.clear()
    for backend in backends:
        backend.shutdown()


def write_failure_records(inv: Invocation, kind: str, message: str, signing_key: SigningKey) -> None:
    """Record a failure for every call of ``inv`` that has no result yet (first writer wins), signed
    with ``signing_key``, the key the backend's workers hold.

    Never raises: it runs on backend threads that must keep going.  If the store cannot be
    written, it cannot be listed either, and the monitor fails the futures with that error.
    """
    try:
        _write_failure_records(inv, kind, message, signing_key)
    except Exception as e:
        logger.error("dask-wren: could not record the failure of %s (%s): %s", inv.request_id, message, e)


def _write_failure_records(inv: Invocation, kind: str, message: str, signing_key: SigningKey) -> None:
    event = inv.event
    storage = storage_from_spec(event["storage"])
    now = time.time()
    for call_id in inv.call_ids:
        if call_id in inv.cancelled:
            continue
        header = {
            "job_id": event["job_id"],
            "call_id": call_id,
            "request_id": inv.request_id,
            "attempt": inv.attempt,
            "status": protocol.STATUS_FAILED,
            "error": {"kind": kind, "message": message},
            "timings": {"backend_recorded": now},
        }
        key = protocol.result_key(event["prefix"], event["job_id"], call_id, inv.attempt)
        storage.put_if_absent(key, protocol.encode_result(header, key=signing_key, storage_key=key))
