"""The worker handler, called directly as Lambda would call it."""

import json
import os
import subprocess
import sys

import pytest

import dask_wren
from lambda_worker import handler, protocol, serialize
from lambda_worker.signing import KEY_VARIABLE, SigningKey
from lambda_worker.storage.local import LocalStorage

KEY = SigningKey.generate()


@pytest.fixture(autouse=True)
def signing_key(monkeypatch):
    """The worker's key, as a deployment gives it (the scripts' subprocesses inherit it)."""
    monkeypatch.setenv(KEY_VARIABLE, KEY.text())


class FakeContext:
    aws_request_id = "req-1"
    memory_limit_in_mb = 128

    def get_remaining_time_in_millis(self):
        return 60_000


def boom(x):
    print("about to fail")
    raise ValueError(f"no {x}")


def env_value(name):
    return os.environ.get(name)


def make_event(store, func, args, *, extra_env=None, host_versions=None, **kw):
    prefix, job = "t", "job1"
    func_key, args_key = protocol.func_key(prefix, job), protocol.args_key(prefix, job, "0000")
    store.put(func_key, protocol.sign_object(KEY, func_key, serialize.dumps((func, "no-shared-functions", []))))
    blobs = [serialize.dumps(a) for a in args]
    store.put(args_key, b"".join(blobs))
    calls, offset = [], 0
    for i, b in enumerate(blobs):
        calls.append({"id": protocol.call_id_for(i), "range": [offset, len(b)], "mac": protocol.argument_mac(KEY, args_key, offset, b)})
        offset += len(b)
    return protocol.build_event(
        prefix=prefix, job_id=job, storage=store.spec(), calls=calls, timeout=60,
        extra_env=extra_env, host_versions=host_versions or serialize.runtime_versions(), **kw,
    )


def read(store, i):
    key = protocol.result_key("t", "job1", protocol.call_id_for(i))
    header, start = protocol.decode_header(store.get(key), key=KEY, storage_key=key)
    return header, store.get(key)[start:]


def test_every_outcome_leaves_a_record_with_timings(tmp_path):
    store = LocalStorage(str(tmp_path))
    event = make_event(store, boom, ["a", "b"])
    summary = handler.lambda_handler(event, FakeContext())
    assert summary["statuses"] == {protocol.STATUS_ERROR: 2}
    header, payload = read(store, 1)
    assert header["status"] == protocol.STATUS_ERROR
    assert header["error"]["type"] == "ValueError" and header["error"]["message"] == "no b"
    assert "in boom" in header["error"]["traceback"]
    assert header["stdout"] == "about to fail\n"
    assert header["request_id"] == "req-1"
    t = header["timings"]
    assert t["worker_start"] <= t["worker_invoked"] <= t["worker_setup_done"] <= t["worker_call_start"]
    assert t["worker_call_start"] <= t["worker_call_end"] <= t["worker_result_write"]
    exc = serialize.loads_exception(payload)
    assert isinstance(exc, ValueError) and str(exc) == "no b"


def test_second_invocation_is_warm_and_reuses_the_function(tmp_path):
    store = LocalStorage(str(tmp_path))
    event = make_event(store, env_value, ["X"])
    handler.lambda_handler(event, FakeContext())
    store.delete([protocol.result_key("t", "job1", protocol.call_id_for(0))])
    handler.lambda_handler(event, FakeContext())
    header, _ = read(store, 0)
    assert header["timings"]["worker_cold"] is False
    assert header["storage_requests"] == 2  # function cached while warm: range read + write


def test_a_duplicate_delivery_keeps_the_first_result(tmp_path):
    store = LocalStorage(str(tmp_path))
    event = make_event(store, env_value, ["HOME"])
    assert handler.lambda_handler(event, FakeContext())["statuses"] == {"ok": 1}
    first = store.get(protocol.result_key("t", "job1", protocol.call_id_for(0)))
    assert handler.lambda_handler(event, FakeContext())["statuses"] == {"duplicate": 1}
    assert store.get(protocol.result_key("t", "job1", protocol.call_id_for(0))) == first


def test_extra_env_is_restored_even_when_the_call_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("WREN_KEEP", "original")
    store = LocalStorage(str(tmp_path))
    handler.lambda_handler(make_event(store, boom, ["x"], extra_env={"WREN_KEEP": "changed", "WREN_NEW": "1"}))
    assert os.environ["WREN_KEEP"] == "original"
    assert "WREN_NEW" not in os.environ


@pytest.mark.parametrize(
    "versions, text",
    [({"python": "2.7"}, "python differs"), ({"cloudpickle": "0.1"}, "cloudpickle differs")],
)
def test_version_mismatch_fails_each_call_with_advice(tmp_path, versions, text):
    store = LocalStorage(str(tmp_path))
    event = make_event(store, env_value, ["X"], host_versions=versions)
    handler.lambda_handler(event, FakeContext())
    header, _ = read(store, 0)
    assert header["status"] == protocol.STATUS_FAILED
    assert header["error"]["kind"] == protocol.FAIL_VERSION
    assert text in header["error"]["message"] and "deploy" in header["error"]["message"]


