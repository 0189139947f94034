"""Invoker processes: the AWS backend's Lambda invoke requests, sent from child processes.

boto3 spends about 1.5 ms of CPU in Python per invoke, and the GIL runs one thread's Python at a
time, so one host process tops out near 600 invokes/s however many sender threads it has.  The
backend's sender threads therefore hand each request to a child process (``wren.aws.invoker-processes``
of them) and wait for its answer; the children run the boto3 client, a pool of threads each.

Wire format (pipes; little-endian ``struct`` headers, so a request costs the parent a few tens of µs):

    parent -> child (stdin)   request id (u64), payload length (u32), the event's JSON bytes
    child -> parent (stdout)  request id (u64), kind (u8), body length (u32), body

Kinds: ``READY`` (the client is built; request id 0), ``FATAL`` (the child could not start; body:
the reason, UTF-8), ``OK`` (body: the HTTP status as u16), ``CLIENT_ERROR`` (body: pickled
``(error_response, operation_name)``; the parent rebuilds botocore's ``ClientError``, whose dynamic
subclasses do not unpickle), ``ERROR`` (any other exception; body: pickled ``(module, type name,
message)``).

The child is this file, loaded by path (``_BOOTSTRAP``), not as ``dask_wren.backends.…``: the
package's ``__init__`` imports dask, which a child that only sends requests does not need (start-up
is about 0.4 s, nearly all of it importing boto3).  So at module level this file imports the
standard library only.  A child exits when its stdin closes (the pool closed, or the host died) or
when its parent process changes (the host died while another process held the pipe).

A child that dies does not hang anything: its reader thread sees EOF and every request it held is
sent again on another (or a restarted) child, up to ``_RESENDS`` times; an invoke sent twice is
harmless, as Lambda delivers at least once and result records are first-writer-wins.  A child that
cannot be restarted, or a reply reader that raises, breaks the pool: ``invoke`` then raises
``InvokerStartError`` with the cause, and the backend fails every call it holds (``BackendError``).
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import pickle
import struct
import subprocess
import threading
import time
import weakref
from typing import Any

_REQUEST = struct.Struct("<QI")
_REPLY = struct.Struct("<QBI")
_STATUS = struct.Struct("<H")
READY, FATAL, OK, CLIENT_ERROR, ERROR = range(5)
_DIED = -1  # parent side only: the child died before answering
_RESENDS = 2  # times one request is sent again after its child died
_START_TIMEOUT = 60.0  # seconds a child may take to build its client
_CLOSE_WAIT = 5.0

logger = logging.getLogger("dask_wren")

# Loads this file by path under its own name and runs main(); argv[1]: this file, argv[2]: the
# child's configuration as JSON.
_BOOTSTRAP = (
    "import importlib.util as u, sys\n"
    "s = u.spec_from_file_location('dask_wren_invoker', sys.argv[1])\n"
    "m = u.module_from_spec(s)\n"
    "s.loader.exec_module(m)\n"
    "m.main(sys.argv[2])\n"
)


def client_config(*, retry_mode: str, max_attempts: int, pool_connections: int) -> Any:
    """The botocore ``Config`` of every Lambda client the backend uses, in process or in a child.

    ``parameter_validation=False`` skips botocore's check of the request's parameters (about 5% of an
    invoke's CPU): they are always a function name, ``"Event"`` and our own JSON bytes, and the
    function name was already checked (preflight's GetFunctionConfiguration goes through the same
    serializer to the same service).  ``request_checksum_calculation="when_required"``: Invoke
    needs no request checksum, so none is computed.
    """
    import botocore.config

    return botocore.config.Config(
        retries={"mode": retry_mode, "max_attempts": max_attempts},
        max_pool_connections=pool_connections,
        connect_timeout=10,
        read_timeout=60,
        parameter_validation=False,
        request_checksum_calculation="when_required",
    )


# -- the child --------------------------------------------------------------------------------


def main(config_json: str) -> None:
    """Run as an invoker child: build the client, then invoke what stdin brings until it closes."""
    config = json.loads(config_json)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr, never into the reply stream
    write_lock = threading.Lock()

    def reply(request_id: int, kind: int, body: bytes) -> None:
        data = _REPLY.pack(request_id, kind, len(body)) + body
        with write_lock:
            view = memoryview(data)
            while view:
                view = view[os.write(out_fd, view) :]

    try:
        import queue

        import boto3
        import botocore.exceptions

        client = boto3.session.Session().client(
            "lambda",
            region_name=config["region"],
            endpoint_url=config["endpoint_url"],
            config=client_config(
                retry_mode=config["retry_mode"], max_attempts=config["max_attempts"], pool_connections=config["threads"]
            ),
        )
    except BaseException as e:  # noqa: BLE001  (anything here means: this child cannot serve)
        reply(0, FATAL, f"{type(e).__name__}: {e}".encode())
        os._exit(1)

    function_name = config["function_name"]
    work: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()

    def sender() -> None:
        while True:
            request_id, payload = work.get()
            try:
                response = client.invoke(FunctionName=function_name, InvocationType="Event", Payload=payload)
                response["Payload"].read()  # returns the connection to the pool
                kind, body = OK, _STATUS.pack(response.get("StatusCode") or 0)
            except botocore.exceptions.ClientError as e:
                kind, body = CLIENT_ERROR, _pickle_client_error(e.response, e.operation_name)
            except Exception as e:
                kind, body = ERROR, pickle.dumps((type(e).__module__, type(e).__qualname__, str(e)))
            reply(request_id, kind, body)

    for i in range(config["threads"]):
        threading.Thread(target=sender, name=f"invoker-{i}", daemon=True).start()
    parent = os.getppid()

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphaned, name="invoker-parent-watch", daemon=True).start()
    reply(0, READY, b"")
    stdin = os.fdopen(0, "rb", buffering=1 << 16)
    while True:
        header = stdin.read(_REQUEST.size)
        if len(header) < _REQUEST.size:
            os._exit(0)  # EOF: the pool closed or the host died; requests still out no longer matter
        request_id, size = _REQUEST.unpack(header)
        payload = stdin.read(size)
        if len(payload) < size:
            os._exit(0)
        work.put((request_id, payload))


def _pickle_client_error(response: dict[str, Any], operation_name: str) -> bytes:
    try:
        return pickle.dumps((response, operation_name))
    except Exception:  # an unpicklable value in the response: keep what the backend reads
        metadata = response.get("ResponseMetadata", {})
        slim = {
            "Error": {k: str(v) for k, v in response.get("Error", {}).items()},
            "ResponseMetadata": {
                "HTTPStatusCode": metadata.get("HTTPStatusCode"),
                "HTTPHeaders": {str(k): str(v) for k, v in dict(metadata.get("HTTPHeaders", {})).items()},
            },
        }
        return pickle.dumps((slim, operation_name))


# -- the parent -------------------------------------------------------------------------------


class InvokerStartError(Exception):
    """An invoker process could not start (or restart)."""


class InvokerFailed(Exception):
    """An invoke failed in the child with an exception other than botocore's ``ClientError``
    (a connection error, a timeout); its type name and message come across."""

    def __init__(self, type_name: str, message: str):
        super().__init__(message or type_name)
        self.type_name = type_name


class _Slot:
    """Where one request's reply lands; the sender blocks on ``lock`` (pipe reads release the GIL)."""

    __slots__ = ("lock", "kind", "body")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.kind = _DIED
        self.body = b""

    def set(self, kind: int, body: bytes) -> None:
        self.kind, self.body = kind, body
        self.lock.release()


class _Child:
    def __init__(self, pool: InvokerPool):
        self.pool = pool
        self.lock = threading.Lock()
        self.pending: dict[int, _Slot] = {}
        self.alive = True
        self.ready = threading.Event()
        self.failure: str | None = None  # why it could not start
        # Imported here, in the parent: at module level it would import the package into every child.
        from dask_wren.subprocesses import host_path_environment, python_command

        self.proc = subprocess.Popen(
            python_command("-c", _BOOTSTRAP, os.path.abspath(__file__), pool.config_json),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=host_path_environment(), bufsize=1 << 16,
        )
        self.reader = threading.Thread(target=self._read, name=f"dask-wren-invoker-{self.proc.pid}", daemon=True)
        self.reader.start()

    def send(self, request_id: int, payload: bytes, slot: _Slot) -> bool:
        """Queue a request on this child; False if it is dead (the caller picks another)."""
        with self.lock:
            if not self.alive:
                return False
            self.pending[request_id] = slot
            try:
                self.proc.stdin.write(_REQUEST.pack(request_id, len(payload)) + payload)
                self.proc.stdin.flush()
            except (OSError, ValueError):  # the child died (or the pool closed its stdin)
                del self.pending[request_id]
                return False
            return True

    def _read(self) -> None:
        stream = self.proc.stdout
        try:
            while True:
                header = stream.read(_REPLY.size)
                if len(header) < _REPLY.size:
                    break
                request_id, kind, size = _REPLY.unpack(header)
                body = stream.read(size) if size else b""
                if len(body) < size:
                    break
                if kind == READY:
                    self.ready.set()
                    continue
                if kind == FATAL:
                    self.failure = body.decode(errors="replace")
                    break
                with self.lock:
                    slot = self.pending.pop(request_id, None)
                if slot is not None:
                    slot.set(kind, body)
        except (OSError, ValueError) as e:  # the pipe broke or was closed: the child is gone either way
            logger.debug("dask-wren invoker %d: its reply pipe failed: %s", self.proc.pid, e)
        except Exception as e:  # a bug: no reply can be read any more, so the pool is broken
            self.pool._broke(f"an invoker process's reply reader failed ({type(e).__name__}: {e})")
            self.proc.kill()
        self._died()

    def _died(self) -> None:
        with self.lock:
            self.alive = False
            orphans, self.pending = self.pending, {}
        code = self.proc.wait()
        if not self.ready.is_set() and self.failure is None:
            self.failure = f"it exited with status {code} before it was ready (its stderr says why)"
        self.ready.set()  # wake whoever waits for start-up
        for slot in orphans.values():
            slot.set(_DIED, b"")
        self.pool._child_died(self)

    def close(self) -> None:
        with self.lock:
            self.alive = False
        try:
            self.proc.stdin.close()
        except OSError:
            pass  # a pipe to a dead child: closing it was all that was asked


class InvokerPool:
    """``processes`` invoker children of ``threads`` sender threads each, sharing one configuration.

    ``invoke(payload)`` blocks until Lambda answered and returns the HTTP status; it raises
    botocore's ``ClientError`` (rebuilt by ``exceptions.from_code`` when given, so throttles keep
    their modeled class), ``InvokerFailed`` or ``InvokerStartError`` as the in-process client would
    raise its errors.
    """

    def __init__(self, config: dict[str, Any], processes: int, exceptions: Any = None):
        self.config_json = json.dumps(config)
        self.processes = processes
        self.exceptions = exceptions
        self.restarts = 0
        self._lock = threading.Lock()
        self._children: list[_Child | None] = [None] * processes
        self._ids = itertools.count(1)
        self._closed = False
        self._failure: str | None = None

    def start(self) -> None:
        """Start every child and wait until each has built its client; raise if one could not."""
        _live.add(self)
        with self._lock:
            children = [self._spawn(i) for i in range(self.processes)]
        deadline = time.monotonic() + _START_TIMEOUT
        for child in children:
            if not child.ready.wait(max(0.0, deadline - time.monotonic())):
                self.close()
                raise InvokerStartError(f"an invoker process did not start within {_START_TIMEOUT:g} s")
            if child.failure is not None:
                self.close()
                raise InvokerStartError(f"an invoker process could not start: {child.failure}")

    def pids(self) -> list[int]:
        """The children's process ids (alive or not yet reaped)."""
        with self._lock:
            return [c.proc.pid for c in self._children if c is not None]

    @property
    def broken(self) -> bool:
        return self._closed or self._failure is not None

    def invoke(self, payload: bytes) -> int:
        for _ in range(_RESENDS + 1):
            slot = _Slot()
            if not self._pick().send(next(self._ids), payload, slot):
                continue
            slot.lock.acquire()
            if slot.kind == OK:
                return _STATUS.unpack(slot.body)[0]
            if slot.kind == CLIENT_ERROR:
                raise self._client_error(*pickle.loads(slot.body))
            if slot.kind == ERROR:
                _, type_name, message = pickle.loads(slot.body)
                raise InvokerFailed(type_name, message)
        if self._failure is not None:
            raise InvokerStartError(self._failure)
        raise InvokerFailed("InvokerDied", f"the invoker process sending this request died {_RESENDS + 1} times")

    def close(self) -> None:
        """Close the children's stdin (they exit at once) and reap them."""
        with self._lock:
            self._closed = True
            children = [c for c in self._children if c is not None]
        for child in children:
            child.close()
        for child in children:
            try:
                child.proc.wait(timeout=_CLOSE_WAIT)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            child.reader.join(timeout=_CLOSE_WAIT)

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Child:
        child = _Child(self)
        self._children[index] = child
        return child

    def _pick(self) -> _Child:
        """The live child with the fewest requests out; a dead one is restarted first."""
        with self._lock:
            if self._closed:
                raise InvokerStartError("the invoker processes were shut down")
            if self._failure is not None:
                raise InvokerStartError(self._failure)
            for i, child in enumerate(self._children):
                if child is None or not child.alive:
                    if child is not None:
                        self.restarts += 1
                    self._spawn(i)
            return min(self._children, key=lambda c: len(c.pending))

    def _child_died(self, child: _Child) -> None:
        if child.failure is not None:
            self._broke(f"an invoker process could not restart: {child.failure}")

    def _broke(self, failure: str) -> None:
        """No request can be sent any more: ``invoke`` raises ``InvokerStartError(failure)``."""
        with self._lock:
            if not self._closed and self._failure is None:
                self._failure = failure

    def _client_error(self, response: dict[str, Any], operation_name: str) -> Exception:
        code = response.get("Error", {}).get("Code", "")
        if self.exceptions is not None:
            return self.exceptions.from_code(code)(response, operation_name)
        import botocore.exceptions

        return botocore.exceptions.ClientError(response, operation_name)


# -- at exit --------------------------------------------------------------------------------

_live: weakref.WeakSet[InvokerPool] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Close the pools still open (backends are shared for the process's life and rarely shut
    down), so the children are reaped rather than left to notice the closed pipe on their own."""
    for pool in list(_live):
        pool.close()
