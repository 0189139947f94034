"""The embedded backend: a pool of warm worker processes, each a stand-in for a Lambda sandbox.

One dispatcher thread owns all state below; other threads only append to ``_inbox`` and wake it
(its messages: ``_Invoke``, ``_Cancel``, ``_Wake``, ``_Shutdown``).

State (dispatcher thread only):
    queue    invocations accepted and not yet sent, in order
    workers  live worker processes; each is starting (not ``ready``), idle, or has ``sent``
             invocations: the first runs (since ``started``); at most one more waits behind it,
             sent ahead only while the queue is long and recent calls were short

Transitions:
    invoke        -> appended to queue (a later attempt, a retry or backup, to its head);
                     idle workers take from the head (while fewer than
                     ``concurrency_limit`` workers are busy, when one is set)
    worker done   -> the next sent invocation (if any) starts; progress listeners are told; a
                     handler that raised or reported a ``handler_error`` (storage unreachable)
                     gets failure records for its calls
    worker EOF    -> the process died: the running invocation's calls get ``worker_died``
                     records, the one waiting behind it goes back to the queue, a replacement starts
    deadline      -> the worker is killed: ``timeout`` records, the same as EOF otherwise.  The
                     deadline is the invocation's timeout plus ``kill_grace`` (``KILL_GRACE``):
                     the handler stops a call at its own timeout and writes its own record (first
                     writer wins), so this kill is the backstop for a handler that cannot
    memory        -> with ``memory_limit_mb``, a busy worker whose resident memory exceeds it
                     (polled every ``MEMORY_POLL_INTERVAL`` s) is killed: ``worker_died`` records
    dispatcher raises -> every invocation it holds (queued, sent, posted) gets ``backend``
                     records, the workers are killed, the pool closes; later invokes raise
                     ``BackendError`` and the next executor gets a new pool
    cancel        -> a queued call is dropped; a waiting one is withdrawn; a running invocation
                     whose calls are all cancelled is killed (no record: the future is cancelled)

Every invocation that ran ends with one *outcome* (``OUTCOMES``), given to ``on_outcome`` when
set.  With ``records_failures=False`` (the offline Lambda stand-in's pool) the backend writes no
failure records at all, as Lambda writes none: a dead or killed worker is simply replaced and the
outcome alone says what happened.

Workers are started with ``subprocess`` in an empty directory without the host's ``PYTHONPATH``
or working directory on ``sys.path``, so a function that works here also works on Lambda.  They
inherit the host's environment as it was when the pool started (credentials included), with
``$DASK_WREN_SIGNING_KEY`` set to the pool's signing key.  Each worker's output goes to a log file whose tail is quoted when the worker dies.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from dask_wren.backends.base import (
    ADMIT_RETRY,
    Invocation,
    InvocationQueue,
    ProgressListeners,
    shared_backend,
    write_failure_records,
)
from dask_wren.errors import BackendError
from dask_wren.orphans import LOG_DIR_PREFIX
from dask_wren.signing import local_key
from dask_wren.subprocesses import clean_environment, python_command
from lambda_worker import protocol
from lambda_worker.signing import KEY_VARIABLE, SigningKey

logger = logging.getLogger(__name__)

_STARTUP_FAILURES_ALLOWED = 3
_LOG_TAIL_BYTES = 2000
_AHEAD_MAX_CALL_TIME = 0.05  # send a call ahead only while calls take less than this
#: Seconds past an invocation's timeout before the pool kills its worker (the handler's own
#: watchdog stops the call at its timeout; this kill is the backstop).
KILL_GRACE = 5.0
#: Seconds between two looks at the resident memory of busy workers (``memory_limit_mb``).
MEMORY_POLL_INTERVAL = 0.1

#: How an invocation that ran ended: ``ok`` (the handler returned, even with a ``handler_error``
#: in its summary), ``error`` (the handler raised), ``died`` (the worker process died), ``timeout`` / ``memory`` (the pool killed it),
#: ``cancelled`` (all its calls were cancelled; it was killed or withdrawn).
OUTCOMES = ("ok", "error", "died", "timeout", "memory", "cancelled")

try:
    _PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE_SIZE = 4096


def resident_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (Linux ``/proc``), or ``None`` where unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def read_tail(path: str, limit: int) -> str:
    """The last ``limit`` bytes of the file at ``path`` as text; empty if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:  # no log (never written, or removed): nothing to quote
        return ""


