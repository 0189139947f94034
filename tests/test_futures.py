"""Futures: pickled (detached) futures, wait modes, futures of several executors, the future API,
and large results left in storage.

Calls that must stay unfinished for a while wait on a *gate*: a file the test creates when it is
ready.  The remote function polls for it with a deadline, so nothing depends on timing.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import dask_wren
from dask_wren import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, as_completed, get_all_results, wait
from lambda_worker.protocol import HEADER_PROBE_BYTES

pytestmark = pytest.mark.timeout(60)

GATE_DEADLINE = 20.0


def _make_executor(store):
    return dask_wren.default_executor(storage_dir=str(store), workers=2, timeout=30)


@pytest.fixture
def ex(tmp_path):
    e = _make_executor(tmp_path / "store")
    yield e
    e.shutdown()


@pytest.fixture
def gate(tmp_path, ex):
    """A gate path; always opened at teardown (before ``ex`` shuts down and waits for its calls)."""
    path = tmp_path / "gate"
    yield str(path)
    path.touch()


# -- remote functions -------------------------------------------------------------------------


def square(x):
    return x * x


def wait_for_gate(path):
    deadline = time.monotonic() + GATE_DEADLINE
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.005)


def fast_or_gated(item):
    """``("fast", x)`` returns at once; ``("gated", x, path)`` returns once the gate opens."""
    if item[0] == "gated":
        wait_for_gate(item[2])
    return item[1] * 10


def gated_value(item):
    value, path = item
    wait_for_gate(path)
    return value


def maybe_fail(x):
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x + 1


def raise_kind(item):
    kind, message = item
    if kind == "ok":
        return message
    raise {"value": ValueError, "key": KeyError, "runtime": RuntimeError}[kind](message)


def talk(x):
    print(f"hello from call {x}")
    print("second line")
    return x


def big_result(n):
    return bytes(range(256)) * n


# -- helpers ----------------------------------------------------------------------------------


def _child_code(body: str) -> str:
    return textwrap.dedent("""
        import pickle, sys
        with open(sys.argv[1], "rb") as f:
            futures = pickle.load(f)
    """) + textwrap.dedent(body)


def _run_child(tmp_path, futures, body, timeout=30):
    blob = tmp_path / "futures.pkl"
    blob.write_bytes(pickle.dumps(futures))
    proc = subprocess.run(
        [sys.executable, "-c", _child_code(body), str(blob)],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout.splitlines()


# -- 1. pickled futures -----------------------------------------------------------------------


def test_pickled_finished_futures_resolve_in_another_process(ex, tmp_path):
    futures = ex.map(square, [1, 2, 3])
    assert get_all_results(futures) == [1, 4, 9]
    lines = _run_child(tmp_path, futures, """
        print([f.done() for f in futures])
        print([f.result(timeout=10) for f in futures])
        print([f.exception(timeout=10) for f in futures])
        print([f.succeeded() and not f.errored() for f in futures])
    """)
    assert lines == ["[True, True, True]", "[1, 4, 9]", "[None, None, None]", "[True, True, True]"]


def test_future_pickled_before_it_completed(ex, gate, tmp_path):
    futures = ex.map(gated_value, [(42, gate)])
    assert not futures[0].done()  # the gate is closed: the call cannot have finished
    blob = tmp_path / "futures.pkl"
    blob.write_bytes(pickle.dumps(futures))
    body = """
        print("loaded", [f.done() for f in futures], flush=True)
        print("result", [f.result(timeout=30) for f in futures], flush=True)
        print("done", [f.done() for f in futures], flush=True)
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _child_code(body), str(blob)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        first = child.stdout.readline()
        assert first == "loaded [False]\n", first + child.stdout.read()
        open(gate, "w").close()  # the child is now waiting in result()
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, rest
    assert rest.splitlines() == ["result [42]", "done [True]"]
    assert futures[0].result(timeout=10) == 42


def test_pickled_errored_future_reraises_original_type(ex, tmp_path):
    futures = ex.map(raise_kind, [("ok", "fine"), ("value", "bad value"), ("key", "missing")])
    wait(futures)
    assert [f.errored() for f in futures] == [False, True, True]
    lines = _run_child(tmp_path, futures, """
        for f in futures:
            exc = f.exception(timeout=10)
            print(f.done(), f.succeeded(), f.errored(), type(exc).__name__, exc if exc else "")
            try:
                print("result", f.result(timeout=10))
            except Exception as e:
                print("raised", type(e).__name__, e)
    """)
    assert lines == [
        "True True False NoneType ",
        "result fine",
        "True False True ValueError bad value",
        "raised ValueError bad value",
        "True False True KeyError 'missing'",
        "raised KeyError 'missing'",
    ]


