"""The local backend's pool: sending ahead, withdrawing, handlers that cannot reach storage, and
its modes (no failure records, memory limit, the timeout backstop)."""

import os
import queue
import subprocess
import sys
import threading
import time
from multiprocessing import Pipe

import boto3
import pytest

import dask_wren
from dask_wren.backends.base import Invocation
from dask_wren.backends.local import LocalBackend
from dask_wren.config import Settings
from dask_wren.executor import Executor
from dask_wren.shipping import pickle_payload
from lambda_worker import local_runtime, protocol, serialize
from lambda_worker.storage import KeyNotFound
from lambda_worker.storage.local import LocalStorage
from tests.conftest import gate, hog, hold_the_gil, nap, wait_for_path
from tests.test_handler import KEY, make_event, read, signing_key  # noqa: F401  (autouse fixture: the workers' key)
from tests.test_s3_end_to_end import s3_endpoint  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


def touch_and_wait(args):
    marker, gate_path = args
    open(marker, "w").close()
    if gate_path:
        gate(gate_path)
    return marker


def test_runtime_skips_an_invocation_withdrawn_before_it_starts(tmp_path):
    from lambda_worker.storage.local import LocalStorage

    store = LocalStorage(str(tmp_path / "store"))
    event = make_event(store, touch_and_wait, [(str(tmp_path / "ran"), None)])
    host, worker = Pipe()
    # Everything is queued before the runtime reads: the withdrawal is seen before B would start.
    host.send(("invoke", "A", event, 60))
    host.send(("invoke", "B", event, 60))
    host.send(("withdraw", "B"))
    host.send(("exit",))
    thread = threading.Thread(target=local_runtime.serve, args=(worker, 128, "test"))
    thread.start()
    replies = [host.recv() for _ in range(3)]
    thread.join(10)
    assert [r[0] for r in replies] == ["ready", "done", "skipped"]
    assert replies[2][1] == "B"
    header, _ = read(store, 0)
    assert header["status"] == "ok"


def quick(x):
    return x


def test_a_cancelled_call_behind_a_busy_worker_never_runs(tmp_path):
    backend = LocalBackend(workers=1)
    try:
        with Executor(Settings.from_config(storage_dir=str(tmp_path / "s")), backend=backend) as ex:
            assert [f.result() for f in ex.map(quick, range(20))] == list(range(20))  # calls are short
            gate_path = str(tmp_path / "gate")
            markers = [str(tmp_path / f"m{i}") for i in range(4)]
            futures = ex.map(touch_and_wait, [(markers[0], gate_path)] + [(m, None) for m in markers[1:]])
            wait_for_path(markers[0])
            assert futures[1].cancel()
            open(gate_path, "w").close()
            assert [futures[i].result() for i in (0, 2, 3)] == [markers[0], markers[2], markers[3]]
            assert not os.path.exists(markers[1])
    finally:
        backend.shutdown()


def test_a_handler_that_cannot_write_results_fails_its_calls_instead_of_hanging(s3_endpoint, tmp_path, monkeypatch):  # noqa: F811
    # The pool starts without credentials; the host has them afterwards.
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    backend = LocalBackend(workers=1)
    backend.start()
    try:
        # Workers copy the environment when they spawn: wait until the pool exists.
        deadline = time.monotonic() + 30
        while not backend.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert backend.worker_pids()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="wren-nocreds")
        settings = Settings.from_config(storage="s3", bucket="wren-nocreds", endpoint_url=s3_endpoint)
        with Executor(settings, backend=backend) as ex:
            with pytest.raises(dask_wren.WrenError, match="credentials"):
                ex.call_async(quick, 1).result(timeout=30)
    finally:
        backend.shutdown()


def test_failure_records_that_cannot_be_written_do_not_stop_the_pool(tmp_path, caplog):
    from dask_wren.backends.base import Invocation, write_failure_records

    blocked = tmp_path / "file-not-dir"
    blocked.write_text("a file where the store's directory should be")
    event = {"storage": {"kind": "local", "root": str(blocked)}, "prefix": "p", "job_id": "j"}
    write_failure_records(Invocation("r1", event, ["000000"], 1.0), "worker_died", "gone", KEY)  # does not raise
    assert "could not record the failure of r1" in caplog.text  # logged (dask_wren), never printed


# -- the pool's modes ------------------------------------------------------------------------------


def sigkill(_):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


