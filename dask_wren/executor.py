"""The executor: PyWren's ``map`` / ``call_async`` / ``reduce`` over a backend and a store.

Data flow (one ``map`` is one *job*)::

    map(func, items) ──> pickle_payload (shipping.py) ──> storage: func.pkl, args/{shard}.pkl
          │                                               (calls/*.json, env.json when large)
          ├──> one WrenFuture per call, registered with the Monitor (before any invoke)
          └──> backend.invoke([Invocation...]) ──> workers run lambda_handler, each call
                                                   writes r/{shard}/{call_id} (one record)
    Monitor thread: LIST r/ ──> read new records ──> future resolved ──> backend.call_done,
                                                       the job's listener (wren_get)

Who does what:
- the **caller's thread** (``map``, ``reduce``): pickles, writes the job's objects, makes the
  futures, registers them, invokes; a refused invoke fails the job's futures at once;
- the **backend** (its own threads or processes): runs invocations; its progress listener wakes
  the monitor when results may have appeared; for a worker it lost it writes the failure record
  itself (local backend) or leaves the host's lost-call logic to (AWS);
- the **monitor** (one thread per executor): the only reader of results; resolves futures,
  fails every future of a job whose results cannot be listed;
- **futures**: ``cancel()`` goes back to the executor, which tells the backend.

A map's functions and arguments are pickled once per job: the arguments of each block of 1,000
calls go into one object that each call reads by byte range, and calls are grouped
``chunksize`` at a time into invocations.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from dask_wren import orphans
from dask_wren.attempts import Attempts, RetryPolicy
from dask_wren.backends import Backend, Invocation, make_backend
from dask_wren.budget import Budget
from dask_wren.cancelling import CancelMarkers
from dask_wren.config import Settings, make_storage
from dask_wren.cost import CostSummary, Prices, Tally, price
from dask_wren.futures import ALL_COMPLETED, WrenFuture, as_completed, get_all_results, wait
from dask_wren.monitor import Monitor
from dask_wren.progress import AUTO
from dask_wren.shipping import pickle_payload
from dask_wren.signing import host_key
from lambda_worker import protocol, serialize
from lambda_worker.storage import Storage

logger = logging.getLogger("dask_wren")

#: An event larger than this keeps its call list in storage (Lambda's async limit is 256 KiB).
MAX_EVENT_BYTES = 200 * 1024
_MAX_CALL_JSON = 160  # bytes of one call's entry in the event, at most (id, two integers, a MAC)


class Executor:
    """Runs Python functions on a backend's workers, passing data through object storage.

    Use as a context manager, or call ``shutdown()``: either deletes the executor's objects from
    storage (unless ``cleanup`` is off) after waiting for its calls.
    """

    _ids = itertools.count()

    def __init__(self, settings: Settings | None = None, *, storage: Storage | None = None, backend: Backend | None = None):
        self.settings = settings or Settings.from_config()
        self.storage = storage if storage is not None else make_storage(self.settings)
        self.backend = backend if backend is not None else make_backend(self.settings)
        self.executor_id = f"{uuid.uuid4().hex[:8]}"
        self._job_counter = itertools.count()
        self._jobs: list[str] = []
        self._futures: list[WrenFuture] = []
        self._job_listeners: dict[str, Callable[[list[WrenFuture]], None]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._cancel_hook = self._cancel  # one bound method for all futures
        self.signing_key = host_key(self.settings)
        settings = self.settings
        self._policy = RetryPolicy(
            retries=settings.retries, backoff=settings.retry_backoff, backoff_max=settings.retry_backoff_max,
            backups=settings.backups, backup_factor=settings.backup_factor,
        )
        self._tallies: dict[str, Tally] = {}  # job id -> what its records billed, and the host's requests for it
        self._prices: Prices | None = None
        self._budget = self._make_budget()
        self.attempts = Attempts(
            self.backend.invoke, self._stop_attempt, self.backend.call_done, on_header=self._record_seen, budget=self._budget
        )
        self.monitor = Monitor(
            self.storage, settings.poll_interval, settings.result_inline_limit, self.attempts, on_resolved=self._call_done
        )
        self._listener = self.monitor.wake
        self.backend.add_progress_listener(self._listener)
        self._host_versions = serialize.runtime_versions()
        self._cancels = CancelMarkers(self.storage, self.settings.prefix, self.monitor)
        self._host = (orphans.hostname(), os.getpid(), orphans.process_started(os.getpid()))  # for job manifests
        self._host_record = orphans.HostRecord(self.storage, self.settings.prefix, self.executor_id, self.settings.cleanup)
        self._finalizer = weakref.finalize(
            self, _cleanup, self.storage, self.settings.prefix, self._jobs, self.settings.cleanup, self._cancels, self._host_record
        )
        orphans.sweep_once(self.storage, self.settings.prefix, self.settings.dead_host_grace)

    def __repr__(self) -> str:
        return f"<dask_wren.Executor {self.executor_id} backend={self.settings.backend} storage={self.storage!r}>"

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)

    # -- submitting ---------------------------------------------------------------------------

    def call_async(self, func: Callable, data: Any, extra_env: dict[str, str] | None = None, timeout: float | None = None) -> WrenFuture:
        """Run ``func(data)`` once on a worker."""
        return self.map(func, [data], extra_env=extra_env, timeout=timeout)[0]

    def map(
        self,
        func: Callable,
        iterdata: Iterable[Any],
        extra_env: dict[str, str] | None = None,
        include_modules: Sequence[str] | None = None,
        exclude_modules: Sequence[str] | None = None,
        chunksize: int | None = None,
        timeout: float | None = None,
        *,
        retries: int | None = None,
        retry_on: Sequence[type[BaseException]] = (),
        retry_timeouts: bool = False,
        backups: bool | None = None,
        progress: bool | None = None,
    ) -> list[WrenFuture]:
        """Run ``func(item)`` for every item, each call on a worker; one future per item.

        ``extra_env``: environment variables set during each call.  ``include_modules`` /
        ``exclude_modules``: module names to ship by value / never ship (modules the worker
        cannot import are shipped automatically).  ``chunksize``: calls per invocation.
        ``timeout``: seconds per invocation before it is stopped.
        ``retries`` (default ``wren.retries``): runs again of a call that failed for infrastructure;
        ``retry_on``: exception classes of the function's own that are retried too;
        ``retry_timeouts``: retry calls that ran past their timeout.  ``backups`` (default
        ``wren.backups``): run a backup copy of a straggler; pass False for functions with side effects.
        ``progress`` (default ``wren.progress``): whether waits on these futures show a progress bar
        (``dask_wren.progress``).
        """
        if not callable(func):
            raise TypeError(f"map() needs a callable, not {type(func).__name__}")
        items = list(iterdata)
        limit = self.settings.map_item_limit
        if len(items) > limit:
            raise ValueError(
                f"map() of {len(items):,} items exceeds wren.map-item-limit ({limit:,}), which counts "
                "items whatever the chunksize: split the work into several map() calls, or pass fewer, "
                "larger items (each a list of items that the function loops over), or raise the limit: "
                f"dask.config.set({{'wren.map-item-limit': {len(items)}}}) or default_executor("
                f"map_item_limit={len(items)})"
            )
        policy = self._policy_for(retries, retry_on, retry_timeouts, backups)
        futures = self._submit(func, items, extra_env, include_modules or (), exclude_modules or (), chunksize, timeout, policy=policy)
        self._prefer_progress(futures, progress)
        return futures

    def reduce(self, func: Callable, futures: Sequence[WrenFuture], extra_env: dict[str, str] | None = None, timeout: float | None = None) -> WrenFuture:
        """Run ``func(list_of_results)`` on a worker once all ``futures`` have succeeded.

        The worker reads the inputs straight from storage; they do not pass through the host.
        If an input fails, the returned future fails with that input's exception.
        """
        futures = list(futures)
        job_id = self._new_job_id()
        out = self._make_future(job_id, protocol.call_id_for(0))
        self._prefer_progress([out], None)
        remaining = [len(futures)]
        lock = threading.Lock()

        def launch() -> None:
            if out.done():
                return
            for f in futures:
                if f.cancelled() or f.exception() is not None:
                    err = f.exception() if not f.cancelled() else RuntimeError(f"input {f!r} of reduce() was cancelled")
                    try:
                        out.set_exception(err)
                    except cf.InvalidStateError:  # cancelled meanwhile: nothing left to tell
                        logger.debug("reduce %s: result cancelled before its input failed", job_id)
                    return
            spec = self.storage.spec()
            arg = [
                protocol.StorageRef(f.key) if f.storage.spec() == spec and f.signing_key == self.signing_key else f.result()
                for f in futures
            ]
            try:
                self._submit(func, [arg], extra_env, (), (), 1, timeout, job_id=job_id, futures=[out])
            except BaseException as e:
                if not out.done():
                    out.set_exception(e)

        def one_done(_: Any) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                # Off the monitor thread: submitting pickles and writes to storage.
                threading.Thread(target=launch, name="dask-wren-reduce", daemon=True).start()

        if not futures:
            launch()
        for f in futures:
            f.add_done_callback(one_done)
        return out

    def map_reduce(self, map_func: Callable, iterdata: Iterable[Any], reduce_func: Callable, extra_env: dict[str, str] | None = None, chunksize: int | None = None, timeout: float | None = None) -> WrenFuture:
        """``reduce(reduce_func, map(map_func, iterdata))``: one future for the reduced value."""
        mapped = self.map(map_func, iterdata, extra_env=extra_env, chunksize=chunksize, timeout=timeout)
        return self.reduce(reduce_func, mapped, extra_env=extra_env, timeout=timeout)

    # -- waiting ------------------------------------------------------------------------------

    def wait(
        self, futures: Iterable[WrenFuture] | None = None, return_when: str = ALL_COMPLETED, timeout: float | None = None,
        *, progress: bool | None = None,
    ):
        """``dask_wren.wait`` over ``futures`` (default: every future of this executor).  ``progress``:
        show a progress bar (True), none (False), or as the futures' jobs prefer (None)."""
        return wait(self._futures if futures is None else futures, return_when, timeout, progress=progress)

    def as_completed(
        self, futures: Iterable[WrenFuture] | None = None, timeout: float | None = None, *, progress: bool | None = None
    ) -> Iterator[WrenFuture]:
        """``dask_wren.as_completed`` over ``futures`` (default: every future of this executor)."""
        return as_completed(list(self._futures) if futures is None else futures, timeout, progress=progress)

    def get_result(
        self, futures: Iterable[WrenFuture] | None = None, timeout: float | None = None, *, progress: bool | None = None
    ) -> list[Any]:
        """Results in order (default: every future of this executor); the first error raises."""
        return get_all_results(self._futures if futures is None else futures, timeout, progress=progress)

    def cancel(self, futures: Iterable[WrenFuture] | None = None) -> None:
        """Cancel ``futures`` (default: every future of this executor).  Calls that run on workers
        stop within two ``wren.cancel-poll-interval`` periods; one cancel marker per job."""
        with self._cancels.batch():
            for f in list(self._futures if futures is None else futures):
                f.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop using this executor; by default wait for its calls, then clean its storage."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if cancel_futures:
            self.cancel()
        if wait:
            self.wait(self._futures, progress=False)
        self.backend.remove_progress_listener(self._listener)
        self.monitor.stop()
        self._finalizer()

    def cost(self) -> CostSummary:
        """What this executor's jobs cost so far (``dask_wren.cost``): the records the host has read
        (every attempt's) and the host's own requests (submit PUTs, record GETs, LIST rounds).  On
        the local backend: what they would cost on Lambda at ``wren.local.memory-mb``, in
        ``wren.cost-region`` (default us-east-1).  ``str()`` of it is a small table."""
        tally = Tally()
        for job_tally in list(self._tallies.values()):
            tally.merge(job_tally)
        local = self.settings.backend == "local"
        return price(tally, self._price_table(), local=local, memory_mb=self.settings.memory_mb if local else None)

    # -- internals ----------------------------------------------------------------------------

    def _price_table(self) -> Prices:
        if self._prices is None:
            self._prices = Prices.load(self.settings)
        return self._prices

    def _make_budget(self) -> Budget | None:
        """``wren.budget``'s gate (``dask_wren.budget``), or None: no budget costs nothing."""
        if self.settings.budget is None:
            return None
        prices = self._price_table()
        region = None if self.settings.backend == "local" else (self.settings.aws_region or self.settings.region)
        return Budget(self.settings.budget, prices, prices.rates(region, "x86_64"), self._worker_memory_mb, lambda: self.monitor.wake())

    def _worker_memory_mb(self) -> int:
        """The workers' memory: the deployed function's, where the backend read it, else ``wren.local.memory-mb``."""
        return getattr(getattr(self.backend, "deployment", None), "memory_mb", None) or self.settings.memory_mb

    def _record_seen(self, job_id: str, header: dict[str, Any]) -> None:
        """A record's verified header (monitor thread): what it billed counts for its job, and against the budget."""
        tally = self._tallies.get(job_id)
        if tally is not None:
            tally.add(header)
        if self._budget is not None:
            self._budget.spend(header)

    def _new_job_id(self) -> str:
        if self._closed:
            raise RuntimeError("this executor has been shut down; create a new one")
        job_id = f"{self.executor_id}-{next(self._job_counter):04d}"
        with self._lock:
            self._jobs.append(job_id)
        self._host_record.write()  # before the job's first object: a dead host's jobs can be found
        return job_id

    def _make_future(self, job_id: str, call_id: str, tracked: bool = True) -> WrenFuture:
        f = WrenFuture(self.storage, protocol.result_key(self.settings.prefix, job_id, call_id), job_id, call_id, self.signing_key)
        f._on_cancel = self._cancel_hook
        if tracked:
            with self._lock:
                self._futures.append(f)
        return f

    def _prefer_progress(self, futures: list[WrenFuture], progress: bool | None) -> None:
        """Record the job's progress-bar preference on its futures (the default, "auto", costs nothing)."""
        preference = self.settings.progress if progress is None else bool(progress)
        if preference != AUTO:
            for f in futures:
                f._progress = preference

    def _policy_for(self, retries, retry_on, retry_timeouts, backups) -> RetryPolicy:
        if retries is None and not retry_on and not retry_timeouts and backups is None:
            return self._policy
        policy = self._policy
        return dataclasses.replace(
            policy,
            retries=policy.retries if retries is None else retries,
            retry_on=tuple(retry_on),
            retry_timeouts=bool(retry_timeouts),
            backups=policy.backups if backups is None else bool(backups),
        )

    def _call_done(self, futures: list[WrenFuture]) -> None:
        """The monitor resolved ``futures`` (of one job): settle them with the budget, tell the job's listener."""
        if self._budget is not None:
            for f in futures:
                self._budget.settle(f.job_id, f.call_id)
        listener = self._job_listeners.get(futures[0].job_id)
        if listener is not None:
            listener(futures)

    def map_with_listener(
        self, func: Callable, items: list[Any], tags: list[Any], listener: Callable[[list[WrenFuture]], None]
    ) -> list[WrenFuture]:
        """``map`` for a caller that tracks its own futures (the Dask scheduler).

        ``listener(futures)`` is called from the monitor with each batch of futures that
        resolved together; each future's ``tag`` is set from ``tags`` before anything is invoked.
        The executor does not keep these futures (``wait()``, ``get_result()`` and
        ``shutdown()`` do not see them): the caller cancels what it no longer needs and calls
        ``drop_listener(job_id)`` when done.
        """
        job_id = self._new_job_id()
        self._job_listeners[job_id] = listener
        futures = [self._make_future(job_id, protocol.call_id_for(i), tracked=False) for i in range(len(items))]
        for future, tag in zip(futures, tags, strict=True):
            future.tag = tag
        return self._submit(func, items, None, (), (), None, None, job_id=job_id, futures=futures)

    def drop_listener(self, job_id: str) -> None:
        """Forget the listener of a ``map_with_listener`` job."""
        self._job_listeners.pop(job_id, None)

    def _adopt(self, job_id: str, calls: int, own: bool, host_requests: dict[str, int] | None = None) -> tuple[list[WrenFuture], Tally]:
        """Futures for the calls of a job another host submitted (``dask_wren.attach``, which hands
        them to the monitor): waited for and cancelled as this executor's own (a cancel writes the
        job's marker, which reaches running calls).  ``own`` (its host is not known to run): the
        job is this executor's, stopped at its exit and deleted at its shutdown (``wren.cleanup``).
        The job's tally counts in ``cost()``: its records and the requests of both hosts that are
        known (the submitting host's submit PUTs, from its manifest, and this one's reads)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this executor has been shut down; create a new one")
            if job_id in self._jobs or any(f.job_id == job_id for f in self._futures):
                raise ValueError(f"job {job_id} is this executor's already")
            if own:
                self._jobs.append(job_id)
            tally = self._tallies[job_id] = Tally()
        tally.add_host(host_requests)
        futures = [self._make_future(job_id, protocol.call_id_for(i)) for i in range(calls)]
        for f in futures:
            f.stats["request_id_sent"] = None  # its own host sent it: a cancel must reach the worker
        return futures, tally

    def _stop_attempt(self, request_id: str, future: WrenFuture) -> None:
        """An attempt of ``future``'s call lost to another: stop it (its record would be ignored)."""
        self.backend.cancel(request_id, future.call_id)
        if not self.backend.stops_running_calls:
            self._cancels.add(future)  # on Lambda: the worker running it stops at its next look

    def _cancel(self, future: WrenFuture) -> None:
        self.monitor.forget(future.job_id, future.call_id)
        if self._budget is not None:
            self._budget.settle(future.job_id, future.call_id)
        for request_id, call_id in self.attempts.cancelled(future):
            self.backend.cancel(request_id, call_id)
        self._cancels.add(future)  # a worker running it stops at its next look at the marker

    def _submit(
        self, func, items, extra_env, include_modules, exclude_modules, chunksize, timeout, *, job_id=None, futures=None,
        policy: RetryPolicy | None = None,
    ) -> list[WrenFuture]:
        submitted = time.time()
        chunksize = chunksize or self.settings.chunksize
        timeout = timeout or self.settings.timeout
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize!r}")
        env = _check_env(extra_env)
        payload = pickle_payload(func, items, include_modules, exclude_modules)
        job_id = job_id or self._new_job_id()
        prefix = self.settings.prefix
        call_ids = [protocol.call_id_for(i) for i in range(len(items))]
        if futures is None:
            futures = [self._make_future(job_id, c) for c in call_ids]
        if not items:
            return futures
        key = self.signing_key
        func_key = protocol.func_key(prefix, job_id)
        self.storage.put(func_key, protocol.sign_object(key, func_key, payload.func))
        puts = 1  # the host's PUTs for this job, for its manifest
        ranges = []  # (offset, length) of each call's argument within its shard's object
        macs = []  # each call's argument's MAC (the worker reads its range only)
        per_shard = protocol.CALLS_PER_SHARD
        for first in range(0, len(items), per_shard):
            blobs = payload.args[first : first + per_shard]
            args_key = protocol.args_key(prefix, job_id, protocol.shard_of(call_ids[first]))
            offset = 0
            for blob in blobs:
                ranges.append((offset, len(blob)))
                macs.append(protocol.argument_mac(key, args_key, offset, blob))
                offset += len(blob)
            self.storage.put(args_key, b"".join(blobs))
            puts += 1
        base = protocol.build_event(
            prefix=prefix, job_id=job_id, storage=self.storage.spec(), calls=[], timeout=timeout,
            extra_env=env, host_versions=self._host_versions,
            output_tail=self.settings.output_tail, submitted=submitted, cancel_poll=self.settings.cancel_poll_interval,
        )
        base_size = len(json.dumps(base))
        if base_size > MAX_EVENT_BYTES // 2:  # a large extra_env: every call reads it from storage instead
            env_key = protocol.env_key(prefix, job_id)
            self.storage.put(env_key, protocol.sign_object(key, env_key, json.dumps(base["extra_env"]).encode()))
            puts += 1
            base["extra_env"], base["extra_env_key"] = {}, env_key
            base_size = len(json.dumps(base))
        invocations = []
        entries: list[dict[str, Any]] = []  # each call's entry, for a later attempt of it
        for n, start in enumerate(range(0, len(items), chunksize)):
            ids = call_ids[start : start + chunksize]
            event = dict(base)
            event["calls"] = calls = [{"id": c, "range": list(ranges[i]), "mac": macs[i]} for i, c in enumerate(ids, start)]
            entries.extend(calls)
            # Measure exactly only when a generous bound per call does not settle it.
            if base_size + _MAX_CALL_JSON * len(calls) > MAX_EVENT_BYTES and len(json.dumps(event)) > MAX_EVENT_BYTES:
                calls_key = protocol.calls_key(prefix, job_id, n)
                self.storage.put(calls_key, protocol.sign_object(key, calls_key, json.dumps(calls).encode()))
                puts += 1
                del event["calls"]
                event["calls_key"] = calls_key
            request_id = f"{job_id}-{n:06d}"
            invocations.append(Invocation(request_id, event, ids, timeout))
            for i in range(start, start + len(ids)):
                stats = futures[i].stats
                stats["host_submitted"] = submitted
                stats["request_id_sent"] = request_id
                stats["shipped_modules"] = payload.shipped
                stats["arg_bytes"] = ranges[i][1]
        policy = policy or self._policy
        self._write_manifest(job_id, func, submitted, len(items), chunksize, timeout, policy.retries, len(invocations), puts + 1)
        tally = self._tallies[job_id] = Tally()
        tally.add_host({"put": puts + 1})  # the manifest's PUT included
        self.attempts.register(job_id, base, entries, timeout, policy, futures, invocations, chunksize)
        try:
            self.monitor.watch(prefix, job_id, {f.call_id: f for f in futures}, tally=tally)
            if self._budget is not None:  # set only now: a call the budget refuses is watched already
                for inv in invocations:
                    inv.admit = self._budget.admit
                self._budget.submitted()
            self.backend.invoke(invocations)
        except BaseException as e:  # refused (a preflight, a broken backend or monitor): no future may wait
            for f in futures:
                self.monitor.forget(job_id, f.call_id)
                if not f.done():
                    f.set_exception(e)
            raise
        invoked = time.time()
        for f in futures:
            f.stats["host_invoked"] = invoked
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "dask-wren: job %s submitted: %d call(s) of %s in %d invocation(s) on the %s backend",
                job_id, len(items), _function_name(func), len(invocations), self.settings.backend,
            )
        return futures

    def _write_manifest(
        self, job_id: str, func: Callable, submitted: float, calls: int, chunksize: int, timeout: float, retries: int,
        invocations: int, puts: int,
    ) -> None:
        """The job's manifest (``protocol.manifest_key``): what ``dask_wren.jobs`` knows of a job whose host is gone."""
        settings = self.settings
        aws = settings.backend == "aws"
        manifest = {
            "v": 1, "job_id": job_id, "executor_id": self.executor_id,
            "host": self._host[0], "pid": self._host[1], "pid_started": self._host[2],
            "submitted": submitted, "calls": calls, "chunksize": chunksize, "timeout": timeout,
            "backend": settings.backend, "function": _function_name(func), "memory_mb": settings.memory_mb,
            "region": (settings.aws_region or settings.region) if aws else None,
            "function_name": settings.function_name if aws else None,
            "retries": retries, "invocations": invocations, "key_id": self.signing_key.id,
            "host_requests": {"put": puts},  # this one included
        }
        self.storage.put(protocol.manifest_key(settings.prefix, job_id), json.dumps(manifest).encode())


