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
    a/{call_id}.{n}           the record of its attempt n >= 1 (a retry or a backup): few, so
                              the host lists them apart from the many first attempts
    job.json                  the job's manifest (``manifest_key``): plain JSON, unsigned, written
                              once before anything is invoked: who submitted the job (host, pid),
                              when, how many calls, the backend and function; ``dask-wren jobs`` and
                              ``dask_wren.jobs`` read jobs back from it and the records alone
    cancel.json               the job's cancel marker (``cancel_marker``): ``{"calls": "all"}`` or
                              ``{"calls": [call ids]}``; workers poll it every ``cancel_poll`` s
                              of the event and end an invocation whose unrecorded calls are all in it

A shard is a block of ``CALLS_PER_SHARD`` consecutive calls (see ``shard_of``).  Every object and
record above that holds a pickle carries a MAC (see "signed objects" below and ``signing``).

Under ``{prefix}/hosts/`` each executor leaves a record (``host_key``) before its first job, and
deletes it after its jobs: job ids are ``{executor_id}-{n:04d}``, so a record names the jobs of
one host process, whose objects are leftovers once that process is dead.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from lambda_worker.signing import MAC_BYTES, SigningKey, integrity_error

PROTOCOL_VERSION = 4  # 2: results and arguments spread over key shards; 3: a record per attempt; 4: signed

#: Result statuses.  ``ok``: the function returned.  ``error``: the function raised.
#: ``failed``: the call could not run to the end (setup error, dead worker, timeout, ...).
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_FAILED = "failed"

#: Failure kinds carried in ``header["error"]["kind"]`` for ``failed`` records.
FAIL_SETUP = "setup"  # function or arguments could not be loaded on the worker
FAIL_RESULT = "result"  # the return value could not be pickled
FAIL_WORKER_DIED = "worker_died"
FAIL_EXIT = "exit"  # the function called sys.exit: its own decision, so never retried
FAIL_TIMEOUT = "timeout"
FAIL_VERSION = "version"
FAIL_HANDLER = "handler"  # the handler itself failed, e.g. it could not reach storage
FAIL_LOST = "lost"  # no result arrived within the call's timeout plus a grace period (AWS)
FAIL_INVOKE = "invoke"  # the invoke request failed after the client's retries (AWS)
FAIL_BACKEND = "backend"  # the backend's own machinery failed (a dispatcher thread raised)
FAIL_STORAGE = "storage"  # storage failed the worker after the client's own retries (5xx, network)
FAIL_INTEGRITY = "integrity"  # an object the call needs does not verify (``signing``): never retried

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


def result_name(call_id: str) -> str:
    """A first attempt's record key below ``results_prefix``: ``{shard}/{call_id}``."""
    return f"{shard_of(call_id)}/{call_id}"


def attempts_prefix(prefix: str, job_id: str) -> str:
    return f"{prefix}/{job_id}/a/"


def result_key(prefix: str, job_id: str, call_id: str, attempt: int = 0) -> str:
    """Where attempt ``attempt`` of a call writes its record.  Every attempt has a key of its own
    (first writer wins per key, against duplicate deliveries of the same attempt)."""
    if attempt:
        return f"{prefix}/{job_id}/a/{call_id}.{attempt}"
    return f"{prefix}/{job_id}/r/{result_name(call_id)}"


def parse_result_key(key: str) -> tuple[str, int]:
    """``(call_id, attempt)`` of a record's key."""
    call_id, _, attempt = key.rsplit("/", 1)[-1].partition(".")
    return call_id, int(attempt) if attempt else 0


#: The manifest's name under its job's prefix.  Hosts delete it before the job's other objects:
#: a worker that finds the payload missing and the manifest gone writes no record (``handler``).
MANIFEST_NAME = "job.json"


def manifest_key(prefix: str, job_id: str) -> str:
    """The job's manifest: JSON that describes the job, for readers that have only storage."""
    return f"{prefix}/{job_id}/{MANIFEST_NAME}"


def cancel_key(prefix: str, job_id: str) -> str:
    return f"{prefix}/{job_id}/cancel.json"


#: ``cancel_marker``'s value for a whole job.
CANCEL_ALL = "all"


def cancel_marker(calls: str | list[str]) -> bytes:
    """The cancel marker's content: ``CANCEL_ALL`` or the cancelled call ids."""
    return json.dumps({"calls": calls}).encode()


def cancelled_calls(marker: bytes) -> str | set[str]:
    """``CANCEL_ALL`` or the set of cancelled call ids in a cancel marker."""
    calls = json.loads(marker)["calls"]
    return CANCEL_ALL if calls == CANCEL_ALL else set(calls)


def hosts_prefix(prefix: str) -> str:
    return f"{prefix}/hosts/"


