"""The local backend's stand-in for the Lambda runtime: one warm worker process.

Started by the host as ``python -m lambda_worker.local_runtime FD MEMORY_MB NAME`` in an empty
directory with a clean ``sys.path``, so it sees installed packages only, as Lambda does.  It
receives one invocation at a time over the socket ``FD``, runs the real ``lambda_handler`` with a
Lambda-like context, and reports it done.  If the process dies, the host reads the exit code and
writes the failure records itself; a timeout or a cancel is a kill from the host.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from multiprocessing.connection import Connection


class LocalContext:
    """The attributes of Lambda's context object that handlers use."""

    def __init__(self, request_id: str, timeout: float, memory_mb: int, function_name: str):
        self.aws_request_id = request_id
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline = time.time() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def serve(conn: Connection, memory_mb: int, function_name: str) -> None:
    from lambda_worker.handler import lambda_handler

    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the host went away
            return
        if message[0] == "exit":
            return
        _, request_id, event, timeout = message
        context = LocalContext(request_id, timeout, memory_mb, function_name)
        try:
            summary = lambda_handler(event, context)
        except Exception as e:  # records are the handler's job; this is a storage outage or a bug
            summary = {"handler_error": f"{type(e).__name__}: {e}"}
        conn.send(("done", request_id, summary))


def main() -> None:
    fd, memory_mb, function_name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    faulthandler.enable()
    serve(Connection(fd), memory_mb, function_name)


if __name__ == "__main__":
    main()
