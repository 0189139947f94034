"""``dask-wren jobs / job / logs / clean`` and ``dask_wren.jobs``: a job read back from storage alone.

One small job on the local backend with cleanup off (a call that prints, one that raises, one
whose worker dies on its first attempt and succeeds on its retry), then the CLI's output."""

import json
import os
import shutil
import sys

import dask
import pytest

import dask_wren
from dask_wren import cli, jobs
from dask_wren.signing import local_key
from lambda_worker import protocol
from lambda_worker.signing import SigningKey
from lambda_worker.storage.local import LocalStorage

PREFIX = "dask-wren"


def work(arg):
    i, marker = arg
    if i == 1:
        print("hello from call 1")
        print("a warning from call 1", file=sys.stderr)
    if i == 2:
        print("about to fail")
        raise ValueError("bad input 2")
    if i == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)  # the worker dies: the host retries the call
    return i


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    """(store directory, job id) of a finished 4-call job whose objects stay (cleanup off)."""
    root = tmp_path_factory.mktemp("jobs")
    store = str(root / "store")
    with dask_wren.default_executor(storage_dir=store, workers=2, cleanup=False, retry_backoff=0.01, backups=False) as ex:
        futures = ex.map(work, [(i, str(root / "died-once")) for i in range(4)])
        dask_wren.wait(futures)
    assert [f.exception() is None for f in futures] == [True, True, False, True]
    return store, futures[0].job_id


def run(capsys, store, *argv):
    with dask.config.set({"wren.storage.local-dir": store}):
        code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_manifest_says_who_submitted_what(finished_job):
    store, job_id = finished_job
    manifest = jobs.read_manifest(LocalStorage(store), PREFIX, job_id)
    assert {k: manifest[k] for k in ("v", "job_id", "calls", "chunksize", "backend", "function", "retries", "invocations")} == {
        "v": 1, "job_id": job_id, "calls": 4, "chunksize": 1, "backend": "local", "function": f"{work.__module__}.work",
        "retries": 2, "invocations": 4,
    }
    assert manifest["pid"] == os.getpid() and manifest["host_requests"] == {"put": 3}  # function, arguments, manifest
    assert manifest["region"] is None and manifest["function_name"] is None and manifest["memory_mb"] == 2048


def test_load_job_reads_every_attempt(finished_job):
    store, job_id = finished_job
    job = jobs.load_job(LocalStorage(store), PREFIX, job_id, local_key())
    assert (job.calls, job.done, job.failed, job.missing, job.host_alive) == (4, 3, 1, 0, True)
    assert [h["status"] for h in job.records["000003"]] == ["failed", "ok"]  # the dead worker's record, then the retry's
    assert job.final("000003")["attempt"] == 1 and job.final("000002")["error"]["message"] == "bad input 2"
    assert [(h["call_id"], h["attempt"]) for h in job.failures()] == [("000002", 0), ("000003", 0)]
    assert job.bytes == sum(size for _, size in LocalStorage(store).list(f"{PREFIX}/{job_id}/"))


def test_jobs_lists_the_job(finished_job, capsys):
    store, job_id = finished_job
    code, out, _ = run(capsys, store, "jobs")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["JOB", "SUBMITTED", "CALLS", "DONE", "FAILED", "PENDING", "BYTES", "COST", "HOST", "FUNCTION"]
    assert row.startswith(job_id) and row.split()[3:7] == ["4", "3", "1", "0"]
    assert f"alive (pid {os.getpid()})" in row and row.endswith(f"{work.__module__}.work")
    code, out, _ = run(capsys, store, "jobs", "--json")
    (listed,) = json.loads(out)
    assert (listed["job_id"], listed["done"], listed["failed"], listed["host_alive"]) == (job_id, 3, 1, True)


def test_job_shows_the_summary_and_every_failed_attempt(finished_job, capsys):
    store, job_id = finished_job
    code, out, _ = run(capsys, store, "job", job_id[:6])  # the start of an id will do
    assert code == 0
    assert f"job             {job_id}" in out
    assert "calls           4: 3 done, 1 failed, 0 without a record" in out
    assert "5 recorded, 1 of them retries or backups" in out
    assert "call 000002 attempt 0: error: ValueError: bad input 2" in out
    assert "      ValueError: bad input 2\n" in out and ", in work\n" in out  # the traceback's last lines
    assert "call 000003 attempt 0 (retried: attempt 1 succeeded): failed (worker_died): the worker process" in out
    failures = json.loads(run(capsys, store, "job", job_id, "--json")[1])["failures"]
    assert [(f["call_id"], f["error"]["kind"]) for f in failures] == [("000002", "exception"), ("000003", "worker_died")]


