"""The timeline plot (``dask_wren.plot``, ``dask-wren plot``): the figure's content, from live futures
and from a job's records in storage alone."""

import os
import sys

import dask.config
import pytest
from conftest import wait_until

import dask_wren
from dask_wren import cli, jobs
from dask_wren.config import Settings, make_storage
from dask_wren.plot import Row, draw, plot, rows
from dask_wren.signing import host_key

WORKERS = 2
CALLS = 12


def overlap(item):
    """Run remotely (``item``: call index, folder): say this call started, then wait until another one
    has.  So ``WORKERS`` (2) calls run at once at some point, whichever worker takes which call: a call
    queued behind a waiting one on the same worker does not block it, the other worker's call releases both."""
    i, folder = item
    open(os.path.join(folder, f"started-{i}"), "w").close()
    wait_until(lambda: len(os.listdir(folder)) >= WORKERS, what=f"call {i}: another call to start")
    return i


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A finished job of ``CALLS`` calls on ``WORKERS`` local workers, left in storage (cleanup off)."""
    root = tmp_path_factory.mktemp("plot")
    folder = root / "started"
    folder.mkdir()
    settings = {"storage_dir": str(root / "store"), "workers": WORKERS, "cleanup": False}
    with dask_wren.default_executor(timeout=60, **settings) as ex:
        futures = ex.map(overlap, [(i, str(folder)) for i in range(CALLS)], backups=False)
        assert dask_wren.get_all_results(futures) == list(range(CALLS))
    return futures, Settings.from_config(**settings)


def artists(fig, gid):
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def check_content(fig, futures):
    """One span per call, the running-calls curve peaks at the worker count, the histogram holds
    every call, and the cold starts marked are the records' cold starts."""
    for gid in ("waiting", "setup", "function"):
        (spans,) = artists(fig, gid)
        segments = spans.get_segments()
        assert len(segments) == CALLS, gid
        assert sorted(int(s[0][1]) for s in segments) == list(range(CALLS)), gid  # one per call's row
        assert all(s[0][0] <= s[1][0] for s in segments), gid
    (running,) = artists(fig, "running")
    counts = list(running.get_ydata())
    assert max(counts) == WORKERS
    assert counts[0] == counts[-1] == 0
    assert sum(p.get_height() for p in artists(fig, "durations")) == CALLS
    (cold,) = artists(fig, "cold")
    assert len(cold.get_offsets()) == sum(bool(f.stats["worker_cold"]) for f in futures)
    (failed,) = artists(fig, "failed")
    assert len(failed.get_offsets()) == 0


