"""No orphans: a host killed mid-map leaves nothing behind once the next executor starts after
``wren.dead-host-grace`` (or ``dask-wren clean`` runs); jobs of live hosts and of other machines are
never touched.  (The grace itself, which keeps a dead host's job for ``dask_wren.attach``, is
tested in test_attach.py.)"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import dask.config
import pytest
from conftest import wait_for_path, wait_until

import dask_wren
from dask_wren import cli, orphans
from lambda_worker import protocol
from lambda_worker.storage.local import LocalStorage

DEAD_PID = 2**30  # above any pid_max: no such process

_HOST = textwrap.dedent("""
    import json, os, sys, time
    import dask_wren

    store, where = sys.argv[1:]

    def sleeper(i):
        open(os.path.join(where, f"started-{i}"), "w").close()
        time.sleep(60)

    ex = dask_wren.local_executor(storage_dir=store, workers=2)
    futures = ex.map(sleeper, range(4))
    print(json.dumps({"job": futures[0].job_id, "workers": ex.backend.worker_pids()}), flush=True)
    ex.get_result(futures)
""")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, only not reaped yet
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def killed_host(tmp_path):
    """A host process SIGKILLed mid-map: its job id, its log folder, its workers' pids."""
    store = tmp_path / "store"
    host = subprocess.Popen([sys.executable, "-c", _HOST, str(store), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(host.stdout.readline())
        wait_for_path(tmp_path / "started-0")
        (logs,) = glob.glob(os.path.join(tempfile.gettempdir(), f"{orphans.LOG_DIR_PREFIX}{host.pid}-*"))
    finally:
        host.kill()
        host.wait()
    return LocalStorage(str(store)), info["job"], logs, info["workers"]


def job_objects(storage, job_id):
    return [k for k, _ in storage.list(protocol.job_prefix("dask-wren", job_id))]


def host_records(storage):
    return [k for k, _ in storage.list(protocol.hosts_prefix("dask-wren"))]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers end with their host on Linux")
def test_a_killed_hosts_leftovers_go_at_the_next_executor_start(tmp_path):
    storage, job_id, logs, workers = killed_host(tmp_path)
    wait_until(lambda: not any(alive(p) for p in workers), 5, "workers outlived their host")
    assert job_objects(storage, job_id) and host_records(storage)  # (any process's sweep may take the logs)
    with dask_wren.local_executor(storage_dir=storage.root, workers=1, dead_host_grace=0):  # the job is past its grace
        # (the sweep runs in the background and removes the record last)
        wait_until(lambda: not job_objects(storage, job_id) and not os.path.exists(logs) and not host_records(storage), 30, "leftovers not swept")
    assert not os.path.exists(os.path.join(storage.root, "dask-wren", job_id))


def test_dask_wren_clean_lists_then_removes_a_killed_hosts_leftovers(tmp_path, capsys):
    storage, job_id, logs, _ = killed_host(tmp_path)
    with dask.config.set({"wren.storage.local-dir": storage.root}):
        assert cli.main(["clean"]) == 0  # a dry run unless --yes
        out = capsys.readouterr().out
        assert "would remove" in out and f"dask-wren/{job_id}/" in out and "clean --yes" in out
        assert job_objects(storage, job_id)
        assert cli.main(["clean", "--yes"]) == 0
    assert job_objects(storage, job_id) == [] and host_records(storage) == [] and not os.path.exists(logs)


def test_live_hosts_and_other_machines_are_left_alone(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    prefix = "dask-wren"
    mine = orphans.HostRecord(storage, prefix, "aaaaaaaa", cleanup=True)  # this process: alive
    mine.write()
    storage.put(f"{prefix}/aaaaaaaa-0000/func.pkl", b"x")
    # a dead pid on another machine, and one here whose executor keeps its jobs (cleanup off)
    other = protocol.host_key(prefix, "elsewhere", DEAD_PID, 1.0, "bbbbbbbb")
    storage.put(other, json.dumps({"hostname": "elsewhere", "started": time.time(), "cleanup": True}).encode())
    storage.put(f"{prefix}/bbbbbbbb-0000/func.pkl", b"x")
    kept = protocol.host_key(prefix, orphans.hostname(), DEAD_PID, 1.0, "cccccccc")
    storage.put(kept, json.dumps({"started": time.time(), "cleanup": False}).encode())
    storage.put(f"{prefix}/cccccccc-0000/func.pkl", b"x")
    # a job no record claims: left by a host that finished (or an older version)
    storage.put(f"{prefix}/dddddddd-0000/r/0000/000000", b"x")
    found = orphans.find_leftovers(storage, prefix)
    assert [f.where for f in found if f.kind != "logs"] == [f"{prefix}/dddddddd-0000/"]
    old = orphans.find_leftovers(storage, prefix, older_than=-1)  # everything counts as old
    assert {f.where for f in old if f.kind == "job"} == {f"{prefix}/{e}-0000/" for e in ("aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd")}


def test_an_executor_leaves_no_record_behind(tmp_path):
    with dask_wren.local_executor(storage_dir=str(tmp_path / "store"), workers=1) as ex:
        assert ex.map(abs, [-1]) and ex.get_result() == [1]
        assert len(host_records(ex.storage)) == 1
    assert host_records(ex.storage) == [] and [k for k, _ in ex.storage.list("dask-wren/")] == []


def test_a_cancelled_jobs_marker_outlives_its_executor_until_the_sweep(tmp_path):
    with dask_wren.local_executor(storage_dir=str(tmp_path / "store"), workers=1) as ex:
        future = ex.call_async(time.sleep, 30)
        future.cancel()
    marker = protocol.cancel_key("dask-wren", future.job_id)
    assert ex.storage.exists(marker) and len(host_records(ex.storage)) == 1  # this process lives
    assert [f for f in orphans.find_leftovers(ex.storage, "dask-wren") if f.kind != "logs"] == []


def test_a_dead_hosts_log_folder_with_a_reused_pid_is_found(tmp_path):
    folder = tmp_path / f"{orphans.LOG_DIR_PREFIX}{os.getpid()}-abc"
    folder.mkdir()
    os.utime(folder, (1.0, 1.0))  # changed long before this process started: its pid was reused
    assert [f.where for f in orphans.dead_log_dirs(str(tmp_path))] == [str(folder)]
    os.utime(folder)
    assert orphans.dead_log_dirs(str(tmp_path)) == []
    (tmp_path / f"{orphans.LOG_DIR_PREFIX}{os.getpid()}").mkdir()  # no pid-dash form: not ours
    assert orphans.dead_log_dirs(str(tmp_path)) == []
