"""The seed's timeline plot: when each call of a job was submitted, started, set up, ran and was seen.

The rows come from live futures (``future.stats``) or from a job's result records in storage alone
(``jobs.load_job``), so a job whose host is gone can still be drawn (``dask-wren plot JOB``).  Both
sources carry the same timing keys (the handler's ``timings`` plus ``host_submitted``), and one
function, ``rows``, turns either into ``Row``s; the drawing code sees rows only.

matplotlib is an optional dependency (``pip install dask-wren[plot]``).  The figure is made without
pyplot, so drawing many jobs keeps no figures alive in pyplot's registry.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dask_wren import jobs, signing
from dask_wren.attempts import ran_span
from dask_wren.config import Settings, make_storage
from dask_wren.errors import IntegrityError
from lambda_worker.protocol import STATUS_OK
from lambda_worker.storage import Storage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dask_wren.futures import WrenFuture

__all__ = ["Row", "draw", "plot", "rows"]

logger = logging.getLogger("dask_wren")

_COLD = "tab:purple"  # a cold start's marker and the line that led to it
#: Said in every figure: on AWS each worker's clock is its own, so host-to-worker gaps are approximate.
CLOCK_NOTE = (
    "Seconds since the first submission. Host times (submitted, result seen) and worker times come from "
    "different clocks on AWS: gaps between them are approximate there."
)


@dataclass(frozen=True)
class Row:
    """One call's times (``time.time()`` seconds; ``None`` where unknown) and outcome."""

    call_id: str
    submitted: float | None  # host_submitted: the host sent the call
    started: float | None  # worker_invoked: the worker's invocation began (after a cold start's init)
    setup_done: float | None  # function and argument loaded
    call_start: float | None
    call_end: float | None
    result_written: float | None  # the worker wrote the result record
    result_seen: float | None  # the host saw it (live futures only)
    cold: bool  # the first invocation of its execution environment
    status: str | None  # "ok", "error", "failed"; None: no record (yet)
    #: when the call's other attempts ran their function (a failure that was retried, a losing
    #: straggler or backup), from the records the host read or storage holds
    earlier: tuple[tuple[float, float], ...] = ()


def _row(
    call_id: str, times: Mapping[str, Any], status: str | None, submitted: float | None = None,
    earlier: Iterable[Iterable[float]] = (),
) -> Row:
    """A row from a mapping with the handler's timing keys (a future's stats, a record's timings)."""
    return Row(
        call_id=call_id,
        submitted=times.get("host_submitted", submitted),
        started=times.get("worker_invoked"),
        setup_done=times.get("worker_setup_done"),
        call_start=times.get("worker_call_start"),
        call_end=times.get("worker_call_end"),
        result_written=times.get("worker_result_write"),
        result_seen=times.get("host_result_seen"),
        cold=bool(times.get("worker_cold")),
        status=status,
        earlier=tuple(sorted(tuple(span) for span in earlier)),  # type: ignore[misc]
    )


def rows(source: Iterable[WrenFuture] | jobs.Job) -> list[Row]:
    """One row per call of ``source``: live futures, or a job read from storage (its final attempts)."""
    if isinstance(source, jobs.Job):
        submitted = (source.manifest or {}).get("submitted")
        out = []
        for call_id in source.call_ids:
            header = source.final(call_id)
            if header is None:
                out.append(_row(call_id, {}, None, submitted))
                continue
            others = (ran_span(h.get("timings") or {}) for h in source.records[call_id] if h is not header)
            out.append(_row(call_id, header.get("timings", {}), header.get("status"), submitted, filter(None, others)))
        return out
    return [_row(f.call_id, f.stats, (f.header or {}).get("status"), None, f.stats.get("earlier_runs", ())) for f in source]


def _running(spans: list[tuple[float, float]]) -> tuple[list[float], list[int]]:
    """The step curve of how many spans are open: at ``times[i]`` the count becomes ``counts[i]``.
    A span that ends when another starts does not overlap it (ends sort first)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    times, counts, n = [], [], 0
    for t, delta in events:
        n += delta
        if times and times[-1] == t:
            counts[-1] = n
        else:
            times.append(t)
            counts.append(n)
    return times, counts


def _matplotlib_figure() -> type[Figure]:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ImportError(
            "dask_wren.plot needs matplotlib, an optional dependency: pip install 'dask-wren[plot]'"
        ) from None
    return _figure_class()


@functools.cache
def _figure_class() -> type[Figure]:
    from matplotlib.figure import Figure

    class TimelineFigure(Figure):
        """A figure made without pyplot that still shows itself in a notebook: IPython asks it for a PNG
        (a pyplot figure would be shown a second time when the cell ends)."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=100)
            return buffer.getvalue()

    return TimelineFigure