def test_plot_of_live_futures(job, tmp_path):
    futures, _ = job
    fig = plot(futures, tmp_path / "job.png")
    check_content(fig, futures)
    (seen,) = artists(fig, "seen")
    assert len(seen.get_offsets()) == CALLS
    assert (tmp_path / "job.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "different clocks on AWS" in " ".join(t.get_text() for t in fig.texts)


def test_plot_of_a_job_id_reads_storage_alone(job, tmp_path):
    futures, settings = job
    fig = plot(futures[0].job_id, tmp_path / "job.svg", settings=settings)
    check_content(fig, futures)
    assert artists(fig, "seen") == []  # the host's "seen" times live in the host only
    assert (tmp_path / "job.svg").read_text().lstrip().startswith("<?xml")


def test_cli_plot(job, tmp_path, capsys):
    futures, settings = job
    out = tmp_path / "timeline.png"
    with dask.config.set({"wren.storage.local-dir": settings.storage_dir}):
        assert cli.main(["plot", futures[0].job_id[:6], "-o", str(out)]) == 0  # the start of an id will do
        assert out.read_bytes()[:4] == b"\x89PNG"
        assert cli.main(["plot", "no-such-job", "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "no-such-job" in err and f"{settings.prefix}/" in err and settings.storage_dir in err
    assert not (tmp_path / "x.png").exists()


def test_rows_without_records_and_failures():
    """A call without a record yet is a row with nothing to draw; a failed call is marked."""
    ran = dict(submitted=10.0, started=10.5, setup_done=10.6, call_start=10.6, result_seen=None)
    fig = draw([
        Row("000000", **ran, call_end=11.0, result_written=11.1, cold=True, status="ok"),
        Row("000001", **ran, call_end=10.9, result_written=11.0, cold=False, status="error"),
        Row("000002", 10.0, None, None, None, None, None, None, cold=False, status=None),
    ], "t")
    (function,) = artists(fig, "function")
    assert len(function.get_segments()) == 2
    (failed,) = artists(fig, "failed")
    assert [tuple(o) for o in failed.get_offsets()] == [(pytest.approx(1.0), 1)]
    (cold,) = artists(fig, "cold")
    assert [tuple(o) for o in cold.get_offsets()] == [(pytest.approx(0.5), 0)]
    (running,) = artists(fig, "running")
    assert max(running.get_ydata()) == 2


def test_futures_of_two_jobs_get_a_line_each():
    """Call ids repeat across jobs (each job's first call is 000000)."""
    row = Row("000000", 0.0, 0.1, 0.2, 0.2, 0.5, 0.6, None, cold=False, status="ok")
    fig = draw([row, row])
    (function,) = artists(fig, "function")
    assert sorted(s[0][1] for s in function.get_segments()) == [0, 1]


def test_the_figure_shows_itself_in_notebooks_without_pyplot():
    """IPython displays an object's ``_repr_png_``; the figure is not in pyplot's registry, so nothing
    else shows it again when the cell ends."""
    fig = draw([Row("000000", 0.0, 0.1, 0.2, 0.2, 0.5, 0.6, None, cold=True, status="ok")])
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'dask-wren\[plot\]'"):
        plot([])


def test_rows_of_a_stored_job_and_of_its_futures_agree(job):
    futures, settings = job
    stored = rows(jobs.load_job(make_storage(settings), settings.prefix, futures[0].job_id, host_key(settings)))
    live = rows(futures)
    assert [r.call_id for r in stored] == [f.call_id for f in futures]
    worker_side = [(r.call_id, r.started, r.setup_done, r.call_start, r.call_end, r.result_written, r.cold, r.status)
                   for r in live]
    assert [(r.call_id, r.started, r.setup_done, r.call_start, r.call_end, r.result_written, r.cold, r.status)
            for r in stored] == worker_side


def test_plot_of_an_aws_job_id_reads_s3_alone(standin):
    """Through the stand-in: records in S3, verified with the deployment's key (wren.aws.signing-key)."""
    settings = dict(standin.ensure_bucket().settings_overrides, cleanup=False)
    with dask_wren.default_executor(timeout=60, **settings) as ex:
        futures = ex.map(abs, range(-4, 0))
        dask_wren.get_all_results(futures)
    config = Settings.from_config(**settings)
    storage = make_storage(config)
    try:
        fig = plot(futures[0].job_id, settings=config)
    finally:  # the stand-in's bucket is shared by the session's tests: remove the job and its host record
        storage.delete_prefix(f"{config.prefix}/{futures[0].job_id}/")
        executor_id = futures[0].job_id.split("-")[0]
        storage.delete([k for k, _ in storage.list(f"{config.prefix}/hosts/") if k.endswith(f"-{executor_id}.json")])
    (function,) = artists(fig, "function")
    assert len(function.get_segments()) == len(futures)
    (cold,) = artists(fig, "cold")
    assert len(cold.get_offsets()) == sum(bool(f.stats["worker_cold"]) for f in futures)
    assert "aws" in fig.axes[0].get_title()


def test_another_attempt_of_a_call_is_drawn_beside_its_final_run():
    """A retried call's earlier run is an orange span on its row, and it counts as running."""
    fig = draw([
        Row("000000", 0.0, 0.1, 0.2, 0.2, 0.5, 0.6, None, cold=False, status="ok"),
        Row("000001", 0.0, 1.1, 1.2, 1.2, 1.5, 1.6, None, cold=False, status="ok", earlier=((0.3, 0.9),)),
    ])
    (earlier,) = artists(fig, "earlier")
    assert [(tuple(a), tuple(b)) for a, b in earlier.get_segments()] == [((pytest.approx(0.3), 1), (pytest.approx(0.9), 1))]
    (running,) = artists(fig, "running")
    assert max(running.get_ydata()) == 2  # 0.3-0.5: call 0's run and call 1's first
    assert sum(p.get_height() for p in artists(fig, "durations")) == 2  # final runs only


class Flaky(Exception):
    pass


def fails_first(item):
    """Run remotely: the first run of call 1 raises (its marker file says a later run is not the first)."""
    i, folder = item
    marker = os.path.join(folder, f"ran-{i}")
    if i == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        raise Flaky("first run")
    return i


def test_a_retried_call_shows_both_runs_from_futures_and_from_storage(tmp_path):
    settings = {"storage_dir": str(tmp_path / "store"), "workers": 1, "cleanup": False, "retry_backoff": 0}
    with dask_wren.default_executor(**settings) as ex:
        futures = ex.map(fails_first, [(i, str(tmp_path)) for i in range(3)], retry_on=(Flaky,))
        assert dask_wren.get_all_results(futures) == [0, 1, 2]
    config = Settings.from_config(**settings)
    live = rows(futures)
    stored = rows(jobs.load_job(make_storage(config), config.prefix, futures[0].job_id, host_key(config)))
    assert [len(r.earlier) for r in live] == [len(r.earlier) for r in stored] == [0, 1, 0]
    assert live[1].earlier == stored[1].earlier
    (start, end), = live[1].earlier
    assert start <= end <= live[1].call_start  # the failed run came before the one that counted
    (earlier,) = artists(plot(futures), "earlier")
    assert len(earlier.get_segments()) == 1
