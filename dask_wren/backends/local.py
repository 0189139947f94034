"""The embedded backend: a pool of warm worker processes, each a stand-in for a Lambda sandbox.

One dispatcher thread owns all state below; other threads only append to ``_inbox`` and wake it.

State (dispatcher thread only):
    queue    invocations accepted and not yet sent, in order
    workers  live worker processes; each is starting (not ``ready``), idle, or has ``sent``
             invocations: the first runs (since ``started``); at most one more waits behind it,
             sent ahead only while the queue is long and recent calls were short

Transitions:
    invoke        -> appended to queue; idle workers take from the head
    worker done   -> the next sent invocation (if any) starts; progress listeners are told; a
                     handler that raised (storage unreachable) gets failure records for its calls
    worker EOF    -> the process died: the running invocation's calls get ``worker_died``
                     records, the one waiting behind it goes back to the queue, a replacement starts
    deadline      -> the worker is killed: ``timeout`` records, the same as EOF otherwise
    cancel        -> a queued call is dropped; a waiting one is withdrawn; a running invocation
                     whose calls are all cancelled is killed (no record: the future is cancelled)

Workers are started with ``subprocess`` in an empty directory without the host's ``PYTHONPATH``
or working directory on ``sys.path``, so a function that works here also works on Lambda.  They
inherit the host's environment as it was when the pool started (credentials included).  Each
worker's output goes to a log file whose tail is quoted when the worker dies.
"""

from __future__ import annotations

import atexit
import itertools
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
from multiprocessing.connection import Connection, wait

from dask_wren.backends.base import Invocation, ProgressListeners, cancel_queued, write_failure_records
from lambda_worker import protocol

_STARTUP_FAILURES_ALLOWED = 3
_LOG_TAIL_BYTES = 2000
_AHEAD_MAX_CALL_TIME = 0.05  # send a call ahead only while calls take less than this


class _Worker:
    _ids = itertools.count()

    def __init__(self, log_dir: str, memory_mb: int, function_name: str):
        self.id = next(self._ids)
        parent, child = socket.socketpair()
        self.log_path = os.path.join(log_dir, f"worker-{self.id}.log")
        self.log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
        cmd = [sys.executable]
        if sys.version_info >= (3, 11):
            cmd.append("-P")  # do not put the working directory on sys.path
        cmd += ["-m", "lambda_worker.local_runtime", str(child.fileno()), str(memory_mb), function_name]
        self.proc = subprocess.Popen(
            cmd, cwd=log_dir, env=env, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
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
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - _LOG_TAIL_BYTES))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def kill(self) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self.conn.close()
        self.log.close()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


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