def draw(call_rows: list[Row], title: str = "") -> Figure:
    """The figure of ``call_rows``: a timeline (one line per call, a call's other attempts beside
    its final one), the functions running over time (every attempt's), and a histogram of the
    final attempts' durations.  Artists carry gids (``waiting``, ``setup``, ``function``,
    ``earlier``, ``cold``, ``failed``, ``seen``, ``running``, ``durations``) so their content can be
    checked."""
    figure_class = _matplotlib_figure()
    from matplotlib.lines import Line2D

    known = [r.submitted for r in call_rows if r.submitted is not None] or [
        r.started for r in call_rows if r.started is not None
    ]
    t0 = min(known, default=0.0)

    def rel(values: Iterable[float | None]) -> list[float]:
        return [v - t0 for v in values]  # type: ignore[operator]

    fig = figure_class(figsize=(10, 9), layout="constrained")
    timeline, running, hist = fig.subplots(3, 1, height_ratios=(4, 1.4, 1.4))
    def where(keep: Callable[[Row], Any]) -> tuple[list[int], list[Row]]:
        """The line numbers and rows of the rows ``keep`` accepts (by position: call ids repeat across jobs)."""
        picked = [(i, r) for i, r in enumerate(call_rows) if keep(r)]
        return [i for i, _ in picked], [r for _, r in picked]

    ys, rs = where(lambda r: r.submitted is not None and r.started is not None)
    timeline.hlines(
        ys, rel(r.submitted for r in rs), rel(r.started for r in rs), colors=[_COLD if r.cold else "0.75" for r in rs],
        lw=1, label="submitted to started (queue; purple: a cold start)", gid="waiting",
    )
    ys, rs = where(lambda r: r.started is not None and r.setup_done is not None)
    timeline.hlines(
        ys, rel(r.started for r in rs), rel(r.setup_done for r in rs), color="tab:green", lw=1.5,
        label="setup (function and argument loaded)", gid="setup",
    )
    ys, ran = where(lambda r: r.call_start is not None and r.call_end is not None)
    timeline.hlines(
        ys, rel(r.call_start for r in ran), rel(r.call_end for r in ran),
        colors=["tab:blue" if r.status == STATUS_OK else "tab:red" for r in ran], lw=2, label="function running",
        gid="function",
    )
    spans = [(i, span) for i, r in enumerate(call_rows) for span in r.earlier]
    if spans:
        timeline.hlines(
            [i for i, _ in spans], rel(a for _, (a, _) in spans), rel(b for _, (_, b) in spans), color="tab:orange",
            lw=2, label=f"another attempt of the call ({len(spans)}: retried, or lost to a backup)", gid="earlier",
        )
    ys, rs = where(lambda r: r.cold and r.started is not None)
    timeline.scatter(
        rel(r.started for r in rs), ys, marker=">", s=24, color=_COLD, zorder=3, label=f"cold start ({len(rs)})",
        gid="cold",
    )
    ys, rs = where(lambda r: r.status not in (None, STATUS_OK) and (r.result_seen or r.result_written))
    timeline.scatter(
        rel(r.result_seen or r.result_written for r in rs), ys, marker="x", s=16, color="tab:red", zorder=3,
        label=f"failed ({len(rs)})" if rs else "_failed", gid="failed",
    )
    ys, rs = where(lambda r: r.result_seen is not None)
    if rs:
        timeline.scatter(
            rel(r.result_seen for r in rs), ys, marker=".", s=4, color="k", zorder=3, label="result seen by the host",
            gid="seen",
        )
    timeline.set_ylim(len(call_rows) - 0.5, -0.5)
    timeline.set_ylabel("call")
    handles, labels = timeline.get_legend_handles_labels()  # the waiting lines' entry in grey, not a cold one's colour
    handles = [Line2D([], [], color="0.75", lw=1) if h.get_gid() == "waiting" else h for h in handles]
    timeline.legend(handles, labels, loc="upper right", fontsize="small")
    timeline.set_title(title)

    times, counts = _running([(r.call_start, r.call_end) for r in ran] + [span for _, span in spans])  # type: ignore[misc]
    running.step(rel([t0] + times), [0] + counts, where="post", color="tab:blue", gid="running")
    running.set_ylabel("calls running")
    running.set_ylim(0, max(counts, default=0) + 1)
    running.yaxis.get_major_locator().set_params(integer=True)
    running.sharex(timeline)
    running.set_xlabel("seconds since the first submission")

    durations = [r.call_end - r.call_start for r in ran]  # type: ignore[operator]
    # numpy's "auto" bins fail on durations that differ by a rounding error only: one bin then
    spread = max(durations) - min(durations) if durations else 0.0
    hist.hist(durations, bins="auto" if spread > 1e-9 else 1, color="tab:blue", gid="durations")
    hist.set_xlabel("function duration (s)")
    hist.set_ylabel("calls")
    fig.text(0.01, 0.0, CLOCK_NOTE, fontsize="x-small", color="0.35", va="bottom", wrap=True)
    fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))
    return fig


