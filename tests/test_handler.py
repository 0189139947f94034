"""The worker handler, called directly as Lambda would call it."""

import json
import os
import subprocess
import sys

import pytest

import dask_wren
from lambda_worker import handler, protocol, serialize
from lambda_worker.storage.local import LocalStorage


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
    store.put(protocol.func_key(prefix, job), serialize.dumps((func, "no-shared-functions", [])))
    blobs = [serialize.dumps(a) for a in args]
    store.put(protocol.args_key(prefix, job, "0000"), b"".join(blobs))
    calls, offset = [], 0
    for i, b in enumerate(blobs):
        calls.append({"id": protocol.call_id_for(i), "range": [offset, len(b)]})
        offset += len(b)
    return protocol.build_event(
        prefix=prefix, job_id=job, storage=store.spec(), calls=calls, timeout=60,
        extra_env=extra_env, host_versions=host_versions or serialize.runtime_versions(), **kw,
    )


def read(store, i):
    header, start = protocol.decode_header(store.get(protocol.result_key("t", "job1", protocol.call_id_for(i))))
    return header, store.get(protocol.result_key("t", "job1", protocol.call_id_for(i)))[start:]


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
    store.put("t/job1/calls/000000.json", json.dumps(event.pop("calls")).encode())
    event["calls_key"] = "t/job1/calls/000000.json"
    assert handler.lambda_handler(event, FakeContext())["statuses"] == {protocol.STATUS_OK: 2}


def test_worker_side_never_imports_host_side():
    code = (
        "import sys, json, lambda_worker.handler, lambda_worker.local_runtime; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'dask_wren'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], "the worker side imported host-side or dask modules"