def test_logs_prints_the_tails_and_where_the_full_log_is(finished_job, capsys):
    store, job_id = finished_job
    code, out, _ = run(capsys, store, "logs", job_id)
    assert code == 0 and "hello from call 1" in out and "about to fail" in out
    code, out, _ = run(capsys, store, "logs", job_id, "1")
    assert code == 0
    assert "call 000001 attempt 0 (request " in out and "): ok\n" in out
    assert "  --- stdout\n    hello from call 1\n  --- stderr\n    a warning from call 1\n" in out
    (location,) = [line for line in out.splitlines() if "full log:" in line]
    assert os.path.basename(location.split("full log: ")[1].split(" (")[0]).startswith("worker-")
    assert "dask-wren-workers-" in location


def test_an_unknown_job_says_where_it_looked(finished_job, capsys):
    store, _ = finished_job
    code, out, err = run(capsys, store, "job", "nosuchjob")
    assert code == 1 and out == ""
    assert err.startswith(f"dask-wren: error: no job 'nosuchjob' in LocalStorage('{store}') under dask-wren/")
    assert "`dask-wren jobs`" in err and err.count("\n") == 1


def test_a_record_that_does_not_verify_is_reported_never_unpickled(finished_job, tmp_path, capsys):
    store, job_id = finished_job
    copy = str(tmp_path / "store")
    shutil.copytree(store, copy)
    forged = protocol.result_key(PREFIX, job_id, "000000", 1)
    header = {"job_id": job_id, "call_id": "000000", "attempt": 1, "status": "error", "error": {"kind": "exception", "message": "forged"}}
    LocalStorage(copy).put(forged, protocol.encode_result(header, b"not a pickle", key=SigningKey.generate(), storage_key=forged))
    code, out, _ = run(capsys, copy, "job", job_id)
    assert code == 0 and "forged" not in out
    assert "1 record(s) (call 000000.1): does not verify with this process's signing key" in out
    code, out, _ = run(capsys, copy, "job", job_id, "--unverified")
    assert "UNVERIFIED call 000000 attempt 1: error: forged" in out


def test_a_job_without_manifest_still_lists(finished_job, tmp_path, capsys):
    store, job_id = finished_job
    copy = str(tmp_path / "store")
    shutil.copytree(store, copy)
    LocalStorage(copy).delete([protocol.manifest_key(PREFIX, job_id)])
    code, out, _ = run(capsys, copy, "jobs")
    row = out.splitlines()[1]
    assert code == 0 and row.split()[1:6] == ["-", "4", "3", "1", "0"]  # calls: those with records
    assert f"alive (pid {os.getpid()})" in row  # from the executor's host record
    assert "without a manifest" in out


def test_clean_leaves_a_live_hosts_kept_job(finished_job, capsys):
    store, job_id = finished_job
    code, out, _ = run(capsys, store, "clean")  # (other dead hosts' log folders in the temp directory may show)
    assert code == 0 and job_id not in out and "0 job, 0 record" in out


def test_a_lambda_records_log_location_is_its_cloudwatch_stream():
    header = {"log": {"group": "/aws/lambda/dask-wren", "stream": "2026/12/02/[$LATEST]0123abcd"}}
    lines = cli._log_location(header, "eu-west-1")
    assert lines[0] == "full log: CloudWatch log group /aws/lambda/dask-wren, stream 2026/12/02/[$LATEST]0123abcd"
    assert lines[1].split() == [
        "aws", "logs", "tail", "/aws/lambda/dask-wren", "--log-stream-names", "'2026/12/02/[$LATEST]0123abcd'",
        "--since", "1d", "--region", "eu-west-1",
    ]


def say(i):
    print(f"hello from lambda call {i}")
    return i


def test_an_aws_job_through_the_standin(standin, capsys):
    """The manifest names the function and region; the record, where its invocation logged."""
    standin.ensure_bucket()
    with dask.config.set(standin.dask_config):
        with dask_wren.default_executor(cleanup=False) as ex:
            futures = ex.map(say, range(2))
            assert dask_wren.get_all_results(futures) == [0, 1]
        job_id = futures[0].job_id
        try:
            assert cli.main(["jobs"]) == 0
            (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(job_id)]
            (price,) = [cell for cell in row.split() if cell.startswith("$")]
            assert row.split()[3:7] == ["2", "2", "0", "0"] and not price.endswith("*")  # priced as Lambda, not "would cost"
            assert cli.main(["job", job_id]) == 0
            out = capsys.readouterr().out
            assert f"backend         aws, {standin.function_name}, {standin.region}" in out
            assert cli.main(["logs", job_id, "1"]) == 0
            out = capsys.readouterr().out
            assert "    hello from lambda call 1\n" in out and "full log: " in out  # the stand-in's worker logs to a file
        finally:  # the stand-in's bucket is shared by the session's tests: remove the job and its host record
            ex.storage.delete_prefix(protocol.job_prefix(ex.settings.prefix, job_id))
            hosts = ex.storage.list(protocol.hosts_prefix(ex.settings.prefix))
            ex.storage.delete([k for k, _ in hosts if k.endswith(f"-{ex.executor_id}.json")])
