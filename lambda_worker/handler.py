"""``lambda_handler(event, context)``: the entry point AWS Lambda (or a local worker) calls.

For each call in the event it loads the function (cached while this process stays warm), reads
the call's argument by byte range, runs the function with ``extra_env`` applied and stdout/stderr
captured, and writes exactly one result record, whatever happened.  It imports only the shared
modules (protocol, serialize, storage), never host code.

What Lambda does not do, the handler does itself, on every backend:
- **timeouts**: a watchdog thread ends the invocation at the call's own timeout
  (``event["timeout"]``) or shortly before the function's deadline
  (``context.get_remaining_time_in_millis()``), whichever comes first.  It writes a ``timeout``
  record for each call of the invocation that has none, then ends the process: Lambda then
  replaces the execution environment, and the host learns of the timeout within seconds instead
  of after its lost-call grace.  It cannot act while C code holds the GIL (a long NumPy kernel
  does not, a C extension's busy loop may); the host's lost-call detection covers that case;
- **cancel**: while a call runs, the same thread reads the job's cancel marker every
  ``event["cancel_poll"]`` seconds (one GET; counted in the call's ``storage_requests``).  Once
  every call of the invocation without a record is cancelled, it ends the process: on Lambda the
  execution stops (and its billing).  It writes no record: the host resolved those futures as
  cancelled already, or is gone;
- **storage failures**: a record that cannot be written is retried as a bare failure record; one
  that still cannot be written is logged and reported in the return value, never raised;
- **a deleted job**: Lambda may deliver an event late (its queue, a duplicate), after the host
  took the call's result from another attempt and deleted the job.  A call whose payload is
  missing while the job's manifest is gone too (hosts delete it first) writes no record, which
  nobody would read and which would outlive the cleanup; it is logged and reported in the return
  value (``handler_error``: a local pool records that as the call's failure, so a host that still
  waits is told).
A crash or an out-of-memory kill writes nothing, as on Lambda: the host sees no result.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Any

from lambda_worker import protocol, serialize
from lambda_worker.errors import IntegrityError
from lambda_worker.signing import KEY_VARIABLE, SigningKey
from lambda_worker.storage import KeyNotFound, Storage, StorageDenied, StorageError, storage_from_spec

#: When this process (the Lambda execution environment) started; worker clocks are not host clocks.
PROCESS_START = time.time()
#: The architecture Lambda bills this worker at: its machine's.
ARCH = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
#: The watchdog acts this long before the function's own deadline (at most a quarter of the time
#: left), so that its records are written before Lambda stops the environment.
DEADLINE_MARGIN = 2.0
#: Exit status of a worker process whose invocation the watchdog ended (as ``timeout(1)`` uses).
WATCHDOG_EXIT_CODE = 124
#: Exit status of a worker process whose invocation was cancelled by its host.
CANCEL_EXIT_CODE = 125
_state = {"invocations": 0}
_func_cache: dict[tuple[str, str], Any] = {}
_FUNC_CACHE_MAX = 8
_CALL_ID = re.compile(rb'"id": *"([0-9]+)"')  # a call's id in a call list, however it was changed
_MISSING_PAYLOAD = (
    "the job's payload is missing from storage ({detail}): was the job cleaned up before it ran, or does the "
    "bucket/prefix differ from the deployment's?"
)


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    start = time.time()
    start_mono = time.monotonic()
    cold = _state["invocations"] == 0
    _state["invocations"] += 1
    request_id = getattr(context, "aws_request_id", None) or uuid.uuid4().hex
    job_id = event.get("job_id")
    base = {
        "job_id": job_id,
        "request_id": request_id,
        "attempt": int(event.get("attempt") or 0),
        "worker_pid": os.getpid(),
        "worker_host": os.uname().nodename if hasattr(os, "uname") else "",
        "worker_versions": serialize.runtime_versions(),
        "timings": {
            "worker_start": PROCESS_START, "worker_invoked": start, "worker_cold": cold,
            "host_submitted": event.get("submitted"),  # so a record alone places its call on a timeline
        },
    }
    log_group, log_stream = getattr(context, "log_group_name", None), getattr(context, "log_stream_name", None)
    if log_group and log_stream:  # where this invocation's full output is (``dask-wren logs``)
        base["log"] = {"group": log_group, "stream": log_stream}
    try:
        storage = storage_from_spec(event["storage"])
        key = _signing_key()
        calls, requests, untrusted = _calls_of(storage, event, key)
    except Exception as e:  # nowhere to write a record: say so in the log and the return value
        message = f"the invocation could not start: {type(e).__name__}: {e}"
        print(f"dask-wren: {message}", file=sys.stderr, flush=True)
        return {"request_id": request_id, "job_id": job_id, "calls": 0, "handler_error": message}
    invocation = _Invocation(storage, event, calls, base, requests, key)
    invocation.meter = _Meter(start_mono, INIT_MS if cold else 0, _memory_mb(context))
    deadline, expiry = _deadline(event, context, start_mono)
    _WATCHDOG.arm(deadline, lambda: invocation.expire(expiry), invocation.poll_cancel, float(event.get("cancel_poll") or 0))
    try:
        mismatch = _version_problem(event.get("v"), event.get("host_versions") or {})
        invocation.run((protocol.FAIL_VERSION, mismatch) if mismatch else untrusted)
    finally:
        _WATCHDOG.disarm()
    summary: dict[str, Any] = {"request_id": request_id, "job_id": job_id, "calls": len(calls), "statuses": invocation.statuses}
    if invocation.unrecorded:
        summary["handler_error"] = "; ".join(invocation.unrecorded)
    return summary


def _signing_key() -> SigningKey:
    """The key this worker verifies and signs with, from its environment (read per invocation)."""
    key = SigningKey.from_environment()
    if key is None:
        raise RuntimeError(
            f"this worker has no signing key (${KEY_VARIABLE} is not set), so it can neither trust the job's "
            "objects nor sign its results: on AWS, redeploy with `dask-wren deploy`, which sets it on the function"
        )
    return key


def _calls_of(storage: Storage, event: dict[str, Any], key: SigningKey) -> tuple[list[dict[str, Any]], int, tuple[str, str] | None]:
    """The invocation's calls: inline, or read from ``calls_key`` (one request).

    A stored call list that does not verify still names the calls that fail (their ids are read
    from its bytes, which runs no code): the third item is then the failure every call records."""
    calls = event.get("calls")
    if calls is not None:
        return calls, 0, None
    try:
        blob = storage.get(event["calls_key"])
    except (KeyNotFound, StorageDenied) as e:
        raise RuntimeError(_MISSING_PAYLOAD.format(detail=e)) from None
    try:
        return json.loads(protocol.open_object(key, event["calls_key"], blob)), 1, None
    except IntegrityError as e:
        named = dict.fromkeys(m.decode() for m in _CALL_ID.findall(blob))
        return [{"id": call_id} for call_id in named], 1, (protocol.FAIL_INTEGRITY, str(e))


def _deadline(event: dict[str, Any], context: Any, start: float) -> tuple[float, str]:
    """When the watchdog acts (monotonic), and what it then says happened.

    The worker's own limit (on Lambda the function's Timeout, read from the context) comes with
    a margin, so the records are written before the environment is stopped."""
    timeout = float(event.get("timeout") or 0) or float("inf")
    deadline, expiry = start + timeout, f"the call ran past its timeout of {timeout:g} s"
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is not None:
        left = max(0.0, remaining() / 1000)
        deadline = min(deadline, start + max(0.0, left - min(DEADLINE_MARGIN, left / 4)))
        if left < timeout - 1:  # the function limits the call (a second of slack: it counts from earlier)
            expiry = (
                f"the call reached the worker's own time limit ({left:.0f} s left when it started; on AWS the "
                "function's Timeout): raise it with `dask-wren deploy --timeout`, or pass a smaller timeout="
            )
    return deadline, expiry


def _version_problem(version: Any, host: dict[str, str]) -> str | None:
    if version != protocol.PROTOCOL_VERSION:
        return (
            f"the host speaks dask-wren protocol {version!r} but this worker speaks "
            f"{protocol.PROTOCOL_VERSION}: install the same dask-wren version on both sides "
            "(for AWS, redeploy with `dask-wren deploy`)"
        )
    mine = serialize.runtime_versions()
    for name in ("python", "cloudpickle"):
        if host.get(name) and host[name] != mine[name]:
            return (
                f"{name} differs: host has {host[name]}, worker has {mine[name]}; pickled "
                f"functions only cross between equal versions: match them (for AWS, redeploy "
                "the runtime from this environment with `dask-wren deploy`)"
            )
    return None


class _Watchdog:
    """One thread per process that calls ``expire`` when the armed deadline passes, and ``poll``
    every ``interval`` seconds until then (``interval`` 0: never).

    Armed for each invocation and disarmed when it ends; ``expire`` ends the process, so the
    thread never has to stop a call it cannot interrupt.  Arming must cost next to nothing (a
    warm worker runs thousands of short invocations): the thread is woken only when a new
    deadline or poll comes before the time it already sleeps to, so with steady timeouts it
    wakes about once per poll interval, finds a later time armed, and sleeps on.  A poll runs
    outside the lock and may outlive its invocation: ``poll`` must check that its invocation
    still runs before it acts.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._expire: Callable[[], None] | None = None
        self._poll: Callable[[], None] | None = None
        self._interval = 0.0
        self._next_poll = float("inf")
        self._sleeping_until: float | None = None  # None: asleep until woken
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, expire: Callable[[], None], poll: Callable[[], None] | None = None, interval: float = 0.0) -> None:
        with self._cond:
            self._deadline, self._expire = deadline, expire
            self._poll, self._interval = (poll, interval) if poll is not None and interval > 0 else (None, 0.0)
            self._next_poll = time.monotonic() + interval if self._poll is not None else float("inf")
            wake = min(deadline, self._next_poll)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dask-wren-watchdog", daemon=True)
                self._thread.start()
            elif self._sleeping_until is None or wake < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = self._expire = self._poll = None
            self._next_poll = float("inf")

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    wake = None if self._deadline is None else min(self._deadline, self._next_poll)
                    if wake is not None and now >= wake:
                        break
                    self._sleeping_until = wake
                    self._cond.wait(None if wake is None else wake - now)
                self._sleeping_until = None
                if now >= self._deadline:
                    expire, poll = self._expire, None
                    self._deadline = self._expire = self._poll = None
                    self._next_poll = float("inf")
                else:
                    expire, poll = None, self._poll
                    self._next_poll = now + self._interval
            if expire is not None:
                expire()
            elif poll is not None:
                poll()


