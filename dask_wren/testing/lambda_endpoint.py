"""A local AWS Lambda endpoint: Lambda's Invoke REST API in front of real dask-wren workers.

``LambdaEndpoint`` is an HTTP server on 127.0.0.1 that speaks enough of the Lambda control and
data plane for the *unmodified* boto3 Lambda client::

    endpoint = LambdaEndpoint(workers=2).start()
    endpoint.add_function("dask-wren", timeout=300)
    client = boto3.client("lambda", endpoint_url=endpoint.url, region_name="us-east-1")
    client.invoke(FunctionName="dask-wren", InvocationType="Event", Payload=json.dumps(event))
    endpoint.stop()

Routes (all under ``/2015-03-31/functions/{name}``, where ``name`` may be a name, an ARN, or
carry a ``:qualifier``):

``POST .../invocations`` (Invoke)
    ``X-Amz-Invocation-Type: Event``: 202 and an empty body; the event is queued and runs on the
    function's pool of warm worker processes (a ``dask_wren.backends.local.LocalBackend`` running
    the real ``lambda_worker.handler.lambda_handler``).  ``RequestResponse`` (the default): the
    handler runs in a fresh worker process and its JSON return value comes back with 200 and
    ``X-Amz-Executed-Version: $LATEST``; a handler that raised, crashed or timed out gives 200
    with ``X-Amz-Function-Error: Unhandled`` and Lambda's error document, as Lambda does.
    ``DryRun``: 204.  ``X-Amz-Log-Type: Tail`` returns the end of the worker's output in
    ``LogResult`` (sync only).
``GET .../configuration`` (GetFunctionConfiguration), ``GET ...`` (GetFunction)
    The function's configuration: ``Runtime`` is this host's ``python3.X``; ``Environment``
    carries ``DASK_WREN_PYTHON``, ``DASK_WREN_CLOUDPICKLE``, ``DASK_WREN_DASK`` and
    ``DASK_WREN_PROTOCOL`` (this host's versions) unless ``add_function`` overrides them.

Errors are shaped so botocore parses them as Lambda's own: ``x-amzn-ErrorType`` carries the code
(botocore's rest-json parser takes the code from that header), so an unknown function raises
``client.exceptions.ResourceNotFoundException`` and a throttle raises
``TooManyRequestsException``.  That code is in botocore's list of throttling codes, so the
``standard`` and ``adaptive`` retry modes retry a throttled invoke with throttling backoff (and
``adaptive`` slows its send rate).  Payloads above Lambda's limits (256 KiB asynchronous,
6 MiB synchronous) are refused with 413 ``RequestTooLargeException``; AWS has since raised the
asynchronous limit, but a host that fits 256 KiB fits both.

Injected faults: ``endpoint.faults`` is a ``Faults`` object, changeable while the endpoint runs
(``endpoint.faults.drop_rate = 0.1``); ``faults.counters`` counts what happened.  See ``Faults``.

Fidelity, where the stand-in differs from Lambda:

- Concurrency is the pool size (``workers``): invocations beyond it wait in a queue instead of
  scaling out (Lambda would scale out or throttle).
- Real asynchronous Lambda retries an invocation whose handler failed or whose runtime crashed
  up to 2 more times (after about 1 and 2 minutes), then drops it (or sends it to a DLQ /
  on-failure destination); nothing is written to the job's storage.  The stand-in's worker pool
  does what ``LocalBackend`` does instead: a worker that dies or runs past the function's timeout
  is replaced and *failure records* (``worker_died`` / ``timeout``) are written for the calls of
  its invocation, and nothing is retried.  An invocation whose calls are stored under
  ``calls_key`` has no call ids here, so a crash leaves no records for it (as on Lambda).
- ``Faults.crash_next`` kills the worker process right *after* the user's function returned and
  before its first result record is written (the function's side effects happened, its result
  is lost); the endpoint then writes ``worker_died`` failure records, as the pool would.
- A synchronous invoke whose worker crashes or times out answers with Lambda's error document
  (``X-Amz-Function-Error: Unhandled``) and, as on Lambda, writes no records.
- Duplicated deliveries carry the same request id, as Lambda's at-least-once duplicates do.
- The function's ``Environment`` is reported by GetFunctionConfiguration but not applied to the
  workers: they inherit this process's environment as it was when their pool started (which is
  how they get S3 credentials).
- No authentication: any SigV4 signature is accepted.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dask_wren.backends.base import Invocation, write_failure_records
from dask_wren.backends.local import LocalBackend, describe_exit
from lambda_worker import protocol

logger = logging.getLogger(__name__)

__all__ = ["FaultCounters", "Faults", "LambdaEndpoint", "default_environment"]

_API = "/2015-03-31/functions"
HANDLER = "lambda_worker.handler.lambda_handler"
MAX_ASYNC_PAYLOAD = 256 * 1024
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024
_LOG_TAIL_BYTES = 4096


def default_environment() -> dict[str, str]:
    """The version variables a deployed dask-wren function carries, with this host's values."""
    from dask_wren.backends.aws import host_versions

    return dict(host_versions())


