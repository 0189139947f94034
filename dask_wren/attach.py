"""Reattach: futures for a job that another host submitted (``dask_wren.attach``).

The job's manifest (``dask_wren.jobs.read_manifest``) says how many calls it has, their timeout,
the backend and which process submitted it; the result records say the rest.  ``attach`` hands
the job to an executor, which *adopts* it: waits for its futures and cancels them as its own (a
cancel writes the job's marker, which stops running calls) and deletes the job's objects at its
shutdown (``wren.cleanup``; not while the submitting host still runs here: the job is its too).
That executor's monitor resolves the futures, with ``_Judge`` in place of its ``Attempts``:
attach never runs a call again, so a call is decided by its records and by who can still write one.

- A record with status ok resolves its call at once, whichever attempt wrote it (``r/`` for the
  first, ``a/{call}.{n}`` for later ones: ``a/`` is listed every round while a failure waits
  for a later attempt, else every second).
- A failure record resolves it at the end of the round (an ok record of another attempt in the
  same round wins) once no later attempt can come: the failure is not one a host retries
  (``attempts.INFRASTRUCTURE``), or the call used up the manifest's ``retries``, or its host is
  gone (below).
- A call without a record is lost (``LostCallError``) once none can come:
  - local backend, host on this machine and dead: its workers died with it (parent-death
    signal), so at once, after one more listing for records written as it died;
  - the host still runs on this machine: never; it decides about its calls itself;
  - otherwise (AWS, or a host on another machine): when nothing was heard of the job for its
    timeout + ``wren.aws.lost-call-grace`` (``+ wren.retry-backoff-max`` while a retry may come),
    counted from the later of its submission and its latest record.  A host sends waves of at
    most the function's concurrency, each as the previous calls' records arrive, so every
    invoke it made comes before its job's latest record; a call sent then has its record within
    its timeout, unless Lambda held the event in its queue (up to the function's maximum event
    age, ``wren.aws.throttle-timeout``: a throttling storm), the bound the host's own lost-call
    watchdog uses too.  A call that ran later than that is reported lost yet may still finish:
    attaching again picks its record up.  (Record times are the workers' clocks: this machine's
    clock running ahead of them eats into the grace.)
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from typing import Any

from dask_wren import jobs, orphans
from dask_wren.attempts import no_later_attempt
from dask_wren.config import Settings, make_storage
from dask_wren.cost import Tally
from dask_wren.errors import ConfigError, LostCallError, WrenError
from dask_wren.executor import Executor
from dask_wren.futures import WrenFuture
from dask_wren.signing import host_key
from lambda_worker import protocol
from lambda_worker.storage import KeyNotFound, Storage

logger = logging.getLogger("dask_wren")

_ALIVE, _DEAD, _UNKNOWN = "alive", "dead", "unknown"
_LATER_LIST_INTERVAL = 1.0  # seconds between listings of ``a/`` while no failure waits for a later attempt


def attach(job_id: str, *, executor: Executor | None = None, **overrides: Any) -> list[WrenFuture]:
    """Futures, in call order, for job ``job_id``, which another host (dead, or still running) submitted.

    Results that arrived are there; calls still running (on AWS) resolve as they finish; calls
    whose workers died with their host, or that no record will come for, raise
    ``dask_wren.LostCallError`` saying so.  **Attach never runs a call again**: run lost calls
    again with ``ex.map(...)``.

    ``executor``: the executor that adopts the job (its storage and key must be the job's).
    Without one, ``overrides`` (setting names, as for ``default_executor``) make one, which lives
    as long as the futures.  The adopting executor deletes the job's objects at its shutdown
    (``wren.cleanup``) and stops its running calls if it exits without waiting, as for its own
    jobs, unless the submitting host still runs on this machine (the job stays that host's).  Records are
    checked with this process's signing key, which must be the submitting host's:
    ``wren.aws.signing-key`` on AWS; on the local backend ``$DASK_WREN_SIGNING_KEY`` or else the
    user's local key file (``dask_wren.signing.local_key_path()``), which outlives the host.
    """
    if executor is not None and overrides:
        raise TypeError("attach() takes an executor or setting overrides, not both")
    settings = executor.settings if executor is not None else Settings.from_config(**overrides)
    storage = executor.storage if executor is not None else make_storage(settings)
    manifest = _manifest(storage, settings.prefix, job_id)
    key = executor.signing_key if executor is not None else host_key(settings)
    if manifest.get("key_id") not in (None, key.id):
        raise ConfigError(
            f"job {job_id} was signed with key {manifest['key_id']}, this process holds key {key.id}: its records "
            "cannot be verified here. " + _KEY_ADVICE[manifest.get("backend") == "aws"]
        )
    host = _host_state(manifest)
    orphans.adopt(protocol.job_prefix(settings.prefix, job_id))  # before an executor's sweep can see it
    ex = executor if executor is not None else Executor(settings, storage=storage)
    try:
        futures, tally = ex._adopt(job_id, int(manifest["calls"]), own=host != _ALIVE, host_requests=manifest.get("host_requests"))
        judge = _Judge(ex.storage, settings, job_id, manifest, futures, tally)
        ex.monitor.watch(settings.prefix, job_id, {f.call_id: f for f in futures}, judge=judge, tally=tally)
    except BaseException:
        if executor is None:  # the one made here has nobody else to shut it down
            ex.shutdown(wait=False)
        raise
    logger.info("dask-wren: attached job %s (%d calls; its host, %s, is %s)", job_id, len(futures), judge.where, host)
    return futures


_KEY_ADVICE = {
    False: "The local backend's key is $DASK_WREN_SIGNING_KEY, else this user's key file "
    "(~/.config/dask-wren/local-signing-key): attach as the user who submitted the job, with the same "
    "$DASK_WREN_SIGNING_KEY if the host had one.",
    True: "Use the deployment's key: wren.aws.signing-key from the settings file `dask-wren deploy` wrote.",
}


def _manifest(storage: Storage, prefix: str, job_id: str) -> dict[str, Any]:
    manifest = jobs.read_manifest(storage, prefix, job_id)
    if manifest is not None:
        return manifest
    where = f"{protocol.job_prefix(prefix, job_id)} in {storage!r}"
    if next(iter(storage.list(protocol.job_prefix(prefix, job_id))), None) is None:
        raise WrenError(
            f"no job {job_id!r} under {where}: check the id (`dask-wren jobs` lists the jobs) and that this "
            "process uses the storage settings of the host that submitted it (bucket, directory, prefix)"
        )
    raise WrenError(
        f"job {job_id!r} has no manifest ({protocol.manifest_key(prefix, job_id)}): it was submitted by a dask-wren "
        "older than attach, or its host died before writing it; it cannot be attached"
    )


def _host_state(manifest: dict[str, Any]) -> str:
    """Whether the submitting process runs: known only on its own machine."""
    if manifest.get("host") != orphans.hostname() or "pid" not in manifest:
        return _UNKNOWN
    alive = orphans.process_alive(int(manifest["pid"]), float(manifest.get("pid_started") or 0))
    return _ALIVE if alive else _DEAD


def _record_time(header: dict[str, Any]) -> float:
    """When a record was written (its writer's clock: a worker, or a host's backend for a failure), else now."""
    timings = header.get("timings") or {}
    return float(timings.get("worker_result_write") or timings.get("backend_recorded") or time.time())


class _Judge:
    """Decides the calls of one attached job from their records (the monitor's ``attempts`` for it).

    Its methods run on the monitor thread only, so its state needs no lock:
        outcomes   call id -> {attempt: its record's outcome}, for ``stats["attempts"]``
        failed     call id -> the latest failure record not decided yet
        last       the latest sign of life of the job (submission, records)
        dead_rounds  rounds that found the local host dead (2: a listing came after its death)
    """

    def __init__(
        self, storage: Storage, settings: Settings, job_id: str, manifest: dict[str, Any], futures: list[WrenFuture], tally: Tally,
    ):
        self.storage = storage
        self.tally = tally  # the adopting executor's for this job: what its records billed (``Executor.cost``)
        self.prefix = settings.prefix
        self.manifest = manifest
        self.job_id = job_id
        self.waiting = {f.call_id: f for f in futures}
        self.local = manifest.get("backend") == "local"
        self.timeout = float(manifest.get("timeout") or settings.timeout)
        self.retries = int(manifest.get("retries", settings.retries))
        self.grace = settings.lost_call_grace
        self.backoff = settings.retry_backoff_max
        self.outcomes: dict[str, dict[int, str]] = {}
        self.failed: dict[str, tuple[WrenFuture, str, int, dict[str, Any], int, bytes, int | None]] = {}
        self.last = float(manifest.get("submitted") or time.time())
        self.dead_rounds = 0
        self.next_later_list = 0.0  # time.monotonic() of the next listing of ``a/`` (see has_later_attempts)
        self.where = f"pid {manifest.get('pid', '?')} on {manifest.get('host', '?')}"

    # -- the monitor's calls ---------------------------------------------------------------------

    def has_later_attempts(self, job_id: str) -> bool:
        """Which attempts its host made is not known here: ``a/`` is listed every round while a
        failure waits for a later attempt, else once every ``_LATER_LIST_INTERVAL`` seconds (a
        backup of a call that has no record yet)."""
        now = time.monotonic()
        if not self.failed and now < self.next_later_list:
            return False
        self.next_later_list = now + _LATER_LIST_INTERVAL
        return True

    def on_record(self, future: WrenFuture, key: str, attempt: int, record: bytes, size: int | None) -> bool:
        if future.cancelled():
            self.waiting.pop(future.call_id, None)
            return True
        header, start = protocol.decode_header(record, key=future.signing_key, storage_key=key)
        self.tally.add(header)
        self.last = max(self.last, _record_time(header))
        call_id = future.call_id
        error = header.get("error") or {}
        ok = header.get("status") == protocol.STATUS_OK
        outcome = "ok" if ok else f"{error.get('kind', 'exception')}: {error.get('message', '')}".strip()
        self.outcomes.setdefault(call_id, {})[attempt] = outcome
        if ok:
            self.failed.pop(call_id, None)
            self._resolve(future, key, attempt, header, start, record, size)
            return True
        if call_id not in self.failed or self.failed[call_id][2] < attempt:
            self.failed[call_id] = (future, key, attempt, header, start, record, size)
        return False  # decided at the end of the round (``tick``): another attempt's record may win

    def tick(self) -> list[WrenFuture]:
        """Decide the calls that can be decided now (end of a monitor round); returns them."""
        host = _host_state(self.manifest)
        self.dead_rounds = self.dead_rounds + 1 if host == _DEAD else 0
        gone = self.dead_rounds >= 2  # the host is dead and a listing came after that was known
        now = time.time()
        # a dead local host's calls wait for ``gone``; a host that runs decides itself
        quiet = host == _UNKNOWN or (host == _DEAD and not self.local)
        quiet = quiet and now > self.last + self.timeout + self.grace
        decided = []
        for call_id, failure in list(self.failed.items()):
            future, header = failure[0], failure[3]
            kind = (header.get("error") or {}).get("kind", "exception")
            failures = sum(1 for o in self.outcomes[call_id].values() if o != "ok")
            final = no_later_attempt(kind, failures, self.retries)
            if final or (self.local and gone) or (quiet and now > self.last + self.timeout + self.grace + self.backoff):
                del self.failed[call_id]
                note = None if final else f"dask-wren attach: its host ({self.where}) did not run it again, nor does attach"
                self._resolve(*failure, note=note)
                decided.append(future)
        if (self.local and gone) or quiet:
            missing = [f for c, f in self.waiting.items() if c not in self.outcomes and not f.done()]
            if missing:
                decided += self._lose(missing, host, gone)
        for future in decided:
            self.waiting.pop(future.call_id, None)
        return decided

    # -- internals ------------------------------------------------------------------------------

    def _resolve(
        self, future: WrenFuture, key: str, attempt: int, header: dict, start: int, record: bytes, size: int | None,
        note: str | None = None,
    ) -> None:
        self.waiting.pop(future.call_id, None)
        future.key = key  # the record of this attempt: what it verifies against, where its value is
        future.stats["attempts"] = [
            {"attempt": n, "kind": "first" if n == 0 else "later", "outcome": o}
            for n, o in sorted(self.outcomes.get(future.call_id, {}).items())
        ]
        exc = None
        if header.get("status") != protocol.STATUS_OK:
            exc = future._failure(header, start, record, size)
            if note and hasattr(exc, "add_note"):
                exc.add_note(note)
        future._apply(header, start, record, size, exc)

    def _lose(self, futures: list[WrenFuture], host: str, gone: bool) -> list[WrenFuture]:
        cancelled = self._cancelled()
        removed = jobs.read_manifest(self.storage, self.prefix, self.job_id) is None
        function = self.manifest.get("function", "its function")
        again = (
            f"results of the other calls are in their futures; dask_wren.attach never runs a call again: run it "
            f"again with ex.map({function}, ...)"
        )
        lost = []
        for future in futures:
            head = f"call {future.call_id} of job {self.job_id} was lost: "
            if removed:
                why = "the job was removed from storage (its host cleaned up, or `dask-wren clean` ran) before its result was seen"
            elif cancelled is not None and (cancelled == protocol.CANCEL_ALL or future.call_id in cancelled):
                why = f"the host that submitted it ({self.where}) cancelled it"
            elif self.local and gone:
                why = f"its worker died with the host that submitted it ({self.where}), which is gone"
            else:
                why = (
                    f"no record of it came within its timeout ({self.timeout:g} s) + wren.aws.lost-call-grace "
                    f"({self.grace:g} s) of the job's latest sign of life, and its host ({self.where}) "
                    + ("is gone" if host == _DEAD else "runs on another machine, where attach cannot tell whether it lives")
                    + " (a host sends no more calls at once than the function's concurrency: this one may never "
                    "have been sent; if it may still run, attach again later to pick its result up)"
                )
            try:
                future.set_exception(LostCallError(f"{head}{why}; {again}"))
            except cf.InvalidStateError:  # cancelled meanwhile
                continue
            lost.append(future)
        if lost:
            logger.warning("dask-wren: job %s: %d call(s) lost (its host: %s)", self.job_id, len(lost), self.where)
        return lost

    def _cancelled(self) -> str | set[str] | None:
        """The calls the job's cancel marker names, if it has one."""
        try:
            return protocol.cancelled_calls(self.storage.get(protocol.cancel_key(self.prefix, self.job_id)))
        except (KeyNotFound, ValueError, KeyError):
            return None