_WATCHDOG = _Watchdog()


class _Invocation:
    """The calls of one event, run in order; ``expire`` (watchdog thread) records the rest as timed out."""

    def __init__(self, storage: Storage, event: dict[str, Any], calls: list[dict[str, Any]], base: dict[str, Any], requests: int, key: SigningKey):
        self.storage = storage
        self.key = key
        self.event = event
        self.calls = calls
        self.base = base
        self.requests = requests
        self.statuses: dict[str, int] = {}
        self.unrecorded: list[str] = []
        self.current: _CallRunner | None = None
        self.recorded: set[str] = set()
        self.polls = 0  # cancel-marker reads not yet counted in a record's storage_requests
        self.meter: _Meter | None = None  # what Lambda bills, shared out over the records
        self._extra_env: dict[str, str] | None = None
        self._deleted: bool | None = None  # the job's manifest is gone (``job_deleted``)
        # Held while a record is written: the watchdog's records and the calls' never interleave,
        # and once the watchdog holds it, no call writes again (the process is ending).
        self.lock = threading.Lock()

    def not_recorded(self, message: str) -> str:
        """A call ends without a record: say so in the log and in the return value."""
        print(f"dask-wren: {message}", file=sys.stderr, flush=True)
        self.unrecorded.append(message)
        return "unrecorded"

    def job_deleted(self) -> bool:
        """Whether the job's manifest is gone (one GET, asked once): its host deleted the job.  A
        worker without s3:ListBucket is told 403 for a missing key, as for one it may not read."""
        if self._deleted is None:
            try:
                self.storage.get(protocol.manifest_key(self.event["prefix"], self.event["job_id"]))
                self._deleted = False
            except (KeyNotFound, StorageDenied):
                self._deleted = True
            except Exception:  # storage unreachable: record the failure as usual
                self._deleted = False
            self.requests += 1
        return self._deleted

    def extra_env(self) -> dict[str, str]:
        """The job's ``extra_env``: in the event, or (when too large for it) in storage, read once."""
        if "extra_env_key" in self.event and self._extra_env is None:
            env_key = self.event["extra_env_key"]
            self._extra_env = json.loads(protocol.open_object(self.key, env_key, self.storage.get(env_key)))
            self.requests += 1
        return self._extra_env if self._extra_env is not None else self.event.get("extra_env") or {}

    def run(self, problem: tuple[str, str] | None) -> None:
        """Run the calls; with a ``problem`` (failure kind, message), record it for each instead."""
        for i, call in enumerate(self.calls):
            runner = _CallRunner(self, call, self.requests if i == 0 else 0)
            self.current = runner
            status = runner.fail(*problem) if problem else runner.run()
            self.statuses[status] = self.statuses.get(status, 0) + 1
        self.current = None

    def poll_cancel(self) -> None:
        """Read the job's cancel marker (watchdog thread); end the process if every call without
        a record is cancelled."""
        try:
            marker = self.storage.get(protocol.cancel_key(self.event["prefix"], self.event["job_id"]))
        except (KeyNotFound, StorageDenied):  # no marker (S3 says 403 for a missing key without ListBucket)
            marker = None
        except Exception as e:  # storage unreachable for now: look again next time
            print(f"dask-wren: could not read the job's cancel marker: {type(e).__name__}: {e}", file=sys.__stderr__, flush=True)
            marker = None
        with self.lock:
            self.polls += 1
        if marker is None:
            return
        cancelled = protocol.cancelled_calls(marker)
        self.lock.acquire()  # released only if the process goes on
        left = {call["id"] for call in self.calls} - self.recorded
        if not left or (cancelled != protocol.CANCEL_ALL and not left <= cancelled):
            self.lock.release()
            return
        print(f"dask-wren: job {self.event['job_id']} cancelled by its host: ending this invocation", file=sys.__stderr__, flush=True)
        os._exit(CANCEL_EXIT_CODE)

    def expire(self, what: str) -> None:
        """Record every call without a record as timed out, then end this process."""
        self.lock.acquire()  # never released: the process ends below
        try:
            current = self.current
            for call in self.calls:
                if call["id"] in self.recorded:
                    continue
                if current is not None and call["id"] == current.call["id"]:
                    current.capture_output()
                    current.fail(protocol.FAIL_TIMEOUT, f"{what}; the worker stopped it and ended its process", locked=True)
                else:
                    runner = _CallRunner(self, call, 0)
                    runner.fail(protocol.FAIL_TIMEOUT, f"{what} before this call of the same invocation started", locked=True)
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(WATCHDOG_EXIT_CODE)