# -- faults --------------------------------------------------------------------------------------


@dataclass
class FaultCounters:
    """What the endpoint saw and did.  ``run`` counts executions started (a duplicate counts twice)."""

    invokes: int = 0  # invoke requests received, throttled ones included
    throttled: int = 0
    dropped: int = 0
    duplicated: int = 0
    crashed: int = 0
    delayed: int = 0
    run: int = 0


@dataclass(frozen=True)
class _Plan:
    throttle: bool = False
    drop: bool = False
    copies: int = 1
    crash: bool = False
    delay: float = 0.0
    latency: float = 0.0


_FAULT_FIELDS = ("throttle_first", "throttle_rate", "duplicate_rate", "drop_rate", "start_delay", "crash_next", "invoke_latency")


@dataclass
class Faults:
    """Faults the endpoint injects into invoke requests.  Thread-safe; change them at any time.

    ``throttle_first``: the next N invoke requests get 429 ``TooManyRequestsException`` (counts
    down as it throttles).  ``throttle_rate``: probability that an invoke request is throttled.
    ``drop_rate`` (asynchronous only): probability that an event is accepted with 202 and never
    run.  ``duplicate_rate`` (asynchronous only): probability that an event runs twice.
    ``start_delay``: seconds between accepting an invocation and starting it (a slow cold start).
    ``crash_next``: the next N invocations crash their worker process (counts down; see the
    module docstring).  ``invoke_latency``: seconds each invoke request takes to answer (network
    latency).  ``seed`` seeds the random choices, so a run is repeatable.

    ``counters`` (a ``FaultCounters``) is updated under the same lock; ``snapshot()`` copies it.
    """

    throttle_first: int = 0
    throttle_rate: float = 0.0
    duplicate_rate: float = 0.0
    drop_rate: float = 0.0
    start_delay: float = 0.0
    crash_next: int = 0
    invoke_latency: float = 0.0
    seed: int | None = 0
    counters: FaultCounters = field(default_factory=FaultCounters)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __setattr__(self, name: str, value: Any) -> None:
        lock = self.__dict__.get("_lock")
        if lock is None:
            object.__setattr__(self, name, value)
            return
        with lock:
            object.__setattr__(self, name, value)
            if name == "seed":
                self._rng.seed(value)

    def set(self, **changes: Any) -> None:
        """Change several faults at once (atomically)."""
        unknown = set(changes) - set(_FAULT_FIELDS) - {"seed"}
        if unknown:
            raise TypeError(f"unknown fault(s) {sorted(unknown)}; known: {list(_FAULT_FIELDS)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def clear(self) -> None:
        """Inject nothing from now on (counters are kept)."""
        defaults = Faults()
        self.set(**{name: getattr(defaults, name) for name in _FAULT_FIELDS})

    def reset(self) -> None:
        """Clear all faults, zero the counters and restart the random choices from ``seed``."""
        with self._lock:
            self.clear()
            self.counters = FaultCounters()
            self._rng.seed(self.seed)

    def snapshot(self) -> FaultCounters:
        with self._lock:
            return replace(self.counters)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + n)

    def _plan(self, asynchronous: bool) -> _Plan:
        """Decide the fate of one invoke request."""
        with self._lock:
            c = self.counters
            c.invokes += 1
            latency = max(0.0, float(self.invoke_latency))
            throttle = False
            if self.throttle_first > 0:
                self.throttle_first -= 1
                throttle = True
            elif self.throttle_rate > 0 and self._rng.random() < self.throttle_rate:
                throttle = True
            if throttle:
                c.throttled += 1
                return _Plan(throttle=True, latency=latency)
            if asynchronous and self.drop_rate > 0 and self._rng.random() < self.drop_rate:
                c.dropped += 1
                return _Plan(drop=True, latency=latency)
            copies = 1
            if asynchronous and self.duplicate_rate > 0 and self._rng.random() < self.duplicate_rate:
                copies = 2
                c.duplicated += 1
            crash = False
            if self.crash_next > 0:
                self.crash_next -= 1
                crash = True
                c.crashed += 1
            delay = max(0.0, float(self.start_delay))
            if delay:
                c.delayed += 1
            return _Plan(copies=copies, crash=crash, delay=delay, latency=latency)


