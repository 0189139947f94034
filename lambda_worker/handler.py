"""``lambda_handler(event, context)``: the entry point AWS Lambda (or a local worker) calls.

For each call in the event it loads the function (cached while this process stays warm), reads
the call's argument by byte range, runs the function with ``extra_env`` applied and stdout/stderr
captured, and writes exactly one result record, whatever happened.  It imports only the shared
modules (protocol, serialize, storage), never host code.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections import deque
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Any

from lambda_worker import protocol, serialize
from lambda_worker.storage import KeyNotFound, Storage, storage_from_spec

#: When this process (the Lambda execution environment) started; worker clocks are not host clocks.
PROCESS_START = time.time()
_state = {"invocations": 0}
_func_cache: dict[tuple[str, str], Any] = {}
_FUNC_CACHE_MAX = 8


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    start = time.time()
    cold = _state["invocations"] == 0
    _state["invocations"] += 1
    request_id = getattr(context, "aws_request_id", None) or uuid.uuid4().hex
    version = event.get("v")
    storage = storage_from_spec(event["storage"])
    job_id = event["job_id"]
    calls = event.get("calls")
    requests = 0
    if calls is None:
        import json

        calls = json.loads(storage.get(event["calls_key"]))
        requests += 1
    base = {
        "job_id": job_id,
        "request_id": request_id,
        "worker_pid": os.getpid(),
        "worker_host": os.uname().nodename if hasattr(os, "uname") else "",
        "worker_versions": serialize.runtime_versions(),
        "timings": {"worker_start": PROCESS_START, "worker_invoked": start, "worker_cold": cold},
    }
    mismatch = _version_problem(version, event.get("host_versions") or {})
    statuses: dict[str, int] = {}
    for i, call in enumerate(calls):
        runner = _CallRunner(storage, event, call, base, requests if i == 0 else 0)
        status = runner.fail(protocol.FAIL_VERSION, mismatch) if mismatch else runner.run()
        statuses[status] = statuses.get(status, 0) + 1
    return {"request_id": request_id, "job_id": job_id, "calls": len(calls), "statuses": statuses}


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


class _TailBuffer(io.TextIOBase):
    """Keeps only the last ``limit`` characters written: bounded memory for chatty functions."""

    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: deque[str] = deque()
        self.size = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
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

    def __init__(self, storage: Storage, event: dict[str, Any], call: dict[str, Any], base: dict[str, Any], requests: int):
        self.storage = storage
        self.event = event
        self.call = call
        self.header: dict[str, Any] = dict(base, call_id=call["id"])
        self.header["timings"] = dict(base["timings"])
        self.requests = requests
        self.key = protocol.result_key(event["prefix"], event["job_id"], call["id"])

    def _write(self, status: str, payload: bytes = b"") -> str:
        self.header["status"] = status
        self.header["timings"]["worker_result_write"] = time.time()
        self.header["storage_requests"] = self.requests + 1
        # First writer wins: a duplicate delivery of the same call (async Lambda is at-least-once)
        # leaves the first result in place.
        if not self.storage.put_if_absent(self.key, protocol.encode_result(self.header, payload)):
            return "duplicate"
        return status

    def fail(self, kind: str, message: str, exc: BaseException | None = None) -> str:
        """Record a call that could not run to the end; ``exc`` travels so the host can re-raise it."""
        error = {"kind": kind, "message": message}
        payload = b""
        if exc is not None:
            error.update(serialize.describe_exception(exc), message=message)
            payload = serialize.dumps_exception(exc) or b""
        self.header["error"] = error
        return self._write(protocol.STATUS_FAILED, payload)

    def _load_function(self) -> Any:
        key = protocol.func_key(self.event["prefix"], self.event["job_id"])
        cache_key = (repr(sorted(self.event["storage"].items())), key)
        job_function = _func_cache.get(cache_key)
        if job_function is None:
            data = self.storage.get(key)
            self.requests += 1
            job_function = serialize.load_job_function(data)
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
        return self._resolve_refs(serialize.loads(data))

    def _resolve_refs(self, value: Any) -> Any:
        """Replace StorageRef placeholders (in lists, tuples and dicts) with the stored values."""
        if isinstance(value, protocol.StorageRef):
            data = self.storage.get(value.key)
            self.requests += 1
            if not value.result_record:
                return serialize.loads(data)
            header, start = protocol.decode_header(data)
            if header.get("status") != protocol.STATUS_OK:
                raise RuntimeError(f"input {value.key} did not succeed: {header.get('error')}")
            return serialize.loads(data[start:])
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
        except KeyNotFound as e:
            return self.fail(protocol.FAIL_SETUP, f"the job's payload is missing from storage ({e}); was the job cleaned up before it ran?")
        except Exception as e:
            return self.fail(protocol.FAIL_SETUP, "could not load the function or its argument on the worker", e)
        timings["worker_setup_done"] = time.time()
        limit = int(self.event.get("output_tail", 4096))
        out, err = _TailBuffer(limit), _TailBuffer(limit)
        value: Any = None
        raised: BaseException | None = None
        with _environment(self.event.get("extra_env") or {}):
            timings["worker_call_start"] = time.time()
            try:
                with redirect_stdout(out), redirect_stderr(err):
                    value = func(arg)
            except Exception as e:
                raised = e
            timings["worker_call_end"] = time.time()
        self.header["stdout"] = out.text()
        self.header["stderr"] = err.text()
        if out.dropped or err.dropped:
            self.header["output_dropped"] = {"stdout": out.dropped, "stderr": err.dropped}
        if raised is not None:
            self.header["error"] = dict(kind="exception", **serialize.describe_exception(_trim(raised)))
            return self._write(protocol.STATUS_ERROR, serialize.dumps_exception(raised) or b"")
        try:
            payload = serialize.dumps(value)
        except Exception as e:
            return self.fail(protocol.FAIL_RESULT, f"the function returned a {type(value).__name__} that cannot be pickled", e)
        self.header["result_bytes"] = len(payload)
        try:
            return self._write(protocol.STATUS_OK, payload)
        except Exception as e:  # e.g. too large for the store; still leave a record
            self.header.pop("result_bytes", None)
            return self.fail(protocol.FAIL_RESULT, "the result could not be written to storage", e)


def _trim(exc: BaseException) -> BaseException:
    """Drop this handler's own frame from the traceback the user sees."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        exc.__traceback__ = tb.tb_next
    return exc