class _Meter:
    """What Lambda bills for one invocation, shared out over its calls' records (``header["billing"]``).

    A record's ``ms`` is the invocation's duration so far, rounded up to the millisecond as Lambda
    rounds it, less what the invocation's earlier records billed: the records of a chunked
    invocation add up to its duration.  The first record carries the request charge
    (``first_of_invocation``) and, on a cold start, the INIT phase (``init_ms``), which Lambda bills
    for managed runtimes since August 2025.  Not in it: the time after the last record's write
    began (that PUT and the return; tens of ms on S3), so the figure is a little low."""

    def __init__(self, start: float, init_ms: int, memory_mb: int):
        self.start = start
        self.init_ms = init_ms
        self.memory_mb = memory_mb
        self.region = os.environ.get("AWS_REGION")  # Lambda sets it; None elsewhere
        self.billed = 0
        self.records = 0

    def bill(self) -> dict[str, Any]:
        """The next record's share (hold the invocation's lock)."""
        elapsed = math.ceil((time.monotonic() - self.start) * 1000)
        share = max(0, elapsed - self.billed)
        self.billed += share
        first = self.records == 0
        self.records += 1
        return {
            "ms": share, "init_ms": self.init_ms if first else 0, "memory_mb": self.memory_mb, "arch": ARCH,
            "region": self.region, "first_of_invocation": first,
        }


