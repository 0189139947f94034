"""A small Lambda Runtime API server, to run the handler under AWS's own runtime client.

Inside Lambda, a runtime process (for Python: ``awslambdaric``, AWS's runtime interface client)
fetches events from the Runtime API at ``$AWS_LAMBDA_RUNTIME_API`` and posts back what the
handler returned.  ``RuntimeAPIServer`` is that API on 127.0.0.1, so the real ``awslambdaric``
can drive ``lambda_worker.handler.lambda_handler`` exactly as Lambda does::

    server = RuntimeAPIServer().start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "awslambdaric", "lambda_worker.handler.lambda_handler"],
        env={**os.environ, "AWS_LAMBDA_RUNTIME_API": server.address, ...},
    )
    request_id = server.submit(event)
    ok, body = server.wait_result(request_id, timeout=60)   # body: the handler's return value
    proc.terminate(); server.stop()

Routes (the subset of https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html a runtime
uses):

``GET /2018-06-01/runtime/invocation/next``
    Blocks until an event is submitted; answers with the event JSON and the headers
    ``Lambda-Runtime-Aws-Request-Id``, ``Lambda-Runtime-Deadline-Ms`` (epoch milliseconds),
    ``Lambda-Runtime-Invoked-Function-Arn`` and ``Lambda-Runtime-Trace-Id``.
``POST /2018-06-01/runtime/invocation/{id}/response``
    The handler's result: 202.  ``wait_result`` then returns ``(True, result)``.
``POST /2018-06-01/runtime/invocation/{id}/error``
    The handler raised: 202.  ``wait_result`` returns ``(False, error_document)``; the error type
    from the ``Lambda-Runtime-Function-Error-Type`` header is added as ``errorType`` if missing.
``POST /2018-06-01/runtime/init/error``
    The runtime could not load the handler: 202.  ``init_error`` holds the document and
    ``wait_result`` raises ``RuntimeInitError`` instead of waiting for a result that cannot come.

Unknown request ids get 400 (``InvalidRequestID``), a second result for the same id 403
(``InvalidStateTransition``).  The deadline is not enforced: a runtime that overruns is the
caller's to stop.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from typing import Any

from dask_wren.testing.loopback import LoopbackHandler, LoopbackServer

__all__ = ["RuntimeAPIServer", "RuntimeInitError"]

_PREFIX = "/2018-06-01/runtime"


class RuntimeInitError(RuntimeError):
    """The runtime reported that it could not initialise (e.g. the handler did not import)."""

    def __init__(self, document: Any):
        self.document = document
        super().__init__(f"the Lambda runtime failed to initialise: {document}")


class _Handler(LoopbackHandler):
    log_prefix = "runtime api: "


class RuntimeAPIServer(LoopbackServer):
    """The Lambda Runtime API on 127.0.0.1 (``port=0``: a free port); ``address`` is ``host:port``,
    the value for ``AWS_LAMBDA_RUNTIME_API``."""

    handler_class = _Handler
    thread_name = "runtime-api"

    def __init__(self, *, function_name: str = "dask-wren", timeout: float = 300.0, region: str = "us-east-1", account: str = "000000000000", port: int = 0):
        super().__init__(port=port)
        self.function_name = function_name
        self.timeout = timeout
        self.function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self._events: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        self._cond = threading.Condition()
        self._submitted: set[str] = set()
        self._results: dict[str, tuple[bool, Any]] = {}
        self.init_error: Any = None
        self._closed = threading.Event()

    def stop(self) -> None:
        self._closed.set()  # runtimes waiting for an event get an answer, so the server can stop
        super().stop()

    # -- API -------------------------------------------------------------------------------------

    def submit(self, event: Any, *, timeout: float | None = None) -> str:
        """Queue ``event`` for the next runtime that asks; returns its request id."""
        request_id = str(uuid.uuid4())
        with self._cond:
            self._submitted.add(request_id)
        self._events.put((request_id, event, self.timeout if timeout is None else timeout))
        return request_id

    def wait_result(self, request_id: str, timeout: float | None = None) -> tuple[bool, Any]:
        """``(True, result)`` or ``(False, error_document)`` once the runtime has answered.

        Raises ``TimeoutError`` after ``timeout`` seconds, ``RuntimeInitError`` if the runtime
        reported an init error, ``KeyError`` for an id ``submit`` did not return.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if request_id not in self._submitted:
                raise KeyError(request_id)
            while request_id not in self._results:
                if self.init_error is not None:
                    raise RuntimeInitError(self.init_error)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no result for invocation {request_id} within {timeout} s")
                self._cond.wait(remaining)
            return self._results[request_id]

    # -- HTTP ------------------------------------------------------------------------------------

    def _handle(self, req: _Handler, method: str) -> None:
        raw = req.body()
        path = req.path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path == f"{_PREFIX}/invocation/next":
            self._next(req)
            return
        if method == "POST" and path == f"{_PREFIX}/init/error":
            with self._cond:
                self.init_error = self._document(raw, req)
                self._cond.notify_all()
            self._respond(req, 202, {"status": "OK"})
            return
        bits = path[len(_PREFIX) + 1 :].split("/") if path.startswith(_PREFIX + "/") else []
        if method == "POST" and len(bits) == 3 and bits[0] == "invocation" and bits[2] in ("response", "error"):
            request_id, ok = bits[1], bits[2] == "response"
            with self._cond:
                if request_id not in self._submitted:
                    status, body = 400, {"errorMessage": f"unknown request id {request_id}", "errorType": "InvalidRequestID"}
                elif request_id in self._results:
                    status, body = 403, {"errorMessage": f"invocation {request_id} already has a result", "errorType": "InvalidStateTransition"}
                else:
                    self._results[request_id] = (ok, self._document(raw, req))
                    self._cond.notify_all()
                    status, body = 202, {"status": "OK"}
            self._respond(req, status, body)
            return
        self._respond(req, 404, {"errorMessage": f"unknown path {method} {req.path}", "errorType": "NotFound"})

    def _next(self, req: _Handler) -> None:
        while True:
            if self._closed.is_set():
                self._respond(req, 500, {"errorMessage": "the runtime API is shutting down", "errorType": "ShuttingDown"})
                return
            try:
                request_id, event, timeout = self._events.get(timeout=0.2)
                break
            except queue.Empty:
                continue
        now = time.time()
        headers = {
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Deadline-Ms": str(int((now + timeout) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(now):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
        }
        if not self._respond(req, 200, event, headers):  # the runtime went away: give it to the next one
            self._events.put((request_id, event, timeout))

    @staticmethod
    def _document(raw: bytes, req: _Handler) -> Any:
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw.decode(errors="replace")
        error_type = req.headers.get("Lambda-Runtime-Function-Error-Type")
        if error_type and isinstance(doc, dict):
            doc.setdefault("errorType", error_type)
        return doc

    @staticmethod
    def _respond(req: _Handler, status: int, body: Any, headers: dict[str, str] | None = None) -> bool:
        return req.answer(status, json.dumps(body).encode(), headers)
