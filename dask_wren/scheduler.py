"""``wren_get``: a Dask get function that runs map-like tasks on workers and cheap steps here.

Use it as ``dask.compute(x, scheduler=wren_get)``, ``scheduler="wren"`` or
``dask.config.set(scheduler=wren_get)``.  The graph is prepared with dask's own tools
(``__dask_graph__``, ``convert_legacy_graph``, ``cull``, ``resolve_aliases``, ``dask.order``)
and walked with ``dask.local``'s state machine (``start_state_from_dask``, ``finish_task``).

State (the scheduling thread only; ``state`` is dask.local's dict, which ProgressBar reads):
    state["ready" | "waiting" | "running" | "finished" | "released"]  as in dask.local
    state["cache"]   key -> a host value, or a ``_Remote`` handle to a result left in storage
    refs             storage key -> how many cache entries point at it (aliases share one)
    futures          remote futures in flight, cancelled if the compute fails
    jobs             the executor jobs this compute submitted (their listeners are dropped at the end)
    done             a queue of lists of (key, value or _Remote, exception, worker): finished tasks

Placement, decided the moment a task becomes ready:
    1. ``dask.annotate(wren="local" | "remote")`` or a ``@local`` / ``@remote`` marker on any
       function inside the task (markers survive fusion) decides;
    2. a task without task dependencies (the map work) goes to a worker;
    3. a task whose inputs together are at most ``local_input_limit`` bytes runs on a host thread
       (inputs left in storage are downloaded for it);
    4. otherwise it goes to a worker, its remote inputs passed as storage references, so a large
       intermediate never travels through the host.
``Alias`` nodes are resolved on the host without running anything; ``DataNode`` values are
already in the cache.  Remote tasks that become ready together go out as one job.
"""

from __future__ import annotations

import difflib
import logging
import os
import queue
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
from dask._task_spec import (
    Alias,
    DependenciesMapping,
    GraphNode,
    Task,
    convert_legacy_graph,
    cull,
    resolve_aliases,
)
from dask.callbacks import local_callbacks, unpack_callbacks
from dask.core import flatten, reverse_dict
from dask.local import finish_task, nested_get, release_data, start_state_from_dask
from dask.order import order
from dask.sizeof import sizeof

from dask_wren.config import SETTING_NAMES, Settings
from dask_wren.executor import Executor
from dask_wren.futures import WrenFuture
from lambda_worker import protocol
from lambda_worker.dask_task import run_task

logger = logging.getLogger("dask_wren")

LOCAL, REMOTE = "local", "remote"
_MARKER = "__wren_placement__"


def local(func: Callable) -> Callable:
    """Mark a function to run on the host whenever a task calls it (survives task fusion)."""
    setattr(func, _MARKER, LOCAL)
    return func


def remote(func: Callable) -> Callable:
    """Mark a function to run on a worker whenever a task calls it (survives task fusion)."""
    setattr(func, _MARKER, REMOTE)
    return func


class _Remote:
    """A task result that lives in storage; ``future`` fetches it on demand."""

    __slots__ = ("future",)

    def __init__(self, future: WrenFuture):
        self.future = future

    @property
    def nbytes(self) -> int:
        return int(self.future.stats.get("result_bytes", 0))

    def __repr__(self) -> str:
        return f"<result in storage: {self.future.key}, {self.nbytes} bytes>"


def wren_get(
    dsk: Any,
    keys: Any,
    *,
    executor: Executor | None = None,
    local_input_limit: int | None = None,
    num_threads: int | None = None,
    callbacks: Any = None,
    **overrides: Any,
) -> Any:
    """Compute ``keys`` of the graph ``dsk``; a key list gives a tuple, recursively.

    ``executor``: run on an existing executor (default: a new one from config, with
    ``overrides`` such as ``backend=`` or ``workers=``, shut down afterwards).
    ``local_input_limit``: bytes of inputs under which a task with dependencies runs here
    (default ``wren.local-input-limit``).  ``num_threads``: host threads for local tasks.
    Other keywords are ignored with a warning, as dask's own schedulers ignore keywords
    ``compute()`` forwards that they do not know.
    """
    overrides = _settings_only(overrides)
    annotations = _wren_annotations(dsk)
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    dsk = convert_legacy_graph(dsk)
    wanted = set(flatten(keys)) if isinstance(keys, list) else {keys}
    for key in wanted:
        if key not in dsk:
            raise KeyError(key)
    dsk = cull(dsk, list(wanted))
    if any(isinstance(node, Alias) for node in dsk.values()):  # the common graph has none: skip the pass
        dsk = resolve_aliases(dsk, wanted, reverse_dict(DependenciesMapping(dsk)))
    own = executor is None
    if own:
        executor = Executor(Settings.from_config(**overrides))
    elif overrides:
        raise TypeError(f"settings {sorted(overrides)} cannot apply to an existing executor")
    limit = local_input_limit if local_input_limit is not None else int(dask.config.get("wren.local-input-limit"))
    run = _Compute(dsk, wanted, executor, limit, annotations, num_threads or os.cpu_count() or 1)
    try:
        return run.execute(keys, callbacks)
    finally:
        run.close()
        if own:
            executor.shutdown(wait=False, cancel_futures=True)