def _memory_mb(context: Any) -> int:
    """The function's memory (Lambda's context gives a string); 0 when unknown."""
    memory = getattr(context, "memory_limit_in_mb", None) or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    try:
        return int(memory or 0)
    except ValueError:
        return 0


class _TailBuffer(io.TextIOBase):
    """Keeps only the last ``limit`` characters written (bounded memory for chatty functions), and
    writes each one through to ``echo``, the process's own stream: on Lambda that is the
    function's CloudWatch log, locally the worker's log file, whose end a dead worker's error
    quotes, so what a function printed before ``os._exit`` or a signal is not lost with it."""

    def __init__(self, limit: int, echo: Any = None):
        self.limit = limit
        self.echo = echo
        self.chunks: deque[str] = deque()
        self.size = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.echo is not None:
            try:
                self.echo.write(s)
                self.echo.flush()  # a process that ends by os._exit or a signal flushes nothing
            except (OSError, ValueError):  # a closed or broken stream: the tail is still kept
                self.echo = None
        if self.limit <= 0:
            self.dropped += len(s)
            return len(s)
        self.chunks.append(s)
        self.size += len(s)
        while self.size - len(self.chunks[0]) >= self.limit:
            gone = self.chunks.popleft()
            self.size -= len(gone)
            self.dropped += len(gone)
        return len(s)

    def text(self) -> str:
        joined = "".join(self.chunks)
        extra = len(joined) - self.limit
        if extra > 0:
            self.dropped += extra
            joined = joined[extra:]
        return joined


