"""The wire protocol: the one place where host and worker agree.

Everything that crosses between the host and a worker is defined here: the storage key layout,
the invocation event (plain JSON, versioned) and the result record (a length-prefixed JSON header
followed by the pickled value).  The worker imports this module, so it must stay free of host code.

Key layout under ``{prefix}/{job_id}/``::

    func.pkl                  the cloudpickled function, written once per job
    args/{shard}.pkl          the pickled arguments of a shard's calls, concatenated; each call
                              reads its byte range
    calls/{invocation}.json   an invocation's call list, when it would make the event too large
    env.json                  the job's extra_env, when it would make the event too large
    r/{shard}/{call_id}       the result record of a call's first attempt
    r/{shard}/{call_id}.{n}   the record of its attempt n (a retry or a backup, n >= 1)

A shard is a block of ``CALLS_PER_SHARD`` consecutive calls (see ``shard_of``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 3  # 2: results and arguments spread over key shards; 3: a record per attempt

#: Result statuses.  ``ok``: the function returned.  ``error``: the function raised.
#: ``failed``: the call could not run to the end (setup error, dead worker, timeout, ...).
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_FAILED = "failed"

#: Failure kinds carried in ``header["error"]["kind"]`` for ``failed`` records.
FAIL_SETUP = "setup"  # function or arguments could not be loaded on the worker
FAIL_RESULT = "result"  # the return value could not be pickled
FAIL_WORKER_DIED = "worker_died"
FAIL_TIMEOUT = "timeout"
FAIL_VERSION = "version"
FAIL_HANDLER = "handler"  # the handler itself failed, e.g. it could not reach storage
FAIL_LOST = "lost"  # no result arrived within the call's timeout plus a grace period (AWS)
FAIL_INVOKE = "invoke"  # the invoke request failed after the client's retries (AWS)
FAIL_BACKEND = "backend"  # the backend's own machinery failed (a dispatcher thread raised)
FAIL_STORAGE = "storage"  # storage failed the worker after the client's own retries (5xx, network)

_MAGIC = b"WREN"
_LEN = struct.Struct(">I")
#: How many bytes a reader fetches first when it only wants the header.
HEADER_PROBE_BYTES = 64 * 1024


def job_prefix(prefix: str, job_id: str) -> str:
    return f"{prefix}/{job_id}/"


def func_key(prefix: str, job_id: str) -> str:
    return f"{prefix}/{job_id}/func.pkl"


#: Calls per key shard.  S3 serves about 3,500 writes and 5,500 reads a second per prefix, and
#: thousands of calls of one job start and finish together: each block of calls reads its
#: arguments from, and writes its results under, a prefix of its own.  Blocks are contiguous and
#: zero-padded, so listing a job's results still returns them in call order.
CALLS_PER_SHARD = 1000


def shard_of(call_id: str) -> str:
    """The key shard of a call: ``0000`` for calls 0-999, ``0001`` for 1000-1999, ..."""
    return f"{int(call_id) // CALLS_PER_SHARD:04d}"


def args_key(prefix: str, job_id: str, shard: str) -> str:
    """The arguments of the calls of one shard, one object (each call reads its byte range)."""
    return f"{prefix}/{job_id}/args/{shard}.pkl"


def calls_key(prefix: str, job_id: str, invocation: int) -> str:
    return f"{prefix}/{job_id}/calls/{invocation:06d}.json"


def env_key(prefix: str, job_id: str) -> str:
    return f"{prefix}/{job_id}/env.json"


def results_prefix(prefix: str, job_id: str) -> str:
    return f"{prefix}/{job_id}/r/"


def result_name(call_id: str, attempt: int = 0) -> str:
    """A record's key below ``results_prefix``: ``{shard}/{call_id}``, or ``{shard}/{call_id}.{attempt}``
    for a later attempt.  Every attempt writes a key of its own (first writer wins per key, against
    duplicate deliveries of the same attempt); ``.`` sorts before digits, so a listing still
    returns the records in call order."""
    name = f"{shard_of(call_id)}/{call_id}"
    return f"{name}.{attempt}" if attempt else name


def parse_result_name(name: str) -> tuple[str, int]:
    """``(call_id, attempt)`` of a record's key (its last part is enough)."""
    call_id, _, attempt = name.rsplit("/", 1)[-1].partition(".")
    return call_id, int(attempt) if attempt else 0


#: Sorts after every attempt of a call and before the next call (see ``result_name``).
AFTER_ATTEMPTS = "~"


def result_key(prefix: str, job_id: str, call_id: str, attempt: int = 0) -> str:
    return f"{prefix}/{job_id}/r/{result_name(call_id, attempt)}"


def call_id_for(index: int) -> str:
    """Call ids sort in submission order and are stable, so a retried call writes the same key."""
    return f"{index:06d}"


@dataclass(frozen=True)
class StorageRef:
    """A placeholder in a call's argument for a value that already lives in storage.

    The object under ``key`` is a result record; the worker replaces the placeholder with its
    payload, and a failed record raises on the worker.
    """

    key: str


def encode_result(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Serialize one result record: magic, header length, JSON header, pickled payload."""
    head = json.dumps(header, separators=(",", ":"), default=str).encode()
    return b"".join((_MAGIC, _LEN.pack(len(head)), head, payload))


def header_length(blob: bytes) -> int:
    """Total bytes up to the end of the header (magic + length + JSON); needs the first 8 bytes."""
    if blob[:4] != _MAGIC:
        raise ValueError("not a dask-wren result record (bad magic bytes)")
    (n,) = _LEN.unpack_from(blob, 4)
    return 8 + n


def decode_header(blob: bytes) -> tuple[dict[str, Any], int]:
    """Return the header and the offset where the payload starts."""
    end = header_length(blob)
    if len(blob) < end:
        raise ValueError("truncated result record header")
    return json.loads(blob[8:end].decode()), end  # UTF-8 by construction: skips json's detection


def build_event(
    *,
    prefix: str,
    job_id: str,
    storage: dict[str, Any],
    calls: list[dict[str, Any]] | None = None,
    calls_key: str | None = None,
    timeout: float,
    extra_env: dict[str, str] | None = None,
    host_versions: dict[str, str] | None = None,
    output_tail: int = 4096,
    submitted: float | None = None,
) -> dict[str, Any]:
    """One invocation's event.  ``calls`` items: ``{"id": call_id, "range": [offset, length]}``.

    ``calls`` travels inline unless the event would grow too large; then it is stored under
    ``calls_key`` and the worker reads it from there.
    """
    if (calls is None) == (calls_key is None):
        raise ValueError("give exactly one of calls or calls_key")
    event: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "prefix": prefix,
        "job_id": job_id,
        "storage": storage,
        "timeout": timeout,
        "extra_env": extra_env or {},
        "host_versions": host_versions or {},
        "output_tail": output_tail,
        "submitted": submitted,
    }
    if calls is not None:
        event["calls"] = calls
    else:
        event["calls_key"] = calls_key
    return event
