"""The offline AWS stand-ins: a Lambda endpoint for boto3 (with faults) and the Runtime API."""

import http.client
import json
import os
import subprocess
import sys
import time
import uuid

import botocore.config
import botocore.exceptions
import dask
import pytest
from botocore.retries.standard import RetryContext, ThrottlingErrorDetector

import dask_wren
from dask_wren.config import Settings
from dask_wren.shipping import pickle_payload
from dask_wren.testing import RuntimeAPIServer, RuntimeInitError, aws_standin
from lambda_worker import protocol, serialize
from lambda_worker.storage import KeyNotFound
from lambda_worker.storage.s3 import S3Storage

pytestmark = pytest.mark.timeout(120)

HANDLER = "lambda_worker.handler.lambda_handler"
PREFIX = "standin"
WAIT = 30.0


@pytest.fixture(scope="module")
def standin():
    with aws_standin(workers=2) as st:
        yield st


@pytest.fixture
def aws(standin):
    standin.faults.reset()
    yield standin
    standin.faults.reset()


# -- helpers ---------------------------------------------------------------------------------


def square(x):
    return x * x


def touch_and_square(arg):
    """Appends a line to a file (so a test can count runs), then squares."""
    path, x = arg
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return x * x


def store_of(st):
    return S3Storage(st.bucket, endpoint_url=st.s3_url, region=st.region)


def make_event(store, func, args, timeout=60):
    """An invocation event as the executor builds one: func.pkl and args.pkl in storage.

    This module travels by value, as the executor ships it: workers import installed packages only.
    """
    job = uuid.uuid4().hex[:12]
    payload = pickle_payload(func, args, include_modules=[__name__])
    store.put(protocol.func_key(PREFIX, job), payload.func)
    blobs = payload.args
    store.put(protocol.args_key(PREFIX, job, "0000"), b"".join(blobs))
    calls, offset = [], 0
    for i, b in enumerate(blobs):
        calls.append({"id": protocol.call_id_for(i), "range": [offset, len(b)]})
        offset += len(b)
    event = protocol.build_event(
        prefix=PREFIX, job_id=job, storage=store.spec(), calls=calls, timeout=timeout,
        host_versions=serialize.runtime_versions(),
    )
    return event, job


def record(store, job, i):
    """``(header, value)`` of a call's result record, or ``None`` if there is none yet."""
    try:
        blob = store.get(protocol.result_key(PREFIX, job, protocol.call_id_for(i)))
    except KeyNotFound:
        return None
    header, start = protocol.decode_header(blob)
    value = serialize.loads(blob[start:]) if header["status"] == protocol.STATUS_OK else None
    return header, value