def _title(call_rows: list[Row], jobs_named: list[str], manifest: Mapping[str, Any] | None = None) -> str:
    cold = sum(r.cold for r in call_rows)
    failed = sum(r.status not in (None, STATUS_OK) for r in call_rows)
    pending = sum(r.status is None for r in call_rows)
    what = f"job {jobs_named[0]}" if len(jobs_named) == 1 else f"{len(jobs_named)} jobs"
    if manifest:
        what += f" ({manifest.get('function')}, {manifest.get('backend')})"
    parts = [f"{len(call_rows)} calls", f"{cold} cold starts"]
    if failed:
        parts.append(f"{failed} failed")
    if pending:
        parts.append(f"{pending} without a result")
    return f"dask-wren {what}: " + ", ".join(parts)


def _load(job_id: str, storage: Storage | None, settings: Settings | None) -> jobs.Job:
    """The job read from storage alone: ``KeyNotFound`` (naming the prefix and store searched) if
    storage holds nothing of it, ``IntegrityError`` if none of its records verifies, ``ConfigError``
    for an AWS host without the deployment's signing key."""
    settings = settings or Settings.from_config()
    storage = storage or make_storage(settings)
    job = jobs.load_job(storage, settings.prefix, job_id, signing.host_key(settings))
    if job.unverified and not job.records:
        reason = next(iter(job.unverified.values()))[0].reason
        raise IntegrityError(
            f"no record of job {job_id!r} verifies ({reason}): nothing to draw. A local job needs the key its "
            f"host had (the user's local key file, or the host's $DASK_WREN_SIGNING_KEY); an AWS job needs "
            f"the deployment's wren.aws.signing-key"
        )
    if job.unverified:
        logger.warning("dask-wren: %d records of job %s do not verify and are not drawn",
                       sum(map(len, job.unverified.values())), job_id)
    return job


def plot(
    futures_or_job_id: Iterable[WrenFuture] | str,
    path: str | os.PathLike[str] | None = None,
    *,
    storage: Storage | None = None,
    settings: Settings | None = None,
) -> Figure:
    """Draw a job's timeline and return the matplotlib ``Figure``; with ``path``, save it too (the
    format from its extension: .png, .svg, .pdf).

    ``futures_or_job_id``: futures (one map or several), or a job id, read from ``storage`` (default:
    the store ``settings`` describe, ``Settings.from_config()`` by default) without its host:
    ``KeyNotFound`` names the prefix and store searched for a job storage does not hold.
    """
    _matplotlib_figure()  # fail before reading a job
    if isinstance(futures_or_job_id, str):
        job = _load(futures_or_job_id, storage, settings)
        call_rows = rows(job)
        title = _title(call_rows, [futures_or_job_id], job.manifest)
    else:
        futures = list(futures_or_job_id)
        call_rows = rows(futures)
        title = _title(call_rows, list(dict.fromkeys(f.job_id for f in futures)))
    fig = draw(call_rows, title)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