@contextmanager
def _environment(extra_env: dict[str, str]):
    """Apply ``extra_env`` for one call and restore the environment exactly afterwards."""
    saved = {k: os.environ.get(k) for k in extra_env}
    try:
        os.environ.update({k: str(v) for k, v in extra_env.items()})
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


class _CallRunner:
    """Runs one call and writes its one result record."""

    def __init__(self, invocation: _Invocation, call: dict[str, Any], requests: int):
        self.invocation = invocation
        self.storage = invocation.storage
        self.event = invocation.event
        self.call = call
        base = invocation.base
        self.header: dict[str, Any] = dict(base, call_id=call["id"])
        self.header["timings"] = dict(base["timings"])
        self.requests = requests
        self.key = protocol.result_key(self.event["prefix"], self.event["job_id"], call["id"], base["attempt"])
        limit = int(self.event.get("output_tail", 4096))
        self.out, self.err = _TailBuffer(limit, sys.__stdout__), _TailBuffer(limit, sys.__stderr__)

    def _write(self, status: str, payload: bytes = b"", locked: bool = False) -> str:
        if locked:
            return self._put(status, payload)
        with self.invocation.lock:
            return self._put(status, payload)

    def _put(self, status: str, payload: bytes) -> str:
        self.header["status"] = status
        self.header["timings"]["worker_result_write"] = time.time()
        self.header["storage_requests"] = self.requests + 1 + self.invocation.polls
        self.header["requests"] = {"get": self.requests + self.invocation.polls, "put": 1}  # by S3 price class
        if self.invocation.meter is not None:
            self.header["billing"] = self.invocation.meter.bill()
        self.invocation.polls = 0
        self.invocation.recorded.add(self.call["id"])
        try:
            # First writer wins: a duplicate delivery of the same call (async Lambda is at-least-once)
            # leaves the first result in place.
            record = protocol.encode_result(self.header, payload, key=self.invocation.key, storage_key=self.key)
            if not self.storage.put_if_absent(self.key, record):
                return "duplicate"
            return status
        except Exception as e:
            return self._put_bare(e)

    def _put_bare(self, error: Exception) -> str:
        """The record could not be written: try a failure record without payload, then give up loudly."""
        if self.header.get("error", {}).get("kind") != protocol.FAIL_STORAGE or self.header.get("status") != protocol.STATUS_FAILED:
            self.header.pop("result_bytes", None)
            self.header["status"] = protocol.STATUS_FAILED
            self.header["error"] = {
                "kind": protocol.FAIL_STORAGE,
                "message": f"the call's record could not be written to storage: {type(error).__name__}: {error}",
            }
            if "requests" in self.header:
                self.header["requests"]["put"] += 1
            try:
                if self.storage.put_if_absent(self.key, protocol.encode_result(self.header, key=self.invocation.key, storage_key=self.key)):
                    return protocol.STATUS_FAILED
                return "duplicate"
            except Exception as e:
                error = e
        return self.invocation.not_recorded(f"call {self.call['id']}: no record could be written to storage ({type(error).__name__}: {error})")

    def fail(self, kind: str, message: str, exc: BaseException | None = None, locked: bool = False) -> str:
        """Record a call that could not run to the end; ``exc`` travels so the host can re-raise it."""
        error = {"kind": kind, "message": message}
        payload = b""
        if exc is not None:
            error.update(serialize.describe_exception(exc), message=message)
            payload = serialize.dumps_exception(exc) or b""
        self.header["error"] = error
        return self._write(protocol.STATUS_FAILED, payload, locked)

    def capture_output(self) -> None:
        self.header["stdout"] = self.out.text()
        self.header["stderr"] = self.err.text()
        if self.out.dropped or self.err.dropped:
            self.header["output_dropped"] = {"stdout": self.out.dropped, "stderr": self.err.dropped}

    def _load_function(self) -> Any:
        key = protocol.func_key(self.event["prefix"], self.event["job_id"])
        cache_key = (repr(sorted(self.event["storage"].items())), key)
        job_function = _func_cache.get(cache_key)
        if job_function is None:
            data = self.storage.get(key)
            self.requests += 1
            job_function = serialize.load_job_function(protocol.open_object(self.invocation.key, key, data))
            if len(_func_cache) >= _FUNC_CACHE_MAX:
                _func_cache.pop(next(iter(_func_cache)))
            _func_cache[cache_key] = job_function
        func, token, functions = job_function
        serialize.use_function_table(token, functions)
        return func

    def _load_argument(self) -> Any:
        offset, length = self.call["range"]
        key = protocol.args_key(self.event["prefix"], self.event["job_id"], protocol.shard_of(self.call["id"]))
        data = self.storage.get_range(key, offset, length)
        self.requests += 1
        return self._resolve_refs(serialize.loads(protocol.open_argument(self.invocation.key, key, self.call, data)))

    def _resolve_refs(self, value: Any) -> Any:
        """Replace StorageRef placeholders (in lists, tuples and dicts) with the stored values."""
        if isinstance(value, protocol.StorageRef):
            data = self.storage.get(value.key)
            self.requests += 1
            header, start = protocol.decode_header(data, key=self.invocation.key, storage_key=value.key)
            if header.get("status") != protocol.STATUS_OK:
                raise RuntimeError(f"input {value.key} did not succeed: {header.get('error')}")
            return serialize.loads(protocol.open_payload(header, memoryview(data)[start:], key=self.invocation.key, storage_key=value.key))
        if type(value) in (list, tuple):
            return type(value)(self._resolve_refs(v) for v in value)
        if type(value) is dict:
            return {k: self._resolve_refs(v) for k, v in value.items()}
        return value

    def run(self) -> str:
        timings = self.header["timings"]
        try:
            func = self._load_function()
            arg = self._load_argument()
            fetched = self.invocation.requests
            extra_env = self.invocation.extra_env()
            self.requests += self.invocation.requests - fetched
        except (KeyNotFound, StorageDenied) as e:
            if self.invocation.job_deleted():
                return self.invocation.not_recorded(
                    f"call {self.call['id']}: job {self.event['job_id']} was deleted from storage before this call "
                    "ran (its host took the result from another attempt and cleaned up, or `dask-wren clean` "
                    "removed it): nothing recorded"
                )
            return self.fail(protocol.FAIL_SETUP, _MISSING_PAYLOAD.format(detail=e))
        except IntegrityError as e:  # nothing of the object was unpickled; running it again would not help
            return self.fail(protocol.FAIL_INTEGRITY, str(e))
        except StorageError as e:  # outlived the client's retries: the host may try the call again
            return self.fail(protocol.FAIL_STORAGE, f"storage failed while loading the call: {e}")
        except Exception as e:
            _hint_missing_module(e)
            return self.fail(protocol.FAIL_SETUP, "could not load the function or its argument on the worker", e)
        timings["worker_setup_done"] = time.time()
        value: Any = None
        raised: BaseException | None = None
        exited: SystemExit | None = None
        with _environment(extra_env):
            timings["worker_call_start"] = time.time()
            try:
                with redirect_stdout(self.out), redirect_stderr(self.err):
                    value = func(arg)
            except SystemExit as e:
                exited = e
            except Exception as e:
                raised = e
            timings["worker_call_end"] = time.time()
        self.capture_output()
        if exited is not None:
            return self._exit(exited)
        if raised is not None:
            _hint_missing_module(raised)
            self.header["error"] = dict(kind="exception", **serialize.describe_exception(_trim(raised)))
            return self._write(protocol.STATUS_ERROR, serialize.dumps_exception(raised) or b"")
        try:
            payload = serialize.dumps(value)
        except Exception as e:
            return self.fail(protocol.FAIL_RESULT, f"the function returned a {type(value).__name__} that cannot be pickled", e)
        self.header["result_bytes"] = len(payload)
        return self._write(protocol.STATUS_OK, payload)

    def _exit(self, exc: SystemExit) -> str:
        """The function called ``sys.exit``: record it, with its last output, then let the process end
        as the function asked (its environment is replaced; other calls of this invocation get
        their records from whoever notices the process gone)."""
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        message = f"the function called sys.exit({exc.code!r}) and its worker process exited with code {code}"
        tail = (self.header.get("stdout", "") + self.header.get("stderr", ""))[-2000:].strip()
        if tail:
            message += f"; the end of its output:\n{tail}"
        self.fail(protocol.FAIL_EXIT, message)
        raise exc


