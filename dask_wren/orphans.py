"""Leftovers of dead hosts: what a host process that died (SIGKILL included) left behind.

A host leaves two kinds of things that only it removes: its jobs' objects in storage, and its
local workers' log folder in the temp directory.  Each executor writes a *host record* before
its first job (``lambda_worker.protocol.host_key``: the machine, the pid and the pid's start
time are in the key) and deletes it after its jobs; the local backend names its log folder
``dask-wren-workers-{pid}-*``.  A record or folder whose process is gone (or whose pid now
belongs to a process started later) is a dead host's, and what it names can go.

- ``sweep_once(storage, prefix, grace)``: at an executor's start, once per process and store, in
  a background thread: one LIST of this machine's records; the jobs and log folders of this
  machine's dead hosts are removed once older than ``grace`` (``wren.dead-host-grace``: a job's
  age counts from its manifest's ``submitted``, and a job without a manifest, such as the cancel
  marker a host leaves after deleting its job, goes at once; a log folder's age counts from its
  last change), so that a dead host's job can still be attached (``dask_wren.attach``) or
  inspected for that long.  A dead host's record goes with its last job.  Other machines'
  records are never looked at, live hosts' never touched, nor jobs of executors that keep their
  jobs (``wren.cleanup`` off), nor jobs this process attached (``adopt``).
- ``find_leftovers`` / ``remove`` (``dask-wren clean``): the same at once (no grace), plus with ``older_than`` every
  host record (any machine) older than that, and jobs that no record claims (an executor writes
  its record before its first job, so a job without one belongs to no running executor).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lambda_worker import protocol
from lambda_worker.storage import KeyNotFound, Storage

logger = logging.getLogger("dask_wren")

#: The local backend's worker log folders: ``{LOG_DIR_PREFIX}{pid}-{random}`` in the temp directory.
LOG_DIR_PREFIX = "dask-wren-workers-"
_RECORD_NAME = re.compile(r"^(\d+)-([\d.]+)-([0-9a-f]+)\.json$")
_JOB_ID = re.compile(r"^([0-9a-f]+)-\d{4,}$")
_swept: set[str] = set()
_swept_lock = threading.Lock()
_adopted: set[str] = set()  # job prefixes this process attached: its own sweeps leave them alone


def hostname() -> str:
    """This machine's name as host records carry it (no ``/``: it is a key part)."""
    return socket.gethostname().replace("/", "_") or "localhost"


def process_started(pid: int) -> float:
    """When process ``pid`` started (``time.time()`` seconds, Linux ``/proc``), 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def process_alive(pid: int, started: float) -> bool:
    """Whether ``pid`` still runs the process that started at ``started`` (0: unknown, any will do)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    now_started = process_started(pid)
    return not (started and now_started) or abs(now_started - started) < 0.5


class HostRecord:
    """One executor's host record: written before its first job (``write``, once), deleted
    after its jobs (``delete``)."""

    def __init__(self, storage: Storage, prefix: str, executor_id: str, cleanup: bool):
        self.storage = storage
        pid = os.getpid()
        started = process_started(pid)
        self.key = protocol.host_key(prefix, hostname(), pid, started, executor_id)
        self._body = {"executor_id": executor_id, "hostname": hostname(), "pid": pid, "pid_started": started, "cleanup": cleanup}
        self._lock = threading.Lock()
        self._written = False

    def write(self) -> None:
        with self._lock:
            if not self._written:
                self.storage.put(self.key, json.dumps(dict(self._body, started=time.time())).encode())
                self._written = True

    def delete(self) -> None:
        with self._lock:
            if self._written:
                self.storage.delete([self.key])
                self._written = False


@dataclass(frozen=True)
class Leftover:
    """Something to remove: ``kind`` ``"job"`` (a storage prefix), ``"record"`` (a host record's
    key) or ``"logs"`` (a folder), and why."""

    kind: str
    where: str
    reason: str


def adopt(job_prefix: str) -> None:
    """This process attached the job under ``job_prefix``: its sweeps never remove it (its executor
    deletes it at shutdown)."""
    with _swept_lock:
        _adopted.add(job_prefix)


def sweep_once(storage: Storage, prefix: str, grace: float = 0.0) -> None:
    """Remove this machine's dead hosts' leftovers older than ``grace`` seconds, in a background
    thread, once per process and store."""
    key = json.dumps([storage.spec(), prefix], sort_keys=True, default=str)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    threading.Thread(target=_sweep, args=(storage, prefix, grace), name="dask-wren-sweep", daemon=True).start()


def _sweep(storage: Storage, prefix: str, grace: float) -> None:
    try:
        remove(storage, _dead_here(storage, prefix, grace) + dead_log_dirs(grace=grace))
    except Exception as e:  # a sweep is housekeeping: the next start, or `dask-wren clean`, tries again
        logger.warning("dask-wren: leftovers of dead hosts not removed: %s", e)


def _records(storage: Storage, under: str) -> Iterable[tuple[str, int, float, str]]:
    """``(key, pid, pid_started, executor_id)`` of the host records under ``under``."""
    for key, _ in storage.list(under):
        match = _RECORD_NAME.match(key.rsplit("/", 1)[-1])
        if match:
            yield key, int(match[1]), float(match[2]), match[3]


def _read(storage: Storage, key: str) -> dict | None:
    try:
        return json.loads(storage.get(key))
    except KeyNotFound:  # its executor finished meanwhile
        return None