def test_detached_futures_work_with_wait_and_as_completed_in_another_process(ex, tmp_path):
    futures = ex.map(maybe_fail, [1, -1, 2])
    wait(futures)
    lines = _run_child(tmp_path, futures, """
        import dask_wren
        done, not_done = dask_wren.wait(futures, timeout=10)
        print(len(done), len(not_done))
        print(sorted(f.call_id for f in dask_wren.as_completed(futures, timeout=10)))
        try:
            dask_wren.get_all_results(futures, timeout=10)
        except ValueError as e:
            print("raised", e)
    """)
    assert lines == ["3 0", "['000000', '000001', '000002']", "raised negative: -1"]


def test_detached_future_in_same_process(ex, gate):
    (attached,) = ex.map(gated_value, [("v", gate)])
    detached = pickle.loads(pickle.dumps(attached))
    assert detached is not attached
    assert not detached.done()
    with pytest.raises(cf.TimeoutError):
        detached.result(timeout=0.05)
    open(gate, "w").close()
    assert detached.result(timeout=20) == "v"
    assert detached.done() and detached.succeeded()
    assert attached.result(timeout=20) == "v"


# -- 2. wait modes ----------------------------------------------------------------------------


def test_wait_modes_with_a_gated_call(ex, gate):
    fast, gated = ex.map(fast_or_gated, [("fast", 1), ("gated", 2, gate)])

    done, not_done = wait([fast, gated], return_when=ANY_COMPLETED)
    assert done == [fast] and not_done == [gated]
    assert fast.result() == 10

    # ALWAYS returns the current state, waiting for nothing: the gate is closed, so a wait for
    # all or for any of [gated] would last until the call gave up on its gate and failed
    done, not_done = wait([fast, gated], return_when=ALWAYS)
    assert done == [fast] and not_done == [gated]
    assert wait([gated], return_when=ALWAYS) == ([], [gated])
    assert not gated.done()

    done, not_done = wait([gated, fast], return_when=ALL_COMPLETED, timeout=0.5)
    assert done == [fast] and not_done == [gated]  # input order is kept

    done, not_done = wait([fast, gated], return_when=dask_wren.FIRST_COMPLETED, timeout=0.2)
    assert done == [fast] and not_done == [gated]

    open(gate, "w").close()
    done, not_done = wait([fast, gated])
    assert done == [fast, gated] and not_done == []
    assert gated.result() == 20


def test_wait_any_completed_with_timeout_and_nothing_done(ex, gate):
    futures = ex.map(gated_value, [(1, gate), (2, gate)])
    done, not_done = wait(futures, return_when=ANY_COMPLETED, timeout=0.2)
    assert done == [] and not_done == futures
    open(gate, "w").close()
    assert get_all_results(futures) == [1, 2]


def test_wait_rejects_unknown_mode(ex):
    futures = ex.map(square, [1])
    with pytest.raises(ValueError, match="return_when"):
        wait(futures, return_when="SOMETIMES")
    wait(futures)


def test_get_all_results_timeout(ex, gate):
    futures = ex.map(gated_value, [(1, gate)])
    with pytest.raises(cf.TimeoutError):
        get_all_results(futures, timeout=0.2)
    open(gate, "w").close()
    assert get_all_results(futures, timeout=20) == [1]


def test_as_completed_over_mixed_attached_and_detached_futures(ex, gate):
    first = ex.map(square, [3, 4])
    gated = ex.map(gated_value, [("late", gate)])
    detached = [pickle.loads(pickle.dumps(f)) for f in first]
    everything = detached + gated
    seen = []
    for f in as_completed(everything, timeout=20):
        seen.append(f)
        if len(seen) == 2:
            assert set(map(id, seen)) == set(map(id, detached))
            open(gate, "w").close()
    assert sorted(map(id, seen)) == sorted(map(id, everything))
    assert [f.result() for f in everything] == [9, 16, "late"]


def test_as_completed_yields_a_repeated_attached_future_once(ex):
    futures = ex.map(square, [2, 3])
    assert len(list(as_completed([futures[0], futures[0], futures[1]], timeout=20))) == 2


def test_as_completed_yields_a_repeated_detached_future_once(ex):
    futures = ex.map(square, [2, 3])
    wait(futures)
    detached = pickle.loads(pickle.dumps(futures[0]))
    assert len(list(as_completed([detached, detached, futures[1]], timeout=20))) == 2


# -- 3. futures of two executors --------------------------------------------------------------


