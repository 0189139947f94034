"""A local AWS Lambda endpoint: Lambda's REST API in front of real dask-wren workers.

``LambdaEndpoint`` is an HTTP server on 127.0.0.1 that speaks enough of the Lambda control and
data plane for the *unmodified* boto3 Lambda client::

    endpoint = LambdaEndpoint(workers=2).start()
    endpoint.add_function("dask-wren", timeout=300)
    client = boto3.client("lambda", endpoint_url=endpoint.url, region_name="us-east-1")
    client.invoke(FunctionName="dask-wren", InvocationType="Event", Payload=json.dumps(event))
    endpoint.stop()

The principle: the stand-in is never kinder than Lambda.  What Lambda does not do (write failure
records for a dead worker, say), the stand-in does not do either.

Routes (``{name}`` may be a name, an ARN, or carry a ``:qualifier``; only ``$LATEST`` exists):

``POST /2015-03-31/functions/{name}/invocations`` (Invoke)
    ``X-Amz-Invocation-Type: Event``: 202 and an empty body; the event is queued and runs on the
    function's pool of warm worker processes (a ``dask_wren.backends.local.LocalBackend`` with
    ``records_failures=False`` running the real ``lambda_worker.handler.lambda_handler``).
    ``RequestResponse`` (the default): the handler runs in a fresh worker process and its JSON
    return value comes back with 200 and ``X-Amz-Executed-Version: $LATEST``; a handler that
    raised, crashed, ran out of memory or timed out gives 200 with ``X-Amz-Function-Error:
    Unhandled`` and Lambda's error document (``Runtime.ExitError`` "Runtime exited with error:
    signal: killed", ``Sandbox.Timedout`` "Task timed out after N seconds"), as Lambda does.
    ``DryRun``: 204.  ``X-Amz-Log-Type: Tail`` returns the end of the worker's output in
    ``LogResult`` (sync only).
``GET /2015-03-31/functions/{name}/configuration`` (GetFunctionConfiguration), ``GET .../{name}``
    (GetFunction): ``Runtime`` is this host's ``python3.X``; ``Environment`` carries
    ``DASK_WREN_PYTHON``, ``DASK_WREN_CLOUDPICKLE``, ``DASK_WREN_DASK`` and ``DASK_WREN_PROTOCOL``
    (this host's versions) plus what ``add_function(environment=...)`` gives.
``PUT`` / ``POST`` / ``GET`` / ``DELETE /2019-09-25/functions/{name}/event-invoke-config``
    (Put/Update/Get/DeleteFunctionEventInvokeConfig): ``MaximumRetryAttempts`` (0-2),
    ``MaximumEventAgeInSeconds`` (60-21600), ``DestinationConfig`` (kept and reported, never
    used).  Put replaces the configuration, Update changes the fields given; Get, Update and
    Delete of a function without one answer 404 ``ResourceNotFoundException``, as Lambda does.
``GET /2019-09-30/functions/{name}/concurrency``, ``PUT`` / ``DELETE
    /2017-10-31/functions/{name}/concurrency`` (Get/Put/DeleteFunctionConcurrency): a reservation
    caps the invocations the function's pool runs at once; 0 throttles every invoke (429).  A
    reservation above the account's concurrency is refused.
``GET /2016-08-19/account-settings`` (GetAccountSettings): ``AccountLimit.ConcurrentExecutions``
    is the endpoint's ``workers``, the concurrency the stand-in really has (unless
    ``account_concurrency`` says otherwise), and ``UnreservedConcurrentExecutions`` that less the
    functions' reservations.

Errors are shaped so botocore parses them as Lambda's own: ``x-amzn-ErrorType`` carries the code
(botocore's rest-json parser takes the code from that header), so an unknown function raises
``client.exceptions.ResourceNotFoundException`` and a throttle raises
``TooManyRequestsException``.  That code is in botocore's list of throttling codes, so the
``standard`` and ``adaptive`` retry modes retry a throttled invoke with throttling backoff (and
``adaptive`` slows its send rate).  Payloads above Lambda's limits (256 KiB asynchronous,
6 MiB synchronous) are refused with 413 ``RequestTooLargeException``; AWS has since raised the
asynchronous limit, but a host that fits 256 KiB fits both.

Injected faults: ``endpoint.faults`` is a ``Faults`` object, changeable while the endpoint runs
(``endpoint.faults.drop_rate = 0.1``); ``faults.counters`` counts what happened, including what
the endpoint itself did: ``retried`` (asynchronous retries), ``killed_timeout``,
``killed_memory``, ``expired`` (events dropped for their age).  ``endpoint.executions(...)`` lists
every execution (a run of the handler on a worker) with its request id, attempt, job and call
ids and outcome, so a test counts how often a call ran: ``len(endpoint.executions(job_id=job,
call_id="000000"))``; ``endpoint.wait_settled(request_id)`` waits until a request has run and
will not be retried.

Faithful to Lambda:

- No failure records: a worker that dies, is killed for its memory or its timeout, or whose
  handler raises leaves nothing in the job's storage (the handler's own records aside, which it
  writes on Lambda too).
- Timeout: an invocation is killed when the function's ``Timeout`` (``add_function(timeout=)``)
  has passed since it started, whatever the event's own ``timeout`` says; the worker's context
  (``get_remaining_time_in_millis()``) counts down from the function's Timeout.
- Memory: with ``enforce_memory`` (the default), an invocation whose worker process's resident
  memory exceeds the function's ``MemorySize`` is killed ("Runtime exited with error: signal:
  killed").  The stand-in polls RSS every ``MEMORY_POLL_INTERVAL`` s, so a fast allocation can
  overshoot for that long; only the worker process counts, not processes it starts.
- Asynchronous retries: an event whose handler raised, whose worker crashed, was killed for
  memory or timed out runs again up to ``MaximumRetryAttempts`` times (2 without an
  event-invoke-config, as on Lambda), with the same request id, after ``retry_delays`` seconds
  (Lambda waits about 1 and then 2 *minutes*; the stand-in's default is 1 and 2 seconds).  An
  event older than ``MaximumEventAgeInSeconds`` (6 h by default) when it would start or be
  retried is dropped.  Nothing goes to a DLQ or destination.
- Duplicated deliveries carry the same request id, as Lambda's at-least-once duplicates do.
- ``Faults.crash_next`` kills the worker process right *after* the user's function returned and
  before its first result record is written (the function's side effects happened, its result
  is lost); nothing is recorded, and the event is retried as a crash would be.

Where the stand-in still differs from Lambda:

- Concurrency is the pool size (``workers``, or a smaller reservation): invocations beyond it
  wait in the pool's queue instead of scaling out (Lambda would scale out, then throttle); the
  event age is checked when an event starts or is retried, not while it waits in that queue.  A
  reserved concurrency of 0 refuses asynchronous invokes with 429, where Lambda accepts them and
  drops them later; a reservation may use the account's whole concurrency, where Lambda keeps
  100 unreserved.
- The function's ``Environment`` is reported by GetFunctionConfiguration but not applied to the
  workers: they inherit this process's environment as it was when their pool started (which is
  how they get S3 credentials).  Only its ``DASK_WREN_SIGNING_KEY`` reaches them, as on Lambda; a
  function without one gets a key no host holds (on Lambda its handler would refuse to start).
- Memory is enforced on the worker's resident set by polling, not by a cgroup; CPU is not scaled
  with memory.
- Only ``$LATEST``: no versions, aliases, layers or code; no destinations or DLQs.
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
from dataclasses import dataclass, field, fields, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dask_wren.backends.base import Invocation
from dask_wren.backends.local import MEMORY_POLL_INTERVAL, LocalBackend, read_tail, resident_bytes
from dask_wren.subprocesses import clean_environment, python_command
from dask_wren.testing.loopback import LoopbackHandler, LoopbackServer
from lambda_worker.signing import KEY_VARIABLE, SigningKey

logger = logging.getLogger(__name__)

__all__ = ["Execution", "FaultCounters", "Faults", "LambdaEndpoint", "default_environment"]

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
    """What the endpoint saw and did.  ``run`` counts executions started (a duplicate or a retry
    counts again)."""

    invokes: int = 0  # invoke requests received, throttled ones included
    throttled: int = 0
    dropped: int = 0
    duplicated: int = 0
    crashed: int = 0
    delayed: int = 0
    run: int = 0
    retried: int = 0  # asynchronous executions started again by the endpoint (Lambda's retries)
    killed_timeout: int = 0  # executions killed at the function's Timeout
    killed_memory: int = 0  # executions killed for exceeding the function's MemorySize
    expired: int = 0  # events dropped because they were older than MaximumEventAgeInSeconds


@dataclass(frozen=True)
class _Plan:
    throttle: bool = False
    drop: bool = False
    copies: int = 1
    crash: bool = False
    delay: float = 0.0
    latency: float = 0.0


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
        unknown = set(changes) - set(_FAULT_DEFAULTS) - {"seed"}
        if unknown:
            raise TypeError(f"unknown fault(s) {sorted(unknown)}; known: {list(_FAULT_DEFAULTS)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def clear(self) -> None:
        """Inject nothing from now on (counters are kept)."""
        self.set(**_FAULT_DEFAULTS)

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


#: The faults (``Faults``' fields but ``seed`` and ``counters``) and their values when nothing is injected.
_FAULT_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Faults) if f.init and f.name not in ("seed", "counters")}


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
    workers: int
    enforce_memory: bool
    pool: LocalBackend | None = None
    created: float = field(default_factory=time.time)
    event_invoke_config: dict[str, Any] | None = None  # as PutFunctionEventInvokeConfig stored it
    reserved_concurrency: int | None = None
    unknown_key: SigningKey = field(default_factory=SigningKey.generate, repr=False)

    def signing_key(self) -> SigningKey:
        """The key its workers hold: its ``DASK_WREN_SIGNING_KEY``, or (without one) a key no host holds."""
        text = self.environment.get(KEY_VARIABLE)
        return SigningKey.from_text(text, f"{KEY_VARIABLE} of function {self.name}") if text else self.unknown_key

    def retry_policy(self) -> tuple[int, float]:
        """``(MaximumRetryAttempts, MaximumEventAgeInSeconds)`` in force (Lambda's defaults without a configuration)."""
        config = self.event_invoke_config or {}
        retries = config.get("MaximumRetryAttempts")
        age = config.get("MaximumEventAgeInSeconds")
        return (DEFAULT_RETRY_ATTEMPTS if retries is None else int(retries)), float(DEFAULT_MAX_EVENT_AGE if age is None else age)


@dataclass
class Execution:
    """One run of the handler on a worker: the first delivery of an event, a duplicate, or a retry.

    ``outcome`` is ``None`` while it runs, then ``ok`` (the handler returned), ``error`` (it
    raised), ``died`` (the worker process died: a crash, ``os._exit``, the handler's watchdog),
    ``timeout`` or ``memory`` (the endpoint killed it), or ``cancelled``.
    """

    request_id: str
    function: str
    attempt: int  # 0: the event's first run; 1, 2: Lambda's retries
    asynchronous: bool
    job_id: str | None
    call_ids: tuple[str, ...]
    started: float  # time.time(): when the endpoint handed it to a worker (it may queue in the pool)
    outcome: str | None = None
    detail: str = ""  # what went wrong, for a failed execution
    ended: float | None = None  # time.time()


@dataclass(frozen=True)
class _Delivery:
    """An accepted asynchronous event, on its way to (another) execution."""

    fn: _Function
    event: Any
    request_id: str
    accepted: float  # time.monotonic() of the 202
    attempt: int = 0
    crash: bool = False


class _Headers(dict):
    """Request headers by lower-cased name; ``get`` ignores case, as ``email.message.Message`` does."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


_MAX_HEADER_LINE = 65536
_MAX_HEADERS = 100
_date_cache: tuple[int, str] = (0, "")


class _RequestHandler(LoopbackHandler):
    log_prefix = "lambda endpoint: "

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

    def do_PUT(self) -> None:  # event-invoke-config, concurrency
        self.server.owner._handle(self, "PUT")

    def do_DELETE(self) -> None:  # event-invoke-config, concurrency
        self.server.owner._handle(self, "DELETE")


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


def _throttle() -> _Reply:
    return _error(
        429, "TooManyRequestsException", "Rate Exceeded.",
        {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}, {"Retry-After": "1"},
    )


# -- the endpoint ---------------------------------------------------------------------------------

#: Lambda's asynchronous retry policy for a function without an event-invoke-config.
DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_MAX_EVENT_AGE = 21600
#: Seconds before the stand-in's first and second retry (Lambda waits about 1 and 2 minutes).
DEFAULT_RETRY_DELAYS = (1.0, 2.0)
_FAILED = ("error", "died", "timeout", "memory")
_EVENT_INVOKE_FIELDS = ("MaximumRetryAttempts", "MaximumEventAgeInSeconds", "DestinationConfig")


class LambdaEndpoint(LoopbackServer):
    """Lambda's REST API on 127.0.0.1, running the real handler in local worker processes.

    ``workers``: worker processes per function (the concurrency the stand-in has).
    ``account_concurrency``: what GetAccountSettings reports as the account's concurrency
    (default: ``workers``, the truth); set it higher only for an endpoint whose events never run
    (a dispatch benchmark with ``drop_rate=1``), or queued events look like lost calls to the host.
    ``faults``: a ``Faults`` (default: none).  ``retry_delays``: seconds before an asynchronous event's first,
    second, ... retry (the last repeats), changeable as an attribute.  ``enforce_memory``: kill
    invocations whose worker exceeds the function's memory (per function: ``add_function``).
    ``port=0`` picks a free port; ``url`` is the endpoint URL for boto3 once started.
    """

    def __init__(
        self,
        workers: int = 2,
        faults: Faults | None = None,
        *,
        port: int = 0,
        region: str = "us-east-1",
        account: str = "000000000000",
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        enforce_memory: bool = True,
        account_concurrency: int | None = None,
    ):
        super().__init__(port=port)
        self.workers = workers
        self.account_concurrency = account_concurrency or workers
        self.faults = faults if faults is not None else Faults()
        self.region = region
        self.account = account
        self.retry_delays = tuple(retry_delays)
        self.enforce_memory = enforce_memory
        self._functions: dict[str, _Function] = {}
        self._lock = threading.Lock()
        self._delayed: _Delayed | None = None
        self._procs: set[subprocess.Popen] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._workdir = tempfile.mkdtemp(prefix="dask-wren-lambda-endpoint-")
        # executions: guarded by _cond
        self._cond = threading.Condition()
        self._executions: list[Execution] = []
        self._by_request: dict[str, list[Execution]] = {}
        self._pending: dict[str, int] = {}  # request id -> deliveries accepted or retried, not yet started
        self._running: dict[int, tuple[Invocation, _Delivery, Execution]] = {}  # id(invocation) -> ...

    # -- lifecycle -------------------------------------------------------------------------------

    handler_class = _RequestHandler
    thread_name = "lambda-endpoint"
    backlog = 256

    def start(self) -> LambdaEndpoint:
        if self._server is None and self._delayed is None:
            self._delayed = _Delayed()
        return super().start()

    def stop(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            functions = list(self._functions.values())
        super().stop()
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

    # -- functions -------------------------------------------------------------------------------

    def add_function(
        self,
        name: str,
        *,
        timeout: float = 300,
        memory_mb: int = 2048,
        environment: dict[str, str] | None = None,
        handler: str = HANDLER,
        enforce_memory: bool | None = None,
        workers: int | None = None,
    ) -> None:
        """Serve function ``name`` (replacing one of that name); its worker pool starts now, with
        this process's environment.  ``timeout`` / ``memory_mb``: the function's Timeout and
        MemorySize, both enforced (memory unless ``enforce_memory`` is False; default: the
        endpoint's).  ``workers``: its pool size (default: the endpoint's).  A new function has no
        event-invoke-config (Lambda's defaults: 2 retries) and no reserved concurrency."""
        env = default_environment()
        env.update({k: str(v) for k, v in (environment or {}).items()})
        enforce = self.enforce_memory if enforce_memory is None else bool(enforce_memory)
        fn = _Function(name, float(timeout), int(memory_mb), env, handler, int(workers or self.workers), enforce)
        with self._lock:
            if self._closed:
                raise RuntimeError("this endpoint has been stopped")
            old = self._functions.get(name)
            fn.pool = self._new_pool(fn)
            self._functions[name] = fn
        if old is not None:
            old.pool.shutdown()

    def remove_function(self, name: str) -> None:
        with self._lock:
            fn = self._functions.pop(name, None)
        if fn is not None:
            fn.pool.shutdown()

    def worker_pids(self, name: str) -> list[int]:
        return self._function(name).pool.worker_pids()

    def put_event_invoke_config(self, name: str, **config: Any) -> dict[str, Any]:
        """PutFunctionEventInvokeConfig from Python: ``put_event_invoke_config("f",
        MaximumRetryAttempts=0)``.  Returns the configuration as Lambda reports it."""
        fn = self._function(name)
        return self._set_event_invoke_config(fn, config, replace_all=True)

    def event_invoke_config(self, name: str) -> dict[str, Any] | None:
        """The function's event-invoke-config as GetFunctionEventInvokeConfig reports it, or None."""
        fn = self._function(name)
        with self._lock:
            return None if fn.event_invoke_config is None else self._event_invoke_document(fn)

    def _new_pool(self, fn: _Function) -> LocalBackend:
        pool = LocalBackend(
            workers=fn.workers,
            memory_mb=fn.memory_mb,
            function_name=fn.name,
            records_failures=False,  # Lambda writes nothing for a dead or killed invocation
            memory_limit_mb=fn.memory_mb if fn.enforce_memory else None,
            kill_grace=0.0,  # killed at the function's Timeout
            on_outcome=self._pool_outcome,
            concurrency_limit=fn.reserved_concurrency,
            signing_key=fn.signing_key(),
        )
        pool.start()
        return pool

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

    # -- executions ------------------------------------------------------------------------------

    def executions(
        self, request_id: str | None = None, *, job_id: str | None = None, call_id: str | None = None, function: str | None = None,
    ) -> list[Execution]:
        """Every execution so far (oldest first), or those of one request id, job, call or function.

        ``len(endpoint.executions(job_id=job, call_id="000000"))`` is how often that call ran.
        Duplicates and retries keep their request id; an event whose calls are stored under
        ``calls_key`` has no call ids here."""
        with self._cond:
            found = list(self._by_request.get(request_id, ())) if request_id is not None else list(self._executions)
        return [
            e for e in found
            if (job_id is None or e.job_id == job_id) and (call_id is None or call_id in e.call_ids)
            and (function is None or e.function == function)
        ]

    def wait_settled(self, request_id: str, timeout: float = 60.0) -> list[Execution]:
        """Wait until request ``request_id`` has nothing running or waiting to run (a retry
        included); return its executions.  Raises ``TimeoutError`` after ``timeout`` seconds."""

        def settled() -> bool:
            return not self._pending.get(request_id) and all(e.outcome is not None for e in self._by_request.get(request_id, ()))

        with self._cond:
            if not self._cond.wait_for(settled, timeout):
                raise TimeoutError(f"request {request_id} did not settle within {timeout} s: {self._by_request.get(request_id)}")
            return list(self._by_request.get(request_id, ()))

    def _begin(self, fn: _Function, event: Any, request_id: str, attempt: int, asynchronous: bool) -> Execution:
        calls = event.get("calls") if isinstance(event, dict) else None
        call_ids = tuple(c["id"] for c in calls if isinstance(c, dict) and "id" in c) if isinstance(calls, list) else ()
        job_id = event.get("job_id") if isinstance(event, dict) else None
        execution = Execution(request_id, fn.name, attempt, asynchronous, job_id, call_ids, time.time())
        self.faults._count("run")
        with self._cond:
            self._executions.append(execution)
            self._by_request.setdefault(request_id, []).append(execution)
        return execution

    def _add_pending(self, request_id: str, n: int = 1) -> None:
        with self._cond:
            self._pending[request_id] = self._pending.get(request_id, 0) + n
            if self._pending[request_id] <= 0:
                del self._pending[request_id]
            self._cond.notify_all()

    # -- HTTP ------------------------------------------------------------------------------------

    # (method, API version, path after the function name) -> operation
    _OPERATIONS = {
        ("POST", "2015-03-31", "invocations"): "_op_invoke",
        ("GET", "2015-03-31", "configuration"): "_op_get_configuration",
        ("GET", "2015-03-31", ""): "_op_get_function",
        ("PUT", "2019-09-25", "event-invoke-config"): "_op_put_event_invoke_config",
        ("POST", "2019-09-25", "event-invoke-config"): "_op_update_event_invoke_config",
        ("GET", "2019-09-25", "event-invoke-config"): "_op_get_event_invoke_config",
        ("DELETE", "2019-09-25", "event-invoke-config"): "_op_delete_event_invoke_config",
        ("GET", "2019-09-30", "concurrency"): "_op_get_concurrency",
        ("PUT", "2017-10-31", "concurrency"): "_op_put_concurrency",
        ("DELETE", "2017-10-31", "concurrency"): "_op_delete_concurrency",
    }

    def _handle(self, req: _RequestHandler, method: str) -> None:
        request_id = str(uuid.uuid4())
        status, body, headers = 500, None, {}
        try:
            raw = req.body()
            parts = urlsplit(req.path)
            segments = parts.path.strip("/").split("/")
            if method == "GET" and segments == ["2016-08-19", "account-settings"]:
                status, body = 200, self._account_settings()
            else:
                operation = None
                if len(segments) >= 3 and segments[1] == "functions":
                    operation = self._OPERATIONS.get((method, segments[0], "/".join(segments[3:])))
                if operation is None:
                    raise _error(404, "UnknownOperationException", f"unknown operation {method} {parts.path}")
                name, qualifier = self._parse_name(unquote(segments[2]))
                qualifier = qualifier or (parse_qs(parts.query).get("Qualifier") or [None])[0]
                if qualifier not in (None, "$LATEST"):
                    raise _error(404, "ResourceNotFoundException", f"Function not found: {self._arn(name)}:{qualifier}")
                status, body, headers = getattr(self, operation)(req, self._function(name), raw, request_id)
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
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        req.answer(status, data, headers)  # False: the client went away, as a client of Lambda may

    @staticmethod
    def _json_body(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise _error(400, "InvalidRequestContentException", f"Could not parse request body into json: {e}") from None
        if not isinstance(body, dict):
            raise _error(400, "InvalidRequestContentException", "the request body must be a JSON object")
        return body

    # -- control plane ---------------------------------------------------------------------------

    def _op_get_configuration(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        return 200, self._configuration(fn), {}

    def _op_get_function(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        body = {"Configuration": self._configuration(fn), "Code": {"RepositoryType": "S3", "Location": ""}}
        with self._lock:
            if fn.reserved_concurrency is not None:
                body["Concurrency"] = {"ReservedConcurrentExecutions": fn.reserved_concurrency}
        return 200, body, {}

    def _event_invoke_document(self, fn: _Function) -> dict[str, Any]:
        config = dict(fn.event_invoke_config or {})
        document = {"FunctionArn": f"{self._arn(fn.name)}:$LATEST", "LastModified": config.pop("LastModified", time.time())}
        document.update(config)
        return document

    def _no_event_invoke_config(self, fn: _Function) -> _Reply:
        return _error(404, "ResourceNotFoundException", f"The function {self._arn(fn.name)} doesn't have an EventInvokeConfig")

    def _set_event_invoke_config(self, fn: _Function, body: dict[str, Any], *, replace_all: bool) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for key in _EVENT_INVOKE_FIELDS:
            if body.get(key) is not None:
                config[key] = body[key]
        retries = config.get("MaximumRetryAttempts")
        if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 2):
            raise _error(400, "InvalidParameterValueException", f"MaximumRetryAttempts must be between 0 and 2, not {retries!r}")
        age = config.get("MaximumEventAgeInSeconds")
        if age is not None and (not isinstance(age, int) or isinstance(age, bool) or not 60 <= age <= 21600):
            raise _error(400, "InvalidParameterValueException", f"MaximumEventAgeInSeconds must be between 60 and 21600, not {age!r}")
        with self._lock:
            if replace_all:
                fn.event_invoke_config = config
            else:
                if fn.event_invoke_config is None:
                    raise self._no_event_invoke_config(fn)
                fn.event_invoke_config = {**fn.event_invoke_config, **config}
            fn.event_invoke_config["LastModified"] = time.time()
            return self._event_invoke_document(fn)

    def _op_put_event_invoke_config(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        return 200, self._set_event_invoke_config(fn, self._json_body(raw), replace_all=True), {}

    def _op_update_event_invoke_config(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        return 200, self._set_event_invoke_config(fn, self._json_body(raw), replace_all=False), {}

    def _op_get_event_invoke_config(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            if fn.event_invoke_config is None:
                raise self._no_event_invoke_config(fn)
            return 200, self._event_invoke_document(fn), {}

    def _op_delete_event_invoke_config(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            if fn.event_invoke_config is None:
                raise self._no_event_invoke_config(fn)
            fn.event_invoke_config = None
        return 204, None, {}

    def _op_get_concurrency(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            reserved = fn.reserved_concurrency
        return 200, ({} if reserved is None else {"ReservedConcurrentExecutions": reserved}), {}

    def _op_put_concurrency(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        reserved = self._json_body(raw).get("ReservedConcurrentExecutions")
        if not isinstance(reserved, int) or isinstance(reserved, bool) or reserved < 0:
            raise _error(400, "InvalidParameterValueException", f"ReservedConcurrentExecutions must be a whole number of at least 0, not {reserved!r}")
        with self._lock:
            others = sum(f.reserved_concurrency or 0 for f in self._functions.values() if f is not fn)
            if others + reserved > self.account_concurrency:
                raise _error(
                    400, "InvalidParameterValueException",
                    f"Specified ReservedConcurrentExecutions for function decreases account's UnreservedConcurrentExecution "
                    f"below zero: the account's concurrency (the stand-in's workers) is {self.account_concurrency}",
                )
            fn.reserved_concurrency = reserved
            pool = fn.pool
        pool.set_concurrency_limit(reserved or None)  # 0: every invoke is throttled before it reaches the pool
        return 200, {"ReservedConcurrentExecutions": reserved}, {}

    def _op_delete_concurrency(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            fn.reserved_concurrency = None
            pool = fn.pool
        pool.set_concurrency_limit(None)
        return 204, None, {}

    def _account_settings(self) -> dict[str, Any]:
        with self._lock:
            reserved = sum(f.reserved_concurrency or 0 for f in self._functions.values())
            count = len(self._functions)
        return {
            "AccountLimit": {
                "TotalCodeSize": 80530636800,
                "CodeSizeUnzipped": 262144000,
                "CodeSizeZipped": 52428800,
                "ConcurrentExecutions": self.account_concurrency,
                "UnreservedConcurrentExecutions": max(0, self.account_concurrency - reserved),
            },
            "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": count},
        }

    # -- invoke ----------------------------------------------------------------------------------

    def _op_invoke(self, req: _RequestHandler, fn: _Function, raw: bytes, request_id: str) -> tuple[int, Any, dict[str, str]]:
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
        if fn.reserved_concurrency == 0:  # Lambda throttles a function whose reservation is 0
            self.faults._count("invokes")
            self.faults._count("throttled")
            raise _throttle()
        plan = self.faults._plan(asynchronous=kind == "Event")
        if plan.latency:
            time.sleep(plan.latency)
        if plan.throttle:
            raise _throttle()
        if kind == "Event":
            if not plan.drop:
                accepted = time.monotonic()
                self._add_pending(request_id, plan.copies)
                for copy in range(plan.copies):
                    delivery = _Delivery(fn, event, request_id, accepted, crash=plan.crash and copy == 0)
                    self._schedule(plan.delay, lambda d=delivery: self._start_async(d))
            return 202, None, {}
        if plan.delay:
            time.sleep(plan.delay)
        execution = self._begin(fn, event, request_id, 0, asynchronous=False)
        outcome, payload, log_tail = "died", None, ""
        try:
            outcome, payload, log_tail = self._run_one_shot(fn, event, request_id, crash=plan.crash)
        finally:
            self._ended(execution, outcome, "" if outcome == "ok" else json.dumps(payload, default=str))
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

    def _start_async(self, d: _Delivery) -> None:
        """Start one delivery of an asynchronous event (a first run, a duplicate, or a retry)."""
        try:
            if self._closed:
                return
            _, max_age = d.fn.retry_policy()
            if time.monotonic() - d.accepted > max_age:
                self.faults._count("expired")
                logger.warning("lambda endpoint: %s event %s dropped: older than %g s", d.fn.name, d.request_id, max_age)
                return
            execution = self._begin(d.fn, d.event, d.request_id, d.attempt, asynchronous=True)
            event = d.event
            wren_event = isinstance(event, dict) and isinstance(event.get("storage"), dict) and "job_id" in event and "prefix" in event
            if d.crash or not wren_event:
                # Not for the pool: a crash is injected in a one-shot process, and an event that is
                # not a dask-wren event fails the handler in a way the pool would not report.
                thread = threading.Thread(target=self._async_one_shot, args=(d, execution), daemon=True)
                with self._lock:
                    self._threads.add(thread)
                thread.start()
                return
            calls = event.get("calls")
            call_ids = [c["id"] for c in calls] if isinstance(calls, list) else []
            inv = Invocation(request_id=d.request_id, event=event, call_ids=call_ids, timeout=d.fn.timeout)
            with self._cond:
                self._running[id(inv)] = (inv, d, execution)
            self._healthy_pool(d.fn).invoke([inv])
        finally:
            self._add_pending(d.request_id, -1)

    def _pool_outcome(self, inv: Invocation, outcome: str, detail: str) -> None:
        """A pool's invocation ended (on the pool's dispatcher thread: no waiting here)."""
        with self._cond:
            entry = self._running.pop(id(inv), None)
        if entry is not None:
            _, d, execution = entry
            self._finished(d, execution, outcome, detail)

    def _ended(self, execution: Execution, outcome: str, detail: str) -> None:
        if outcome == "timeout":
            self.faults._count("killed_timeout")
        elif outcome == "memory":
            self.faults._count("killed_memory")
        with self._cond:
            execution.outcome, execution.detail, execution.ended = outcome, detail, time.time()
            self._cond.notify_all()

    def _finished(self, d: _Delivery, execution: Execution, outcome: str, detail: str) -> None:
        """An asynchronous execution ended: retry it as Lambda would, or let it go."""
        delay = None
        if outcome in _FAILED and not self._closed:
            retries, max_age = d.fn.retry_policy()
            if d.attempt < retries:
                delays = self.retry_delays or (0.0,)
                delay = max(0.0, float(delays[min(d.attempt, len(delays) - 1)]))
                if time.monotonic() + delay - d.accepted > max_age:
                    self.faults._count("expired")
                    delay = None
            if delay is not None:
                self.faults._count("retried")
                self._add_pending(d.request_id)
            else:
                logger.info("lambda endpoint: %s event %s failed (%s) after %d run(s): %s", d.fn.name, d.request_id, outcome, d.attempt + 1, detail)
        self._ended(execution, outcome, detail)  # after the retry is pending: the request never looks settled in between
        if delay is not None:
            retry = replace(d, attempt=d.attempt + 1, crash=False)
            if self._delayed is not None:
                self._delayed.call_at(time.monotonic() + delay, lambda: self._start_async(retry))
            else:
                self._add_pending(d.request_id, -1)

    def _healthy_pool(self, fn: _Function) -> LocalBackend:
        """The function's pool, replaced if its dispatcher thread has died.

        Lambda would go on serving whatever broke one pool's dispatcher thread, so replace it.
        """
        thread = getattr(fn.pool, "_thread", None)
        if thread is None or thread.is_alive() or fn.pool.closed:
            return fn.pool
        with self._lock:
            if thread is getattr(fn.pool, "_thread", None) and not self._closed:
                logger.warning("lambda endpoint: the worker pool of %s stopped; starting a new one", fn.name)
                old, fn.pool = fn.pool, self._new_pool(fn)
                threading.Thread(target=old.shutdown, daemon=True).start()
        return fn.pool

    def _async_one_shot(self, d: _Delivery, execution: Execution) -> None:
        try:
            outcome, payload, _ = self._run_one_shot(d.fn, d.event, d.request_id, crash=d.crash)
            if not self._closed:  # killed by stop(): nothing to report
                self._finished(d, execution, outcome, "" if outcome == "ok" else json.dumps(payload, default=str))
        except Exception:
            logger.exception("lambda endpoint: invocation %s failed in the stand-in", d.request_id)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _run_one_shot(self, fn: _Function, event: Any, request_id: str, crash: bool) -> tuple[str, Any, str]:
        """Run the handler once in a fresh worker process, under the function's Timeout and memory.

        Returns ``(outcome, payload, log_tail)``; outcome is ``ok`` (payload: the handler's return
        value), ``error`` (it raised), ``died``, ``memory`` or ``timeout`` (payload: Lambda's
        error document).
        """
        tag = uuid.uuid4().hex
        result_path = os.path.join(self._workdir, f"{tag}.json")
        log_path = os.path.join(self._workdir, f"{tag}.log")
        cmd = python_command("-c", _ONE_SHOT, result_path, request_id, str(fn.timeout), str(fn.memory_mb), fn.name, "1" if crash else "0")
        limit = fn.memory_mb * 1024 * 1024 if fn.enforce_memory else None
        killed = None
        with open(log_path, "wb") as log:
            env = {**clean_environment(), KEY_VARIABLE: fn.signing_key().text()}
            proc = subprocess.Popen(cmd, cwd=self._workdir, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with self._lock:
            self._procs.add(proc)
        try:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(json.dumps(event).encode())
                proc.stdin.close()
            deadline = time.monotonic() + fn.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    killed = "timeout"
                    break
                try:
                    code = proc.wait(timeout=min(left, MEMORY_POLL_INTERVAL) if limit else left)
                    break
                except subprocess.TimeoutExpired:
                    rss = resident_bytes(proc.pid) if limit else None
                    if rss is not None and rss > limit:
                        killed = "memory"
                        break
            if killed:
                proc.kill()
                code = proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)
        log_tail = read_tail(log_path, _LOG_TAIL_BYTES)
        result = None
        with contextlib.suppress(OSError, ValueError):
            with open(result_path) as f:
                result = json.load(f)
        for path in (result_path, log_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        if killed == "timeout":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            return "timeout", {"errorType": "Sandbox.Timedout", "errorMessage": f"{stamp}Z {request_id} Task timed out after {fn.timeout:.2f} seconds", "requestId": request_id}, log_tail
        if result is None:
            exit_text = f"exit status {code}"
            if code < 0:  # as Lambda's Go runtime names them: "signal: killed", "signal: segmentation fault"
                with contextlib.suppress(ValueError):
                    exit_text = f"signal: {(signal.strsignal(-code) or f'signal {-code}').lower()}"
            error = {"errorType": "Runtime.ExitError", "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: {exit_text}", "requestId": request_id}
            return ("memory" if killed == "memory" else "died"), error, log_tail
        if result["ok"]:
            return "ok", result["result"], log_tail
        return "error", result["error"], log_tail

