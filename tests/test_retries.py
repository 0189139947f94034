"""Retries and straggler backups (``dask_wren.attempts``): one mechanism, the host's, on both backends.

A function learns which run it is from marker files in a directory that host and workers share
(this machine): the first run of a call creates its marker and misbehaves, later runs see it.
"""

from __future__ import annotations

import os
import pickle
import signal
import time

import pytest
from conftest import gate, wait_until

import dask_wren
from dask_wren.attempts import RetryPolicy
from lambda_worker import protocol


class Transient(Exception):
    pass


def first_run(marker_dir: str, i: int | str) -> bool:
    """True on the first run of call ``i`` (across workers and attempts), False after."""
    try:
        os.close(os.open(os.path.join(marker_dir, f"ran-{i}"), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def runs(marker_dir: str) -> int:
    return len(os.listdir(marker_dir))


def flaky(args):
    """Misbehaves on its first run only, as ``how`` says; then returns ``i * i``."""
    i, how, marker_dir = args
    if how and first_run(marker_dir, i):
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "exit":
            os._exit(3)
        if how == "raise":
            raise Transient(f"call {i} failed once")
        if how == "hang":
            time.sleep(60)
    return i * i


def run_number(marker_dir: str, i: int) -> int:
    """Which run of call ``i`` this is (1, 2, ...), across workers and attempts."""
    n = 1
    while not first_run(marker_dir, f"{i}-{n}"):
        n += 1
    return n


def hang_then_die(args):
    """Call 3 hangs on its first run and its worker dies on the second; every other run returns."""
    i, marker_dir = args
    if i == 3:
        n = run_number(marker_dir, i)
        if n == 1:
            time.sleep(60)
        if n == 2:
            os._exit(3)
    return i * i


def always(args):
    how, = args
    if how == "exit":
        os._exit(3)
    raise Transient("every time")


@pytest.fixture
def markers(tmp_path):
    d = tmp_path / "markers"
    d.mkdir()
    return str(d)


def test_a_dead_worker_is_retried_and_its_attempts_are_listed(executor, markers):
    # On AWS nothing reports a dead worker: the call counts as lost at its timeout + lost-call-grace
    futures = executor.map(flaky, [(i, "kill" if i in (1, 4) else None, markers) for i in range(6)], timeout=3, backups=False)
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(6)]
    attempts = futures[1].stats["attempts"]
    assert [a["kind"] for a in attempts] == ["first", "retry"]
    assert attempts[0]["outcome"].startswith(("worker_died", "lost")) and attempts[1]["outcome"] == "ok"
    assert futures[0].stats["attempts"] == [
        {"attempt": 0, "kind": "first", "request_id": futures[0].stats["request_id_sent"], "outcome": "ok"}
    ]
    assert futures[1].key == protocol.result_key(executor.settings.prefix, futures[1].job_id, "000001", 1)


def test_the_final_error_names_every_attempt(local_executor):
    f = local_executor.map(always, [("exit",)], retries=2)[0]
    with pytest.raises(dask_wren.WorkerDiedError) as caught:
        f.result(timeout=60)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert [a["kind"] for a in f.stats["attempts"]] == ["first", "retry", "retry"]
    assert all(a["outcome"].startswith("worker_died") for a in f.stats["attempts"])
    if hasattr(caught.value, "add_note"):
        assert "#0 (first" in notes and "#1 (retry" in notes and "#2 (retry" in notes


def test_retries_zero_fails_at_the_first_failure(local_executor, markers):
    f = local_executor.map(flaky, [(0, "exit", markers)], retries=0)[0]
    with pytest.raises(dask_wren.WorkerDiedError):
        f.result(timeout=60)
    assert runs(markers) == 1 and len(f.stats["attempts"]) == 1


def test_the_functions_own_exception_is_retried_only_when_asked(local_executor, markers):
    f = local_executor.map(flaky, [(0, "raise", markers)])[0]
    with pytest.raises(Transient):
        f.result(timeout=60)
    assert len(f.stats["attempts"]) == 1
    g = local_executor.map(flaky, [(1, "raise", markers)], retry_on=(Transient,))[0]
    assert g.result(timeout=60) == 1
    assert [a["outcome"].split(":")[0] for a in g.stats["attempts"]] == ["exception", "ok"]


def test_a_timeout_is_retried_only_when_asked(local_executor, markers):
    f = local_executor.map(flaky, [(0, "hang", markers)], timeout=1, backups=False)[0]
    with pytest.raises(dask_wren.WrenTimeoutError):
        f.result(timeout=60)
    g = local_executor.map(flaky, [(1, "hang", markers)], timeout=1, retry_timeouts=True, backups=False)[0]
    assert g.result(timeout=60) == 1
    assert g.stats["attempts"][0]["outcome"].startswith("timeout")


def test_a_straggler_gets_a_backup_that_wins(executor, markers):
    # 20 quick calls give the job a median; call 3 hangs on its first run, so a backup replaces it
    futures = executor.map(flaky, [(i, "hang" if i == 3 else None, markers) for i in range(20)], timeout=90)
    assert [f.result(timeout=90) for f in futures] == [i * i for i in range(20)]
    kinds = [a["kind"] for a in futures[3].stats["attempts"]]
    assert kinds == ["first", "backup"]
    assert futures[3].stats["attempts"][1]["outcome"] == "ok"
    assert executor.attempts.launched["backup"] == 1


def test_a_backup_that_dies_is_owed_a_retry_when_the_straggler_then_times_out(local_executor, markers):
    # the backup's worker dies (retried) while the straggler still runs; the straggler then times
    # out (not retried on its own): the call still gets the run its dead backup was owed
    futures = local_executor.map(hang_then_die, [(i, markers) for i in range(20)], timeout=5)
    assert [f.result(timeout=90) for f in futures] == [i * i for i in range(20)]
    outcomes = [(a["kind"], a["outcome"].split(":")[0]) for a in futures[3].stats["attempts"]]
    assert outcomes == [("first", "timeout"), ("backup", "worker_died"), ("retry", "ok")]


def test_the_losing_attempt_on_lambda_is_stopped_by_the_cancel_marker(standin, markers):
    """The stand-in never stops a call for the host: the straggler that lost to its backup ends
    because its worker's watchdog reads the job's cancel marker."""
    settings = dict(standin.ensure_bucket().settings_overrides, cancel_poll_interval=0.2, timeout=60)
    with dask_wren.default_executor(**settings) as ex:
        futures = ex.map(flaky, [(i, "hang" if i == 3 else None, markers) for i in range(12)])
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(12)]
        assert [a["kind"] for a in futures[3].stats["attempts"]] == ["first", "backup"]
        original = standin.executions(job_id=futures[3].job_id, call_id="000003")
        assert original, "the stand-in ran no execution of the straggler"
        wait_until(lambda: all(e.outcome is not None for e in standin.executions(job_id=futures[3].job_id)), 10, "the losing attempt ends")


