"""Cancel reaches calls running on Lambda workers: the handler's watchdog reads the job's cancel
marker (through the AWS stand-in, which never stops a call for the host)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import gate, nap, wait_for_path, wait_until

import dask_wren
from lambda_worker import protocol

POLL = 0.2  # the tests' wren.cancel-poll-interval


def mark_then_wait(args):
    """Run remotely: say the call started, then wait for the gate; say so if it got past it."""
    started, gate_path, ended = args
    open(started, "w").close()
    gate(gate_path, timeout=60)
    open(ended, "w").close()
    return "passed the gate"


def quick(x):
    return x


def ended(standin, job_id):
    runs = standin.executions(job_id=job_id)
    return bool(runs) and all(e.outcome is not None for e in runs)


@pytest.fixture
def aws_executor(standin, faults):
    ex = dask_wren.default_executor(timeout=60, cancel_poll_interval=POLL, **standin.settings_overrides)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def test_future_cancel_ends_the_lambda_execution_running_it(aws_executor, standin, tmp_path):
    started, ended_path = tmp_path / "started", tmp_path / "ended"
    future = aws_executor.call_async(mark_then_wait, (str(started), str(tmp_path / "never"), str(ended_path)))
    wait_for_path(started)
    assert future.cancel()
    wait_until(lambda: ended(standin, future.job_id), 10 * POLL + 5, "the execution did not end")
    (run,) = standin.executions(job_id=future.job_id)
    assert run.outcome == "died" and not ended_path.exists()
    marker = aws_executor.storage.get(protocol.cancel_key(aws_executor.settings.prefix, future.job_id))
    assert protocol.cancelled_calls(marker) == protocol.CANCEL_ALL  # its job's only call


def test_an_invocation_goes_on_while_one_of_its_calls_is_not_cancelled(aws_executor, standin, tmp_path):
    gate_path = tmp_path / "gate"
    args = [(str(tmp_path / f"started-{i}"), str(gate_path), str(tmp_path / f"ended-{i}")) for i in range(2)]
    first, second = aws_executor.map(mark_then_wait, args, chunksize=2)  # one invocation, calls in turn
    wait_for_path(args[0][0])
    assert first.cancel()
    marker = aws_executor.storage.get(protocol.cancel_key(aws_executor.settings.prefix, first.job_id))
    assert protocol.cancelled_calls(marker) == {first.call_id}
    # The worker reads that marker and goes on: its second call is still wanted.
    gate_path.touch()
    assert second.result(timeout=30) == "passed the gate"
    (run,) = standin.executions(job_id=first.job_id)
    standin.endpoint.wait_settled(run.request_id)
    assert run.outcome == "ok"


def test_cancelling_every_call_of_an_invocation_ends_it(aws_executor, standin, tmp_path):
    args = [(str(tmp_path / f"started-{i}"), str(tmp_path / "never"), str(tmp_path / f"ended-{i}")) for i in range(3)]
    futures = aws_executor.map(mark_then_wait, args, chunksize=3)
    wait_for_path(args[0][0])
    aws_executor.cancel(futures[1:])  # the calls not started yet: the running one goes on
    futures[0].cancel()
    wait_until(lambda: ended(standin, futures[0].job_id), 10 * POLL + 5, "the execution did not end")
    assert not any(os.path.exists(a[2]) for a in args)


def test_a_running_call_counts_its_looks_at_the_marker(tmp_path):
    with dask_wren.local_executor(workers=1, storage_dir=str(tmp_path / "store"), cancel_poll_interval=POLL) as ex:
        quick_call = ex.call_async(quick, 1)
        assert quick_call.result(timeout=30) == 1
        long_call = ex.call_async(nap, 10 * POLL)
        assert long_call.result(timeout=30) == 10 * POLL
    # both calls read the function and their argument and wrote their record; the long one also
    # read the cancel marker every POLL seconds while it ran
    assert quick_call.stats["storage_requests"] == 3
    assert long_call.stats["storage_requests"] >= 3 + 5


def test_executor_cancel_writes_one_marker_per_job(tmp_path):
    from dask_wren.testing.counting import CountingStorage
    from lambda_worker.storage.local import LocalStorage

    storage = CountingStorage(LocalStorage(str(tmp_path / "store")))
    with dask_wren.Executor(dask_wren.config.Settings.from_config(workers=2, storage_dir=str(tmp_path / "store")), storage=storage) as ex:
        args = [(str(tmp_path / f"started-{i}"), str(tmp_path / "never"), str(tmp_path / f"ended-{i}")) for i in range(20)]
        futures = ex.map(mark_then_wait, args)
        wait_for_path(args[0][0])
        puts = storage.counts["put"]
        ex.cancel()
        assert all(f.cancelled() for f in futures)
        assert storage.counts["put"] - puts == 1
        marker = storage.get(protocol.cancel_key(ex.settings.prefix, futures[0].job_id))
        assert protocol.cancelled_calls(marker) == protocol.CANCEL_ALL


_HOST = textwrap.dedent("""
    import json, os, sys, time
    import dask_wren

    settings, where, n, with_block = json.loads(sys.argv[1])

    def sleeper(i):
        open(os.path.join(where, f"started-{i}"), "w").close()
        time.sleep(30)
        return i

    ex = dask_wren.default_executor(**settings)
    if with_block:
        with ex:
            futures = ex.map(sleeper, range(n))
            print(json.dumps(futures[0].job_id), flush=True)
            ex.get_result(futures)
    else:
        futures = ex.map(sleeper, range(n))
        print(json.dumps(futures[0].job_id), flush=True)
        ex.get_result(futures)
""")


@pytest.mark.parametrize("with_block", [False, True], ids=["bare", "with-block"])
def test_ctrl_c_in_the_host_leaves_every_standin_worker_idle(standin, faults, tmp_path, with_block):
    """50 calls of sleep(30); SIGINT once the calls run: every execution ends within 5 s of the
    host's exit (the default poll interval; the host sends no more than the function's concurrency)."""
    settings = dict(standin.settings_overrides, timeout=60)
    host = subprocess.Popen(
        [sys.executable, "-c", _HOST, json.dumps([settings, str(tmp_path), 50, with_block])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        job_id = json.loads(host.stdout.readline())
        running = len(standin.endpoint.worker_pids(standin.function_name))
        for i in range(running):  # the function's concurrency: the rest wait on the host
            wait_for_path(tmp_path / f"started-{i}")
        host.send_signal(signal.SIGINT)
        _, err = host.communicate(timeout=30)
    finally:
        host.kill()
    assert "KeyboardInterrupt" in err
    wait_until(lambda: ended(standin, job_id), 5, "stand-in executions still running")
    runs = standin.executions(job_id=job_id)
    assert len(runs) == running and {e.outcome for e in runs} == {"died"}