def test_futures_of_two_executors(tmp_path):
    ex_a = _make_executor(tmp_path / "store-a")
    ex_b = _make_executor(tmp_path / "store-b")
    try:
        fa = ex_a.map(square, [1, 2, 3])
        fb = ex_b.map(maybe_fail, [10, 20])
        assert fa[0].storage.spec() != fb[0].storage.spec()
        mixed = [fb[0], fa[0], fb[1], fa[1], fa[2]]

        done, not_done = wait(mixed, timeout=20)
        assert done == mixed and not_done == []

        yielded = list(as_completed(mixed, timeout=20))
        assert len(yielded) == len(mixed)
        assert sorted(map(id, yielded)) == sorted(map(id, mixed))

        assert get_all_results(mixed) == [11, 1, 21, 4, 9]
    finally:
        ex_a.shutdown()
        ex_b.shutdown()


def test_get_all_results_raises_the_first_error_in_input_order(tmp_path):
    ex_a = _make_executor(tmp_path / "store-a")
    ex_b = _make_executor(tmp_path / "store-b")
    try:
        fa = ex_a.map(raise_kind, [("ok", "a0"), ("runtime", "second")])
        fb = ex_b.map(raise_kind, [("value", "first"), ("ok", "b1")])
        mixed = [fa[0], fb[0], fa[1], fb[1]]
        with pytest.raises(ValueError, match="first"):
            get_all_results(mixed, timeout=20)
        with pytest.raises(RuntimeError, match="second"):
            get_all_results([fb[1], fa[1], fb[0]], timeout=20)
        assert get_all_results([fb[1], fa[0]]) == ["b1", "a0"]
    finally:
        ex_a.shutdown()
        ex_b.shutdown()


# -- 4. the future API ------------------------------------------------------------------------


def test_succeeded_errored_done(ex, gate):
    ok, bad = ex.map(maybe_fail, [1, -5])
    (pending,) = ex.map(gated_value, [("p", gate)])
    assert not pending.done() and not pending.succeeded() and not pending.errored()
    assert ok.result(timeout=20) == 2
    assert ok.done() and ok.succeeded() and not ok.errored()
    with pytest.raises(ValueError, match="negative: -5"):
        bad.result(timeout=20)
    assert bad.done() and bad.errored() and not bad.succeeded()
    assert isinstance(bad.exception(), ValueError)
    open(gate, "w").close()
    assert pending.result(timeout=20) == "p"
    assert pending.succeeded()


def test_add_done_callback_called_once_with_the_future(ex, gate):
    (future,) = ex.map(gated_value, [(7, gate)])
    calls = []
    called = threading.Event()

    def callback(f):
        calls.append(f)
        called.set()

    future.add_done_callback(callback)
    assert not called.is_set()  # the gate is closed
    open(gate, "w").close()
    assert called.wait(20)
    assert future.result(timeout=20) == 7
    assert calls == [future] and calls[0] is future

    late = []
    future.add_done_callback(late.append)  # already done: runs at once, in this thread
    assert late == [future]
    assert len(calls) == 1


def test_add_done_callback_for_an_errored_future(ex):
    (future,) = ex.map(maybe_fail, [-1])
    called = threading.Event()
    got = []

    def callback(f):
        got.append(f.exception())
        called.set()

    future.add_done_callback(callback)
    assert called.wait(20)
    assert len(got) == 1 and isinstance(got[0], ValueError)


STATS_KEYS = {
    "host_submitted", "host_invoked", "worker_start", "worker_cold", "worker_setup_done",
    "worker_call_start", "worker_call_end", "worker_result_write", "host_result_seen",
}


def test_stats_and_stdout(ex):
    futures = ex.map(talk, [1, 2])
    assert get_all_results(futures) == [1, 2]
    for i, f in enumerate(futures, 1):
        assert STATS_KEYS <= set(f.stats), STATS_KEYS - set(f.stats)
        s = f.stats
        assert s["worker_call_start"] <= s["worker_call_end"] <= s["worker_result_write"]
        assert s["worker_setup_done"] <= s["worker_call_start"]
        # host_invoked is stamped when backend.invoke() has returned, which a fast local call
        # can beat to host_result_seen: only compare each with host_submitted.
        assert s["host_submitted"] <= s["host_invoked"]
        assert s["host_submitted"] <= s["host_result_seen"]
        assert isinstance(s["worker_cold"], bool)
        assert f.stdout == f"hello from call {i}\nsecond line\n"
        assert f.stderr == ""


# -- 5. large results -------------------------------------------------------------------------
# The monitor reads the first HEADER_PROBE_BYTES of a record above the inline limit, so "large"
# here means larger than that too (the lazy path); MID is above the limit but below the probe.

LARGE = (HEADER_PROBE_BYTES // 256) * 2  # big_result(LARGE): twice the probe size
MID = 30  # big_result(MID): 7,680 bytes, above result_inline_limit=1000


def _small_limit_executor(tmp_path):
    return dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=2, result_inline_limit=1000)


def test_large_result_is_loaded_lazily(tmp_path):
    e = _small_limit_executor(tmp_path)
    try:
        small, mid, large = e.map(big_result, [1, MID, LARGE])
        wait([small, mid, large])
        assert large.stats["result_bytes"] > HEADER_PROBE_BYTES
        assert mid.stats["result_bytes"] > 1000
        assert large.result() == bytes(range(256)) * LARGE
        assert large.result() is large.result()  # loaded once
        assert mid.result() == bytes(range(256)) * MID
        assert small.result() == bytes(range(256))
    finally:
        e.shutdown()


def test_large_result_after_shutdown_is_a_clear_error(tmp_path):
    e = _small_limit_executor(tmp_path)
    fetched, never, small = e.map(big_result, [LARGE, LARGE + 1, 0])
    done, not_done = wait([fetched, never, small], timeout=20)
    assert not not_done
    assert fetched.result() == bytes(range(256)) * LARGE
    e.shutdown()
    assert fetched.result() == bytes(range(256)) * LARGE  # loaded before the cleanup
    assert small.result() == b""  # small results came inline with the record
    assert never.done() and never.succeeded()
    with pytest.raises(dask_wren.WrenError, match="cleaned up"):
        never.result()


def test_result_above_inline_limit_but_below_probe_size_stays_in_storage(tmp_path):
    e = _small_limit_executor(tmp_path)
    (never,) = e.map(big_result, [MID])
    wait([never], timeout=20)
    assert never.stats["result_bytes"] > 1000
    e.shutdown()
    with pytest.raises(dask_wren.WrenError, match="cleaned up"):
        never.result()


# -- the future's own state machine (no executor): Condition created only when observed -----


def _bare_future():
    return dask_wren.WrenFuture(None, "prefix/job/r/000000", "job", "000000")


class _Conditions:
    """Conditions the test controls, in place of ``threading.Condition``: ``made`` lists those the
    test's own thread creates; ``waiting`` is set when a thread named ``waiter`` is about to block
    in ``wait()``.  It is set holding the Condition's lock, which ``wait()`` releases only once the
    thread is registered as a waiter: whoever takes the lock after that and notifies wakes it."""

    def __init__(self):
        self.made = []
        self.waiting = threading.Event()
        test_thread = threading.get_ident()
        conditions = self

        class Condition(threading.Condition):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                if threading.get_ident() == test_thread:
                    conditions.made.append(self)

            def wait(self, timeout=None):
                if threading.current_thread().name == "waiter":
                    conditions.waiting.set()
                return super().wait(timeout)

        self.Condition = Condition


@pytest.fixture
def conditions(monkeypatch):
    c = _Conditions()
    monkeypatch.setattr(threading, "Condition", c.Condition)
    return c


def test_a_future_nobody_observes_finishes_without_a_condition(conditions):
    f = _bare_future()
    assert not f.done() and not f.cancelled()
    f.set_result(None)
    assert f.done() and not f.cancelled() and f.exception() is None
    assert conditions.made == []  # 100,000 scheduler futures create no Condition each
    observed = _bare_future()
    observed.add_done_callback(lambda _: None)  # observed while pending: it needs its Condition now
    assert len(conditions.made) == 1
    with pytest.raises(cf.InvalidStateError):
        f.set_result(None)  # the first outcome stands, as with the stdlib future
    calls = []
    f.add_done_callback(calls.append)  # registered after the fact: called at once
    assert calls == [f]


def test_a_waiting_thread_is_woken_and_callbacks_run_once(conditions):
    f = _bare_future()
    calls = []
    f.add_done_callback(calls.append)
    got = []

    def waiter():
        got.append(f.exception(timeout=30))

    t = threading.Thread(target=waiter, name="waiter")
    t.start()
    # resolve only once the waiter is blocked in the future's wait: the wake-up path must run
    assert conditions.waiting.wait(30), "the waiter never blocked on the future"
    error = ValueError("boom")
    f.set_exception(error)
    t.join(30)
    assert not t.is_alive()
    assert got == [error] and calls == [f]
    assert cf.wait([f], timeout=0).done == {f}


def test_cancel_before_the_result_wins_over_a_late_result():
    f = _bare_future()
    assert f.cancel()
    assert f.cancelled() and f.done()
    with pytest.raises(cf.InvalidStateError):
        f.set_result(None)
    with pytest.raises(cf.CancelledError):
        f.result(timeout=0)


def test_the_future_sets_every_attribute_the_stdlib_future_has():
    """WrenFuture skips cf.Future.__init__ (it defers the Condition): a Python release that adds
    state to cf.Future must fail here, not in a user's wait()."""
    ours = set(vars(_bare_future())) | {"_condition"}
    assert set(vars(cf.Future())) <= ours