def _host_leftovers(
    storage: Storage, prefix: str, record_key: str, executor_id: str, reason: str, keep: Callable[[str], bool] = lambda _: False
) -> list[Leftover]:
    """The jobs of ``executor_id`` but those ``keep(job_id)`` keeps, and its record once it names no other."""
    jobs = sorted({key[len(prefix) + 1 :].split("/", 1)[0] for key, _ in storage.list(f"{prefix}/{executor_id}-")})
    gone = [j for j in jobs if not keep(j)]
    record = [Leftover("record", record_key, reason)] if len(gone) == len(jobs) else []
    return [Leftover("job", protocol.job_prefix(prefix, j), reason) for j in gone] + record


def _dead_here(storage: Storage, prefix: str, grace: float = 0.0) -> list[Leftover]:
    """The leftovers of this machine's dead hosts that clean up after themselves, but jobs younger
    than ``grace`` seconds and jobs this process attached."""
    found = []
    now = time.time()

    def keep(job_id: str) -> bool:
        if protocol.job_prefix(prefix, job_id) in _adopted:
            return True
        submitted = _submitted(storage, prefix, job_id) if grace > 0 else None
        return submitted is not None and now - submitted < grace

    for key, pid, started, executor_id in _records(storage, f"{protocol.hosts_prefix(prefix)}{hostname()}/"):
        if process_alive(pid, started):
            continue
        record = _read(storage, key)
        if record is None or not record.get("cleanup", True):
            continue
        reason = f"its host (pid {pid} on this machine) is dead"
        found += _host_leftovers(storage, prefix, key, executor_id, reason + (f"; submitted more than {grace:g} s ago" if grace > 0 else ""), keep)
    return found


def _submitted(storage: Storage, prefix: str, job_id: str) -> float | None:
    """When the job was submitted, as its manifest says; None without one (a job of an older
    version, or the cancel marker its host left after deleting the rest: nothing to attach)."""
    try:
        return float(json.loads(storage.get(protocol.manifest_key(prefix, job_id)))["submitted"])
    except (KeyNotFound, ValueError, KeyError, TypeError):
        return None


def dead_log_dirs(root: str | None = None, grace: float = 0.0) -> list[Leftover]:
    """Local worker log folders whose host process is dead, and that changed last more than ``grace``
    seconds ago.  A folder's pid is alive only if that process started before the folder last
    changed (so a reused pid does not keep it)."""
    found = []
    now = time.time()
    for path in glob.glob(os.path.join(root or tempfile.gettempdir(), f"{LOG_DIR_PREFIX}*")):
        pid_text, dash, _ = os.path.basename(path)[len(LOG_DIR_PREFIX) :].partition("-")
        try:
            pid = int(pid_text) if dash else -1
            changed = os.stat(path).st_mtime
        except (ValueError, OSError):  # gone meanwhile
            continue
        if pid < 0:  # not named by pid (an older version's): not ours to judge
            continue
        started = process_started(pid)
        if (not process_alive(pid, 0) or (started and started > changed + 0.5)) and now - _last_change(path, changed) >= grace:
            found.append(Leftover("logs", path, f"its host (pid {pid}) is dead"))
    return found


def _last_change(folder: str, changed: float) -> float:
    """When a log folder or a file in it last changed (a worker's log grows without touching its folder)."""
    try:
        return max([changed, *(entry.stat().st_mtime for entry in os.scandir(folder))])
    except OSError:  # gone meanwhile
        return changed


def find_leftovers(storage: Storage, prefix: str, older_than: float | None = None) -> list[Leftover]:
    """What ``dask-wren clean`` removes: dead hosts' leftovers on this machine; with
    ``older_than`` (seconds), every host record older than that, with its jobs; jobs that no
    host record claims; and dead hosts' log folders."""
    jobs = {key[len(prefix) + 1 :].split("/", 1)[0] for key, _ in storage.list(f"{prefix}/")}  # before the records:
    jobs = {j for j in jobs if _JOB_ID.match(j)}  # a record is written before its first job, so it is seen
    found = _dead_here(storage, prefix)
    claimed = set()
    now = time.time()
    for key, pid, _, executor_id in _records(storage, protocol.hosts_prefix(prefix)):
        claimed.add(executor_id)
        if older_than is not None and not any(f.where == key for f in found):
            record = _read(storage, key)
            if record is not None and now - float(record.get("started", now)) > older_than:
                where = f"pid {pid} on {record.get('hostname', '?')}"
                found += _host_leftovers(storage, prefix, key, executor_id, f"its host ({where}) started more than {older_than:g} s ago")
    listed = {f.where for f in found}
    for job in sorted(jobs):
        if _JOB_ID.match(job)[1] not in claimed and protocol.job_prefix(prefix, job) not in listed:
            found.append(Leftover("job", protocol.job_prefix(prefix, job), "no host record claims it"))
    return found + dead_log_dirs()


def delete_job(storage: Storage, where: str) -> None:
    """Delete the job under ``where`` (``protocol.job_prefix``), its manifest first: a late worker
    that finds the payload gone then finds the manifest gone too, and writes nothing (``handler``)."""
    storage.delete([where + protocol.MANIFEST_NAME])
    storage.delete_prefix(where)


def remove(storage: Storage, leftovers: list[Leftover]) -> None:
    """Remove ``leftovers``: jobs before the record that names them, so a failure leaves it to name them."""
    for item in sorted(leftovers, key=lambda f: f.kind == "record"):
        if item.kind == "logs":
            shutil.rmtree(item.where, ignore_errors=True)
        elif item.kind == "job":
            delete_job(storage, item.where)
        else:
            storage.delete([item.where])
        logger.info("dask-wren: removed %s %s (%s)", item.kind, item.where, item.reason)
