"""Reattach (``dask_wren.attach``): futures for a job another host submitted, read from storage.

The demonstration (issue 10): a host submits through the AWS stand-in and is SIGKILLed while its
calls run; this process attaches and gets every result.  On the local backend, workers die with
their host: attach gives the results that arrived and says the other calls were lost."""

import json
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import gate, wait_until

import dask_wren
from dask_wren import orphans
from dask_wren.signing import local_key
from lambda_worker import protocol, serialize
from lambda_worker.storage.local import LocalStorage

DEAD_PID = 2**30  # above any pid_max: no such process
PREFIX = "dask-wren"

_HOST = textwrap.dedent("""
    import json, os, sys, time
    import dask_wren

    settings, where, n, chunksize, first_free = json.loads(sys.argv[1])

    def gated(i):
        if i < first_free:
            return i * 10
        open(os.path.join(where, f"started-{i}"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(where, "gate")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return i * 10

    ex = dask_wren.default_executor(**settings)
    futures = ex.map(gated, range(n), chunksize=chunksize)
    ex.wait(futures[:first_free])
    print(json.dumps(futures[0].job_id), flush=True)
    ex.get_result(futures)
""")


def start_host(settings, where, n, chunksize=1, first_free=0):
    """A host process that maps ``gated`` over ``range(n)``; its first line is the job id."""
    local_key()  # in this process's environment now: the host inherits it, whatever the key file holds
    args = json.dumps([settings, str(where), n, chunksize, first_free])
    return subprocess.Popen([sys.executable, "-c", _HOST, args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_of(host):
    """The job id the host prints once its first calls are in."""
    line = host.stdout.readline()
    if not line:
        raise AssertionError(f"the host ended ({host.wait()}): {host.stderr.read()}")
    return json.loads(line)


def running(host, *paths):
    """Wait until the calls behind ``paths`` run; fail with the host's stderr if it ended first."""
    for path in paths:
        wait_until(lambda p=path: p.exists() or host.poll() is not None, 30, f"{path.name} did not appear")
        if host.poll() is not None:
            raise AssertionError(f"the host ended ({host.returncode}): {host.stderr.read()}")


def job_objects(storage, job_id):
    return [k for k, _ in storage.list(protocol.job_prefix(PREFIX, job_id))]


def test_attach_after_the_host_was_killed_gets_every_result_through_the_standin(standin, faults, tmp_path):
    """8 calls in 2 invocations (the stand-in's concurrency) wait on a gate; the host is SIGKILLed
    once both run; a new executor in this process attaches, the gate opens, and all 8 results come."""
    settings = dict(standin.settings_overrides, timeout=60)
    host = start_host(settings, tmp_path, 8, chunksize=4)
    try:
        job_id = job_of(host)
        running(host, tmp_path / "started-0", tmp_path / "started-4")
    finally:
        host.kill()
        host.wait()
    with dask_wren.default_executor(**settings) as ex:
        futures = dask_wren.attach(job_id, executor=ex)
        assert [f.call_id for f in futures] == [protocol.call_id_for(i) for i in range(8)]
        assert not any(f.done() for f in futures)  # they run on, behind the gate
        (tmp_path / "gate").touch()
        assert dask_wren.get_all_results(futures, timeout=60) == [i * 10 for i in range(8)]
        assert futures[5].stats["attempts"] == [{"attempt": 0, "kind": "first", "outcome": "ok"}]
    assert len(standin.executions(job_id=job_id)) == 2  # nothing ran again
    assert job_objects(ex.storage, job_id) == []  # adopted: its executor deleted it


@pytest.mark.slow
def test_calls_a_killed_host_never_sent_are_lost_after_the_jobs_timeout_plus_grace(standin, faults, tmp_path):
    """4 calls, the function's concurrency 2: the host sent calls 0 and 1 when it was killed, so 2
    and 3 were never sent; they are lost once no record came for the timeout + the grace."""
    settings = dict(standin.settings_overrides, timeout=10)
    host = start_host(settings, tmp_path, 4)
    try:
        job_id = job_of(host)
        running(host, tmp_path / "started-0", tmp_path / "started-1")
    finally:
        host.kill()
        host.wait()
    with dask_wren.default_executor(**dict(settings, lost_call_grace=1)) as ex:
        futures = dask_wren.attach(job_id, executor=ex)
        (tmp_path / "gate").touch()
        assert dask_wren.get_all_results(futures[:2], timeout=30) == [0, 10]
        for f in futures[2:]:
            with pytest.raises(dask_wren.LostCallError, match=r"no record of it came within its timeout \(10 s\)"):
                f.result(timeout=30)
    assert {e.call_ids for e in standin.executions(job_id=job_id)} == {("000000",), ("000001",)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers end with their host on Linux")
def test_attach_to_a_killed_local_host_gives_its_results_and_names_the_lost_calls(tmp_path):
    """Calls 0 and 1 finish, 2 and 3 run, 4 and 5 wait in the queue: the host is SIGKILLed, its
    workers die with it, and attach (whose executor's sweep keeps the young job) says what happened."""
    store = str(tmp_path / "store")
    settings = {"storage_dir": store, "workers": 2, "backups": False}
    host = start_host(settings, tmp_path, 6, first_free=2)
    try:
        job_id = job_of(host)
        running(host, tmp_path / "started-2")
    finally:
        host.kill()
        host.wait()
    with dask_wren.local_executor(storage_dir=store, workers=1) as ex:
        futures = dask_wren.attach(job_id, executor=ex)
        dask_wren.wait(futures, timeout=30)
        assert [f.result() for f in futures[:2]] == [0, 10]
        for f in futures[2:]:
            with pytest.raises(dask_wren.LostCallError) as err:
                f.result()
            message = str(err.value)
            assert f"call {f.call_id} of job {job_id} was lost: its worker died with the host that submitted it" in message
            assert f"pid {host.pid} on {orphans.hostname()}" in message
            assert "never runs a call again" in message and "ex.map(__main__.gated, ...)" in message
    assert job_objects(ex.storage, job_id) == []


def test_attach_to_a_finished_job_and_the_attempts_its_records_show(tmp_path):
    """A job whose host is still alive here (this process) and kept its objects: its results and
    its failure are there, and its objects stay (the host owns them too)."""
    store = str(tmp_path / "store")
    with dask_wren.local_executor(storage_dir=store, workers=1, cleanup=False) as ex:
        futures = ex.map(int, ["1", "2", "x"])
        dask_wren.wait(futures)
    attached = dask_wren.attach(futures[0].job_id, storage_dir=store, workers=1)  # an executor of its own
    dask_wren.wait(attached, timeout=30)
    assert [f.result() for f in attached[:2]] == [1, 2]
    with pytest.raises(ValueError, match="invalid literal"):
        attached[2].result()
    with dask_wren.local_executor(storage_dir=store, workers=1) as other:
        again = dask_wren.attach(futures[0].job_id, executor=other)
        assert dask_wren.get_all_results(again[:2], timeout=30) == [1, 2]
        dask_wren.wait(again)
        # the attached job counts in its adopter's cost(): what its records billed, the submit
        # PUTs its manifest names, and the adopter's own reads
        theirs, ours = ex.cost(), other.cost()
        assert ours.calls == theirs.calls == 3
        assert (ours.invocations, ours.billed_ms, ours.init_ms) == (theirs.invocations, theirs.billed_ms, theirs.init_ms)
        assert ours.compute == pytest.approx(theirs.compute) and ours.compute > 0
        manifest = json.loads(other.storage.get(protocol.manifest_key(PREFIX, futures[0].job_id)))
        tally = other._tallies[futures[0].job_id]
        assert tally.host_put == manifest["host_requests"]["put"] and tally.host_get == 3 and tally.host_list >= 1
    assert job_objects(ex.storage, futures[0].job_id)  # its host (this process) runs: its objects stay


def gated(path):
    gate(path)
    return "through"


def test_attach_to_a_live_hosts_running_job_follows_it_and_leaves_it_alone(tmp_path):
    """The host (this process) runs the job: attach waits for its call, and an attaching executor
    that goes without waiting neither cancels the call nor deletes the job."""
    store, path = str(tmp_path / "store"), str(tmp_path / "gate")
    with dask_wren.local_executor(storage_dir=store, workers=1) as ex:
        (future,) = ex.map(gated, [path])
        watcher = dask_wren.local_executor(storage_dir=store, workers=1)
        (seen,) = dask_wren.attach(future.job_id, executor=watcher)
        peeker = dask_wren.local_executor(storage_dir=store, workers=1)
        dask_wren.attach(future.job_id, executor=peeker)
        peeker.shutdown(wait=False)
        assert not ex.storage.exists(protocol.cancel_key(PREFIX, future.job_id))
        open(path, "w").close()
        assert seen.result(timeout=30) == "through" and future.result(timeout=30) == "through"
        watcher.shutdown()
        assert job_objects(ex.storage, future.job_id)


def _record(storage, key, job_id, call_id, attempt, value=None, error=None, written=None):
    """A signed result record, as a worker (or a backend, for a failure) writes one."""
    timings = {"worker_result_write": written or time.time()}
    header = {"job_id": job_id, "call_id": call_id, "attempt": attempt, "timings": timings}
    if error is None:
        header["status"], payload = protocol.STATUS_OK, serialize.dumps(value)
    elif isinstance(error, BaseException):
        header["status"], payload = protocol.STATUS_ERROR, serialize.dumps_exception(error)
        header["error"] = {"kind": "exception", "type": type(error).__name__, "message": str(error)}
    else:
        header["status"], payload = protocol.STATUS_FAILED, b""
        header["error"] = {"kind": error, "message": f"{error} (made by the test)"}
    storage.put(key, protocol.encode_result(header, payload, key=local_key(), storage_key=key))


def _dead_hosts_job(storage, job_id, *, calls, submitted=None, backend="local", host=None, key_id=None):
    manifest = {
        "v": 1, "job_id": job_id, "executor_id": job_id.split("-")[0], "host": host or orphans.hostname(),
        "pid": DEAD_PID, "pid_started": 1.0, "submitted": submitted or time.time(), "calls": calls, "chunksize": 1,
        "timeout": 5, "backend": backend, "function": "tests.job", "retries": 2, "key_id": key_id or local_key().id,
    }
    storage.put(protocol.manifest_key(PREFIX, job_id), json.dumps(manifest).encode())


def test_later_attempts_failures_and_lost_calls_are_judged_from_the_records(tmp_path):
    """A dead local host's job: call 0 ok; call 1's first attempt died and its retry succeeded (a/);
    call 2 raised; call 3's worker died and its host could not retry it; call 4 has no record."""
    storage = LocalStorage(str(tmp_path / "store"))
    job, old = "abcdef01-0000", time.time() - 3600  # long past timeout + grace: the host's death decides
    _dead_hosts_job(storage, job, calls=5, submitted=old)
    key = lambda call, attempt=0: protocol.result_key(PREFIX, job, call, attempt)  # noqa: E731
    _record(storage, key("000000"), job, "000000", 0, value="zero", written=old)
    _record(storage, key("000001"), job, "000001", 0, error=protocol.FAIL_WORKER_DIED, written=old)
    _record(storage, key("000001", 1), job, "000001", 1, value="one", written=old)
    _record(storage, key("000002"), job, "000002", 0, error=ValueError("two"), written=old)
    _record(storage, key("000003"), job, "000003", 0, error=protocol.FAIL_WORKER_DIED, written=old)
    with dask_wren.local_executor(storage_dir=storage.root, workers=1) as ex:
        futures = dask_wren.attach(job, executor=ex)
        dask_wren.wait(futures, timeout=30)
    assert futures[0].result() == "zero" and futures[1].result() == "one"
    assert [a["outcome"] for a in futures[1].stats["attempts"]] == ["worker_died: worker_died (made by the test)", "ok"]
    with pytest.raises(ValueError, match="two"):
        futures[2].result()
    with pytest.raises(dask_wren.WorkerDiedError) as died:
        futures[3].result()
    assert "did not run it again, nor does attach" in "\n".join(getattr(died.value, "__notes__", [str(died.value)]))
    with pytest.raises(dask_wren.LostCallError, match="its worker died with the host that submitted it"):
        futures[4].result()


def test_an_aws_jobs_missing_call_is_lost_once_nothing_was_heard_for_timeout_plus_grace(tmp_path):
    """A job of another machine: its liveness is unknown, so a call is lost only when no record came
    for the job's timeout + the lost-call grace since its latest sign of life (here long past)."""
    storage = LocalStorage(str(tmp_path / "store"))
    job = "abcdef02-0000"
    _dead_hosts_job(storage, job, calls=2, backend="aws", host="elsewhere", submitted=time.time() - 3600)
    _record(storage, protocol.result_key(PREFIX, job, "000000"), job, "000000", 0, value=0, written=time.time() - 3500)
    with dask_wren.local_executor(storage_dir=storage.root, workers=1) as ex:
        futures = dask_wren.attach(job, executor=ex)
        assert futures[0].result(timeout=30) == 0
        with pytest.raises(dask_wren.LostCallError, match=r"no record of it came within its timeout \(5 s\)"):
            futures[1].result(timeout=30)


def test_unknown_jobs_jobs_without_a_manifest_and_another_key_are_refused(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    with dask_wren.local_executor(storage_dir=storage.root, workers=1) as ex:
        with pytest.raises(dask_wren.WrenError, match="no job 'feedface-0000' under"):
            dask_wren.attach("feedface-0000", executor=ex)
        storage.put(protocol.func_key(PREFIX, "feedface-0001"), b"x")
        with pytest.raises(dask_wren.WrenError, match="has no manifest"):
            dask_wren.attach("feedface-0001", executor=ex)
        _dead_hosts_job(storage, "feedface-0002", calls=1, key_id="0123456789ab")
        with pytest.raises(dask_wren.ConfigError, match=r"DASK_WREN_SIGNING_KEY"):
            dask_wren.attach("feedface-0002", executor=ex)
        with pytest.raises(TypeError, match="not both"):
            dask_wren.attach("feedface-0002", executor=ex, workers=2)


def test_the_sweep_keeps_a_dead_hosts_young_and_attached_jobs(tmp_path):
    """``wren.dead-host-grace``: a dead host's job goes once submitted longer ago than the grace (its
    record with its last job), and at once without a manifest (the cancel marker its host kept after
    deleting the rest); a job this process attached stays whatever its age."""
    storage = LocalStorage(str(tmp_path / "store"))
    record = protocol.host_key(PREFIX, orphans.hostname(), DEAD_PID, 1.0, "abcdef03")
    storage.put(record, json.dumps({"started": time.time() - 7200, "cleanup": True}).encode())
    young, old, attached, marker = "abcdef03-0000", "abcdef03-0001", "abcdef03-0002", "abcdef03-0003"
    _dead_hosts_job(storage, young, calls=1)
    _dead_hosts_job(storage, old, calls=1, submitted=time.time() - 7200)
    _dead_hosts_job(storage, attached, calls=1, submitted=time.time() - 7200)
    storage.put(protocol.cancel_key(PREFIX, marker), protocol.cancel_marker(protocol.CANCEL_ALL))
    orphans.adopt(protocol.job_prefix(PREFIX, attached))
    found = [(f.kind, f.where) for f in orphans._dead_here(storage, PREFIX, 3600)]
    assert found == [("job", f"{PREFIX}/{old}/"), ("job", f"{PREFIX}/{marker}/")]
    orphans.remove(storage, orphans._dead_here(storage, PREFIX, 3600))
    assert job_objects(storage, young) and job_objects(storage, attached) and storage.exists(record)
    with orphans._swept_lock:
        orphans._adopted.discard(protocol.job_prefix(PREFIX, attached))
    orphans.remove(storage, orphans._dead_here(storage, PREFIX, 0))  # no grace: what #9 did
    assert [k for k, _ in storage.list(f"{PREFIX}/")] == []

