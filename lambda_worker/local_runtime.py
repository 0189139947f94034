"""The local backend's stand-in for the Lambda runtime: one warm worker process.

Started by the host as ``python -m lambda_worker.local_runtime FD MEMORY_MB NAME HOST_PID`` in an empty
directory with a clean ``sys.path``, so it sees installed packages only, as Lambda does.  It
receives invocations over the socket ``FD`` and runs them in order with the real
``lambda_handler`` and a Lambda-like context, reporting each one done.  The host may send one
invocation ahead so the worker does not wait for it; it can withdraw that one with a cancel,
which is honoured if it arrives before the invocation starts.  A handler that raised is reported
with ``handler_raised`` in its summary (on Lambda, a function error), apart from a handler that
returned a ``handler_error`` of its own.  If the process dies, the host reads the exit code (the
local backend writes the failure records itself; the Lambda stand-in writes none).
"""

from __future__ import annotations

import faulthandler
import functools
import os
import signal
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any


class LocalContext:
    """The attributes of Lambda's context object that handlers use."""

    def __init__(self, request_id: str, timeout: float, memory_mb: int, function_name: str):
        self.aws_request_id = request_id
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.log_group_name, self.log_stream_name = _log_location(function_name)
        self._deadline = time.time() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


@functools.cache  # a worker's stdout stays where its host sent it
def _log_location(function_name: str) -> tuple[str, str]:
    """Where this worker's output goes, as (group, stream): the local backend sends a worker's
    stdout to its log file, named here as (its folder, its name); elsewhere (no such file, or no
    ``/proc``) the Lambda-like names, which name no file."""
    try:
        path = os.readlink("/proc/self/fd/1")
    except OSError:
        path = ""
    if os.path.isabs(path) and os.path.isfile(path):
        return os.path.dirname(path), os.path.basename(path)
    return f"/aws/lambda/{function_name}", f"local/{os.getpid()}"


def serve(conn: Connection, memory_mb: int, function_name: str) -> None:
    from lambda_worker.handler import lambda_handler

    pending: deque[tuple[str, dict[str, Any], float] | None] = deque()  # None: exit, in order
    withdrawn: set[str] = set()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            if not pending:
                _take(conn.recv(), pending, withdrawn)
            while conn.poll():  # see a withdrawal before starting what it withdraws
                _take(conn.recv(), pending, withdrawn)
        except EOFError:  # the host went away
            return
        if not pending:
            continue
        item = pending.popleft()
        if item is None:
            return
        request_id, event, timeout = item
        if request_id in withdrawn:
            withdrawn.discard(request_id)
            conn.send(("skipped", request_id))
            continue
        context = LocalContext(request_id, timeout, memory_mb, function_name)
        try:
            summary = lambda_handler(event, context)
        except Exception as e:  # records are the handler's job; it raised (Lambda: a function error)
            summary = {"handler_error": f"{type(e).__name__}: {e}", "handler_raised": True}
        conn.send(("done", request_id, summary))


def _take(message: tuple, pending: deque, withdrawn: set[str]) -> None:
    if message[0] == "invoke":
        pending.append(message[1:])
    elif message[0] == "withdraw":
        withdrawn.add(message[1])
    elif message[0] == "exit":
        pending.append(None)


def die_with_host(host_pid: int) -> None:
    """End this worker when its host dies, however it dies (SIGKILL included), so a killed
    notebook kernel leaves no worker running its calls: Linux's parent-death signal.  Elsewhere
    the worker still ends at its next idle read (EOF on the host's socket)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl: the EOF on the socket remains
            pass
    if os.getppid() != host_pid:  # the host died before the signal was armed
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def main() -> None:
    fd, memory_mb, function_name, host_pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    die_with_host(host_pid)
    faulthandler.enable()
    serve(Connection(fd), memory_mb, function_name)


if __name__ == "__main__":
    main()
