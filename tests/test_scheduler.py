"""wren_get: Dask graphs with remote map tasks and host reduce steps."""

import gc
import inspect
import io
import os
import threading
import weakref
from contextlib import redirect_stdout

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask.utils_test import GetFunctionTestMixin

import dask_wren
from dask_wren import wren_get
from dask_wren.config import Settings, make_storage
from dask_wren.executor import Executor
from dask_wren.testing.counting import CountingStorage
from lambda_worker import protocol
from tests.conftest import gate

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True, params=["local", "aws"])
def wren_backend(request, tmp_path):
    """Every test here runs on the local backend and on AWS Lambda through the offline stand-in."""
    if request.param == "local":
        config = {"wren.backend": "local", "wren.storage.local-dir": str(tmp_path / "store"), "wren.local.workers": 2}
    else:
        config = dict(request.getfixturevalue("standin").ensure_bucket().dask_config, **{"wren.aws.lost-call-grace": 5})
    with dask.config.set(config):
        yield request.param


class TestGetFunctionConformance(GetFunctionTestMixin):
    """dask's own suite for foreign get functions, in full."""

    get = staticmethod(wren_get)


def inc(x):
    return x + 1


def pid(_=None):
    return os.getpid()


# -- collections give what the sync scheduler gives -------------------------------------------


def test_bag_operations_match_sync():
    b = db.from_sequence(range(100), npartitions=10)
    cases = {
        "map": b.map(inc),
        "filter": b.filter(lambda x: x % 3 == 0),
        "fold": b.fold(lambda a, x: a + x, lambda a, b: a + b, initial=0),
        "sum": b.map(inc).sum(),
        "groupby": b.groupby(lambda x: x % 7, shuffle="tasks").map(lambda kv: (kv[0], sorted(kv[1]))),
        "frequencies": b.map(lambda x: x % 5).frequencies(),
    }
    for name, coll in cases.items():
        got = coll.compute(scheduler=wren_get)
        want = coll.compute(scheduler="sync")
        if name in ("groupby", "frequencies"):
            got, want = sorted(got), sorted(want)
        assert got == want, name


def test_array_operations_match_sync():
    x = da.random.default_rng(42).random((4000, 30), chunks=(500, 30))
    cases = {
        "blockwise": (x * 2 + 1)[::7],
        "reductions": da.stack([x.sum(axis=0), x.mean(axis=0), x.std(axis=0), x.max(axis=0)]),
        "matmul": x.T @ x,
        "pi": 4 * ((x[:, :2] ** 2).sum(axis=1) < 1).mean(),
    }
    for name, arr in cases.items():
        np.testing.assert_allclose(arr.compute(scheduler=wren_get), arr.compute(scheduler="sync"), err_msg=name)


def test_delayed_graph_and_nested_keys():
    a = dask.delayed(inc)(1)
    b = dask.delayed(inc)(a)
    c = dask.delayed(sum)([a, b, 10])
    assert dask.compute({"a": a, "nested": [b, (c,)]}, scheduler=wren_get) == ({"a": 2, "nested": [3, (15,)]},)
    graph = {"x": 1, "y": (inc, "x"), "z": (sum, ["x", "y"])}
    assert wren_get(graph, [["x", ["y"]], "z"]) == ((1, (2,)), 3)


def test_persist():
    b = db.from_sequence(range(20), npartitions=4).map(inc)
    (persisted,) = dask.persist(b, scheduler=wren_get)
    assert persisted.compute(scheduler="sync") == list(range(1, 21))


def test_ten_thousand_task_chain():
    graph = {f"x{i + 1}": (inc, f"x{i}") for i in range(10_000)}
    graph["x0"] = 0
    assert wren_get(graph, "x10000") == 10_000


# -- ways to choose this scheduler --------------------------------------------------------------


def test_named_scheduler_config_and_per_compute_options():
    b = db.from_sequence(range(10), npartitions=2).map(inc).sum()
    assert dask.compute(b, scheduler="wren") == (55,)
    with dask.config.set(scheduler=wren_get):
        assert dask.compute(*[dask.delayed(inc)(i) for i in range(3)]) == (1, 2, 3)
    assert dask.compute(b, scheduler=wren_get, workers=1, backend="local", local_input_limit=0) == (55,)
    with pytest.warns(UserWarning, match="ignores 'wrokers'.*did you mean 'workers'"):
        assert dask.compute(b, scheduler=wren_get, wrokers=1) == (55,)


