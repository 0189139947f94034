"""Jobs read back from storage alone, so they can be inspected after their host is gone.

A job is what lies under ``{prefix}/{job_id}/``: its manifest (``job.json``, written by the
executor before anything is invoked; absent for a job of an older version, or of a host that died
before writing it), its payload objects, and one result record per call attempt (``r/`` for first
attempts, ``a/`` for later ones).  ``dask-wren jobs / job / logs``, ``dask_wren.plot`` on a job id
and ``dask_wren.attach`` read jobs through this module.

Records are read header only (their payloads are never fetched) and verified with the host's
signing key.  A record that does not verify is kept apart, in ``Job.unverified``, and never
unpickled; only on request (``unchecked=True``) is its JSON header parsed, for a display that
marks it as unverified.  A local job's records verify in any process of the same user (the key
is the user's local key file, ``dask_wren.signing``), unless its host had another key set.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dask_wren import orphans
from lambda_worker import protocol
from lambda_worker.errors import IntegrityError
from lambda_worker.signing import MAC_BYTES, SigningKey
from lambda_worker.storage import KeyNotFound, Storage

logger = logging.getLogger("dask_wren")

#: Job ids are ``{executor_id}-{n:04d}``; anything else under the prefix is not a job.
JOB_ID = re.compile(r"^([0-9a-f]+)-\d{4,}$")
_HOST_RECORD = re.compile(r"^hosts/([^/]+)/(\d+)-([\d.]+)-([0-9a-f]+)\.json$")
_READ_THREADS = 16  # header reads in flight (S3 answers each in tens of ms)


@dataclass
class BadRecord:
    """A record that did not verify (or could not be read): ``reason`` says why.  ``header`` is its
    JSON header parsed WITHOUT verification, and only when asked for (``unchecked=True``)."""

    call_id: str
    attempt: int
    key: str
    reason: str
    header: dict[str, Any] | None = None


@dataclass
class JobSummary:
    """What a listing knows of a job: its manifest, its objects, which calls have records, whether
    the host that submitted it still runs (``None``: unknown, e.g. it ran on another machine)."""

    job_id: str
    manifest: dict[str, Any] | None
    objects: int
    bytes: int
    recorded: set[str]
    host: dict[str, Any] | None  # hostname, pid, pid_started of the submitting process, when known
    host_alive: bool | None

    @property
    def calls(self) -> int:
        """The job's calls: from its manifest, else the calls that have a record."""
        return int(self.manifest["calls"]) if self.manifest else len(self.recorded)

    @property
    def submitted(self) -> float | None:
        return float(self.manifest["submitted"]) if self.manifest else None

    @property
    def call_ids(self) -> list[str]:
        if self.manifest:
            return sorted({protocol.call_id_for(i) for i in range(self.calls)} | self.recorded)
        return sorted(self.recorded)

    @property
    def missing(self) -> int:
        """Calls without any record: still running, queued, or lost with their host."""
        return len(set(self.call_ids) - self.recorded)