def _function_name(func: Callable) -> str:
    """``module.qualname`` of a job's function, as far as it has them (a partial names its function)."""
    inner = getattr(func, "func", func)
    module = getattr(inner, "__module__", None) or "?"
    return f"{module}.{getattr(inner, '__qualname__', type(inner).__qualname__)}"


def _check_env(extra_env: dict[str, str] | None) -> dict[str, str]:
    if not extra_env:
        return {}
    if not isinstance(extra_env, dict):
        raise TypeError(f"extra_env must be a dict of strings, not {type(extra_env).__name__}")
    bad = [k for k, v in extra_env.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"extra_env keys and values must be strings; offending keys: {bad}")
    return dict(extra_env)


def _cleanup(
    storage: Storage, prefix: str, jobs: list[str], enabled: bool, cancels: CancelMarkers, host: orphans.HostRecord
) -> None:
    cancels.cancel_waiting(jobs)  # calls still running as the executor goes (Ctrl-C, exit): stop them
    if not enabled:
        return
    for job_id in list(jobs):
        try:
            orphans.delete_job(storage, protocol.job_prefix(prefix, job_id))
        except Exception as e:  # best effort: the bucket lifecycle rule (AWS) or temp cleaner gets the rest
            logger.warning("dask-wren: could not delete job %s from storage: %s", job_id, e)
        jobs.remove(job_id)
    try:
        # A cancelled call may run until its next look at its marker: the markers stay, and the
        # host record with them, for the sweep after this process ends (dask_wren.orphans).
        if not cancels.restore():
            host.delete()
    except Exception as e:
        logger.warning("dask-wren: could not delete this executor's host record: %s", e)


def default_executor(**overrides: Any) -> Executor:
    """An executor for the configured backend (``local`` unless configured otherwise).

    Keyword arguments override settings by name, e.g. ``default_executor(workers=4, timeout=60)``.
    """
    return Executor(Settings.from_config(**overrides))


def local_executor(**overrides: Any) -> Executor:
    """An executor on the embedded local backend: worker processes on this machine."""
    return default_executor(**{**overrides, "backend": "local"})


def lambda_executor(**overrides: Any) -> Executor:
    """An executor on AWS Lambda with S3 storage (the bucket from config or ``bucket=``)."""
    return default_executor(**{"storage": "s3", **overrides, "backend": "aws"})
