"""The stand-in Lambda endpoint's own request parsing (it skips the stdlib's email-based header
parser): what raw HTTP clients get back."""

import socket
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.timeout(60)


def exchange(standin, data, *, read_until_close=False):
    """Send raw bytes; return what came back (until the server closes, or the first response)."""
    url = urlsplit(standin.lambda_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out, True
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                return out, False


def dry_run(standin, version="HTTP/1.1", extra=b""):
    path = f"/2015-03-31/functions/{standin.function_name}/invocations"
    return (f"POST {path} {version}\r\nHost: x\r\n".encode() + extra
            + b"x-amz-invocation-type: DryRun\r\nContent-Length: 2\r\n\r\n{}")


def test_header_names_are_case_insensitive(standin):
    out, _ = exchange(standin, dry_run(standin))
    assert out.startswith(b"HTTP/1.1 204")


def test_a_malformed_request_line_is_400(standin):
    out, _ = exchange(standin, b"NONSENSE\r\n\r\n", read_until_close=True)
    assert b"Error code: 400" in out  # no version in the request line: an HTTP/0.9 answer (no status line), as the stdlib's


def test_a_malformed_header_is_400(standin):
    out, _ = exchange(standin, dry_run(standin, extra=b"no colon here\r\n"), read_until_close=True)
    assert out.startswith(b"HTTP/1.1 400")


def test_too_many_headers_is_431(standin):
    extra = b"".join(f"X-H{i}: v\r\n".encode() for i in range(101))
    out, _ = exchange(standin, dry_run(standin, extra=extra), read_until_close=True)
    assert out.startswith(b"HTTP/1.1 431")


def test_http_1_0_closes_and_1_1_keeps_the_connection(standin):
    out, closed = exchange(standin, dry_run(standin, "HTTP/1.0"), read_until_close=True)
    assert out.startswith(b"HTTP/1.1 204") and closed
    out, closed = exchange(standin, dry_run(standin, extra=b"Connection: close\r\n"), read_until_close=True)
    assert out.startswith(b"HTTP/1.1 204") and closed
    out, closed = exchange(standin, dry_run(standin))
    assert out.startswith(b"HTTP/1.1 204") and not closed


def test_expect_100_continue(standin):
    out, _ = exchange(standin, dry_run(standin, extra=b"Expect: 100-continue\r\n"))
    assert out.startswith(b"HTTP/1.1 100")
