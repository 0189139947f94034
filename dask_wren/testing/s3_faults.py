"""``FaultyS3``: a loopback proxy in front of an S3 endpoint that fails a share of the requests.

S3 answers some requests with ``503 SlowDown`` (while it scales a prefix) or ``500 InternalError``;
clients are expected to retry them.  The proxy forwards each request to the real endpoint (moto's
server, MinIO, ...) unchanged, except that with probability ``error_rate`` it answers one of those
two errors itself, without forwarding.  Point the executor's ``endpoint_url`` at ``proxy.url``: the
host and the workers (the storage spec travels in the event) then both see the errors.

``counters``: ``requests`` seen, errors ``injected``, injected requests ``retried`` (the same
method and path came again) and ``recovered`` (that retry succeeded).  The random choices are
seeded, so a run is repeatable up to the order the requests arrive in.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from dask_wren.testing.loopback import LoopbackHandler, LoopbackServer

__all__ = ["FaultyS3", "S3FaultCounters"]

#: S3's own answers for a request it will not serve now: (status, code, message).
S3_ERRORS = (
    (503, "SlowDown", "Please reduce your request rate."),
    (500, "InternalError", "We encountered an internal error. Please try again."),
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}


@dataclass
class S3FaultCounters:
    requests: int = 0
    injected: int = 0
    retried: int = 0  # injected requests that came again
    recovered: int = 0  # ... and were then served


class _Handler(LoopbackHandler):
    log_prefix = "faulty s3: "
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

    def do_PUT(self) -> None:
        self.server.owner._handle(self, "PUT")

    def do_HEAD(self) -> None:
        self.server.owner._handle(self, "HEAD")

    def do_DELETE(self) -> None:
        self.server.owner._handle(self, "DELETE")

    def body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        return super().body()


class FaultyS3(LoopbackServer):
    """Forwards to ``upstream`` (an S3 endpoint URL), failing a share ``error_rate`` of requests."""

    handler_class = _Handler
    thread_name = "faulty-s3"
    backlog = 256  # every worker's and the host's connection pools connect here

    def __init__(self, upstream: str, *, error_rate: float = 0.0, seed: int = 0, port: int = 0):
        super().__init__(port=port)
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.error_rate = error_rate
        self.counters = S3FaultCounters()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._failed: set[tuple[str, str]] = set()  # injected, not seen again yet
        self._local = threading.local()

    def snapshot(self) -> S3FaultCounters:
        with self._lock:
            return replace(self.counters)

    def _handle(self, request: LoopbackHandler, method: str) -> None:
        body = request.body()
        key = (method, request.path)
        with self._lock:
            c = self.counters
            c.requests += 1
            retry = key in self._failed
            if retry:
                self._failed.discard(key)
                c.retried += 1
            error = self._rng.choice(S3_ERRORS) if self._rng.random() < self.error_rate else None
            if error is not None:
                c.injected += 1
                self._failed.add(key)
        if error is not None:
            status, code, message = error
            data = b"" if method == "HEAD" else (
                f"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<RequestId>faulty-s3</RequestId></Error>"
            ).encode()
            self._reply(request, method, status, [("Content-Type", "application/xml")], data)
            return
        status, headers, data = self._forward(request, method, body)
        if retry and status < 500:
            with self._lock:
                self.counters.recovered += 1
        self._reply(request, method, status, headers, data)

    def _forward(self, request: LoopbackHandler, method: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn = getattr(self._local, "conn", None)
        for attempt in range(2):  # a kept-alive connection the upstream closed: one new try
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(*self._upstream, timeout=60)
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn.request(method, request.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self._local.conn = None
                if attempt:
                    raise
                continue
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
            if method == "HEAD":
                kept.append(("Content-Length", response.getheader("Content-Length", "0")))
            return response.status, kept, data
        raise http.client.HTTPException("unreachable: the second attempt returns or raises")

    @staticmethod
    def _reply(request: LoopbackHandler, method: str, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        try:
            request.send_response_only(status)
            for k, v in headers:
                request.send_header(k, v)
            if method != "HEAD":
                request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            if data and method != "HEAD":
                request.wfile.write(data)
            request.wfile.flush()
        except OSError:
            pass  # the client went away: it retries or gives up on its own
