"""Lambda as it really behaves, through the Lambda-faithful stand-in: who notices each failure,
how soon, and how often a call runs.  The stand-in writes no failure records, kills at the
function's Timeout and MemorySize, and applies the function's async retry configuration, as
Lambda does; everything else is the host's and the handler's own doing."""

import ctypes
import os
import sys
import time

import pytest

import dask_wren
from dask_wren.testing import aws_standin

pytestmark = pytest.mark.timeout(120)

FUNCTION_TIMEOUT = 6  # the stand-in function's Timeout (s)
CALL_TIMEOUT = 2  # the calls' own timeout (s)
GRACE = 5  # wren.aws.lost-call-grace: timeout + grace outlasts the function's Timeout


@pytest.fixture(scope="module")
def lam():
    with aws_standin(workers=3, bucket="wren-semantics", timeout=FUNCTION_TIMEOUT, memory_mb=300) as standin:
        yield standin


def executor(standin, **overrides):
    settings = dict(standin.ensure_bucket().settings_overrides, lost_call_grace=GRACE, retries=1, timeout=CALL_TIMEOUT)
    settings.update(overrides)
    return dask_wren.default_executor(**settings)


def runs(standin, future):
    """How often the call behind ``future`` was executed on a worker."""
    return len(standin.executions(job_id=future.job_id, call_id=future.call_id))


def misbehave(how):
    if how == "sleep":
        time.sleep(60)  # the handler's watchdog can run: it records the timeout itself
    if how == "exit":
        os._exit(7)
    if how == "memory":
        hog = bytearray(600 << 20)  # twice the function's 300 MB
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(60)
    if how == "gil":
        ctypes.PyDLL(None).sleep(60)  # C code holding the GIL: the watchdog cannot act
    if how == "sys.exit":
        print("last words", flush=True)
        sys.exit(5)
    return how


def test_a_call_past_its_timeout_fails_within_seconds_and_ran_once(lam):
    with executor(lam) as ex:
        f = ex.call_async(misbehave, "sleep")
        with pytest.raises(dask_wren.WrenTimeoutError, match=f"ran past its timeout of {CALL_TIMEOUT} s"):
            f.result(timeout=60)
        late = f.stats["host_result_seen"] - f.stats["host_invoked"] - CALL_TIMEOUT
        assert late < 10, f"the error came {late:.1f} s after the call's timeout"
        assert runs(lam, f) == 1 and len(f.stats["attempts"]) == 1  # a timeout is not retried unless asked
        assert ex.call_async(misbehave, "fine").result(timeout=60) == "fine"  # the function serves on


def test_sys_exit_fails_at_once_with_the_functions_last_output(lam):
    with executor(lam) as ex:
        f = ex.call_async(misbehave, "sys.exit")
        with pytest.raises(dask_wren.WorkerDiedError, match=r"sys.exit\(5\).*exited with code 5") as info:
            f.result(timeout=60)
        assert "last words" in str(info.value)
        assert runs(lam, f) == 1


def test_a_crash_an_oom_kill_and_a_stuck_call_are_lost_calls_retried_by_the_host_alone(lam):
    """Lambda (and the stand-in) write nothing for these: the host notices the missing result after
    timeout + grace, invokes the call again (retries 1), and then fails it."""
    with executor(lam) as ex:
        futures = ex.map(misbehave, ["exit", "memory", "gil"])
        for f in futures:
            with pytest.raises(dask_wren.WrenTimeoutError, match=r"no result within the call's timeout"):
                f.result(timeout=90)
            assert [a["outcome"].split(":")[0] for a in f.stats["attempts"]] == ["lost", "lost"]
            assert runs(lam, f) == 2  # once per host attempt: Lambda's own retries are off
    counters = lam.faults.snapshot()
    assert counters.retried == 0 and counters.killed_memory >= 2 and counters.killed_timeout >= 2


def test_a_function_that_retries_events_itself_is_refused_before_any_invoke(lam):
    lam.endpoint.put_event_invoke_config(lam.function_name, MaximumRetryAttempts=2)
    try:
        before = len(lam.executions())
        with executor(lam, invoke_threads=7) as ex:  # settings of its own: a backend not yet checked
            with pytest.raises(dask_wren.BackendError, match=r"MaximumRetryAttempts 2.*dask-wren deploy"):
                ex.map(abs, range(-500, 0))
        assert len(lam.executions()) == before  # refused before any invoke
    finally:
        lam.endpoint.put_event_invoke_config(lam.function_name, MaximumRetryAttempts=0)


def test_a_call_timeout_longer_than_the_functions_is_refused_before_any_invoke(lam):
    before = len(lam.executions())
    with executor(lam, invoke_threads=5) as ex:
        with pytest.raises(dask_wren.BackendError, match=rf"\(30 s, .*\({FUNCTION_TIMEOUT} s, its Timeout\)"):
            ex.map(abs, [-1], timeout=30)
    with executor(lam, invoke_threads=5, prefix="other") as other:
        with pytest.raises(dask_wren.BackendError, match="deployed for prefix 'dask-wren'"):
            other.map(abs, [-1])
    assert len(lam.executions()) == before
