"""Machinery that fails takes its pending futures with it, as ``BackendError``, never leaves them
waiting (the stdlib's broken-pool pattern); the next executor gets fresh machinery."""

import pytest

import dask_wren
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
        def broken(request_id, call_id):
            raise RuntimeError("injected listener fault")

        monkeypatch.setattr(ex.backend, "call_done", broken)
        assert [f.result(timeout=30) for f in ex.map(abs, [-1, -2])] == [1, 2]
        assert [f.result(timeout=30) for f in ex.map(abs, [-3, -4])] == [3, 4]  # later rounds still run
    assert "injected listener fault" in caplog.text