class _Worker:
    _ids = itertools.count()

    def __init__(self, log_dir: str, memory_mb: int, function_name: str, signing_key: SigningKey):
        self.id = next(self._ids)
        parent, child = socket.socketpair()
        self.log_path = os.path.join(log_dir, f"worker-{self.id}.log")
        self.log = open(self.log_path, "wb")
        cmd = python_command(
            "-m", "lambda_worker.local_runtime", str(child.fileno()), str(memory_mb), function_name, str(os.getpid())
        )
        self.proc = subprocess.Popen(
            cmd, cwd=log_dir, env={**clean_environment(), KEY_VARIABLE: signing_key.text()}, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.ready = False
        self.sent: deque[Invocation] = deque()
        self.started = 0.0

    @property
    def current(self) -> Invocation | None:
        return self.sent[0] if self.sent else None

    def log_tail(self) -> str:
        return read_tail(self.log_path, _LOG_TAIL_BYTES)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass  # it is dead already: what kill() wants

    def close(self) -> None:
        self.conn.close()
        self.log.close()
        try:
            os.unlink(self.log_path)
        except OSError as e:  # the directory goes at shutdown anyway
            logger.debug("dask-wren local backend: could not remove %s: %s", self.log_path, e)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its connection"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (exit code {code})"
    return f"exited with code {code}"


# -- what other threads post to the dispatcher (``LocalBackend._inbox``) --------------------------


@dataclass(frozen=True)
class _Invoke:
    invocations: list[Invocation]


@dataclass(frozen=True)
class _Cancel:
    request_id: str
    call_id: str
    acted: threading.Event  # set once the dispatcher has acted


@dataclass(frozen=True)
class _Wake:
    """Look again (the concurrency limit changed)."""


@dataclass(frozen=True)
class _Shutdown:
    pass


_Message = _Invoke | _Cancel | _Wake | _Shutdown


class LocalBackend(ProgressListeners):
    """A warm pool of ``workers`` processes running ``lambda_worker.handler.lambda_handler``.

    ``memory_mb`` is what the Lambda-like context reports.  Options:

    ``records_failures`` (True): write failure records for the calls of a worker that died, was
        killed, or whose handler raised (the embedded backend: the host's own detection).  False:
        write none, as Lambda does; the outcome goes to ``on_outcome`` only.
    ``memory_limit_mb`` (None): kill a busy worker whose resident memory exceeds this many MB
        (polled; Linux only), as Lambda kills a function that exceeds its memory.
    ``kill_grace`` (``KILL_GRACE``): seconds past an invocation's timeout before its worker is
        killed; the worker's context counts down to that moment.  0: kill at the timeout.
    ``on_outcome(invocation, outcome, detail)``: called on the dispatcher thread (keep it short)
        when an invocation that was sent to a worker ends; ``outcome`` is one of ``OUTCOMES``.
    ``concurrency_limit`` (None): at most this many workers run invocations at once
        (``set_concurrency_limit`` changes it).
    ``signing_key`` (None: the host's local key, ``dask_wren.signing.local_key``): the key the
        workers get, and that the failure records this backend writes are signed with.

    ``killed_timeout`` and ``killed_memory`` count the workers killed for each reason.
    """

    stops_running_calls = True  # cancel kills the worker of an invocation whose calls are all cancelled

    def __init__(
        self,
        workers: int | None = None,
        memory_mb: int = 2048,
        function_name: str = "dask-wren-local",
        *,
        records_failures: bool = True,
        memory_limit_mb: int | None = None,
        kill_grace: float = KILL_GRACE,
        on_outcome: Callable[[Invocation, str, str], None] | None = None,
        concurrency_limit: int | None = None,
        signing_key: SigningKey | None = None,
    ):
        super().__init__()
        self.n_workers = workers or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.function_name = function_name
        self.records_failures = records_failures
        self.memory_limit_mb = memory_limit_mb
        self.kill_grace = max(0.0, float(kill_grace))
        self.on_outcome = on_outcome
        self.concurrency_limit = concurrency_limit
        self.signing_key = signing_key or local_key()
        self.killed_timeout = 0
        self.killed_memory = 0
        self._log_dir = tempfile.mkdtemp(prefix=f"{LOG_DIR_PREFIX}{os.getpid()}-")  # the pid: orphans.dead_log_dirs
        self._lock = threading.Lock()
        self._inbox: deque[_Message] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._closed = False
        self._broken: str | None = None  # workers cannot start: invocations fail at once
        self._failure: str | None = None  # the dispatcher itself failed: this pool is finished
        self._thread: threading.Thread | None = None
        # dispatcher-thread state
        self._queue = InvocationQueue()
        self._held = False  # a budget holds invocations back (``_next_admitted``): ask it again soon
        self._workers: list[_Worker] = []
        self._startup_failures = 0
        self._recent_call_time = 0.0  # seconds per call, smoothed: decides sending ahead
        self._next_memory_check = 0.0

    # -- public API (any thread) -------------------------------------------------------------

    def start(self) -> None:
        """Start the worker processes now rather than at the first invoke."""
        with self._lock:
            if self._failure is not None:
                raise BackendError(f"{self._failure}; a new executor starts a new pool")
            if self._closed:
                raise RuntimeError("this local backend has been shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dask-wren-local-dispatch", daemon=True)
                self._thread.start()

    def invoke(self, invocations: list[Invocation]) -> None:
        self.start()
        with self._lock:  # against _fail_everything: posted before it looks, or refused here
            if self._failure is None:
                self._post(_Invoke(invocations))
                return
        raise BackendError(f"{self._failure}; a new executor starts a new pool")

    def cancel(self, request_id: str, call_id: str) -> None:
        """Returns once the dispatcher has acted: a call waiting in a worker's pipe is withdrawn
        before the call ahead of it can finish and let it start."""
        acted = threading.Event()
        self._post(_Cancel(request_id, call_id, acted))
        if self._thread is not None and self._thread is not threading.current_thread():
            acted.wait(timeout=5)

    def call_done(self, request_id: str, call_id: str) -> None:
        """Nothing to do: the pool knows when its workers finish."""

    def set_concurrency_limit(self, limit: int | None) -> None:
        """At most ``limit`` invocations run at once from now on (None: one per worker)."""
        self.concurrency_limit = limit
        self._post(_Wake())

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for diagnostics and tests)."""
        return [w.proc.pid for w in list(self._workers)]

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._post(_Shutdown())
        if thread is not None:
            thread.join(timeout=10)

    # -- dispatcher thread ------------------------------------------------------------------

    def _post(self, message: _Message) -> None:
        self._inbox.append(message)
        try:
            self._wake_w.send(b"x")
        except OSError as e:  # the message waits in the inbox for the dispatcher's next look
            logger.debug("dask-wren local backend: could not wake the dispatcher: %s", e)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug or a failed worker restart: fail what is pending, never hang it
            self._fail_everything(e)
        finally:
            for w in self._workers:
                try:
                    w.conn.send(("exit",))
                except OSError:
                    pass  # that worker is gone already: the wait below reaps it
            for w in self._workers:
                try:
                    w.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.proc.wait()
                w.close()
            self._workers.clear()
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def _fail_everything(self, error: BaseException) -> None:
        """The dispatcher failed: every invocation it held fails with ``backend`` records (the
        stdlib's broken-pool pattern), the pool closes, and the next executor gets a new one."""
        logger.error("dask-wren local backend: the dispatcher failed", exc_info=error)
        with self._lock:
            self._failure = f"the local backend's dispatcher failed ({type(error).__name__}: {error})"
            self._closed = True
            posted = [inv for m in list(self._inbox) if isinstance(m, _Invoke) for inv in m.invocations]
        pending = self._queue.drain() + [inv for w in self._workers for inv in w.sent] + posted
        for inv in pending:
            if self.records_failures:
                write_failure_records(inv, protocol.FAIL_BACKEND, self._failure, self.signing_key)
        for w in self._workers:
            w.kill()
        self.notify()

    def _loop(self) -> None:
        """The dispatcher's loop: returns on shutdown; an exception ends the pool (``_run``)."""
        while True:
            self._fill_pool()
            self._dispatch()
            timeout = self._next_wakeup()
            ready = wait([self._wake_r] + [w.conn for w in self._workers], timeout)
            if self._wake_r in ready:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass  # drained: every wake-up byte is read
                if not self._drain_inbox():
                    return
            for w in list(self._workers):
                if w.conn in ready:
                    self._read_worker(w)
            self._enforce_deadlines()
            self._enforce_memory()

    def _drain_inbox(self) -> bool:
        while self._inbox:
            message = self._inbox.popleft()
            if isinstance(message, _Shutdown):
                return False
            if isinstance(message, _Invoke):
                if self._broken:
                    for inv in message.invocations:
                        self._failed(inv, "died", protocol.FAIL_WORKER_DIED, self._broken)
                    self.notify()
                else:
                    for inv in message.invocations:
                        if inv.attempt:  # a retry or a backup is late already: it runs next
                            self._queue.appendleft(inv)
                        else:
                            self._queue.append(inv)
            elif isinstance(message, _Cancel):
                self._cancel(message.request_id, message.call_id)
                message.acted.set()
        return True

    def _cancel(self, request_id: str, call_id: str) -> None:
        if self._queue.cancel(request_id, call_id):
            return
        for w in self._workers:
            for position, inv in enumerate(w.sent):
                if inv.request_id != request_id:
                    continue
                inv.cancelled.add(call_id)
                if inv.cancelled >= set(inv.call_ids):
                    if position == 0:
                        w.kill()  # the EOF arrives next; _lost() writes no record for cancelled calls
                    else:
                        self._send(w, ("withdraw", request_id))
                return

    def _fill_pool(self) -> None:
        while len(self._workers) < self.n_workers and not self._broken:
            self._workers.append(_Worker(self._log_dir, self.memory_mb, self.function_name, self.signing_key))

    def _dispatch(self) -> None:
        ready = [w for w in self._workers if w.ready]
        limit = self.concurrency_limit
        busy = sum(1 for w in self._workers if w.sent)
        for w in ready:  # idle workers first
            if not self._queue:
                return
            if not w.sent:
                if limit is not None and busy >= limit:
                    return
                inv = self._next_admitted()
                if inv is None:
                    return
                busy += 1
                w.started = time.monotonic()
                self._send_invocation(w, inv)
                w.sent[0].dispatched = w.started
        # Send one more ahead only when there is a backlog of short calls: the worker then never
        # waits for the host, and a long call cannot hold back much behind it.
        if len(self._queue) > len(ready) and self._recent_call_time < _AHEAD_MAX_CALL_TIME:
            for w in ready:
                if len(w.sent) == 1 and self._queue:
                    inv = self._next_admitted()
                    if inv is None:
                        return
                    self._send_invocation(w, inv)

    def _next_admitted(self) -> Invocation | None:
        """The queue's next invocation that may be sent (``InvocationQueue.take``); while a budget holds
        some back, the pool asks again within ADMIT_RETRY (``_next_wakeup``)."""
        inv, self._held = self._queue.take()
        return inv

    def _send_invocation(self, w: _Worker, inv: Invocation) -> None:
        w.sent.append(inv)
        # The worker's context counts down to the moment this pool kills it.
        self._send(w, ("invoke", inv.request_id, inv.event, inv.timeout + self.kill_grace))

    def _send(self, w: _Worker, message: tuple) -> None:
        try:
            w.conn.send(message)
        except OSError:
            pass  # the worker is dying; its EOF will be read and its calls recorded

    def _next_wakeup(self) -> float | None:
        """Seconds until the next deadline, memory check or budget question, or None when no worker is busy."""
        times = [w.started + w.current.timeout + self.kill_grace for w in self._workers if w.current is not None]
        if self._held and self._queue:
            times.append(time.monotonic() + ADMIT_RETRY)  # a budget held an invocation back: ask it again soon
        if not times:
            return None
        if self.memory_limit_mb:
            times.append(self._next_memory_check)
        return max(0.0, min(times) - time.monotonic())

    def _report(self, inv: Invocation, outcome: str, detail: str = "") -> None:
        if self.on_outcome is None:
            return
        try:
            self.on_outcome(inv, outcome, detail)
        except Exception:
            logger.exception("dask-wren local backend: the outcome listener failed")

    def _failed(self, inv: Invocation, outcome: str, kind: str, message: str) -> None:
        """``inv`` ran and failed: its calls get records (unless this pool writes none)."""
        if self.records_failures:
            write_failure_records(inv, kind, message, self.signing_key)
        self._report(inv, outcome, message)

    def _read_worker(self, w: _Worker) -> None:
        try:
            while w.conn.poll():
                message = w.conn.recv()
                if message[0] == "ready":
                    w.ready = True
                    self._startup_failures = 0
                elif message[0] in ("done", "skipped"):
                    inv = w.sent.popleft()
                    now = time.monotonic()
                    if message[0] == "done":
                        elapsed = (now - w.started) / max(1, len(inv.call_ids))
                        self._recent_call_time = 0.8 * self._recent_call_time + 0.2 * elapsed
                        summary = message[2] if isinstance(message[2], dict) else {}
                        error = summary.get("handler_error")
                        if error and self.records_failures:
                            write_failure_records(inv, protocol.FAIL_HANDLER, f"the worker's handler failed: {error}", self.signing_key)
                        # Only a handler that raised is a function error on Lambda; one that returned
                        # a summary naming a problem returned normally.
                        self._report(inv, "error" if summary.get("handler_raised") else "ok", error or "")
                    else:
                        self._report(inv, "cancelled")
                    w.started = now
                    if w.sent:  # the one sent ahead starts now
                        w.sent[0].dispatched = now
                    self.notify()
        except (EOFError, OSError):
            self._lost(w, None)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            inv = w.current
            if inv is not None and now >= w.started + inv.timeout + self.kill_grace:
                w.kill()
                self.killed_timeout += 1
                self._lost(w, f"ran past its timeout of {inv.timeout:g} s and its worker was killed", protocol.FAIL_TIMEOUT, "timeout")

    def _enforce_memory(self) -> None:
        limit = self.memory_limit_mb
        if not limit:
            return
        now = time.monotonic()
        if now < self._next_memory_check:
            return
        self._next_memory_check = now + MEMORY_POLL_INTERVAL
        for w in list(self._workers):
            if w.current is None:
                continue
            rss = resident_bytes(w.proc.pid)
            if rss is not None and rss > limit * 1024 * 1024:
                w.kill()
                self.killed_memory += 1
                self._lost(
                    w,
                    f"the worker process running this call was killed: it used {rss / 2**20:.0f} MiB, "
                    f"more than the memory limit of {limit} MB",
                    protocol.FAIL_WORKER_DIED,
                    "memory",
                )

    def _lost(self, w: _Worker, message: str | None, kind: str = protocol.FAIL_WORKER_DIED, outcome: str = "died") -> None:
        """A worker is gone (died or killed): record its invocation's calls (unless this pool
        writes no records), report the outcome, and replace it."""
        self._workers.remove(w)
        code = w.proc.wait()
        inv = w.current
        for waiting in reversed(list(w.sent)[1:]):  # never started: run them elsewhere
            self._queue.appendleft(waiting)
        if message is None:
            message = f"the worker process running this call {describe_exit(code)}"
            tail = w.log_tail()
            if tail:
                message += f"; the end of its output:\n{tail}"
        startup_log = w.log_tail() if not w.ready else ""
        w.close()
        if not w.ready:
            self._startup_failures += 1
            if self._startup_failures >= _STARTUP_FAILURES_ALLOWED:
                self._broken = (
                    f"local worker processes cannot start (the last one {describe_exit(code)}). "
                    "Check that dask-wren is installed in this Python environment "
                    f"({sys.executable}), e.g. `pip install dask-wren`; worker output:\n{startup_log}"
                )
                for pending in self._queue.drain() + ([inv] if inv else []):
                    self._failed(pending, "died", protocol.FAIL_WORKER_DIED, self._broken)
                self.notify()
                return
        if inv is not None:
            if inv.call_ids and inv.cancelled >= set(inv.call_ids):
                self._report(inv, "cancelled")  # killed by cancel(): no record, the futures are cancelled
                self.notify()
                return
            if kind == protocol.FAIL_TIMEOUT:
                message = f"the call {message}"
            self._failed(inv, outcome, kind, message)
            self.notify()


def shared_local_backend(workers: int | None, memory_mb: int) -> LocalBackend:
    """One warm pool per configuration for the whole process, like one deployed Lambda function.

    Workers keep the environment they started with, so a changed environment (new credentials,
    say) gets a new pool rather than workers that cannot see it.
    """
    size = workers or os.cpu_count() or 1

    def make() -> LocalBackend:
        backend = LocalBackend(size, memory_mb)
        backend.start()
        return backend

    local_key()  # exported on its first use: the environment below must already hold it, or the next call misses
    return shared_backend("local", (size, memory_mb), clean_environment(), make)
