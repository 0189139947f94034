"""The local backend's pool: sending ahead, withdrawing, and handlers that cannot reach storage."""

import os
import threading
import time
from multiprocessing import Pipe

import boto3
import pytest

import dask_wren
from dask_wren.backends.local import LocalBackend
from dask_wren.config import Settings
from dask_wren.executor import Executor
from lambda_worker import local_runtime
from tests.conftest import gate, wait_for_path
from tests.test_handler import make_event, read
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


def test_failure_records_that_cannot_be_written_do_not_stop_the_pool(tmp_path, capsys):
    from dask_wren.backends.base import Invocation, write_failure_records

    blocked = tmp_path / "file-not-dir"
    blocked.write_text("a file where the store's directory should be")
    event = {"storage": {"kind": "local", "root": str(blocked)}, "prefix": "p", "job_id": "j"}
    write_failure_records(Invocation("r1", event, ["000000"], 1.0), "worker_died", "gone")  # does not raise
    assert "could not record the failure of r1" in capsys.readouterr().err
