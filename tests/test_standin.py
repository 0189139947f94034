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
from lambda_worker.signing import KEY_VARIABLE, SigningKey
from lambda_worker.storage import KeyNotFound
from lambda_worker.storage.s3 import S3Storage
from tests.conftest import hog, hold_the_gil, nap

pytestmark = pytest.mark.timeout(120)

HANDLER = "lambda_worker.handler.lambda_handler"
PREFIX = "standin"
WAIT = 30.0


RETRY_DELAY = 0.1  # the stand-in's delay before Lambda's retries, in this module (Lambda: minutes)


@pytest.fixture(scope="module")
def standin():
    with aws_standin(workers=2, retry_delays=(RETRY_DELAY, RETRY_DELAY)) as st:
        yield st


@pytest.fixture
def aws(standin):
    standin.faults.reset()
    yield standin
    standin.faults.reset()


@pytest.fixture
def function(standin):
    """``function(name, retries=None, workers=1, **config)`` adds a function to the stand-in's
    endpoint (``retries``: its MaximumRetryAttempts, through the real client); removed afterwards."""
    names = []

    def add(name, *, retries=None, workers=1, **config):
        config["environment"] = {KEY_VARIABLE: standin.signing_key, **config.get("environment", {})}  # as deployed
        standin.endpoint.add_function(name, workers=workers, **config)
        names.append(name)
        if retries is not None:
            standin.lambda_client().put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=retries)
        return name

    yield add
    for name in names:
        standin.endpoint.remove_function(name)


# -- helpers ---------------------------------------------------------------------------------


def square(x):
    return x * x


def touch_and_square(arg):
    """Appends a line to a file (so a test can count runs), then squares."""
    path, x = arg
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return x * x