# -- helpers --------------------------------------------------------------------------------------


class _Delayed:
    """Runs callables at a given monotonic time, on one thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lambda-endpoint-delays", daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Any) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), fn))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                logger.exception("lambda endpoint: a delayed invocation failed to start")


# The one-shot worker: runs the real handler once in a clean interpreter (installed packages only),
# for synchronous invokes and injected crashes.  argv: result path, request id, timeout, memory,
# function name, crash flag; the event comes on stdin.
_ONE_SHOT = r"""
import json, os, signal, sys, traceback
result_path, request_id, timeout, memory_mb, name, crash = sys.argv[1:7]
event = json.loads(sys.stdin.read() or "{}")
from lambda_worker import handler
from lambda_worker.local_runtime import LocalContext
if crash == "1" and not hasattr(handler, "storage_from_spec"):
    os.kill(os.getpid(), signal.SIGKILL)  # the hook below is gone: die before running instead
if crash == "1":
    real = handler.storage_from_spec
    def _die(*a, **k):
        sys.stdout.flush(); sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    class _DieOnPut:  # reads pass through; the first write (put, put_if_absent, ...) kills the process
        def __init__(self, store):
            self._store = store
        def __getattr__(self, attr):
            return _die if attr.startswith("put") else getattr(self._store, attr)
    handler.storage_from_spec = lambda spec: _DieOnPut(real(spec))
context = LocalContext(request_id, float(timeout), int(memory_mb), name)
try:
    out = {"ok": True, "result": handler.lambda_handler(event, context)}
except Exception as e:
    tb = traceback.extract_tb(e.__traceback__)
    out = {"ok": False, "error": {"errorMessage": str(e), "errorType": type(e).__name__,
           "requestId": request_id, "stackTrace": traceback.format_list(tb)}}
with open(result_path + ".tmp", "w") as f:
    json.dump(out, f, default=str)
os.replace(result_path + ".tmp", result_path)
"""


@dataclass
class _Function:
    name: str
    timeout: float
    memory_mb: int
    environment: dict[str, str]
    handler: str
    pool: LocalBackend
    created: float = field(default_factory=time.time)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    endpoint: LambdaEndpoint


class _Headers(dict):
    """Request headers by lower-cased name; ``get`` ignores case, as ``email.message.Message`` does."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


