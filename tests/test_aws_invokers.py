"""Invoker processes (``wren.aws.invoker-processes``): the AWS backend's boto3 calls in child
processes, through the offline stand-in.  Exact results, throttles, a killed child, shutdown."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading

import dask.bag as db
import pytest
from conftest import wait_until

import dask_wren
from dask_wren import wren_get
from dask_wren.backends import aws_invoker
from lambda_worker import protocol
from lambda_worker.signing import KEY_VARIABLE

pytestmark = pytest.mark.timeout(120)


def triple(x):
    return 3 * x


@contextlib.contextmanager
def aws_executor(standin, **settings):
    """An executor on the stand-in whose backend is shut down afterwards (executors leave it running).

    Tests that look at the children pass an ``invoke_threads`` no other test uses: executors with the
    same configuration share one backend, and with it one pool of children."""
    ex = dask_wren.default_executor(**dict(standin.settings_overrides, timeout=60, **settings))
    try:
        yield ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        ex.backend.shutdown()


def records_of(ex, futures):
    return [k for k, _ in ex.storage.list(protocol.results_prefix(ex.settings.prefix, futures[0].job_id))]


def assert_exact(ex, futures, n):
    assert dask_wren.get_all_results(futures, timeout=60) == [3 * i for i in range(n)]
    records = records_of(ex, futures)
    assert len(records) == n == len(set(records))  # one result record per call, counted once


def gone(pid):
    """True once ``pid`` has exited (a zombie counts: it runs nothing)."""
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def invoker_children():
    """The invoker processes this process started that still run, from /proc (their command line
    names aws_invoker's file); None where there is no /proc."""
    if not os.path.isdir("/proc"):
        return None
    me, script = str(os.getpid()), os.path.abspath(aws_invoker.__file__).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if ppid == me and state not in ("Z", "X") and script in argv:
            found.append(int(entry))
    return sorted(found)


def test_a_map_through_invoker_processes_is_exact(standin, faults):
    with aws_executor(standin, invoker_processes=2, invoke_threads=10) as ex:
        futures = ex.map(triple, range(60))
        pids = ex.backend.invoker_pids()
        assert len(pids) == 2 and os.getpid() not in pids
        children = invoker_children()
        assert children is None or set(pids) <= set(children)  # invoker processes, children of this one
        assert_exact(ex, futures, 60)
        assert ex.backend.sent == 60 == faults.snapshot().invokes


def test_invoker_processes_0_sends_from_threads_here(standin, faults):
    before = invoker_children()
    with aws_executor(standin, invoker_processes=0, invoke_threads=11) as ex:
        assert_exact(ex, ex.map(triple, range(30)), 30)
        assert ex.backend.invoker_pids() == []
        assert invoker_children() == before  # no invoker process was started
        assert faults.snapshot().invokes == 30


def test_throttles_that_botocore_gives_up_on_are_paused_and_resent(standin, faults):
    # No botocore retries (max_attempts counts retries): every 429 comes back from the child as a ClientError, which the
    # backend must recognise as a throttle (pause, send again) exactly as with the in-process client.
    faults.set(throttle_first=4)
    with aws_executor(standin, invoker_processes=2, invoke_threads=12, invoke_max_attempts=0) as ex:
        assert_exact(ex, ex.map(triple, range(40)), 40)
        assert ex.backend.throttled == 4
    seen = faults.snapshot()
    assert seen.throttled == 4 and seen.invokes == 40 + 4


def test_an_invoke_error_other_than_a_throttle_fails_its_calls_clearly(standin, faults):
    name = "deleted-after-preflight"
    standin.endpoint.add_function(
        name, workers=1, environment={
            "DASK_WREN_BUCKET": standin.bucket, "DASK_WREN_PREFIX": standin.prefix, KEY_VARIABLE: standin.signing_key
        }
    )
    standin.endpoint.put_event_invoke_config(name, MaximumRetryAttempts=0)
    try:
        with aws_executor(standin, invoker_processes=1, invoke_threads=13, function_name=name) as ex:
            ex.backend.preflight()  # passed; then the function goes, as if deleted since
            standin.endpoint.remove_function(name)
            f = ex.call_async(triple, 1)
            with pytest.raises(dask_wren.WrenError, match="invoke request to Lambda failed.*ResourceNotFoundException"):
                f.result(timeout=60)
    finally:
        standin.endpoint.remove_function(name)


def test_a_killed_invoker_loses_no_calls(standin, faults):
    faults.set(invoke_latency=0.5)  # requests stay in flight long enough to be caught by the kill
    with aws_executor(standin, invoker_processes=2, invoke_threads=14) as ex:
        futures = ex.map(triple, range(80))
        victim = ex.backend.invoker_pids()[0]
        # 14 requests reached the endpoint (which holds each for 0.5 s): every child thread has one out
        wait_until(lambda: faults.snapshot().invokes >= 14, what="14 requests at the endpoint")
        os.kill(victim, signal.SIGKILL)
        faults.set(invoke_latency=0.0)
        assert_exact(ex, futures, 80)
        wait_until(lambda: gone(victim), what="the killed invoker's end")
        # restarted: two invokers again, the victim not among them
        assert len(ex.backend.invoker_pids()) == 2 and victim not in ex.backend.invoker_pids()
    # the killed child's requests were sent again: the endpoint saw them twice, results counted once
    # (which also shows it had requests out when it was killed)
    assert faults.snapshot().invokes > 80


def test_shutdown_leaves_no_invoker_processes(standin, faults):
    with aws_executor(standin, invoker_processes=2, invoke_threads=15) as ex:
        assert_exact(ex, ex.map(triple, range(10)), 10)
        pids = ex.backend.invoker_pids()
        assert len(pids) == 2
    assert ex.backend.invoker_pids() == []
    assert all(gone(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="shut down"):
        ex.backend.invoke([])


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("exit", "exited with status 3 before it was ready"),
        ("config", "could not start: KeyError"),
    ],
)
def test_an_invoker_that_cannot_start_is_one_clear_error(standin, faults, monkeypatch, breakage, message):
    if breakage == "exit":
        # private: no public way to make a child exit before it is ready
        monkeypatch.setattr(aws_invoker, "_BOOTSTRAP", "import sys; sys.exit(3)")
    with aws_executor(standin, invoker_processes=2, invoke_threads=16) as ex:
        if breakage == "config":
            # private: no public setting gives the children a config the parent does not reject first
            ex.backend._pool_config = {"threads": 8}  # the child finds no region in it
        with pytest.raises(dask_wren.BackendError, match=message) as info:
            ex.map(triple, range(3))
        assert "invoker-processes to 0" in str(info.value)
    assert faults.snapshot().invokes == 0