@dataclass
class Job(JobSummary):
    """A job with every attempt's verified record header (``records``: call id -> headers in
    attempt order) and the records that did not verify (``unverified``)."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unverified: dict[str, list[BadRecord]] = field(default_factory=dict)

    def final(self, call_id: str) -> dict[str, Any] | None:
        """The call's verified outcome: its ``ok`` record if any, else its last attempt's."""
        headers = self.records.get(call_id)
        if not headers:
            return None
        return next((h for h in headers if h.get("status") == protocol.STATUS_OK), headers[-1])

    @property
    def done(self) -> int:
        return sum(1 for c in self.records if (self.final(c) or {}).get("status") == protocol.STATUS_OK)

    @property
    def failed(self) -> int:
        """Calls whose verified records hold no success (a retry may still be coming while the host runs)."""
        return sum(1 for c in self.records if (self.final(c) or {}).get("status") != protocol.STATUS_OK)

    @property
    def unverifiable(self) -> int:
        """Calls that have records, none of which verifies."""
        return sum(1 for c in self.unverified if c not in self.records)

    def headers(self) -> list[dict[str, Any]]:
        """Every verified header, all attempts, in call and attempt order (what cost and plots read)."""
        return [h for c in sorted(self.records) for h in self.records[c]]

    def failures(self) -> list[dict[str, Any]]:
        """Every verified attempt that did not succeed (retried ones included), in call order."""
        return [h for h in self.headers() if h.get("status") != protocol.STATUS_OK]

    def timings(self) -> dict[str, Any]:
        """First submission, last result write, call durations (final records), cold starts, attempts."""
        finals = [h for h in (self.final(c) for c in self.records) if h]
        t = [h.get("timings") or {} for h in self.headers()]
        durations = [
            x["worker_call_end"] - x["worker_call_start"]
            for x in (h.get("timings") or {} for h in finals)
            if "worker_call_end" in x and "worker_call_start" in x
        ]
        submitted = [x["host_submitted"] for x in t if x.get("host_submitted")]
        if self.submitted:
            submitted.append(self.submitted)
        written = [x["worker_result_write"] for x in t if x.get("worker_result_write")]
        return {
            "first_submitted": min(submitted) if submitted else None,
            "last_result": max(written) if written else None,
            "median_call_s": statistics.median(durations) if durations else None,
            "max_call_s": max(durations) if durations else None,
            "cold_starts": sum(1 for x in t if x.get("worker_cold")),
            "attempts": len(t),
            "later_attempts": sum(1 for h in self.headers() if h.get("attempt")),
        }


def read_manifest(storage: Storage, prefix: str, job_id: str) -> dict[str, Any] | None:
    """The job's manifest, or ``None`` when it has none (or it is not a manifest)."""
    key = protocol.manifest_key(prefix, job_id)
    try:
        manifest = json.loads(storage.get(key))
    except KeyNotFound:
        return None
    except ValueError as e:
        logger.warning("dask-wren: %s is not a job manifest (%s); ignored", key, e)
        return None
    return manifest if isinstance(manifest, dict) and "calls" in manifest else None


def load_job(
    storage: Storage, prefix: str, job_id: str, key: SigningKey | None, *, unchecked: bool = False
) -> Job:
    """Everything storage holds about ``job_id``: ``KeyNotFound`` if it holds nothing.

    ``key``: the host's signing key (``dask_wren.signing.host_key``); ``None``: nothing verifies.
    ``unchecked``: parse the JSON header of records that do not verify too (for display only)."""
    listing = list(storage.list(protocol.job_prefix(prefix, job_id)))
    if not listing:
        raise KeyNotFound(f"no job {job_id!r} under {protocol.job_prefix(prefix, job_id)} in {storage!r}")
    hosts = _host_records(storage.list(protocol.hosts_prefix(prefix)), prefix)
    return _load(storage, prefix, job_id, listing, hosts, key, unchecked)


def list_jobs(storage: Storage, prefix: str, key: SigningKey | None = None, *, headers: bool = False) -> list[JobSummary]:
    """The jobs under ``prefix``, oldest first: one LIST of the prefix and one GET per manifest.

    With ``headers``, each job's record headers are read too (one ranged GET each, on threads)
    and the items are ``Job``s, with counts and what cost needs."""
    by_job: dict[str, list[tuple[str, int]]] = {}
    host_listing = []
    for item in storage.list(f"{prefix}/"):
        first = item[0][len(prefix) + 1 :].split("/", 1)[0]
        if first == "hosts":
            host_listing.append(item)
        elif JOB_ID.match(first):
            by_job.setdefault(first, []).append(item)
    hosts = _host_records(host_listing, prefix)
    if headers:
        jobs: list[JobSummary] = [_load(storage, prefix, j, items, hosts, key, False) for j, items in by_job.items()]
    else:
        jobs = [_summary(storage, prefix, j, items, hosts) for j, items in by_job.items()]
    return sorted(jobs, key=lambda j: (j.submitted is None, j.submitted or 0, j.job_id))