_MAX_HEADER_LINE = 65536
_MAX_HEADERS = 100
_date_cache: tuple[int, str] = (0, "")


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def parse_request(self) -> bool:
        """The request line and headers, without the ``email`` package: the stdlib's header parser
        was about half of this server's CPU per invoke, and benchmarks share the host's cores with it.
        Same outcomes as the stdlib's for what clients send here: 400 for a malformed request line or
        header, 431 for too many or too long headers, keep-alive rules of HTTP/1.0 and 1.1, and
        ``Expect: 100-continue``."""
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/") or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        self.command, self.path, self.request_version = words
        headers = _Headers()
        for _ in range(_MAX_HEADERS + 1):
            line = self.rfile.readline(_MAX_HEADER_LINE + 1)
            if len(line) > _MAX_HEADER_LINE:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if not colon or not name.strip():
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad header line ({line[:100]!r})")
                return False
            headers[name.strip().lower()] = value.strip()
        else:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
            return False
        self.headers = headers  # type: ignore[assignment]  (only .get is used)
        connection = headers.get("Connection", "").lower()
        if self.request_version == "HTTP/1.1":
            self.close_connection = connection == "close"
        else:
            self.close_connection = connection != "keep-alive"
        if headers.get("Expect", "").lower() == "100-continue" and self.request_version == "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, formatted once per second."""
        global _date_cache
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        if _date_cache[0] != now:
            _date_cache = (now, super().date_time_string(now))
        return _date_cache[1]

    def do_GET(self) -> None:
        self.server.endpoint._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.endpoint._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.endpoint._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.endpoint._handle(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("lambda endpoint: " + format, *args)


class _Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error(status: int, code: str, message: str, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> _Reply:
    # Lambda's error documents use "Type" and "message"/"Message" (botocore reads either).
    body = {"Type": "User", "message": message, "Message": message, **(extra or {})}
    return _Reply(status, body, {"x-amzn-ErrorType": code, **(headers or {})})


# -- the endpoint ---------------------------------------------------------------------------------


class LambdaEndpoint:
    """Lambda's Invoke API on 127.0.0.1, running the real handler in local worker processes.

    ``workers``: worker processes per function.  ``faults``: a ``Faults`` (default: none).
    ``port=0`` picks a free port; ``url`` is the endpoint URL for boto3 once started.
    """

    def __init__(self, workers: int = 2, faults: Faults | None = None, *, port: int = 0, region: str = "us-east-1", account: str = "000000000000"):
        self.workers = workers
        self.faults = faults if faults is not None else Faults()
        self.region = region
        self.account = account
        self._port = port
        self._functions: dict[str, _Function] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._delayed: _Delayed | None = None
        self._procs: set[subprocess.Popen] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._workdir = tempfile.mkdtemp(prefix="dask-wren-lambda-endpoint-")

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LambdaEndpoint:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), _RequestHandler)
        server.endpoint = self
        self._server = server
        self._delayed = _Delayed()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="lambda-endpoint", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the endpoint is not started: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            functions = list(self._functions.values())
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._delayed is not None:
            self._delayed.close()
        for fn in functions:
            fn.pool.shutdown()
        for proc in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for thread in list(self._threads):
            thread.join(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)

    close = stop

    def __enter__(self) -> LambdaEndpoint:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- functions -------------------------------------------------------------------------------

    def add_function(
        self,
        name: str,
        *,
        timeout: float = 300,
        memory_mb: int = 2048,
        environment: dict[str, str] | None = None,
        handler: str = HANDLER,
    ) -> None:
        """Serve function ``name``; its worker pool starts now, with this process's environment."""
        env = default_environment()
        env.update({k: str(v) for k, v in (environment or {}).items()})
        with self._lock:
            if self._closed:
                raise RuntimeError("this endpoint has been stopped")
            old = self._functions.get(name)
            pool = LocalBackend(workers=self.workers, memory_mb=memory_mb, function_name=name)
            pool.start()
            self._functions[name] = _Function(name, float(timeout), int(memory_mb), env, handler, pool)
        if old is not None:
            old.pool.shutdown()

    def remove_function(self, name: str) -> None:
        with self._lock:
            fn = self._functions.pop(name, None)
        if fn is not None:
            fn.pool.shutdown()

    def function_names(self) -> list[str]:
        with self._lock:
            return list(self._functions)

    def worker_pids(self, name: str) -> list[int]:
        return self._function(name).pool.worker_pids()

    def _function(self, name: str) -> _Function:
        with self._lock:
            fn = self._functions.get(name)
        if fn is None:
            raise _error(404, "ResourceNotFoundException", f"Function not found: {self._arn(name)}")
        return fn

    def _arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"

    def _configuration(self, fn: _Function) -> dict[str, Any]:
        return {
            "FunctionName": fn.name,
            "FunctionArn": self._arn(fn.name),
            "Runtime": f"python{sys.version_info[0]}.{sys.version_info[1]}",
            "Role": f"arn:aws:iam::{self.account}:role/dask-wren",
            "Handler": fn.handler,
            "CodeSize": 0,
            "Description": "dask-wren local stand-in",
            "Timeout": int(fn.timeout) if float(fn.timeout).is_integer() else fn.timeout,
            "MemorySize": fn.memory_mb,
            "LastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(fn.created)),
            "CodeSha256": "",
            "Version": "$LATEST",
            "Environment": {"Variables": dict(fn.environment)},
            "State": "Active",
            "LastUpdateStatus": "Successful",
            "PackageType": "Zip",
            "Architectures": ["arm64" if os.uname().machine in ("arm64", "aarch64") else "x86_64"],
        }

    # -- HTTP ------------------------------------------------------------------------------------

    def _handle(self, req: _RequestHandler, method: str) -> None:
        request_id = str(uuid.uuid4())
        status, body, headers = 500, None, {}
        try:
            length = int(req.headers.get("Content-Length") or 0)
            raw = req.rfile.read(length) if length else b""
            parts = urlsplit(req.path)
            path = parts.path.rstrip("/")
            if not path.startswith(_API + "/"):
                raise _error(404, "UnknownOperationException", f"unknown operation {method} {parts.path}")
            rest = path[len(_API) + 1 :].split("/")
            name, qualifier = self._parse_name(unquote(rest[0]))
            qualifier = qualifier or (parse_qs(parts.query).get("Qualifier") or [None])[0]
            if qualifier not in (None, "$LATEST"):
                raise _error(404, "ResourceNotFoundException", f"Function not found: {self._arn(name)}:{qualifier}")
            tail = rest[1:]
            if method == "POST" and tail == ["invocations"]:
                status, body, headers = self._invoke(req, self._function(name), raw, request_id)
            elif method == "GET" and tail == ["configuration"]:
                status, body = 200, self._configuration(self._function(name))
            elif method == "GET" and tail == []:
                config = self._configuration(self._function(name))
                status, body = 200, {"Configuration": config, "Code": {"RepositoryType": "S3", "Location": ""}}
            else:
                raise _error(404, "UnknownOperationException", f"unknown operation {method} {parts.path}")
        except _Reply as r:
            status, body, headers = r.status, r.body, r.headers
        except Exception as e:  # a bug here must still answer, or the client hangs
            logger.exception("lambda endpoint: request failed")
            r = _error(500, "ServiceException", f"stand-in error: {type(e).__name__}: {e}")
            status, body, headers = r.status, r.body, r.headers
        self._respond(req, status, body, {"x-amzn-RequestId": request_id, **headers})

    @staticmethod
    def _parse_name(raw: str) -> tuple[str, str | None]:
        """``name``, ``name:qualifier``, or an ARN ``arn:aws:lambda:region:acct:function:name[:q]``."""
        if raw.startswith("arn:"):
            bits = raw.split(":")
            name = bits[6] if len(bits) > 6 else ""
            return name, bits[7] if len(bits) > 7 else None
        if ":" in raw:
            name, qualifier = raw.split(":", 1)
            return name, qualifier
        return raw, None

    @staticmethod
    def _respond(req: _RequestHandler, status: int, body: Any, headers: dict[str, str]) -> None:
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            for k, v in headers.items():
                req.send_header(k, v)
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            if data:
                req.wfile.write(data)
        except OSError:  # the client went away
            pass

    # -- invoke ----------------------------------------------------------------------------------

    def _invoke(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        kind = req.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        if kind not in ("Event", "RequestResponse", "DryRun"):
            raise _error(400, "InvalidParameterValueException", f"invalid InvocationType {kind!r}")
        if kind == "DryRun":
            return 204, None, {}
        limit = MAX_ASYNC_PAYLOAD if kind == "Event" else MAX_SYNC_PAYLOAD
        if len(raw) > limit:
            raise _error(413, "RequestTooLargeException", f"Request must be smaller than {limit} bytes for the {'InvokeAsync' if kind == 'Event' else 'Invoke'} operation")
        try:
            event = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise _error(400, "InvalidRequestContentException", f"Could not parse request body into json: {e}") from None
        plan = self.faults._plan(asynchronous=kind == "Event")
        if plan.latency:
            time.sleep(plan.latency)
        if plan.throttle:
            raise _error(
                429, "TooManyRequestsException", "Rate Exceeded.",
                {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}, {"Retry-After": "1"},
            )
        if kind == "Event":
            if not plan.drop:
                for copy in range(plan.copies):
                    self._schedule(plan.delay, lambda crash=plan.crash and copy == 0: self._start_async(fn, event, request_id, crash))
            return 202, None, {}
        if plan.delay:
            time.sleep(plan.delay)
        self.faults._count("run")
        outcome, payload, log_tail = self._run_one_shot(fn, event, request_id, crash=plan.crash)
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if outcome != "ok":
            headers["X-Amz-Function-Error"] = "Unhandled"
        if (req.headers.get("X-Amz-Log-Type") or "").lower() == "tail":
            headers["X-Amz-Log-Result"] = base64.b64encode(log_tail.encode()[-_LOG_TAIL_BYTES:]).decode()
        return 200, json.dumps(payload).encode(), headers

    def _schedule(self, delay: float, start: Any) -> None:
        if delay > 0 and self._delayed is not None:
            self._delayed.call_at(time.monotonic() + delay, start)
        else:
            start()

    def _start_async(self, fn: _Function, event: Any, request_id: str, crash: bool) -> None:
        if self._closed:
            return
        self.faults._count("run")
        wren_event = isinstance(event, dict) and isinstance(event.get("storage"), dict) and "job_id" in event and "prefix" in event
        if crash or not wren_event:
            # Not for the pool: a crash is injected in a one-shot process, and an event that is not
            # a dask-wren event would fail the handler in a way the pool cannot record.
            thread = threading.Thread(target=self._async_one_shot, args=(fn, event, request_id, crash), daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()
            return
        self._healthy_pool(fn).invoke([self._invocation(fn, event, request_id)])

    @staticmethod
    def _invocation(fn: _Function, event: dict[str, Any], request_id: str) -> Invocation:
        calls = event.get("calls")
        call_ids = [c["id"] for c in calls] if isinstance(calls, list) else []
        return Invocation(request_id=request_id, event=event, call_ids=call_ids, timeout=fn.timeout)

    def _healthy_pool(self, fn: _Function) -> LocalBackend:
        """The function's pool, replaced if its dispatcher thread has died.

        LocalBackend's dispatcher thread dies when a worker's handler fails because storage is
        unreachable and the backend's own failure record cannot be written either; the pool then
        accepts invocations and never runs them.  Lambda would go on serving, so replace it.
        """
        thread = getattr(fn.pool, "_thread", None)
        if thread is None or thread.is_alive() or getattr(fn.pool, "_closed", False):
            return fn.pool
        with self._lock:
            if thread is getattr(fn.pool, "_thread", None) and not self._closed:
                logger.warning("lambda endpoint: the worker pool of %s stopped; starting a new one", fn.name)
                old, fn.pool = fn.pool, LocalBackend(workers=self.workers, memory_mb=fn.memory_mb, function_name=fn.name)
                fn.pool.start()
                threading.Thread(target=old.shutdown, daemon=True).start()
        return fn.pool

    def _async_one_shot(self, fn: _Function, event: Any, request_id: str, crash: bool) -> None:
        try:
            outcome, payload, log_tail = self._run_one_shot(fn, event, request_id, crash=crash)
            if self._closed:  # killed by stop(): nothing to record
                return
            if outcome in ("died", "timeout") and isinstance(event, dict) and "storage" in event:
                message = payload["errorMessage"]
                if outcome == "died":
                    kind = protocol.FAIL_WORKER_DIED
                    if log_tail:
                        message += f"; the end of its output:\n{log_tail[-2000:]}"
                else:
                    kind = protocol.FAIL_TIMEOUT
                write_failure_records(self._invocation(fn, event, request_id), kind, message)
            elif outcome != "ok":
                logger.warning("lambda endpoint: %s invocation %s failed: %s", fn.name, request_id, payload)
        except Exception:
            logger.exception("lambda endpoint: invocation %s could not be recorded", request_id)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _run_one_shot(self, fn: _Function, event: Any, request_id: str, crash: bool) -> tuple[str, Any, str]:
        """Run the handler once in a fresh worker process.

        Returns ``(outcome, payload, log_tail)``; outcome is ``ok`` (payload: the handler's return
        value), ``error`` (it raised), ``died`` or ``timeout`` (payload: Lambda's error document).
        """
        tag = uuid.uuid4().hex
        result_path = os.path.join(self._workdir, f"{tag}.json")
        log_path = os.path.join(self._workdir, f"{tag}.log")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
        cmd = [sys.executable]
        if sys.version_info >= (3, 11):
            cmd.append("-P")
        cmd += ["-c", _ONE_SHOT, result_path, request_id, str(fn.timeout), str(fn.memory_mb), fn.name, "1" if crash else "0"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=self._workdir, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with self._lock:
            self._procs.add(proc)
        try:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(json.dumps(event).encode())
                proc.stdin.close()
            try:
                code = proc.wait(timeout=fn.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
                timed_out = True
        finally:
            with self._lock:
                self._procs.discard(proc)
        log_tail = _read_tail(log_path)
        result = None
        with contextlib.suppress(OSError, ValueError):
            with open(result_path) as f:
                result = json.load(f)
        for path in (result_path, log_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        if timed_out:
            return "timeout", {"errorType": "Sandbox.Timedout", "errorMessage": f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z {request_id} Task timed out after {fn.timeout:.2f} seconds", "requestId": request_id}, log_tail
        if result is None:
            exit_text = f"exit status {code}"
            if code < 0:
                with contextlib.suppress(ValueError):
                    exit_text = f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}"
            message = f"the worker process running this call {describe_exit(code)}"
            return "died", {"errorType": "Runtime.ExitError", "errorMessage": message, "detail": f"RequestId: {request_id} Error: Runtime exited with error: {exit_text}", "requestId": request_id}, log_tail
        if result["ok"]:
            return "ok", result["result"], log_tail
        return "error", result["error"], log_tail


def _read_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - _LOG_TAIL_BYTES))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""