_ORPHAN_PARENT = """
import json, sys
from dask_wren.backends import aws_invoker
config = {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9", "function_name": "f",
          "retry_mode": "standard", "max_attempts": 1, "threads": 1}
pool = aws_invoker.InvokerPool(config, 2)
pool.start()
print(json.dumps(pool.pids()), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("end", ["killed", "exits"])
def test_invokers_exit_with_their_host(end):
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 2 and not any(gone(pid) for pid in pids)
    finally:
        if end == "killed":
            parent.kill()  # the children see their stdin close
        parent.stdin.close()  # "exits": the script returns and its atexit hook closes the pool
        assert parent.wait(timeout=30) == (-signal.SIGKILL if end == "killed" else 0)
    wait_until(lambda: all(gone(pid) for pid in pids), timeout=10, what="the invokers' exit")


def test_the_invoker_child_imports_neither_dask_nor_dask_wren():
    code = (
        "import importlib.util as u, sys\n"
        "s = u.spec_from_file_location('dask_wren_invoker', sys.argv[1])\n"
        "m = u.module_from_spec(s)\n"
        "s.loader.exec_module(m)\n"
        "import boto3\n"
        "boto3.session.Session().client('lambda', region_name='us-east-1', endpoint_url='http://127.0.0.1:9',\n"
        "    config=m.client_config(retry_mode='standard', max_attempts=1, pool_connections=1))\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('dask', 'dask_wren', 'distributed')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, aws_invoker.__file__], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_invoker_processes_is_validated():
    from dask_wren.config import Settings

    assert Settings.from_config().invoker_processes == 2
    with pytest.raises(ValueError, match="invoker-processes must be a whole number >= 0"):
        Settings.from_config(invoker_processes=-1)



def test_executors_with_one_configuration_share_one_backend(standin, faults):
    """wren_get makes an executor per compute, and executors never shut their backend down: each
    compute must not leave its own sender threads and invoker children behind."""
    settings = dict(standin.settings_overrides, invoke_threads=11)  # a configuration no other test uses
    senders = []
    for _ in range(3):
        bag = db.from_sequence(range(10), npartitions=2).map(triple).sum()
        assert bag.compute(scheduler=wren_get, **settings) == 135
        senders.append(sum(t.name.startswith("dask-wren-invoke") for t in threading.enumerate()))
    a, b = dask_wren.default_executor(**settings), dask_wren.default_executor(**settings)
    try:
        assert a.backend is b.backend
        assert len(a.backend.invoker_pids()) == 2
    finally:
        a.shutdown()
        b.shutdown()
        a.backend.shutdown()
    assert senders[0] == senders[1] == senders[2] > 0
