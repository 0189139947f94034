"""What the stand-ins' HTTP servers share: one on 127.0.0.1, served from a daemon thread.

A subclass of ``LoopbackServer`` names its request handler (a ``LoopbackHandler`` subclass) and
implements ``_handle(request, method)``; ``start()`` (port 0: a free port), ``address``,
``url``, ``stop()`` / ``close()`` and the context manager come from here.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar

_S = TypeVar("_S", bound="LoopbackServer")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer


class LoopbackHandler(BaseHTTPRequestHandler):
    """Hands every request to the server's owner: ``owner._handle(self, method)``."""

    protocol_version = "HTTP/1.1"
    server: _Server
    log_prefix: ClassVar[str] = "loopback: "

    def do_GET(self) -> None:
        self.server.owner._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.owner._handle(self, "POST")

    def body(self) -> bytes:
        """The request's body (``Content-Length`` bytes)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> bool:
        """Send a JSON response; False if the client went away."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            return False

    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger(type(self).__module__).debug(self.log_prefix + format, *args)


class LoopbackServer:
    """An HTTP server on 127.0.0.1:``port`` (0: a free port), serving from a daemon thread."""

    handler_class: ClassVar[type[LoopbackHandler]] = LoopbackHandler
    thread_name: ClassVar[str] = "loopback-http"
    backlog: ClassVar[int] = 5  # connections waiting to be accepted (socketserver's default)

    def __init__(self, *, port: int = 0):
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self: _S) -> _S:
        if self._server is None:
            server = _Server(("127.0.0.1", self._port), self.handler_class, bind_and_activate=False)
            server.owner = self
            server.request_queue_size = self.backlog
            try:
                server.server_bind()
                server.server_activate()
            except BaseException:
                server.server_close()
                raise
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        if self._server is None:
            raise RuntimeError(f"the {type(self).__name__} is not started: call start() first")
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self) -> None:
        """Stop serving and close the socket (requests being handled finish on their threads)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def close(self) -> None:
        self.stop()

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _handle(self, request: LoopbackHandler, method: str) -> None:
        raise NotImplementedError