def mark_and_wait(arg):
    """Creates ``started``, then waits for ``gate_path`` to exist."""
    started, gate_path = arg
    open(started, "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(gate_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return started


def store_of(st):
    """The stand-in's store, with the key its functions hold (``signing_key``) for the helpers below."""
    store = S3Storage(st.bucket, endpoint_url=st.s3_url, region=st.region)
    store.signing_key = SigningKey.from_text(st.signing_key, "the stand-in's key")
    return store


def make_event(store, func, args, timeout=60):
    """An invocation event as the executor builds one: func.pkl and args.pkl in storage.

    This module travels by value, as the executor ships it: workers import installed packages only.
    """
    job = uuid.uuid4().hex[:12]
    payload = pickle_payload(func, args, include_modules=[__name__])
    key, func_key, args_key = store.signing_key, protocol.func_key(PREFIX, job), protocol.args_key(PREFIX, job, "0000")
    store.put(func_key, protocol.sign_object(key, func_key, payload.func))
    blobs = payload.args
    store.put(args_key, b"".join(blobs))
    calls, offset = [], 0
    for i, b in enumerate(blobs):
        calls.append({"id": protocol.call_id_for(i), "range": [offset, len(b)], "mac": protocol.argument_mac(key, args_key, offset, b)})
        offset += len(b)
    event = protocol.build_event(
        prefix=PREFIX, job_id=job, storage=store.spec(), calls=calls, timeout=timeout,
        host_versions=serialize.runtime_versions(),
    )
    return event, job


def record(store, job, i):
    """``(header, value)`` of a call's result record, or ``None`` if there is none yet."""
    try:
        key = protocol.result_key(PREFIX, job, protocol.call_id_for(i))
        blob = store.get(key)
    except KeyNotFound:
        return None
    header, start = protocol.decode_header(blob, key=store.signing_key, storage_key=key)
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


def invoke_event(client, st, event, name=None):
    """An asynchronous invoke of ``name`` (default: the stand-in's function)."""
    response = client.invoke(FunctionName=name or st.function_name, InvocationType="Event", Payload=json.dumps(event).encode())
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    return response


def request_id_of(response):
    """Lambda's request id for an invoke: the worker's ``context.aws_request_id``."""
    return response["ResponseMetadata"]["RequestId"]


# -- the Lambda endpoint through boto3 ---------------------------------------------------------


def test_event_invoke_runs_the_real_handler(aws):
    store = store_of(aws)
    event, job = make_event(store, square, [3, 4])
    request_id = request_id_of(invoke_event(aws.lambda_client(), aws, event))
    for i, expected in enumerate([9, 16]):
        header, value = wait_record(store, job, i)
        assert header["status"] == protocol.STATUS_OK and value == expected, header.get("error")
        # the worker saw Lambda's request id as context.aws_request_id
        assert header["request_id"] == request_id
    assert aws.faults.counters.invokes == 1 and aws.faults.counters.run == 1
    (run,) = aws.endpoint.wait_settled(request_id)
    assert run.outcome == "ok" and run.job_id == job and run.call_ids == ("000000", "000001") and run.attempt == 0
    assert len(aws.executions(job_id=job, call_id=protocol.call_id_for(1))) == 1


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
    response = aws.lambda_client().invoke(FunctionName=aws.function_name, Payload=b"[1]")  # not an object
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "AttributeError"
    assert any("lambda_handler" in line for line in error["stackTrace"])
    # a handler that returns a summary naming its problem returned: no function error
    response = aws.lambda_client().invoke(FunctionName=aws.function_name, Payload=b'{"not": "a dask-wren event"}')
    assert "FunctionError" not in response
    assert "storage" in json.loads(response["Payload"].read())["handler_error"]


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
    # the 202 does not wait for the start: delayed by an hour (past this module's end, so it never
    # runs), the event is still accepted, and nothing has started
    held, _ = make_event(store, square, [7])
    aws.faults.start_delay = 3600.0
    request_id = request_id_of(invoke_event(aws.lambda_client(), aws, held))
    assert aws.executions(request_id) == [] and aws.faults.snapshot().run == 0
    # the start comes once the delay has passed
    event, job = make_event(store, square, [8])
    aws.faults.start_delay = 1.0
    sent = time.time()
    invoke_event(aws.lambda_client(), aws, event)
    header, value = wait_record(store, job, 0)
    assert value == 64
    assert header["timings"]["worker_invoked"] - sent >= 1.0
    counters = aws.faults.snapshot()
    assert counters.delayed == 2 and counters.run == 1


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
    request_id = request_id_of(invoke_event(aws.lambda_client(), aws, event))
    (run,) = aws.endpoint.wait_settled(request_id)  # the stand-in's function retries nothing
    assert run.outcome == "died" and "signal: killed" in run.detail
    assert record(store, job, 0) is None  # as on Lambda: a crash writes nothing
    assert len(lines(marker)) == 1  # the function ran; its result was lost with the worker
    counters = aws.faults.snapshot()
    assert counters.crashed == 1 and aws.faults.crash_next == 0 and counters.retried == 0 and counters.run == 1
    # the next invocation is not crashed
    event, job = make_event(store, square, [4])
    invoke_event(aws.lambda_client(), aws, event)
    assert wait_record(store, job, 0)[1] == 16


def test_a_crashed_event_is_retried_when_the_function_retries(aws, function, tmp_path):
    name = function("retries-once", retries=1)
    store = store_of(aws)
    marker = str(tmp_path / "runs")
    event, job = make_event(store, touch_and_square, [(marker, 3)])
    aws.faults.crash_next = 1
    request_id = request_id_of(invoke_event(aws.lambda_client(), aws, event, name))
    runs = aws.endpoint.wait_settled(request_id)
    assert [(r.attempt, r.outcome) for r in runs] == [(0, "died"), (1, "ok")]
    assert runs[1].started - runs[0].ended >= RETRY_DELAY * 0.9
    header, value = record(store, job, 0)
    assert value == 9 and header["request_id"] == request_id  # a retry keeps the request id, as on Lambda
    assert len(lines(marker)) == 2
    assert aws.faults.snapshot().retried == 1


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_an_event_past_the_function_timeout_is_killed_and_records_nothing(aws, function, retries):
    # 2 s: the handler's watchdog would act at 1.5 s (the context's deadline less its margin) if the
    # function had not taken the GIL by then; 1 s left too little room on a loaded machine
    name = function(f"timeout-2s-{retries}", timeout=2, retries=retries)
    store = store_of(aws)
    event, job = make_event(store, hold_the_gil, [30], timeout=60)  # the event's own timeout does not matter
    request_id = request_id_of(invoke_event(aws.lambda_client(), aws, event, name))
    runs = aws.endpoint.wait_settled(request_id)
    assert [(r.attempt, r.outcome) for r in runs] == [(i, "timeout") for i in range(1 + retries)]
    for run in runs:
        # killed at the function's Timeout (2 s), not the event's (60 s), and not before it
        assert "past its timeout of 2 s" in run.detail, run.detail
        assert run.ended - run.started >= 2.0
    assert len(aws.endpoint.executions(job_id=job, call_id=protocol.call_id_for(0))) == 1 + retries
    assert record(store, job, 0) is None
    counters = aws.faults.snapshot()
    assert counters.killed_timeout == counters.run == 1 + retries and counters.retried == retries


def test_the_workers_context_counts_down_from_the_function_timeout(aws, function):
    name = function("timeout-3s", timeout=3, retries=0)
    store = store_of(aws)
    event, job = make_event(store, nap, [30], timeout=60)
    request_id = request_id_of(invoke_event(aws.lambda_client(), aws, event, name))
    (run,) = aws.endpoint.wait_settled(request_id)
    # The handler's watchdog saw the context's deadline (3 s, not the event's 60 s): it wrote its own
    # timeout record and ended the process before the stand-in's kill; to Lambda, a runtime exit.
    assert run.outcome == "died"
    header, _ = record(store, job, 0)
    assert header["error"]["kind"] == protocol.FAIL_TIMEOUT
    assert "the worker's own time limit" in header["error"]["message"], header["error"]["message"]
    assert aws.faults.snapshot().killed_timeout == 0


def test_a_memory_hog_is_killed_and_records_nothing(aws, function):
    name = function("memory-128", memory_mb=128, timeout=30, retries=0)
    store = store_of(aws)
    event, job = make_event(store, square, [12])
    invoke_event(aws.lambda_client(), aws, event, name)
    assert wait_record(store, job, 0)[1] == 144  # a worker fits in 128 MB
    event, job = make_event(store, hog, [300])
    request_id = request_id_of(invoke_event(aws.lambda_client(), aws, event, name))
    (run,) = aws.endpoint.wait_settled(request_id)
    assert run.outcome == "memory" and "128 MB" in run.detail
    assert record(store, job, 0) is None
    assert aws.faults.snapshot().killed_memory == 1
    # synchronously: Lambda's error document
    event, job = make_event(store, hog, [300])
    response = aws.lambda_client().invoke(FunctionName=name, Payload=json.dumps(event).encode())
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "Runtime.ExitError" and error["errorMessage"].endswith("Runtime exited with error: signal: killed")
    assert aws.faults.snapshot().killed_memory == 2 and record(store, job, 0) is None


def test_a_crash_on_a_synchronous_invoke_is_a_function_error(aws):
    store = store_of(aws)
    event, job = make_event(store, square, [2])
    aws.faults.crash_next = 1
    response = aws.lambda_client().invoke(FunctionName=aws.function_name, Payload=json.dumps(event).encode())
    assert response["FunctionError"] == "Unhandled"
    assert json.loads(response["Payload"].read())["errorType"] == "Runtime.ExitError"
    assert record(store, job, 0) is None  # as on Lambda: no record for a synchronous crash


# -- the control plane -----------------------------------------------------------------------


def test_event_invoke_config_round_trip(aws, function):
    name = function("configured")
    client = aws.lambda_client()
    with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
        client.get_function_event_invoke_config(FunctionName=name)  # none yet: Lambda's defaults apply
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.update_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=1)
    put = client.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=1, MaximumEventAgeInSeconds=120)
    assert put["MaximumRetryAttempts"] == 1 and put["MaximumEventAgeInSeconds"] == 120
    assert put["FunctionArn"].endswith(f":function:{name}:$LATEST") and put["LastModified"].year >= 2024
    got = client.get_function_event_invoke_config(FunctionName=name)
    assert (got["MaximumRetryAttempts"], got["MaximumEventAgeInSeconds"]) == (1, 120)
    updated = client.update_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    assert (updated["MaximumRetryAttempts"], updated["MaximumEventAgeInSeconds"]) == (0, 120)
    replaced = client.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=2)
    assert replaced["MaximumRetryAttempts"] == 2 and "MaximumEventAgeInSeconds" not in replaced
    for bad in ({"MaximumRetryAttempts": 3}, {"MaximumEventAgeInSeconds": 30000}):
        with pytest.raises(client.exceptions.InvalidParameterValueException):
            client.put_function_event_invoke_config(FunctionName=name, **bad)
    assert aws.endpoint.event_invoke_config(name)["MaximumRetryAttempts"] == 2
    client.delete_function_event_invoke_config(FunctionName=name)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function_event_invoke_config(FunctionName=name)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.delete_function_event_invoke_config(FunctionName=name)
    with pytest.raises(client.exceptions.ResourceNotFoundException, match="Function not found"):
        client.put_function_event_invoke_config(FunctionName="no-such-function", MaximumRetryAttempts=0)


