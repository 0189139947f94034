"""Everything that can go wrong in a call ends in one clear error, and nothing hangs."""

import ctypes
import os
import signal
import sys
import time
import traceback

import pytest

import dask_wren
from dask_wren import WorkerDiedError, WrenTimeoutError
from tests.conftest import gate, wait_for_path

pytestmark = pytest.mark.timeout(60)


class CustomError(Exception):
    pass


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt from its args: arrives as a RemoteError."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


class Unpicklable(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = __import__("threading").Lock()


def raise_it(kind):
    if kind == "value":
        raise ValueError("bad value 42")
    if kind == "key":
        return {}["missing"]
    if kind == "custom":
        raise CustomError("custom failure")
    if kind == "two_args":
        raise NeedsTwoArgs(1, 2)
    if kind == "unpicklable":
        raise Unpicklable("carries a lock")
    if kind == "chained":
        try:
            raise KeyError("inner")
        except KeyError as e:
            raise RuntimeError("outer") from e
    return "fine"


def deeper(kind):
    return raise_it(kind)


@pytest.mark.parametrize(
    "kind, exc_type, text",
    [
        ("value", ValueError, "bad value 42"),
        ("key", KeyError, "missing"),
        ("custom", CustomError, "custom failure"),
        ("chained", RuntimeError, "outer"),
    ],
)
def test_remote_exception_keeps_type_message_and_traceback(executor, kind, exc_type, text):
    f = executor.call_async(deeper, kind)
    with pytest.raises(exc_type, match=text) as info:
        f.result()
    assert f.errored() and not f.succeeded()
    assert isinstance(f.exception(), exc_type)
    shown = "".join(traceback.format_exception(info.value))
    # the remote frames are part of the traceback the user sees
    assert "in deeper" in shown and "in raise_it" in shown
    assert "raised remotely in dask-wren call" in shown


def test_exception_that_cannot_be_rebuilt_arrives_as_remote_error(executor):
    for kind, name in (("two_args", "NeedsTwoArgs"), ("unpicklable", "Unpicklable")):
        f = executor.call_async(deeper, kind)
        with pytest.raises(dask_wren.RemoteError) as info:
            f.result()
        err = info.value
        assert err.remote_type.endswith(name)
        assert "in raise_it" in err.remote_traceback
        assert name in str(err) and "Remote traceback" in str(err)


def die(how):
    if how == "exit":
        sys.exit(3)
    if how == "_exit":
        os._exit(7)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segfault":
        ctypes.string_at(0)
    return how


@pytest.mark.parametrize(
    "how, expected",
    [
        ("exit", "exited with code 3"),
        ("_exit", "exited with code 7"),
        ("sigkill", "SIGKILL"),
        ("segfault", "SIGSEGV"),
    ],
)
def test_worker_death_fails_only_its_call_and_the_worker_is_replaced(local_executor, how, expected):
    executor = local_executor  # the local worker pool itself
    futures = executor.map(die, ["ok1", how, "ok2", "ok3"])
    with pytest.raises(WorkerDiedError, match=expected):
        futures[1].result()
    assert [futures[i].result() for i in (0, 2, 3)] == ["ok1", "ok2", "ok3"]
    # the pool is whole again and keeps working
    assert [f.result() for f in executor.map(die, ["a", "b", "c"])] == ["a", "b", "c"]
    assert len(executor.backend.worker_pids()) == executor.backend.n_workers


def test_segfault_error_quotes_the_worker_output(local_executor):
    executor = local_executor  # the local worker pool itself
    f = executor.call_async(die, "segfault")
    with pytest.raises(WorkerDiedError, match="Segmentation fault"):
        f.result()


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def test_timeout_kills_the_call_and_others_proceed(local_executor):
    executor = local_executor  # the local worker pool itself
    futures = executor.map(sleep_for, [30, 0], timeout=1)
    with pytest.raises(WrenTimeoutError, match="timeout of 1 s") as info:
        futures[0].result()
    assert isinstance(info.value, TimeoutError)
    assert futures[1].result() == 0


def mark_and_wait(args):
    """Create ``started`` and wait for ``gate_path``; returns the pid that ran it."""
    started, gate_path = args
    open(started, "w").close()
    gate(gate_path)
    return os.getpid()


def test_cancel_a_queued_call(tmp_path):
    with dask_wren.default_executor(storage_dir=str(tmp_path / "s"), workers=1) as ex:
        first_started, second_started, gate_path = (str(tmp_path / n) for n in ("a", "b", "gate"))
        first = ex.call_async(mark_and_wait, (first_started, gate_path))
        wait_for_path(first_started)  # the only worker is busy: the next call must queue
        second = ex.call_async(mark_and_wait, (second_started, gate_path))
        assert second.cancel()
        assert second.cancelled() and second.done()
        open(gate_path, "w").close()
        first.result()
        # a later call on the same worker runs, so the queue moved past the cancelled call
        assert ex.call_async(sleep_for, 0).result() == 0
        assert not os.path.exists(second_started)
        with pytest.raises(dask_wren.futures.cf.CancelledError):
            second.result()


def test_cancel_a_running_call_stops_its_worker(tmp_path):
    with dask_wren.default_executor(storage_dir=str(tmp_path / "s"), workers=1) as ex:
        started, gate_path = str(tmp_path / "started"), str(tmp_path / "never-opened")
        running = ex.call_async(mark_and_wait, (started, gate_path))
        wait_for_path(started)
        pids_before = set(ex.backend.worker_pids())
        assert running.cancel()
        assert running.cancelled()
        # the worker that ran it is replaced, and the pool keeps serving calls
        assert ex.call_async(sleep_for, 0).result() == 0
        assert not pids_before & set(ex.backend.worker_pids())


def test_cancel_after_completion_is_refused(executor):
    f = executor.call_async(sleep_for, 0)
    assert f.result() == 0
    assert not f.cancel()


def test_unpicklable_result_is_a_clear_error(executor):
    f = executor.call_async(lambda _: __import__("threading").Lock(), None)
    with pytest.raises(TypeError, match="cannot be pickled"):
        f.result()


def test_workers_that_cannot_start_fail_calls_clearly(tmp_path, monkeypatch):
    from dask_wren.backends.local import LocalBackend
    from dask_wren.config import Settings
    from dask_wren.executor import Executor

    # A Python that cannot import the worker runtime: every worker exits at start-up.
    monkeypatch.setattr(sys, "executable", "/bin/false")
    backend = LocalBackend(workers=1)
    try:
        with Executor(Settings.from_config(storage_dir=str(tmp_path)), backend=backend) as ex:
            with pytest.raises(dask_wren.WorkerDiedError, match="cannot start"):
                ex.call_async(sleep_for, 0).result(timeout=30)
    finally:
        backend.shutdown()


class UnlistableStorage:
    """A store whose listings always fail (say, permission to list was revoked)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def list(self, prefix, start_after=None):
        raise dask_wren.StorageError("access denied listing the bucket")


def test_results_that_cannot_be_listed_fail_the_futures_instead_of_hanging(tmp_path):
    from dask_wren.config import Settings
    from dask_wren.executor import Executor
    from lambda_worker.storage.local import LocalStorage

    storage = UnlistableStorage(LocalStorage(str(tmp_path)))
    with Executor(Settings.from_config(storage_dir=str(tmp_path), workers=2), storage=storage) as ex:
        f = ex.call_async(sleep_for, 0)
        with pytest.raises(dask_wren.StorageError, match="access denied listing"):
            f.result(timeout=30)


def last_words_then(how):
    print("last words before", how, flush=False)  # not even flushed by the function
    print("and on stderr", file=sys.stderr)
    die(how)


@pytest.mark.parametrize("how", ["_exit", "sigkill", "exit"])
def test_a_dead_workers_error_quotes_what_the_function_printed(local_executor, how):
    f = local_executor.call_async(last_words_then, how)
    with pytest.raises(WorkerDiedError) as info:
        f.result(timeout=60)
    assert f"last words before {how}" in str(info.value) and "and on stderr" in str(info.value)