def wait_for(condition, timeout=WAIT, what="the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def wait_record(store, job, i, timeout=WAIT):
    return wait_for(lambda: record(store, job, i), timeout, f"the result record of {job}/{i}")


def lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def invoke_event(client, st, event):
    response = client.invoke(FunctionName=st.function_name, InvocationType="Event", Payload=json.dumps(event).encode())
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    return response


# -- the Lambda endpoint through boto3 ---------------------------------------------------------


def test_event_invoke_runs_the_real_handler(aws):
    store = store_of(aws)
    event, job = make_event(store, square, [3, 4])
    response = invoke_event(aws.lambda_client(), aws, event)
    for i, expected in enumerate([9, 16]):
        header, value = wait_record(store, job, i)
        assert header["status"] == protocol.STATUS_OK and value == expected, header.get("error")
        # the worker saw Lambda's request id as context.aws_request_id
        assert header["request_id"] == response["ResponseMetadata"]["RequestId"]
    assert aws.faults.counters.invokes == 1 and aws.faults.counters.run == 1


def test_request_response_returns_the_handler_summary(aws):
    store = store_of(aws)
    event, job = make_event(store, square, [5])
    response = aws.lambda_client().invoke(FunctionName=aws.function_name, Payload=json.dumps(event).encode(), LogType="Tail")
    assert response["StatusCode"] == 200 and response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    summary = json.loads(response["Payload"].read())
    assert summary["job_id"] == job and summary["calls"] == 1 and summary["statuses"] == {"ok": 1}
    assert summary["request_id"] == response["ResponseMetadata"]["RequestId"]
    assert "LogResult" in response
    assert record(store, job, 0)[1] == 25  # written before the response came back


def test_request_response_reports_a_failing_handler_as_lambda_does(aws):
    response = aws.lambda_client().invoke(FunctionName=aws.function_name, Payload=b'{"not": "a dask-wren event"}')
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "KeyError" and "storage" in error["errorMessage"]
    assert any("lambda_handler" in line for line in error["stackTrace"])


def test_unknown_function_is_resource_not_found(aws):
    client = aws.lambda_client()
    with pytest.raises(client.exceptions.ResourceNotFoundException, match="Function not found"):
        client.invoke(FunctionName="no-such-function", InvocationType="Event", Payload=b"{}")
    with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
        client.get_function_configuration(FunctionName="no-such-function")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_function_configuration_records_this_hosts_versions(aws):
    config = aws.lambda_client().get_function_configuration(FunctionName=aws.function_name)
    variables = config["Environment"]["Variables"]
    versions = serialize.runtime_versions()
    assert variables["DASK_WREN_PYTHON"] == versions["python"]
    assert variables["DASK_WREN_CLOUDPICKLE"] == versions["cloudpickle"]
    assert variables["DASK_WREN_DASK"] == dask.__version__
    assert variables["DASK_WREN_PROTOCOL"] == str(protocol.PROTOCOL_VERSION)
    assert config["Runtime"] == f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert config["State"] == "Active" and config["Handler"] == HANDLER
    assert config["Timeout"] == 300 and config["MemorySize"] == 2048
    # the same through an ARN with a qualifier, as GetFunction
    arn = config["FunctionArn"] + ":$LATEST"
    assert aws.lambda_client().get_function(FunctionName=arn)["Configuration"]["FunctionName"] == aws.function_name


def test_settings_overrides_and_dask_config_describe_the_standin(aws):
    settings = Settings.from_config(**aws.settings_overrides)
    with dask.config.set(aws.dask_config):
        assert Settings.from_config() == settings
    assert settings.backend == "aws" and settings.storage == "s3" and settings.bucket == aws.bucket
    assert settings.endpoint_url == aws.s3_url and settings.lambda_endpoint_url == aws.lambda_url
    assert settings.function_name == aws.function_name and settings.aws_region == settings.region == "us-east-1"


def test_an_executor_maps_through_the_standin(aws):
    with dask_wren.default_executor(**aws.settings_overrides, timeout=60) as ex:
        futures = ex.map(square, range(8))
        assert dask_wren.get_all_results(futures) == [i * i for i in range(8)]
    assert aws.faults.counters.run >= 1


# -- faults ------------------------------------------------------------------------------------


def test_throttled_invokes_are_retried_by_botocore_standard_mode(aws):
    store = store_of(aws)
    event, job = make_event(store, square, [6])
    aws.faults.throttle_first = 3
    client = aws.lambda_client(config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 10}))
    response = invoke_event(client, aws, event)
    assert response["ResponseMetadata"]["RetryAttempts"] == 3
    counters = aws.faults.snapshot()
    assert counters.throttled == 3 and counters.invokes == 4 and counters.run == 1
    assert wait_record(store, job, 0)[1] == 36


def test_a_throttle_is_a_throttling_error_to_botocore(aws):
    aws.faults.throttle_first = 1
    client = aws.lambda_client(config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1}))
    with pytest.raises(client.exceptions.TooManyRequestsException) as info:
        client.invoke(FunctionName=aws.function_name, InvocationType="Event", Payload=b"{}")
    response = info.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert response["Error"]["Code"] == "TooManyRequestsException" and response["Error"]["Message"] == "Rate Exceeded."
    assert response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert response["retryAfterSeconds"] == "1"
    # the detector behind the standard and adaptive retry modes (backoff base, send-rate learning)
    context = RetryContext(attempt_number=1, operation_model=client.meta.service_model.operation_model("Invoke"), parsed_response=response)
    assert ThrottlingErrorDetector(retry_event_adapter=None).is_throttling_error_from_context(context)
    assert aws.faults.counters.run == 0