def test_concurrency_and_account_settings(aws, function, tmp_path):
    client = aws.lambda_client(config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1}))
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName=aws.function_name)
    limit = client.get_account_settings()["AccountLimit"]
    assert limit["ConcurrentExecutions"] == limit["UnreservedConcurrentExecutions"] == 2  # the stand-in's workers
    name = function("reserved", workers=2)
    assert client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)["ReservedConcurrentExecutions"] == 1
    assert client.get_function_concurrency(FunctionName=name)["ReservedConcurrentExecutions"] == 1
    assert client.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == 1
    with pytest.raises(client.exceptions.InvalidParameterValueException):
        client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=3)

    # the reservation caps the invocations running at once, on a pool of 2 workers
    store = store_of(aws)
    gate_path = str(tmp_path / "gate")
    jobs = []
    for i in range(2):
        event, job = make_event(store, mark_and_wait, [(str(tmp_path / f"started-{i}"), gate_path)])
        invoke_event(client, aws, event, name)
        jobs.append(job)
    wait_for(lambda: any(os.path.exists(tmp_path / f"started-{i}") for i in range(2)), what="a start")
    open(gate_path, "w").close()
    first, second = sorted((wait_record(store, job, 0)[0]["timings"] for job in jobs), key=lambda t: t["worker_call_start"])
    assert first["worker_call_end"] <= second["worker_call_start"]

    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    with pytest.raises(client.exceptions.TooManyRequestsException):
        client.invoke(FunctionName=name, InvocationType="Event", Payload=b"{}")
    client.delete_function_concurrency(FunctionName=name)
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName=name)
    assert client.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == 2