def test_version_mismatch_reaches_the_host_as_one_clear_error(executor):
    # private: no public way to make a host announce other versions than its workers' (past the AWS preflight)
    executor._host_versions = dict(executor._host_versions, python="3.1")
    with pytest.raises(dask_wren.VersionMismatchError, match="python differs"):
        executor.call_async(env_value, "X").result()


def test_protocol_version_mismatch(tmp_path):
    store = LocalStorage(str(tmp_path))
    event = make_event(store, env_value, ["X"])
    event["v"] = 99
    handler.lambda_handler(event, FakeContext())
    header, _ = read(store, 0)
    assert header["error"]["kind"] == protocol.FAIL_VERSION and "protocol 99" in header["error"]["message"]


def test_call_list_can_live_in_storage(tmp_path):
    store = LocalStorage(str(tmp_path))
    event = make_event(store, env_value, ["HOME", "PATH"])
    store.put("t/job1/calls/000000.json", protocol.sign_object(KEY, "t/job1/calls/000000.json", json.dumps(event.pop("calls")).encode()))
    event["calls_key"] = "t/job1/calls/000000.json"
    assert handler.lambda_handler(event, FakeContext())["statuses"] == {protocol.STATUS_OK: 2}


def test_worker_side_never_imports_host_side():
    code = (
        "import sys, json, lambda_worker.handler, lambda_worker.local_runtime; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'dask_wren'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], "the worker side imported host-side or dask modules"


# -- the handler's own watchdog, storage failures, and hints ---------------------------------------

_WATCHDOG_SCRIPT = r"""
import sys, time
from lambda_worker import handler, protocol, serialize
from lambda_worker.signing import SigningKey
from lambda_worker.storage.local import LocalStorage

def slow(x):
    print("started", x, flush=True)
    time.sleep(60)

class Context:
    aws_request_id = "req-w"
    def __init__(self, left):
        self.deadline = time.time() + left
    def get_remaining_time_in_millis(self):
        return int((self.deadline - time.time()) * 1000)

store = LocalStorage(sys.argv[1])
key = SigningKey.from_environment()
store.put("t/job1/func.pkl", protocol.sign_object(key, "t/job1/func.pkl", serialize.dumps((slow, "no-shared-functions", []))))
blobs = [serialize.dumps(a) for a in ("a", "b")]
store.put(protocol.args_key("t", "job1", "0000"), b"".join(blobs))
calls = [{"id": "000000", "range": [0, len(blobs[0])], "mac": protocol.argument_mac(key, "t/job1/args/0000.pkl", 0, blobs[0])},
         {"id": "000001", "range": [len(blobs[0]), len(blobs[1])],
          "mac": protocol.argument_mac(key, "t/job1/args/0000.pkl", len(blobs[0]), blobs[1])}]
event = protocol.build_event(prefix="t", job_id="job1", storage=store.spec(), calls=calls,
                             timeout=float(sys.argv[2]), host_versions=serialize.runtime_versions())
handler.lambda_handler(event, Context(float(sys.argv[3])))
print("the handler returned", flush=True)
"""


@pytest.mark.parametrize(
    "timeout, left, expected",
    [
        (0.5, 60, "ran past its timeout of 0.5 s"),  # the call's own timeout comes first
        (60, 2.0, "worker's own time limit"),  # the function's deadline (less a margin) comes first
    ],
)
def test_the_watchdog_records_a_timeout_and_ends_the_process(tmp_path, timeout, left, expected):
    proc = subprocess.run(
        [sys.executable, "-c", _WATCHDOG_SCRIPT, str(tmp_path), str(timeout), str(left)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == handler.WATCHDOG_EXIT_CODE, proc.stderr
    assert "the handler returned" not in proc.stdout
    store = LocalStorage(str(tmp_path))
    first, _ = read(store, 0)
    assert first["status"] == protocol.STATUS_FAILED and first["error"]["kind"] == protocol.FAIL_TIMEOUT
    assert expected in first["error"]["message"] and "ended its process" in first["error"]["message"]
    assert first["stdout"] == "started a\n"  # the output so far travels with the record
    second, _ = read(store, 1)  # the invocation's call that never started is recorded too
    assert second["error"]["kind"] == protocol.FAIL_TIMEOUT and "before this call" in second["error"]["message"]


_DISARM_SCRIPT = r"""
import sys, time
from lambda_worker import handler, protocol, serialize
from lambda_worker.signing import SigningKey
from lambda_worker.storage.local import LocalStorage

store = LocalStorage(sys.argv[1])
key = SigningKey.from_environment()
store.put("t/job1/func.pkl", protocol.sign_object(key, "t/job1/func.pkl", serialize.dumps((abs, "no-shared-functions", []))))
blob = serialize.dumps(-3)
store.put(protocol.args_key("t", "job1", "0000"), blob)
mac = protocol.argument_mac(key, "t/job1/args/0000.pkl", 0, blob)
event = protocol.build_event(prefix="t", job_id="job1", storage=store.spec(), calls=[{"id": "000000", "range": [0, len(blob)], "mac": mac}],
                             timeout=0.2, host_versions=serialize.runtime_versions())
print(handler.lambda_handler(event, None)["statuses"], flush=True)
time.sleep(0.6)  # past the finished invocation's deadline: a watchdog left armed would end the process
print("alive", flush=True)
"""


def test_the_watchdog_is_disarmed_after_the_invocation(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _DISARM_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["{'ok':", "1}", "alive"]


def exits(code):
    print("last words")
    sys.exit(code)


def test_sys_exit_is_recorded_with_its_output_then_ends_the_process(tmp_path):
    store = LocalStorage(str(tmp_path))
    with pytest.raises(SystemExit):
        handler.lambda_handler(make_event(store, exits, [3]), FakeContext())
    header, _ = read(store, 0)
    assert header["error"]["kind"] == protocol.FAIL_EXIT
    assert "sys.exit(3)" in header["error"]["message"] and "exited with code 3" in header["error"]["message"]
    assert "last words" in header["error"]["message"]


class _FailingPuts(LocalStorage):
    """Refuses writes whose size is over ``limit`` (records with a payload), or every write."""

    def __init__(self, root, limit):
        super().__init__(root)
        self.limit = limit

    def put_if_absent(self, key, data):
        if len(data) > self.limit:
            raise ValueError(f"Invalid type for parameter IfNoneMatch ({len(data)} bytes)")  # as botocore's ParamValidationError
        return super().put_if_absent(key, data)


def big(x):
    return b"x" * 10_000


def test_a_record_that_cannot_be_written_becomes_a_failure_record(tmp_path, monkeypatch):
    store = _FailingPuts(str(tmp_path), limit=5_000)
    event = make_event(store, big, [1])
    monkeypatch.setattr(handler, "storage_from_spec", lambda spec: store)
    summary = handler.lambda_handler(event, FakeContext())
    assert summary["statuses"] == {protocol.STATUS_FAILED: 1} and "handler_error" not in summary
    header, _ = read(store, 0)
    assert header["error"]["kind"] == protocol.FAIL_STORAGE and "could not be written" in header["error"]["message"]


def test_a_store_that_refuses_every_write_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    store = _FailingPuts(str(tmp_path), limit=-1)
    event = make_event(LocalStorage(str(tmp_path)), big, [1, 2])
    monkeypatch.setattr(handler, "storage_from_spec", lambda spec: store)
    summary = handler.lambda_handler(event, FakeContext())
    assert summary["statuses"] == {"unrecorded": 2}
    assert "no record could be written" in summary["handler_error"]
    assert "no record could be written" in capsys.readouterr().err  # in the function's log (CloudWatch)


def test_an_unknown_store_is_reported_not_raised(tmp_path):
    event = dict(make_event(LocalStorage(str(tmp_path)), big, [1]), storage={"kind": "no-such-store"})
    summary = handler.lambda_handler(event, FakeContext())
    assert "no-such-store" in summary["handler_error"] and summary["calls"] == 0


def test_a_missing_payload_asks_about_cleanup_and_the_deployment(tmp_path):
    store = LocalStorage(str(tmp_path))
    event = make_event(store, big, [1])
    store.put(protocol.manifest_key("t", "job1"), b"{}")  # the job is there; its function is not
    store.delete([protocol.func_key("t", "job1")])
    handler.lambda_handler(event, FakeContext())
    header, _ = read(store, 0)
    assert header["error"]["kind"] == protocol.FAIL_SETUP
    assert "payload is missing" in header["error"]["message"] and "bucket/prefix differ" in header["error"]["message"]


def test_a_late_event_of_a_deleted_job_writes_nothing(tmp_path, capsys):
    """Lambda may deliver an event after the host took the call's result from another attempt and
    deleted the job (manifest first): a record then would only outlive the cleanup."""
    store = LocalStorage(str(tmp_path))
    event = make_event(store, big, [1, 2])
    store.delete_prefix("t/job1/")
    summary = handler.lambda_handler(event, FakeContext())
    assert list(store.list("t/")) == []
    assert summary["statuses"] == {"unrecorded": 2}
    assert "job job1 was deleted from storage before this call ran" in summary["handler_error"]
    assert "nothing recorded" in capsys.readouterr().err  # in the function's log (CloudWatch)


def imports_missing(x):
    import no_such_module_for_wren  # noqa: F401


@pytest.mark.parametrize("on_lambda", [False, True])
def test_a_missing_module_says_how_to_add_it(tmp_path, monkeypatch, on_lambda):
    if on_lambda:
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "dask-wren")
    else:
        monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    store = LocalStorage(str(tmp_path))
    handler.lambda_handler(make_event(store, imports_missing, [1]), FakeContext())
    _, payload = read(store, 0)
    exc = serialize.loads_exception(payload)
    assert isinstance(exc, ModuleNotFoundError)
    note = "\n".join(getattr(exc, "__notes__", []))
    assert "dask-wren deploy --packages no_such_module_for_wren" in note
    assert ("pip install" in note) is not on_lambda