def test_unknown_compute_keywords_are_ignored_with_a_warning():
    """dask forwards every compute() keyword to the scheduler, and its own schedulers ignore the
    ones they do not know (dask's test_bag_compute_forward_kwargs): wren_get warns and goes on."""
    b = db.from_sequence([1, 2, 3]).map(inc)
    with pytest.warns(UserWarning, match="bogus_keyword"):
        assert b.compute(scheduler=wren_get, bogus_keyword=10) == [2, 3, 4]
    with dask.config.set(scheduler=wren_get), pytest.warns(UserWarning, match="bogus_keyword"):
        assert (dask.delayed(1) + 2).compute(bogus_keyword=10) == 3
    # executor settings still apply, and are still checked
    with pytest.raises(ValueError, match="wren.local.workers"):
        b.compute(scheduler=wren_get, workers=0)
    with Executor(Settings.from_config()) as ex:
        with pytest.raises(TypeError, match="cannot apply to an existing executor"):
            b.compute(scheduler=wren_get, executor=ex, workers=1)
        with pytest.warns(UserWarning, match="bogus_keyword"):
            assert b.compute(scheduler=wren_get, executor=ex, bogus_keyword=10) == [2, 3, 4]


# -- placement ----------------------------------------------------------------------------------


def test_map_tasks_run_on_workers_and_small_reductions_on_the_host():
    pids = db.from_sequence(range(8), npartitions=4).map(pid)
    assert os.getpid() not in set(pids.compute(scheduler=wren_get))
    # the reduction over the worker results runs here: it sees this process's pid
    reduced = dask.delayed(lambda xs: (os.getpid(), len(xs)))(pids)
    assert dask.compute(reduced, scheduler=wren_get)[0] == (os.getpid(), 8)


def test_annotations_override_placement():
    with dask.annotate(wren="local"):
        here = dask.delayed(pid)(0)
    leaf = dask.delayed(pid)(0)
    with dask.annotate(wren="remote"):
        there = dask.delayed(lambda p: os.getpid())(leaf)
    h, t = dask.compute(here, there, scheduler=wren_get)
    assert h == os.getpid() and t != os.getpid()
    with dask.annotate(wren="sideways"), pytest.raises(ValueError, match="'local' or 'remote'"):
        dask.compute(dask.delayed(pid)(0), scheduler=wren_get)


@dask_wren.local
def host_pid(x):
    return os.getpid()


def test_markers_survive_fusion():
    # map(inc).map(host_pid) fuses into one task per partition; the marker still holds
    b = db.from_sequence(range(6), npartitions=3).map(inc).map(host_pid)
    assert set(b.compute(scheduler=wren_get)) == {os.getpid()}

    @dask_wren.remote
    def combine(a, b):
        return os.getpid()

    assert dask.compute(dask.delayed(combine)(1, 2), scheduler=wren_get)[0] != os.getpid()


def big_block(seed):
    return np.random.default_rng(seed).random(500_000)  # 4 MB


def combine_blocks(a, b):
    return float(a.sum() + b.sum())


def test_large_intermediates_stay_in_storage(tmp_path):
    settings = Settings.from_config()
    storage = CountingStorage(make_storage(settings))
    with Executor(settings, storage=storage) as ex:
        a, b = dask.delayed(big_block)(1), dask.delayed(big_block)(2)
        total = dask.delayed(combine_blocks)(a, b)
        (got,) = dask.compute(total, scheduler=wren_get, executor=ex, local_input_limit=1_000_000)
        want = combine_blocks(big_block(1), big_block(2))
        assert got == pytest.approx(want)
        # The host read only the final (small) result whole; of the two 4 MB blocks it read headers.
        assert len(storage.calls["get"]) == 1, storage.calls["get"]
        assert len(storage.calls["get_range"]) == 2
        # and the blocks were deleted as soon as the combining task had finished
        assert len(storage.calls["delete"]) >= 1


def test_intermediates_are_released_from_storage(tmp_path):
    settings = Settings.from_config()
    storage = CountingStorage(make_storage(settings))
    with Executor(settings, storage=storage) as ex:
        b = db.from_sequence(range(40), npartitions=8).map(inc).sum()
        assert dask.compute(b, scheduler=wren_get, executor=ex, local_input_limit=0) == (820,)
        deleted = [k for batch in storage.calls["delete"] for k in batch]
        assert len(deleted) >= 8  # every partition's partial once its consumer was done