def test_the_standins_function_is_configured_as_deploy_configures_it(aws):
    client = aws.lambda_client()
    assert client.get_function_event_invoke_config(FunctionName=aws.function_name)["MaximumRetryAttempts"] == 0
    variables = client.get_function_configuration(FunctionName=aws.function_name)["Environment"]["Variables"]
    assert variables["DASK_WREN_BUCKET"] == aws.bucket
    assert variables["DASK_WREN_PREFIX"] == aws.prefix == "dask-wren" == Settings.from_config(**aws.settings_overrides).prefix


def test_standin_on_another_s3_endpoint_restores_the_environment(aws):
    before = dict(os.environ)
    with aws_standin(workers=1, bucket="second-bucket", function_name="other", s3_endpoint=aws.s3_url, async_retries=2) as st:
        assert st.s3_url == aws.s3_url and os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
        assert st.lambda_client().get_function_event_invoke_config(FunctionName="other")["MaximumRetryAttempts"] == 2
        assert "second-bucket" in [b["Name"] for b in st.s3_client().list_buckets()["Buckets"]]
        store = store_of(st)
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
        asked = time.time()
        r, body = call("GET", "/invocation/next")
        answered = time.time()
        assert r.status == 200 and json.loads(body) == {"a": 1}
        assert r.getheader("Lambda-Runtime-Aws-Request-Id") == rid
        assert r.getheader("Lambda-Runtime-Invoked-Function-Arn").endswith(":function:fn")
        assert r.getheader("Lambda-Runtime-Trace-Id").startswith("Root=1-")
        # the function's timeout (5 s) from when the invocation was handed out (whole milliseconds)
        assert asked + 5 - 0.001 <= int(r.getheader("Lambda-Runtime-Deadline-Ms")) / 1000 <= answered + 5
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
            DASK_WREN_SIGNING_KEY=aws.signing_key,
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

            # a handler that raises (an event that is not an object) goes back through the runtime's error route
            request_id = server.submit([1])
            ok, error = _wait_runtime(server, proc, request_id, log_path)
            assert not ok and error["errorType"] == "AttributeError"
            assert proc.poll() is None  # the runtime lives on, warm, for the next event
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
