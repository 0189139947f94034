"""The AWS Lambda backend against a fake Lambda client (the full path runs in test_standin)."""

import io
import json
import threading
import time

import botocore.exceptions
import dask
import pytest

import dask_wren
from dask_wren.backends.aws import AWSLambdaBackend, host_versions
from dask_wren.backends.base import Invocation
from dask_wren.config import Settings
from dask_wren.executor import Executor
from dask_wren.signing import local_key
from lambda_worker.handler import lambda_handler
from lambda_worker.signing import KEY_VARIABLE

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def workers_key(monkeypatch):
    """FakeLambda runs the handler in this process, which reads its key from the environment:
    this process's local key, put there for each test (an earlier test's fixture may have set the
    variable that ``local_key`` read first, and taken it away again)."""
    monkeypatch.setenv(KEY_VARIABLE, local_key().text())


class FakeLambda:
    """Speaks the two Lambda calls the backend makes; runs the real handler in a thread (with this
    process's key, which ``workers_key`` puts into its environment)."""

    def __init__(self, versions=None, drop=(), fail_invoke=None, missing=False, *, timeout=900, retries=0,
                 reserved=None, unreserved=None, recorded=None):
        self.versions = dict(host_versions() if versions is None else versions, **{KEY_VARIABLE: local_key().text(), **(recorded or {})})
        self.timeout = timeout
        self.retries = retries  # None: no event invoke configuration (Lambda's default applies)
        self.reserved = reserved
        self.unreserved = unreserved  # None: GetAccountSettings unavailable (as in moto)
        self.drop = set(drop)
        self.fail_invoke = fail_invoke
        self.missing = missing
        self.invoked = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.release.set()

    def get_function_configuration(self, FunctionName):
        if self.missing:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "ResourceNotFoundException", "Message": "Function not found"}}, "GetFunctionConfiguration"
            )
        return {"FunctionName": FunctionName, "State": "Active", "Timeout": self.timeout,
                "Environment": {"Variables": self.versions}}

    def get_function_event_invoke_config(self, FunctionName):
        if self.retries is None:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "ResourceNotFoundException", "Message": "no config"}}, "GetFunctionEventInvokeConfig"
            )
        return {"MaximumRetryAttempts": self.retries, "MaximumEventAgeInSeconds": 600}

    def get_function_concurrency(self, FunctionName):
        return {} if self.reserved is None else {"ReservedConcurrentExecutions": self.reserved}

    def get_account_settings(self):
        if self.unreserved is None:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "UnknownOperationException", "Message": "not implemented"}}, "GetAccountSettings"
            )
        return {"AccountLimit": {"UnreservedConcurrentExecutions": self.unreserved}}

    def invoke(self, FunctionName, InvocationType, Payload):
        assert InvocationType == "Event"
        event = json.loads(Payload)
        if self.fail_invoke:
            raise botocore.exceptions.ClientError({"Error": {"Code": self.fail_invoke, "Message": "no"}}, "Invoke")
        with self.lock:
            self.invoked.append(event)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        calls = {c["id"] for c in event.get("calls", [])}
        if not calls & self.drop:
            threading.Thread(target=self._run, args=(event,), daemon=True).start()
        return {"StatusCode": 202, "Payload": io.BytesIO(b"")}

    def _run(self, event):
        self.release.wait(30)
        with self.lock:
            self.in_flight -= 1
        lambda_handler(event, None)