def test_a_duplicated_event_runs_twice_and_the_first_record_stays(aws, tmp_path):
    store = store_of(aws)
    marker = str(tmp_path / "runs")
    event, job = make_event(store, touch_and_square, [(marker, 7)])
    aws.faults.duplicate_rate = 1.0
    invoke_event(aws.lambda_client(), aws, event)
    wait_for(lambda: len(lines(marker)) == 2, what="the second run")
    counters = aws.faults.snapshot()
    assert counters.duplicated == 1 and counters.run == 2
    header, value = wait_record(store, job, 0)
    assert value == 49 and header["status"] == protocol.STATUS_OK


def test_a_dropped_event_is_accepted_and_never_runs(aws, tmp_path):
    store = store_of(aws)
    marker = str(tmp_path / "runs")
    dropped, dropped_job = make_event(store, touch_and_square, [(marker, 2)])
    aws.faults.drop_rate = 1.0
    invoke_event(aws.lambda_client(), aws, dropped)
    counters = aws.faults.snapshot()
    assert counters.dropped == 1 and counters.run == 0  # decided before the 202: it was never queued
    aws.faults.drop_rate = 0.0
    later, later_job = make_event(store, square, [3])
    invoke_event(aws.lambda_client(), aws, later)
    assert wait_record(store, later_job, 0)[1] == 9
    assert record(store, dropped_job, 0) is None and lines(marker) == []
    assert aws.faults.counters.run == 1


def test_start_delay_delays_the_start(aws):
    store = store_of(aws)
    event, job = make_event(store, square, [8])
    aws.faults.start_delay = 1.0
    sent = time.time()
    invoke_event(aws.lambda_client(), aws, event)
    answered = time.time() - sent
    header, value = wait_record(store, job, 0)
    assert value == 64
    assert answered < 1.0  # the 202 does not wait for the start
    assert header["timings"]["worker_invoked"] - sent >= 1.0
    assert aws.faults.counters.delayed == 1


def test_invoke_latency_slows_the_answer(aws):
    client = aws.lambda_client()
    store = store_of(aws)
    event, job = make_event(store, square, [1])
    aws.faults.invoke_latency = 0.3
    sent = time.monotonic()
    invoke_event(client, aws, event)
    assert time.monotonic() - sent >= 0.3
    assert wait_record(store, job, 0)[1] == 1


def test_a_crash_kills_the_worker_after_the_function_ran(aws, tmp_path):
    store = store_of(aws)
    marker = str(tmp_path / "runs")
    event, job = make_event(store, touch_and_square, [(marker, 3)])
    aws.faults.crash_next = 1
    invoke_event(aws.lambda_client(), aws, event)
    header, _ = wait_record(store, job, 0)
    assert header["status"] == protocol.STATUS_FAILED
    assert header["error"]["kind"] == protocol.FAIL_WORKER_DIED and "SIGKILL" in header["error"]["message"]
    assert len(lines(marker)) == 1  # the function ran; its result was lost with the worker
    assert aws.faults.counters.crashed == 1 and aws.faults.crash_next == 0
    # the next invocation is not crashed
    event, job = make_event(store, square, [4])
    invoke_event(aws.lambda_client(), aws, event)
    assert wait_record(store, job, 0)[1] == 16


def test_a_crash_on_a_synchronous_invoke_is_a_function_error(aws):
    store = store_of(aws)
    event, job = make_event(store, square, [2])
    aws.faults.crash_next = 1
    response = aws.lambda_client().invoke(FunctionName=aws.function_name, Payload=json.dumps(event).encode())
    assert response["FunctionError"] == "Unhandled"
    assert json.loads(response["Payload"].read())["errorType"] == "Runtime.ExitError"
    assert record(store, job, 0) is None  # as on Lambda: no record for a synchronous crash


def test_standin_on_another_s3_endpoint_restores_the_environment(aws):
    before = dict(os.environ)
    with aws_standin(workers=1, bucket="second-bucket", function_name="other", s3_endpoint=aws.s3_url) as st:
        assert st.s3_url == aws.s3_url and os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
        assert "second-bucket" in [b["Name"] for b in st.s3_client().list_buckets()["Buckets"]]
        store = S3Storage("second-bucket", endpoint_url=st.s3_url, region=st.region)
        event, job = make_event(store, square, [11])
        invoke_event(st.lambda_client(), st, event)
        assert wait_record(store, job, 0)[1] == 121
        os.environ["DASK_WREN_STANDIN_PROBE"] = "1"
    assert dict(os.environ) == before