def test_backups_false_runs_no_backup(local_executor, markers):
    futures = local_executor.map(flaky, [(i, None, markers) for i in range(12)] + [(99, "hang", markers)], timeout=2, backups=False)
    with pytest.raises(dask_wren.WrenTimeoutError):
        futures[-1].result(timeout=60)
    assert local_executor.attempts.launched["backup"] == 0 and len(futures[-1].stats["attempts"]) == 1


def test_a_cancelled_call_is_not_retried(local_executor, markers):
    def wait_then_die(path):
        gate(path)
        os._exit(3)

    go = os.path.join(markers, "go")
    f = local_executor.call_async(wait_then_die, go)
    assert f.cancel()
    open(go, "w").close()
    local_executor.wait()
    assert f.cancelled() and local_executor.attempts.launched["retry"] == 0


def test_a_future_pickled_before_its_call_resolved_follows_every_attempt(local_executor, markers):
    """Loaded elsewhere (here: unpickled, so it reads storage itself), a future pickled while its
    call was pending resolves as its host's does: from the retry after a dead worker, from the
    backup that beat a straggler, and with the function's own exception, which is not retried."""
    items = [(i, {1: "kill", 3: "hang", 5: "raise"}.get(i), markers) for i in range(20)]
    futures = local_executor.map(flaky, items, timeout=90)
    detached = [pickle.loads(pickle.dumps(f)) for f in futures]
    assert all(d._detached for d in detached)
    for i in (1, 3, 0):
        assert detached[i].result(timeout=90) == i * i
        assert futures[i].result(timeout=90) == i * i
    with pytest.raises(Transient):
        detached[5].result(timeout=90)
    assert [a["kind"] for a in futures[1].stats["attempts"]] == ["first", "retry"]
    assert [a["kind"] for a in futures[3].stats["attempts"]] == ["first", "backup"]
    assert detached[1].key == futures[1].key and detached[3].key == futures[3].key  # the deciding attempts'


def test_a_pickled_future_waiting_on_a_running_call_lists_later_attempts_rarely(tmp_path):
    """Until its call's first record arrives, a loaded future reads that record on every look, but
    lists the later attempts (a LIST costs 12.5 GETs on S3) only after 1 s, then 2, 4 ... 30 s."""
    from dask_wren.futures import WrenFuture
    from dask_wren.testing.counting import CountingStorage
    from lambda_worker.storage.local import LocalStorage

    key = protocol.result_key("p", "job-0000", "000000")
    detached = pickle.loads(pickle.dumps(WrenFuture(LocalStorage(str(tmp_path)), key, "job-0000", "000000", None)))
    detached.storage = store = CountingStorage(detached.storage)
    for _ in range(100):
        assert not detached.done()
    assert store.counts["get"] == 100 and store.counts["list"] == 0
    detached._next_list = 0  # as if the first second had passed
    assert not detached.done() and not detached.done()
    assert store.counts["list"] == 1 and detached._next_list - time.monotonic() > 0.5


def test_retry_policy():
    policy = RetryPolicy(retry_on=(Transient,))
    for kind in (protocol.FAIL_WORKER_DIED, protocol.FAIL_LOST, protocol.FAIL_INVOKE, protocol.FAIL_STORAGE, protocol.FAIL_HANDLER):
        assert policy.retried(kind, None)
    for kind in (protocol.FAIL_SETUP, protocol.FAIL_VERSION, protocol.FAIL_BACKEND, protocol.FAIL_RESULT, protocol.FAIL_TIMEOUT, protocol.FAIL_EXIT):
        assert not policy.retried(kind, None)
    assert policy.retried("exception", Transient()) and not policy.retried("exception", ValueError())
    assert RetryPolicy(retry_timeouts=True).retried(protocol.FAIL_TIMEOUT, None)
    delays = [RetryPolicy(backoff=1, backoff_max=5).delay(n) for n in range(6) for _ in range(50)]
    assert all(0.5 <= d <= 5 for d in delays) and len(set(delays)) > 1  # jittered, capped
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(TypeError):
        RetryPolicy(retry_on=("ValueError",))