def eventually(condition, timeout=30.0):
    """Poll until ``condition()`` holds (True) or ``timeout`` s pass (False): a bound against
    hanging, generous on a loaded machine, not a measure of speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def make(tmp_path, client, **aws):
    base = Settings.from_config(storage_dir=str(tmp_path), timeout=5)
    backend = AWSLambdaBackend(base.replace(backend="aws", signing_key=local_key().text(), **aws), client=client)
    return Executor(base, backend=backend), backend


def square(x):
    return x * x


def test_map_through_async_invokes(tmp_path):
    client = FakeLambda()
    ex, backend = make(tmp_path, client)
    with ex:
        assert dask_wren.get_all_results(ex.map(square, range(20))) == [i * i for i in range(20)]
        assert ex.reduce(sum, ex.map(square, range(4))).result() == 14
    assert backend.sent == 20 + 4 + 1
    backend.shutdown()


def test_a_budget_holding_back_does_not_stall_another_executors_invokes(tmp_path):
    """The backend is shared: while one executor's budget holds its third invocation back, another
    executor's invocations are still sent."""
    from tests.conftest import gate, wait_until
    from tests.test_budget import ONE_DOLLAR_AN_INVOCATION

    client = FakeLambda()
    other, backend = make(tmp_path, client)
    opened = tmp_path / "open"
    with dask.config.set({"wren.prices": ONE_DOLLAR_AN_INVOCATION}):
        # the handler runs in this process: a call past its timeout would end it, so the gated calls get 60 s
        capped = Executor(Settings.from_config(storage_dir=str(tmp_path), timeout=60, budget=2.5), backend=backend)
    with capped, other:
        held = capped.map(gate, [str(opened)] * 4, backups=False)
        wait_until(lambda: capped._budget.in_flight == pytest.approx(2.0), what="two calls to be sent")
        assert other.get_result(other.map(square, range(3)), timeout=30) == [0, 1, 4]
        assert not any(f.done() for f in held)
        opened.touch()
        dask_wren.wait(held)
        assert [f.exception() is None for f in held] == [True, True, False, False]
        assert isinstance(held[-1].exception(), dask_wren.BudgetExceededError)
    assert backend.sent == 2 + 3
    backend.shutdown()


def test_preflight_errors_are_actionable(tmp_path):
    ex, _ = make(tmp_path, FakeLambda(missing=True))
    with pytest.raises(dask_wren.BackendError, match="dask-wren deploy"):
        ex.map(square, [1])
    versions = dict(host_versions(), DASK_WREN_PYTHON="3.9", DASK_WREN_CLOUDPICKLE="2.0.0")
    ex, _ = make(tmp_path, FakeLambda(versions=versions))
    with pytest.raises(dask_wren.VersionMismatchError, match="python: deployed 3.9") as info:
        ex.map(square, [1])
    assert "cloudpickle: deployed 2.0.0" in str(info.value) and "dask-wren deploy" in str(info.value)


@pytest.mark.parametrize("retries", [None, 1, 2])
def test_preflight_refuses_a_function_that_retries_failed_events_itself(tmp_path, retries):
    client = FakeLambda(retries=retries)
    ex, _ = make(tmp_path, client)
    with pytest.raises(dask_wren.BackendError, match=r"MaximumRetryAttempts \d.*redeploy with `dask-wren deploy`"):
        ex.map(square, range(500))
    assert client.invoked == []  # refused before any invoke


def test_preflight_checks_the_timeout_bucket_and_prefix_before_any_invoke(tmp_path):
    client = FakeLambda(timeout=3, recorded={"DASK_WREN_PREFIX": "elsewhere"})
    ex, _ = make(tmp_path, client)
    with pytest.raises(dask_wren.BackendError, match=r"call timeout \(5 s.*\(3 s, its Timeout\)"):
        ex.map(square, [1])
    with pytest.raises(dask_wren.BackendError, match="prefix is 'dask-wren'.*deployed for prefix 'elsewhere'"):
        ex.map(square, [1], timeout=2)
    assert client.invoked == []
    backend = AWSLambdaBackend(
        Settings(backend="aws", storage="s3", bucket="mine", signing_key=local_key().text()),
        client=FakeLambda(recorded={"DASK_WREN_BUCKET": "theirs"}),
    )
    backend.preflight()
    inv = Invocation("r", {"storage": {"kind": "s3", "bucket": "mine"}, "prefix": "dask-wren"}, ["000000"], 5)
    with pytest.raises(dask_wren.BackendError, match="bucket is 'mine'.*deployed for bucket 'theirs'"):
        backend.invoke([inv])


@pytest.mark.parametrize(
    "reserved, unreserved, expected",
    [(3, 500, 3), (None, 7, 7), (None, None, 1000), (None, 5000, 1000)],
)
def test_preflight_caps_calls_in_flight_at_the_functions_real_concurrency(tmp_path, caplog, reserved, unreserved, expected):
    ex, backend = make(tmp_path, FakeLambda(reserved=reserved, unreserved=unreserved))
    with caplog.at_level("INFO", logger="dask_wren"), ex:
        assert dask_wren.get_all_results(ex.map(square, range(10))) == [i * i for i in range(10)]
    assert backend.max_concurrency == expected
    logged = caplog.text
    assert (f"capped at {expected} instead" in logged) is (expected < 1000)
    assert ("cannot read the account's Lambda concurrency" in logged) is (reserved is None and unreserved is None)
    backend.shutdown()