class Pool:
    """A LocalBackend on a local store, and what it reports: ``run(func, arg, timeout)`` waits for
    the invocation's outcome and returns ``(outcome, detail, header)`` (header: its record or None)."""

    def __init__(self, tmp_path, **options):
        self.store = LocalStorage(str(tmp_path / "store"))
        self.outcomes = queue.Queue()
        self.backend = LocalBackend(
            workers=1, on_outcome=lambda inv, outcome, detail: self.outcomes.put((inv.request_id, outcome, detail)), signing_key=KEY, **options
        )
        self.jobs = 0

    def run(self, func, arg, timeout=60):
        self.jobs += 1
        job = f"job{self.jobs}"
        payload = pickle_payload(func, [arg], include_modules=[__name__])
        func_key, args_key = protocol.func_key("t", job), protocol.args_key("t", job, "0000")
        self.store.put(func_key, protocol.sign_object(KEY, func_key, payload.func))
        self.store.put(args_key, payload.args[0])
        calls = [{"id": protocol.call_id_for(0), "range": [0, len(payload.args[0])], "mac": protocol.argument_mac(KEY, args_key, 0, payload.args[0])}]
        event = protocol.build_event(prefix="t", job_id=job, storage=self.store.spec(), calls=calls, timeout=timeout, host_versions=serialize.runtime_versions())
        self.backend.invoke([Invocation(job, event, [calls[0]["id"]], timeout)])
        request_id, outcome, detail = self.outcomes.get(timeout=30)
        assert request_id == job
        try:
            key = protocol.result_key("t", job, calls[0]["id"])
            header, _ = protocol.decode_header(self.store.get(key), key=KEY, storage_key=key)
        except KeyNotFound:
            header = None
        return outcome, detail, header

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.backend.shutdown()


def test_a_pool_without_failure_records_reports_outcomes_only(tmp_path):
    with Pool(tmp_path, records_failures=False, kill_grace=0) as pool:
        outcome, detail, header = pool.run(sigkill, None)
        assert outcome == "died" and "SIGKILL" in detail and header is None
        outcome, _, header = pool.run(hold_the_gil, 30, timeout=0.5)
        assert outcome == "timeout" and header is None
        assert pool.backend.killed_timeout == 1
        outcome, _, header = pool.run(nap, 0)
        assert outcome == "ok" and header["status"] == protocol.STATUS_OK  # the worker was replaced


def test_a_worker_over_the_memory_limit_is_killed_and_recorded(tmp_path):
    with Pool(tmp_path, memory_limit_mb=128) as pool:
        assert pool.run(nap, 0)[0] == "ok"  # a worker fits in 128 MB
        outcome, detail, header = pool.run(hog, 300)
        assert outcome == "memory" and pool.backend.killed_memory == 1
        assert header["error"]["kind"] == protocol.FAIL_WORKER_DIED and "memory limit of 128 MB" in header["error"]["message"]


def test_the_pools_timeout_kill_is_a_backstop_behind_the_handlers_watchdog(tmp_path):
    with Pool(tmp_path, kill_grace=0.5) as pool:
        # the handler's watchdog stops the call at its timeout and writes the record; the pool's
        # worker_died record that follows does not replace it (first writer wins)
        outcome, _, header = pool.run(nap, 30, timeout=0.5)
        assert outcome == "died" and header["error"]["kind"] == protocol.FAIL_TIMEOUT
        assert pool.backend.killed_timeout == 0
        # a call the watchdog cannot stop is killed by the pool, a grace later
        started = time.monotonic()
        outcome, _, header = pool.run(hold_the_gil, 30, timeout=0.5)
        assert outcome == "timeout" and time.monotonic() - started >= 1.0
        assert header["error"]["kind"] == protocol.FAIL_TIMEOUT and "timeout of 0.5 s" in header["error"]["message"]
        assert pool.backend.killed_timeout == 1


def test_the_runtime_tells_a_handler_that_raised_from_one_that_returned(tmp_path):
    host, worker = Pipe()
    host.send(("invoke", "A", [1], 60))  # not an object: lambda_handler raises
    host.send(("invoke", "B", {"not": "a dask-wren event"}, 60))  # the handler returns its handler_error
    host.send(("exit",))
    thread = threading.Thread(target=local_runtime.serve, args=(worker, 128, "test"))
    thread.start()
    replies = [host.recv() for _ in range(3)]
    thread.join(10)
    assert replies[1][:2] == ("done", "A") and replies[1][2]["handler_raised"]
    assert replies[2][:2] == ("done", "B") and replies[2][2]["handler_error"] and "handler_raised" not in replies[2][2]


_DOOMED_HOST = r"""
import os, sys, time
import dask_wren

def busy(path):
    open(path, "w").close()
    time.sleep(90)

ex = dask_wren.local_executor(workers=2, storage_dir=os.path.join(sys.argv[1], "store"))
marks = [os.path.join(sys.argv[1], f"started-{i}") for i in range(2)]
ex.map(busy, marks)
while not all(os.path.exists(m) for m in marks):  # both workers are running a call
    time.sleep(0.02)
print(*ex.backend.worker_pids(), flush=True)
time.sleep(600)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has ended; only its entry waits for a reaper
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_end_with_a_host_that_is_killed(tmp_path):
    """A SIGKILLed host (a killed notebook kernel) leaves no worker running its calls."""
    host = subprocess.Popen([sys.executable, "-c", _DOOMED_HOST, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in host.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        host.kill()
        host.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(p) for p in pids), "workers outlived their killed host"


def test_executors_with_the_same_settings_share_one_pool_from_the_first(tmp_path):
    """The first executor of a process makes the host's signing key (exported to the environment
    its workers inherit): the second must still find the first one's pool, not start another."""
    script = (
        "import dask_wren, sys\n"
        f"a = dask_wren.local_executor(workers=1, storage_dir={str(tmp_path)!r})\n"
        f"b = dask_wren.local_executor(workers=1, storage_dir={str(tmp_path)!r})\n"
        "print(a.backend is b.backend)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DASK_WREN_SIGNING_KEY"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr
