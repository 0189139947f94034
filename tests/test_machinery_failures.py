"""Machinery that fails takes its pending futures with it, as ``BackendError``, never leaves them
waiting (the stdlib's broken-pool pattern); the next executor gets fresh machinery.  Each thread of
the local and AWS backends, the AWS invoker processes and the monitor get an injected fault."""

import os
import signal

import pytest

import dask_wren
from dask_wren.backends import aws_invoker
from dask_wren.backends.aws import AWSLambdaBackend
from dask_wren.backends.local import LocalBackend
from dask_wren.monitor import Monitor
from tests.conftest import gate, wait_for_path

pytestmark = pytest.mark.timeout(90)


def settings(tmp_path):
    return {"storage_dir": str(tmp_path / "store"), "workers": 2, "timeout": 60}


def started_then_gate(args):
    started, gate_path = args
    open(started, "w").close()
    gate(gate_path, timeout=60)
    return started


def test_a_dispatcher_that_raises_fails_pending_calls_and_the_next_executor_gets_a_new_pool(tmp_path, monkeypatch):
    ex = dask_wren.default_executor(**settings(tmp_path))
    pool = ex.backend
    futures = ex.map(started_then_gate, [(str(tmp_path / f"started-{i}"), str(tmp_path / "never")) for i in range(4)])
    wait_for_path(str(tmp_path / "started-0"))  # one call runs; at least two more wait behind it (2 workers)

    def broken(self):
        raise RuntimeError("injected dispatcher fault")

    monkeypatch.setattr(LocalBackend, "_dispatch", broken)
    pool.set_concurrency_limit(None)  # wakes the dispatcher, which now raises
    for f in futures:  # running and queued alike
        with pytest.raises(dask_wren.BackendError, match="dispatcher failed.*injected dispatcher fault"):
            f.result(timeout=30)
    with pytest.raises(dask_wren.BackendError, match="injected dispatcher fault"):
        ex.map(abs, [-1])
    ex.shutdown(wait=False)
    monkeypatch.undo()
    with dask_wren.default_executor(**settings(tmp_path)) as fresh:
        assert fresh.backend is not pool
        assert fresh.map(abs, [-1, -2])[1].result(timeout=30) == 2


def test_a_monitor_that_raises_fails_its_futures(tmp_path, monkeypatch):
    def broken(self, job_id, job):
        raise RuntimeError("injected monitor fault")

    monkeypatch.setattr(Monitor, "_scan", broken)
    ex = dask_wren.default_executor(**settings(tmp_path))
    f = ex.call_async(abs, -3)
    with pytest.raises(dask_wren.BackendError, match="result monitor failed.*injected monitor fault"):
        f.result(timeout=30)
    with pytest.raises(dask_wren.BackendError, match="injected monitor fault"):
        ex.map(abs, [-1])
    ex.shutdown(wait=False)


def test_a_listener_that_raises_is_logged_and_the_monitor_goes_on(tmp_path, monkeypatch, caplog):
    with dask_wren.default_executor(**settings(tmp_path)) as ex:
        def broken(futures):
            raise RuntimeError("injected listener fault")

        monkeypatch.setattr(ex.monitor, "on_resolved", broken)
        assert [f.result(timeout=30) for f in ex.map(abs, [-1, -2])] == [1, 2]
        assert [f.result(timeout=30) for f in ex.map(abs, [-3, -4])] == [3, 4]  # later rounds still run
    assert "injected listener fault" in caplog.text


# -- the AWS backend, through the offline stand-in ---------------------------------------------
# Each test passes an invoke_threads no other test uses: executors with one configuration share one
# backend, and each test here breaks its own.


def aws_settings(standin, threads, **more):
    return dict(standin.settings_overrides, timeout=60, invoke_threads=threads, **more)


def gated_calls(tmp_path, names):
    return [(str(tmp_path / f"started-{name}"), str(tmp_path / "gate")) for name in names]


def assert_every_call_fails_then_a_fresh_backend_works(ex, futures, match, tmp_path, settings):
    for f in futures:  # in flight and queued alike
        with pytest.raises(dask_wren.BackendError, match=match):
            f.result(timeout=30)
    with pytest.raises(dask_wren.BackendError, match=match):
        ex.map(abs, [-1])
    broken = ex.backend
    ex.shutdown(wait=False)
    open(tmp_path / "gate", "w").close()  # the gated calls end on the stand-in's workers, freeing them
    with dask_wren.default_executor(**settings) as fresh:
        try:
            assert fresh.backend is not broken
            assert [f.result(timeout=30) for f in fresh.map(abs, [-1, -2])] == [1, 2]
        finally:
            fresh.backend.shutdown()