def test_a_reserved_concurrency_of_zero_is_one_clear_error(tmp_path):
    ex, _ = make(tmp_path, FakeLambda(reserved=0))
    with pytest.raises(dask_wren.BackendError, match="reserved concurrency of 0"):
        ex.map(square, [1])


def test_no_credentials_is_one_clear_error(tmp_path, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    ex, _ = make(tmp_path, None, aws_region="us-east-1")
    with pytest.raises(dask_wren.BackendError, match="no AWS credentials"):
        ex.map(square, [1])


def test_an_invoke_that_fails_for_good_fails_its_calls(tmp_path):
    ex, _ = make(tmp_path, FakeLambda(fail_invoke="KMSAccessDeniedException"))
    with ex:
        f = ex.call_async(square, 3)
        with pytest.raises(dask_wren.WrenError, match="invoke request to Lambda failed.*KMSAccessDenied"):
            f.result(timeout=30)


def test_endless_throttling_fails_after_the_throttle_timeout(tmp_path):
    client = FakeLambda(fail_invoke="TooManyRequestsException")
    ex, backend = make(tmp_path, client, throttle_timeout=1.0)
    with ex:
        f = ex.call_async(square, 3)
        with pytest.raises(dask_wren.WrenError, match="TooManyRequestsException"):
            f.result(timeout=30)
    assert backend.throttled >= 1  # it paused and sent again before giving up


def test_a_lost_call_fails_after_its_timeout_and_grace(tmp_path):
    client = FakeLambda(drop={"000001"})
    ex, _ = make(tmp_path, client, lost_call_grace=0.5)
    with ex:
        futures = ex.map(square, [1, 2, 3], timeout=1, backups=False)
        assert futures[0].result() == 1 and futures[2].result() == 9
        with pytest.raises(dask_wren.WrenTimeoutError, match="no result within the call's timeout"):
            futures[1].result(timeout=30)
        assert len(futures[0].stats["attempts"]) == 1
        # the first invoke and two retries (wren.retries), each counted, each lost
        assert [a["kind"] for a in futures[1].stats["attempts"]] == ["first", "retry", "retry"]
        assert all(a["outcome"].startswith("lost") for a in futures[1].stats["attempts"])
        assert [e.get("attempt", 0) for e in client.invoked if e["calls"][0]["id"] == "000001"] == [0, 1, 2]


@pytest.mark.parametrize("chunksize", [1, 4])
def test_concurrency_cap_holds_calls_back(tmp_path, chunksize):
    """The cap counts invocations (Lambda's executions), whatever their number of calls."""
    client = FakeLambda()
    client.release.clear()
    ex, backend = make(tmp_path, client, max_concurrency=3)
    with ex:
        futures = ex.map(square, range(10 * chunksize), chunksize=chunksize)
        # three invocations are out; the rest wait for results to free room
        assert eventually(lambda: len(client.invoked) >= 3)
        assert len(client.invoked) == 3
        client.release.set()
        assert dask_wren.get_all_results(futures) == [i * i for i in range(10 * chunksize)]
    assert client.max_in_flight <= 3


def test_cancel_a_call_not_yet_sent(tmp_path):
    client = FakeLambda()
    client.release.clear()
    ex, _ = make(tmp_path, client, max_concurrency=1)
    with ex:
        futures = ex.map(square, range(3))
        assert futures[2].cancel()
        client.release.set()
        assert [futures[0].result(), futures[1].result()] == [0, 1]
    assert {c["id"] for e in client.invoked for c in e["calls"]} == {"000000", "000001"}


def test_the_ramp_starts_afresh_after_the_backend_goes_idle(tmp_path):
    client = FakeLambda()
    ex, backend = make(tmp_path, client)
    with ex:
        ex.map(square, [1])[0].result()
        # private read: the ramp's start has no public view (with the default cap it changes nothing visible)
        first = backend._ramp_start
        # the monitor tells the backend just after the future resolves
        assert eventually(lambda: backend.in_flight == 0)
        ex.map(square, [2])[0].result()
        assert backend._ramp_start is not None and backend._ramp_start > first


def test_a_refused_map_leaves_no_future_waiting(tmp_path):
    ex, _ = make(tmp_path, FakeLambda(retries=2))
    with ex:  # leaving the block waits for the executor's futures: none may be left pending
        with pytest.raises(dask_wren.BackendError):
            ex.map(square, range(3))
    done, not_done = ex.wait(return_when=dask_wren.ALWAYS)  # every future the executor made
    assert len(done) == 3 and not_done == []