def watch_submissions(ex):
    """Weak references to what each compute hands ``ex``: its jobs' futures and their listeners
    (methods of the compute, which holds its graph)."""
    refs = []
    submit = ex.map_with_listener

    def watched(func, items, tags, listener):
        futures = submit(func, items, tags, listener)
        refs.extend(weakref.ref(f) for f in futures)
        refs.append(weakref.WeakMethod(listener) if inspect.ismethod(listener) else weakref.ref(listener))
        return futures

    ex.map_with_listener = watched
    return refs


def test_a_long_lived_executor_keeps_nothing_of_finished_computes():
    with Executor(Settings.from_config()) as ex:
        refs = watch_submissions(ex)
        for _ in range(3):
            b = db.from_sequence(range(40), npartitions=8).map(inc).sum()
            assert dask.compute(b, scheduler=wren_get, executor=ex) == (820,)
        gc.collect()
        assert len(refs) >= 3 * 9  # each compute's futures (8 partitions at least) and listener
        assert [r() for r in refs if r() is not None] == []  # no futures or graphs held on to
        assert ex.wait(return_when=dask_wren.ALWAYS) == ([], [])  # nor futures of its own
        assert ex.monitor.watched_jobs == []


# -- callbacks, failures, nesting ---------------------------------------------------------------


def test_progress_bar_and_profiler():
    from dask.diagnostics import Profiler, ProgressBar

    b = db.from_sequence(range(30), npartitions=6).map(inc).sum()
    out = io.StringIO()
    with redirect_stdout(out), ProgressBar(out=out), Profiler() as prof:
        assert b.compute(scheduler=wren_get) == sum(range(1, 31))
    assert "100%" in out.getvalue()
    assert len(prof.results) >= 6
    assert {r.worker_id for r in prof.results} >= {"host"}


class Boom(Exception):
    pass


def explode(x):
    raise Boom(f"task {x} failed")


def slow_gate(path):
    gate(path, timeout=60)
    return 1


def test_a_failing_task_raises_its_exception_and_cancels_work_in_flight(tmp_path):
    gate_path = str(tmp_path / "never")
    with Executor(Settings.from_config()) as ex:
        stuck = dask.delayed(slow_gate)(gate_path)
        failing = dask.delayed(explode)(7)
        submitted = []
        listeners = []
        map_with_listener = ex.map_with_listener

        def watched(func, items, tags, listener):
            listeners.append(weakref.WeakMethod(listener) if inspect.ismethod(listener) else weakref.ref(listener))
            submitted.extend(map_with_listener(func, items, tags, listener))
            return submitted[-len(items):]

        ex.map_with_listener = watched
        with pytest.raises(Boom, match="task 7 failed"):
            dask.compute(stuck, failing, scheduler=wren_get, executor=ex)
        assert len(submitted) == 2
        assert all(f.done() for f in submitted)  # nothing left waiting
        assert any(f.cancelled() for f in submitted)
        submitted_jobs = sorted({f.job_id for f in submitted if f.cancelled()})
        submitted.clear()  # the failed future's exception, raised in the compute, holds its frames
        gc.collect()
        assert listeners and [r() for r in listeners if r() is not None] == []  # the compute let go of its jobs
    # Only the cancelled job's marker stays, for a call that has yet to look at it; the sweep of
    # dead hosts removes it after this process (dask_wren.orphans).
    left = [key for key, _ in ex.storage.list(f"{ex.settings.prefix}/{ex.executor_id}")]
    assert left == [protocol.cancel_key(ex.settings.prefix, submitted_jobs[0])]
    open(gate_path, "w").close()  # a cancelled call that has not stopped yet may finish


def nested_compute(n):
    return dask.compute(db.from_sequence(range(n), npartitions=2).map(inc).sum(), scheduler=wren_get)[0]


def test_nested_compute_on_the_host_and_on_a_worker():
    local_nested = dask.delayed(dask_wren.local(nested_compute))(10)
    remote_nested = dask.delayed(lambda n: dask.compute(dask.delayed(inc)(n), scheduler="sync")[0])(5)
    assert dask.compute(local_nested, remote_nested, scheduler=wren_get) == (55, 6)


def test_concurrent_computes_from_threads():
    results = {}

    def run(i):
        results[i] = db.from_sequence(range(10 * i), npartitions=3).map(inc).sum().compute(scheduler=wren_get)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: sum(range(1, 10 * i + 1)) for i in range(1, 4)}