def host_key(prefix: str, hostname: str, pid: int, pid_started: float, executor_id: str) -> str:
    """An executor's host record, JSON ``{"executor_id", "hostname", "pid", "pid_started",
    "started", "cleanup"}`` (``pid_started``: the process's start time, which tells a reused pid
    apart, 0 where unknown; ``started``: when the executor wrote it; both ``time.time()``
    seconds; ``cleanup``: whether the executor deletes its jobs).  The key names the machine and
    the process, so one LIST of a machine's records tells which of its hosts are dead."""
    return f"{prefix}/hosts/{hostname}/{pid}-{pid_started:.2f}-{executor_id}.json"


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


# -- signed objects (``signing``) -----------------------------------------------------------
#
# The job's payload objects (func.pkl, calls/*.json, env.json) are stored as their MAC followed by
# their bytes.  An arguments object is read by byte range, so each call's entry in the event (or
# call list) carries the MAC of its own range.  A result record carries a MAC of its header, which
# holds the MAC of its payload: a reader that fetched only the header can trust all of it (status,
# error, output, timings), and the payload is checked when it is fetched, before it is unpickled.


def sign_object(key: SigningKey, storage_key: str, body: bytes) -> bytes:
    """A payload object as stored under ``storage_key``: its MAC, then its bytes."""
    return key.mac(storage_key, body) + body


def open_object(key: SigningKey, storage_key: str, blob: bytes) -> bytes:
    """The bytes of a signed payload object; ``IntegrityError`` if they do not verify."""
    key.check(storage_key, memoryview(blob)[MAC_BYTES:], blob[:MAC_BYTES], "the job object")
    return blob[MAC_BYTES:]


def _range_label(args_key: str, offset: int, length: int) -> str:
    return f"{args_key} bytes {offset}-{offset + length - 1}"


def argument_mac(key: SigningKey, args_key: str, offset: int, data: bytes | memoryview) -> str:
    """The ``mac`` of a call entry: its argument's range of the shard's object, bound to where it lies."""
    return key.mac(_range_label(args_key, offset, len(data)), data).hex()


def open_argument(key: SigningKey, args_key: str, call: dict[str, Any], data: bytes) -> bytes:
    """A call's argument bytes, read by range; ``IntegrityError`` unless they match the call's ``mac``."""
    offset, length = call["range"]
    key.check(_range_label(args_key, offset, length), data, call.get("mac"), f"the argument of call {call['id']}")
    return data


def encode_result(header: dict[str, Any], payload: bytes = b"", *, key: SigningKey, storage_key: str) -> bytes:
    """Serialize one result record: magic, header length, JSON header, the header's MAC, pickled payload.

    The header carries ``payload_mac``; both MACs are bound to ``storage_key``, where the record goes."""
    if payload:
        header = dict(header, payload_mac=key.mac(storage_key + " payload", payload).hex())
    head = json.dumps(header, separators=(",", ":"), default=str).encode()
    return b"".join((_MAGIC, _LEN.pack(len(head)), head, key.mac(storage_key, head), payload))


def header_length(blob: bytes) -> int:
    """Total bytes up to the end of the signed header (magic + length + JSON + MAC); needs the first 8
    bytes.  0 for bytes that are no record at all: ``decode_header`` says so, naming the key."""
    if blob[:4] != _MAGIC:
        return 0
    (n,) = _LEN.unpack_from(blob, 4)
    return 8 + n + MAC_BYTES


def decode_header(blob: bytes, *, key: SigningKey | None, storage_key: str) -> tuple[dict[str, Any], int]:
    """Return the verified header and the offset where the payload starts; ``IntegrityError`` if the
    header does not verify (a record without magic bytes counts as unsigned; no ``key``, as unverifiable)."""
    if key is None:
        raise integrity_error(storage_key, "the result record", None)
    if blob[:4] != _MAGIC:
        raise integrity_error(storage_key, "the result record (no dask-wren record header)", key)
    end = header_length(blob)
    if len(blob) < end:
        raise ValueError("truncated result record header")
    head = memoryview(blob)[8 : end - MAC_BYTES]
    key.check(storage_key, head, blob[end - MAC_BYTES : end], "the result record")
    return json.loads(bytes(head)), end


def open_payload(header: dict[str, Any], payload: bytes | memoryview, *, key: SigningKey | None, storage_key: str) -> bytes | memoryview:
    """A record's payload, checked against its (verified) header's ``payload_mac`` before anyone unpickles it."""
    if key is None:
        raise integrity_error(storage_key, "the result record's payload", None)
    if payload or "payload_mac" in header:
        key.check(storage_key + " payload", payload, header.get("payload_mac"), "the result record's payload")
    return payload


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
    cancel_poll: float = 0.0,
) -> dict[str, Any]:
    """One invocation's event.  ``calls`` items: ``{"id": call_id, "range": [offset, length]}``.

    ``calls`` travels inline unless the event would grow too large; then it is stored under
    ``calls_key`` and the worker reads it from there.  ``cancel_poll``: seconds between the
    worker's looks at the job's cancel marker while a call runs (0: never).
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
        "cancel_poll": cancel_poll,
    }
    if calls is not None:
        event["calls"] = calls
    else:
        event["calls_key"] = calls_key
    return event