# -- the Runtime API -----------------------------------------------------------------------------


def test_runtime_api_speaks_the_protocol():
    with RuntimeAPIServer(function_name="fn", timeout=5) as server:
        conn = http.client.HTTPConnection(server.address, timeout=10)

        def call(method, path, body=None, headers=None):
            conn.request(method, "/2018-06-01/runtime" + path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r, r.read()

        rid = server.submit({"a": 1})
        r, body = call("GET", "/invocation/next")
        assert r.status == 200 and json.loads(body) == {"a": 1}
        assert r.getheader("Lambda-Runtime-Aws-Request-Id") == rid
        assert r.getheader("Lambda-Runtime-Invoked-Function-Arn").endswith(":function:fn")
        assert r.getheader("Lambda-Runtime-Trace-Id").startswith("Root=1-")
        assert 0 < int(r.getheader("Lambda-Runtime-Deadline-Ms")) / 1000 - time.time() <= 5
        r, _ = call("POST", f"/invocation/{rid}/response", json.dumps({"b": 2}))
        assert r.status == 202 and server.wait_result(rid, timeout=5) == (True, {"b": 2})
        assert call("POST", f"/invocation/{rid}/response", b"{}")[0].status == 403
        assert call("POST", "/invocation/nope/response", b"{}")[0].status == 400

        rid = server.submit({"c": 3})
        assert call("GET", "/invocation/next")[0].getheader("Lambda-Runtime-Aws-Request-Id") == rid
        r, _ = call("POST", f"/invocation/{rid}/error", json.dumps({"errorMessage": "m"}), {"Lambda-Runtime-Function-Error-Type": "Runtime.X"})
        assert r.status == 202
        assert server.wait_result(rid, timeout=5) == (False, {"errorMessage": "m", "errorType": "Runtime.X"})

        rid = server.submit({})
        with pytest.raises(TimeoutError):
            server.wait_result(rid, timeout=0.05)
        assert call("POST", "/init/error", json.dumps({"errorMessage": "no module"}))[0].status == 202
        with pytest.raises(RuntimeInitError, match="no module"):
            server.wait_result(rid, timeout=5)


def _wait_runtime(server, proc, request_id, log_path, timeout=60.0):
    """``wait_result``, failing at once (with the runtime's output) if the runtime process exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return server.wait_result(request_id, timeout=0.2)
        except TimeoutError:
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    output = f.read()
                raise AssertionError(f"no result from awslambdaric (exit code {proc.poll()}); its output:\n{output}") from None


def test_the_handler_runs_under_awslambdaric(aws, tmp_path):
    pytest.importorskip("awslambdaric")
    store = store_of(aws)
    event, job = make_event(store, square, [3, 4])
    task_root = tmp_path / "task"
    task_root.mkdir()
    log_path = tmp_path / "runtime.log"
    with RuntimeAPIServer(function_name=aws.function_name, timeout=60) as server:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
        env.update(
            AWS_LAMBDA_RUNTIME_API=server.address,
            _HANDLER=HANDLER,
            LAMBDA_TASK_ROOT=str(task_root),
            AWS_LAMBDA_FUNCTION_NAME=aws.function_name,
            AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE="2048",
            AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{aws.function_name}",
            AWS_LAMBDA_LOG_STREAM_NAME="standin",
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "awslambdaric", HANDLER],
                cwd=task_root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            request_id = server.submit(event)
            ok, summary = _wait_runtime(server, proc, request_id, log_path)
            assert ok, summary
            assert summary == {"request_id": request_id, "job_id": job, "calls": 2, "statuses": {"ok": 2}}
            for i, expected in enumerate([9, 16]):
                header, value = record(store, job, i)
                assert value == expected and header["request_id"] == request_id
                assert header["worker_pid"] == proc.pid

            # a handler that raises goes back through the runtime's error route
            request_id = server.submit(dict(event, storage={"kind": "no-such-store"}))
            ok, error = _wait_runtime(server, proc, request_id, log_path)
            assert not ok and error["errorType"] == "StorageError" and "no-such-store" in error["errorMessage"]
            assert proc.poll() is None  # the runtime lives on, warm, for the next event
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