class LocalBackend(ProgressListeners):
    """A warm pool of ``workers`` processes running ``lambda_worker.handler.lambda_handler``."""

    def __init__(self, workers: int | None = None, memory_mb: int = 2048, function_name: str = "dask-wren-local"):
        super().__init__()
        self.n_workers = workers or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.function_name = function_name
        self._log_dir = tempfile.mkdtemp(prefix="dask-wren-workers-")
        self._lock = threading.Lock()
        self._inbox: deque[tuple] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._closed = False
        self._broken: str | None = None
        self._thread: threading.Thread | None = None
        # dispatcher-thread state
        self._queue: deque[Invocation] = deque()
        self._workers: list[_Worker] = []
        self._startup_failures = 0
        self._recent_call_time = 0.0  # seconds per call, smoothed: decides sending ahead

    # -- public API (any thread) -------------------------------------------------------------

    def start(self) -> None:
        """Start the worker processes now rather than at the first invoke."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this local backend has been shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dask-wren-local-dispatch", daemon=True)
                self._thread.start()

    def invoke(self, invocations: list[Invocation]) -> None:
        self.start()
        self._post(("invoke", invocations))

    def cancel(self, request_id: str, call_id: str) -> None:
        """Returns once the dispatcher has acted: a call waiting in a worker's pipe is withdrawn
        before the call ahead of it can finish and let it start."""
        acted = threading.Event()
        self._post(("cancel", request_id, call_id, acted))
        if self._thread is not None and self._thread is not threading.current_thread():
            acted.wait(timeout=5)

    def call_done(self, request_id: str, call_id: str) -> None:
        """Nothing to do: the pool knows when its workers finish."""

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for diagnostics and tests)."""
        return [w.proc.pid for w in list(self._workers)]

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._post(("shutdown",))
        if thread is not None:
            thread.join(timeout=10)

    # -- dispatcher thread ------------------------------------------------------------------

    def _post(self, message: tuple) -> None:
        self._inbox.append(message)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        try:
            while True:
                self._fill_pool()
                self._dispatch()
                timeout = self._next_deadline()
                ready = wait([self._wake_r] + [w.conn for w in self._workers], timeout)
                if self._wake_r in ready:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    if not self._drain_inbox():
                        return
                for w in list(self._workers):
                    if w.conn in ready:
                        self._read_worker(w)
                self._enforce_deadlines()
        finally:
            for w in self._workers:
                try:
                    w.conn.send(("exit",))
                except OSError:
                    pass
            for w in self._workers:
                try:
                    w.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.proc.wait()
                w.close()
            self._workers.clear()
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def _drain_inbox(self) -> bool:
        while self._inbox:
            message = self._inbox.popleft()
            kind = message[0]
            if kind == "shutdown":
                return False
            if kind == "invoke":
                if self._broken:
                    for inv in message[1]:
                        write_failure_records(inv, protocol.FAIL_WORKER_DIED, self._broken)
                    self.notify()
                else:
                    self._queue.extend(message[1])
            elif kind == "cancel":
                self._cancel(message[1], message[2])
                message[3].set()
        return True

    def _cancel(self, request_id: str, call_id: str) -> None:
        if cancel_queued(self._queue, request_id, call_id):
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
            self._workers.append(_Worker(self._log_dir, self.memory_mb, self.function_name))

    def _dispatch(self) -> None:
        ready = [w for w in self._workers if w.ready]
        for w in ready:  # idle workers first
            if not self._queue:
                return
            if not w.sent:
                w.started = time.monotonic()
                self._send_invocation(w, self._queue.popleft())
        # Send one more ahead only when there is a backlog of short calls: the worker then never
        # waits for the host, and a long call cannot hold back much behind it.
        if len(self._queue) > len(ready) and self._recent_call_time < _AHEAD_MAX_CALL_TIME:
            for w in ready:
                if len(w.sent) == 1 and self._queue:
                    self._send_invocation(w, self._queue.popleft())

    def _send_invocation(self, w: _Worker, inv: Invocation) -> None:
        w.sent.append(inv)
        self._send(w, ("invoke", inv.request_id, inv.event, inv.timeout))

    def _send(self, w: _Worker, message: tuple) -> None:
        try:
            w.conn.send(message)
        except OSError:
            pass  # the worker is dying; its EOF will be read and its calls recorded

    def _next_deadline(self) -> float | None:
        deadlines = [w.started + w.current.timeout for w in self._workers if w.current is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

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
                        error = message[2].get("handler_error")
                        if error:
                            write_failure_records(inv, protocol.FAIL_HANDLER, f"the worker's handler failed: {error}")
                    w.started = now
                    self.notify()
        except (EOFError, OSError):
            self._lost(w, None)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            inv = w.current
            if inv is not None and now >= w.started + inv.timeout:
                w.kill()
                self._lost(w, f"ran past its timeout of {inv.timeout:g} s and its worker was killed", protocol.FAIL_TIMEOUT)

    def _lost(self, w: _Worker, message: str | None, kind: str = protocol.FAIL_WORKER_DIED) -> None:
        """A worker is gone (died or killed): record its invocation's calls and replace it."""
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
                for pending in list(self._queue) + ([inv] if inv else []):
                    write_failure_records(pending, protocol.FAIL_WORKER_DIED, self._broken)
                self._queue.clear()
                self.notify()
                return
        if inv is not None:
            if kind == protocol.FAIL_TIMEOUT:
                message = f"the call {message}"
            write_failure_records(inv, kind, message)
            self.notify()


_shared: dict[tuple, LocalBackend] = {}
_shared_lock = threading.Lock()


def shared_local_backend(workers: int | None, memory_mb: int) -> LocalBackend:
    """One warm pool per configuration for the whole process, like one deployed Lambda function.

    Workers keep the environment they started with, so a changed environment (new credentials,
    say) gets a new pool rather than workers that cannot see it.
    """
    size = workers or os.cpu_count() or 1
    key = (size, memory_mb, hash(frozenset(os.environ.items())))
    with _shared_lock:
        backend = _shared.get(key)
        if backend is None or backend._closed:
            backend = _shared[key] = LocalBackend(size, memory_mb)
            backend.start()
        return backend


@atexit.register
def _shutdown_shared() -> None:
    for backend in list(_shared.values()):
        backend.shutdown()