def _hint_missing_module(exc: BaseException) -> None:
    """A module the function needs is not installed on the workers: say how to add it."""
    missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__ or exc.__context__
    if not isinstance(missing, ModuleNotFoundError) or not missing.name or not hasattr(exc, "add_note"):
        return
    package = missing.name.split(".")[0]
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        where = (
            f"add the package that provides it to the Lambda runtime: `dask-wren deploy --packages {package}` "
            "(or --requirements requirements.txt)"
        )
    else:
        where = (
            f"install it where the workers run (`pip install {package}` in this Python environment); on AWS "
            f"Lambda, `dask-wren deploy --packages {package}` adds it to the runtime"
        )
    exc.add_note(f"dask-wren: module {missing.name!r} is not installed on the worker: {where}")


def _trim(exc: BaseException) -> BaseException:
    """Drop this handler's own frame from the traceback the user sees."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        exc.__traceback__ = tb.tb_next
    return exc


def _process_started() -> float:
    """When this process started (Linux: from /proc, to 10 ms), else when this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return PROCESS_START


#: Milliseconds from this process's start until the handler was ready for its first invocation (the
#: end of this module's import): Lambda's INIT phase, billed on a cold start.  Measured here, last.
INIT_MS = math.ceil(max(0.0, time.time() - _process_started()) * 1000)