_OWN_KEYWORDS = ("executor", "local_input_limit", "num_threads", "callbacks")


def _settings_only(keywords: dict[str, Any]) -> dict[str, Any]:
    """The executor settings among ``keywords``; a warning names the others, which are ignored."""
    unknown = sorted(k for k in keywords if k not in SETTING_NAMES)
    for name in unknown:
        close = difflib.get_close_matches(name, [*SETTING_NAMES, *_OWN_KEYWORDS], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        warnings.warn(
            f"wren_get ignores {name!r}{hint}: it is neither a dask-wren setting nor one of "
            f"{', '.join(_OWN_KEYWORDS)}",
            UserWarning,
            stacklevel=_caller_level(),
        )
    return {k: v for k, v in keywords.items() if k in SETTING_NAMES}


def _caller_level() -> int:
    """The ``stacklevel`` of the code that called ``compute()``/``persist()``: past this module
    and ``dask.base``."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in (__name__, "dask.base"):
        level, frame = level + 1, frame.f_back
    return level


def _wren_annotations(dsk: Any) -> dict[Any, str]:
    """Keys annotated with ``dask.annotate(wren=...)``, where dask keeps annotations."""
    found: dict[Any, str] = {}
    if hasattr(dsk, "__dask_annotations__"):
        found.update(dsk.__dask_annotations__().get("wren", {}))
    for layer in getattr(dsk, "layers", {}).values():  # a HighLevelGraph
        value = (layer.annotations or {}).get("wren")
        if value is not None:
            found.update({k: value(k) if callable(value) else value for k in layer})
    bad = {v for v in found.values() if v not in (LOCAL, REMOTE)}
    if bad:
        raise ValueError(f"dask.annotate(wren=...) takes 'local' or 'remote', not {sorted(map(repr, bad))}")
    return found


def _marker(node: Any, depth: int = 0) -> str | None:
    """A placement marker on any function inside a (possibly fused) task: its own function, a
    function passed as an argument (``map_chunk(f, ...)``), or a task of its inner graph."""
    if depth > 50:
        return None
    if isinstance(node, Task):
        mark = getattr(node.func, _MARKER, None)
        if mark is not None:
            return mark
        for arg in (*node.args, *node.kwargs.values()):
            mark = _marker(arg, depth + 1)
            if mark is not None:
                return mark
    elif isinstance(node, dict):  # the inner graph of a fused task
        for value in node.values():
            if isinstance(value, GraphNode):
                mark = _marker(value, depth + 1)
                if mark is not None:
                    return mark
    elif callable(node) and not isinstance(node, GraphNode):
        return getattr(node, _MARKER, None)
    return None


class _Compute:
    """One ``wren_get`` call: the state machine described in the module docstring."""

    def __init__(self, dsk, wanted, executor: Executor, limit: int, annotations, threads: int):
        self.dsk = dsk
        self.wanted = wanted
        self.executor = executor
        self.limit = limit
        self.annotations = annotations
        self.threads = threads
        self.done: queue.Queue = queue.Queue()
        self.pool: ThreadPoolExecutor | None = None
        self.futures: set[WrenFuture] = set()
        self.jobs: list[str] = []
        self.refs: Counter[str] = Counter()
        self.doomed: list[str] = []

    def execute(self, keys, callbacks):
        dsk = self.dsk
        with local_callbacks(callbacks) as cbs:
            _, _, pretask_cbs, posttask_cbs, _ = unpack_callbacks(cbs)
            started = []
            state: dict = {}
            succeeded = False
            try:
                for cb in cbs:
                    if cb[0]:
                        cb[0](dsk)
                    started.append(cb)
                keyorder = order(dsk)
                state = start_state_from_dask(dsk, cache={}, keys=self.wanted, sortkey=keyorder.get)
                for _, start_state, _, _, _ in cbs:
                    if start_state:
                        start_state(dsk, state)
                if state["waiting"] and not state["ready"]:
                    raise ValueError("Found no accessible jobs in dask")
                while state["waiting"] or state["ready"] or state["running"]:
                    self._fire(state, pretask_cbs)
                    for key, value, error, worker in self._completed():
                        if error is not None:
                            raise error
                        self._store(state, key, value)
                        finish_task(dsk, key, state, self.wanted, keyorder.get, release_data=self._release)
                        for f in posttask_cbs:
                            f(key, value, dsk, state, worker)
                    self._delete_released()
                succeeded = True
            finally:
                for _, _, _, _, finish in started:
                    if finish:
                        finish(dsk, state, not succeeded)
            cache = state["cache"]
            for key in self.wanted:
                cache[key] = _value(cache[key])
            return nested_get(keys, cache)

    # -- dispatch -----------------------------------------------------------------------------

    def _fire(self, state, pretask_cbs) -> None:
        ready, cache, deps_of = state["ready"], state["cache"], state["dependencies"]
        batch, here = [], []
        while ready:
            key = ready.pop()
            state["running"].add(key)
            for f in pretask_cbs:
                f(key, self.dsk, state)
            node = self.dsk[key]
            if isinstance(node, Alias):
                self.done.put([(key, cache[node.target], None, "host")])
                continue
            deps = deps_of[key]
            if self._placement(key, node, deps, cache) == LOCAL:
                here.append((key, node, {d: cache[d] for d in deps}))
            else:
                batch.append(key)
        if batch:
            self._submit_remote(batch, cache, deps_of)
        if len(here) == 1 and len(state["running"]) == 1:
            self._run_local(*here[0])  # nothing else to overlap with: skip the thread hand-off
        else:
            for task in here:
                self._local_pool().submit(self._run_local, *task)

    def _placement(self, key, node, deps, cache) -> str:
        forced = self.annotations.get(key) or _marker(node)
        if forced is not None:
            return forced
        if not deps:
            return REMOTE
        total = 0
        for d in deps:
            v = cache[d]
            total += v.nbytes if isinstance(v, _Remote) else sizeof(v)
            if total > self.limit:
                return REMOTE
        return LOCAL

    def _local_pool(self) -> ThreadPoolExecutor:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dask-wren-local")
        return self.pool

    def _run_local(self, key, node, inputs) -> None:
        try:
            value = node({d: _value(v) for d, v in inputs.items()})
        except BaseException as e:  # noqa: BLE001 - handed to the scheduling thread, which raises it
            self.done.put([(key, None, e, "host")])
        else:
            self.done.put([(key, value, None, "host")])

    def _submit_remote(self, batch, cache, deps_of) -> None:
        payloads = []
        for key in batch:
            inputs = {}
            for d in deps_of[key]:
                v = cache[d]
                inputs[d] = protocol.StorageRef(v.future.key) if isinstance(v, _Remote) else v
            payloads.append((self.dsk[key], inputs))
        limit = self.executor.settings.map_item_limit
        for start in range(0, len(batch), limit):
            keys = batch[start : start + limit]
            futures = self.executor.map_with_listener(run_task, payloads[start : start + limit], keys, self._remote_done)
            self.jobs.append(futures[0].job_id)
            self.futures.update(futures)

    def _remote_done(self, futures: list[WrenFuture]) -> None:
        finished = []
        for future in futures:
            if future.cancelled():
                continue
            error = future.exception()
            worker = future.stats.get("worker_pid", "worker")
            finished.append((future.tag, None if error else _Remote(future), error, worker))
        if finished:
            self.done.put(finished)

    # -- completion ---------------------------------------------------------------------------

    def _completed(self):
        """Block for finished tasks, then take every other one already finished."""
        items = self.done.get()
        while True:
            try:
                items.extend(self.done.get_nowait())
            except queue.Empty:
                return items

    def _store(self, state, key, value) -> None:
        state["cache"][key] = value
        if isinstance(value, _Remote):
            self.futures.discard(value.future)
            self.refs[value.future.key] += 1

    def _release(self, key, state, delete=True) -> None:
        value = state["cache"].get(key)
        release_data(key, state, delete=delete)
        if delete and isinstance(value, _Remote):
            storage_key = value.future.key
            self.refs[storage_key] -= 1
            if self.refs[storage_key] <= 0:
                del self.refs[storage_key]
                self.doomed.append(storage_key)

    def _delete_released(self) -> None:
        """Free storage that no pending task needs any more (one request per batch on S3)."""
        if self.doomed:
            doomed, self.doomed = self.doomed, []
            try:
                self.executor.storage.delete(doomed)
            except Exception as e:  # the job prefix is removed at the end anyway
                logger.debug("wren_get: released intermediates not deleted yet (%s): %s", len(doomed), e)

    def close(self) -> None:
        self.executor.cancel(list(self.futures))  # the calls still running stop on their workers
        for job_id in self.jobs:
            self.executor.drop_listener(job_id)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _value(v: Any) -> Any:
    return v.future.result() if isinstance(v, _Remote) else v


def register() -> None:
    """Make ``scheduler="wren"`` name this get function."""
    import dask.base

    dask.base.named_schedulers["wren"] = wren_get