def _host_records(listing: Iterable[tuple[str, int]], prefix: str) -> dict[str, dict[str, Any]]:
    """executor id -> the host (hostname, pid, pid_started) of its host record, from key names alone."""
    hosts = {}
    for key, _ in listing:
        match = _HOST_RECORD.match(key[len(prefix) + 1 :])
        if match:
            hosts[match[4]] = {"host": match[1], "pid": int(match[2]), "pid_started": float(match[3])}
    return hosts


def _summary(storage, prefix, job_id, listing, hosts) -> JobSummary:
    manifest = read_manifest(storage, prefix, job_id) if any(k == protocol.manifest_key(prefix, job_id) for k, _ in listing) else None
    host = {k: manifest[k] for k in ("host", "pid", "pid_started") if k in manifest} if manifest else None
    if not host or "pid" not in host:
        host = hosts.get(JOB_ID.match(job_id)[1])
    recorded = {protocol.parse_result_key(k)[0] for k in _record_keys(prefix, job_id, listing)}
    return JobSummary(
        job_id=job_id, manifest=manifest, objects=len(listing), bytes=sum(size for _, size in listing),
        recorded=recorded, host=host, host_alive=_alive(host),
    )


def _alive(host: dict[str, Any] | None) -> bool | None:
    """Whether the submitting process still runs: known only on its own machine."""
    if not host or host.get("host") != orphans.hostname() or "pid" not in host:
        return None
    return orphans.process_alive(int(host["pid"]), float(host.get("pid_started") or 0))


def _record_keys(prefix: str, job_id: str, listing: Iterable[tuple[str, int]]) -> list[str]:
    first, later = protocol.results_prefix(prefix, job_id), protocol.attempts_prefix(prefix, job_id)
    return [k for k, _ in listing if k.startswith(first) or k.startswith(later)]


def _load(storage, prefix, job_id, listing, hosts, key, unchecked) -> Job:
    summary = _summary(storage, prefix, job_id, listing, hosts)
    job = Job(**vars(summary))
    keys = sorted(_record_keys(prefix, job_id, listing), key=protocol.parse_result_key)  # call, then attempt order
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, max(1, len(keys)))) as pool:
        read = list(pool.map(lambda k: _read_header(storage, k, key, unchecked), keys))
    for record_key, header in zip(keys, read, strict=True):
        call_id = protocol.parse_result_key(record_key)[0]
        if isinstance(header, BadRecord):
            job.unverified.setdefault(call_id, []).append(header)
        else:
            job.records.setdefault(call_id, []).append(header)
    return job


def _read_header(storage: Storage, key: str, signing_key: SigningKey | None, unchecked: bool) -> dict[str, Any] | BadRecord:
    """A record's verified header (ranged reads of the header bytes only), or why it has none."""
    call_id, attempt = protocol.parse_result_key(key)
    blob, end = b"", 0
    try:
        blob = storage.get_range(key, 0, protocol.HEADER_PROBE_BYTES)
        end = protocol.header_length(blob)
        if end > len(blob):
            blob = storage.get_range(key, 0, end)
        return protocol.decode_header(blob, key=signing_key, storage_key=key)[0]
    except KeyNotFound:
        return BadRecord(call_id, attempt, key, "removed while it was being read")
    except (IntegrityError, ValueError) as e:
        bad = BadRecord(call_id, attempt, key, _reason(e, signing_key))
        if unchecked and 0 < end <= len(blob):
            try:
                bad.header = json.loads(blob[8 : end - MAC_BYTES])
            except ValueError:
                pass
        return bad


def _reason(error: Exception, key: SigningKey | None) -> str:
    if not isinstance(error, IntegrityError):
        return f"not a readable record: {error}"
    if key is None:
        return "not verified: this process holds no signing key for it"
    return f"does not verify with this process's signing key (id {key.id})"