def test_an_aws_sender_thread_that_raises_fails_what_the_backend_holds(standin, faults, tmp_path, monkeypatch):
    settings = aws_settings(standin, 21, invoker_processes=0)
    ex = dask_wren.default_executor(**settings)
    first = ex.call_async(started_then_gate, gated_calls(tmp_path, ["a"])[0])
    wait_for_path(str(tmp_path / "started-a"))  # in flight on the stand-in

    def broken(self):
        raise RuntimeError("injected sender fault")

    # the senders wait inside _take: the one that sends the next invocation raises on its next take
    monkeypatch.setattr(AWSLambdaBackend, "_take", broken)
    more = ex.map(started_then_gate, gated_calls(tmp_path, ["b", "c"]))  # one is sent, one stays queued
    first.exception(timeout=30)  # the backend failed: the next executor's senders may take again
    monkeypatch.undo()
    assert_every_call_fails_then_a_fresh_backend_works(
        ex, [first, *more], "sender thread failed.*injected sender fault", tmp_path, settings
    )


def test_an_aws_watchdog_that_raises_fails_what_the_backend_holds(standin, faults, tmp_path, monkeypatch):
    settings = aws_settings(standin, 22, invoker_processes=0)

    def broken(self):
        wait_for_path(str(tmp_path / "started-a"))  # a call is in flight
        raise RuntimeError("injected watchdog fault")

    monkeypatch.setattr(AWSLambdaBackend, "_watchdog", broken)
    ex = dask_wren.default_executor(**settings)
    futures = ex.map(started_then_gate, gated_calls(tmp_path, ["a"]))
    monkeypatch.undo()
    assert_every_call_fails_then_a_fresh_backend_works(
        ex, futures, "lost-call watchdog failed.*injected watchdog fault", tmp_path, settings
    )


def test_killed_invokers_that_cannot_restart_fail_what_the_backend_holds(standin, faults, tmp_path, monkeypatch):
    settings = aws_settings(standin, 23, invoker_processes=2)
    ex = dask_wren.default_executor(**settings)
    first = ex.call_async(started_then_gate, gated_calls(tmp_path, ["a"])[0])
    wait_for_path(str(tmp_path / "started-a"))
    # private: no public way to make a restarted child exit before it is ready
    monkeypatch.setattr(aws_invoker, "_BOOTSTRAP", "import sys; sys.exit(3)")
    for pid in ex.backend.invoker_pids():
        os.kill(pid, signal.SIGKILL)
    more = ex.map(started_then_gate, gated_calls(tmp_path, ["b"]))  # its send restarts them, and they exit
    first.exception(timeout=30)  # the backend failed: the next executor's children may start again
    monkeypatch.undo()
    assert_every_call_fails_then_a_fresh_backend_works(
        ex, [first, *more], "could not restart: it exited with status 3", tmp_path, settings
    )


def test_an_invoker_reply_reader_that_raises_fails_what_the_backend_holds(standin, faults, tmp_path, monkeypatch):
    settings = aws_settings(standin, 24, invoker_processes=2)
    ex = dask_wren.default_executor(**settings)
    first = ex.call_async(started_then_gate, gated_calls(tmp_path, ["a"])[0])
    wait_for_path(str(tmp_path / "started-a"))

    class BrokenHeader:
        size = aws_invoker._REPLY.size

        def unpack(self, header):
            raise RuntimeError("injected reader fault")

    # private: the readers parse each reply's header with _REPLY; the next reply they read fails
    monkeypatch.setattr(aws_invoker, "_REPLY", BrokenHeader())
    more = ex.map(started_then_gate, gated_calls(tmp_path, ["b"]))
    first.exception(timeout=30)  # the backend failed: the next executor's readers may parse again
    monkeypatch.undo()
    assert_every_call_fails_then_a_fresh_backend_works(
        ex, [first, *more], "reply reader failed.*injected reader fault", tmp_path, settings
    )
