"""The ``dask-wren`` command: ``deploy``, ``destroy``, ``test``, ``jobs``, ``job``, ``logs``, ``clean``, ...

``main(argv)`` returns the exit code.  An error the user can cause (no credentials, no region,
access denied, a bad option) ends in one ``dask-wren: error: ...`` line on stderr and exit code 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import dask.config

import dask_wren
from dask_wren import cost, jobs, orphans
from dask_wren.config import Settings, make_storage
from dask_wren.deploy import (
    MAX_TIMEOUT,
    DeployError,
    DeployOptions,
    DestroyOptions,
    deploy,
    destroy,
    flatten_settings,
    read_yaml,
    user_error_message,
)
from dask_wren.errors import ConfigError
from dask_wren.signing import host_key
from lambda_worker import protocol
from lambda_worker.signing import SigningKey
from lambda_worker.storage import Storage, StorageError

_Options = TypeVar("_Options", DeployOptions, DestroyOptions)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-wren", description="Run Python functions and Dask graphs on AWS Lambda (the cloud button)."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)  # argparse lists the commands

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--function-name", help="Lambda function (default: wren.aws.function-name, 'dask-wren')")
        p.add_argument("--bucket", help="S3 bucket (default: dask-wren-<account id>-<region>)")
        p.add_argument("--region", help="AWS region (default: the boto3 session's region)")
        p.add_argument("--endpoint-url", help="endpoint for every AWS client (moto server, LocalStack)")
        p.add_argument(
            "--config-file", type=Path, help="settings file (default: ~/.config/dask/wren.yaml, or $DASK_CONFIG)"
        )
        p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")

    d = sub.add_parser(
        "deploy",
        help="create or update the function, its role, layers and bucket (idempotent)",
        description=(
            "Create or update, idempotently: the worker role and its policy, the bucket, the runtime layer (and "
            "package layers for --packages / --requirements), the function, its async invoke configuration "
            "(no Lambda retries: the host retries; events expire after wren.aws.throttle-timeout), and the "
            "settings file (with wren.aws.max-concurrency from the function's real concurrency)."
        ),
    )
    common(d)
    d.add_argument("--prefix", help="key prefix in the bucket (default: wren.storage.prefix, 'dask-wren')")
    d.add_argument("--memory", type=int, default=2048, help="function memory in MB (default 2048)")
    d.add_argument("--timeout", type=int, default=300, help=f"function timeout in s (default 300, max {MAX_TIMEOUT})")
    d.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64", help="function architecture")
    d.add_argument("--expire-days", type=int, default=7, help="days before objects under the prefix expire (7)")
    d.add_argument("--layer-zip", type=Path, help="use this prebuilt runtime layer zip instead of building one")
    d.add_argument(
        "--packages",
        nargs="+",
        action="extend",
        default=[],
        metavar="PKG",
        help="your packages for the workers (pip specifiers, e.g. scipy 'pandas>=2'); repeatable. Resolved with "
        "pip for Lambda's platform and Python (wheels only, no Docker) together with the runtime's packages, "
        "which keep their versions; published as up to 4 layers '<function>-packages-N'",
    )
    d.add_argument(
        "--requirements",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a pip requirements file of your packages (-r includes, comments and blank lines allowed); "
        "repeatable; as --packages. Over Lambda's 250 MB (function and all layers, unzipped), deploy "
        "stops before changing anything and names the largest packages: use a container image then "
        "(runtime/Dockerfile)",
    )
    d.add_argument(
        "--image-uri",
        metavar="URI",
        help="deploy the worker as this container image (built from runtime/Dockerfile with this environment's "
        "Python, cloudpickle and dask, pushed to ECR; a tag or digest) instead of the zip function and layers; "
        "a new tag or digest updates the function",
    )

    x = sub.add_parser(
        "destroy", help="delete the function (and its async invoke config), its layers' versions and role (bucket: --delete-bucket)"
    )
    common(x)
    x.add_argument("--delete-bucket", action="store_true", help="also empty and delete the bucket")
    x.add_argument("--yes", action="store_true", help="really delete (required unless --dry-run)")

    t = sub.add_parser("test", help="run a hello-world map on the deployed function and print timings")
    t.add_argument("--calls", type=int, default=10, help="number of calls (default 10)")
    t.add_argument("--function-name", help="function to call (default: from the settings)")
    t.add_argument("--timeout", type=float, default=60, help="seconds a call may take (default 60)")
    t.add_argument("--config-file", type=Path, help="read the settings from this file too")

    c = sub.add_parser(
        "clean",
        help="list what dead hosts left (their jobs in storage, their local workers' logs); --yes removes it",
        description=(
            "Remove the jobs (under wren.storage.prefix) and local worker log folders of host processes on this "
            "machine that died (killed, crashed) before cleaning up, and jobs that no host claims. The next "
            "executor start removes the first kind too; other machines' hosts are only touched with --older-than."
        ),
    )
    c.add_argument("--older-than", type=_duration, metavar="AGE", help="also remove every job whose host started longer ago (any machine): 30m, 12h, 1d")
    yes = c.add_mutually_exclusive_group()
    yes.add_argument("--yes", action="store_true", help="remove them (without it, clean only lists what it would remove)")
    yes.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing (the default)")
    c.add_argument("--config-file", type=Path, help="read the settings from this file too")

    storage_only = "Reads the configured store alone (wren.storage.*), so it works after the job's host is gone."
    j = sub.add_parser("jobs", help="list the jobs in storage: calls done and failed, bytes, cost, whether their host runs",
                       description="List the jobs under wren.storage.prefix. " + storage_only + " Executors delete their "
                       "jobs at shutdown unless wren.cleanup is false: listed are running hosts' jobs, dead hosts' and kept ones.")
    j.add_argument("--json", action="store_true", help="print JSON, for scripts")
    j.add_argument("--config-file", type=Path, help="read the settings from this file too")
    one = sub.add_parser("job", help="a job's summary, timings, cost and failures (with their errors)",
                         description="Show job JOB (an id, or the start of one): its manifest, counts, timings, cost and "
                         "every failed attempt with its error, retried ones included. " + storage_only)
    one.add_argument("job", help="the job id (future.job_id), or its first characters")
    one.add_argument("--json", action="store_true", help="print JSON, for scripts")
    one.add_argument("--unverified", action="store_true", help="also show records that do not verify with this host's key, "
                     "marked UNVERIFIED (their JSON header, unchecked; nothing is unpickled)")
    one.add_argument("--config-file", type=Path, help="read the settings from this file too")
    logs = sub.add_parser("logs", help="the stdout/stderr tail of a job's calls, and where a call's full log is",
                          description="Print the output tail each call's record keeps (wren.output-tail characters): "
                          "briefly for every call, whole for CALL with where its full log is (CloudWatch on Lambda, "
                          "the worker's log file locally). " + storage_only)
    logs.add_argument("job", help="the job id, or its first characters")
    logs.add_argument("call", nargs="?", help="a call id (000002) or index (2)")
    logs.add_argument("--unverified", action="store_true", help="also show records that do not verify, marked UNVERIFIED")
    logs.add_argument("--config-file", type=Path, help="read the settings from this file too")

    p = sub.add_parser(
        "plot",
        help="draw a job's timeline from its records in storage (needs matplotlib: pip install 'dask-wren[plot]')",
        description="Draw the timeline of job JOB (per call: submitted, started, setup, function, cold starts; "
        "calls running over time; call durations) from its result records in storage alone, so a job whose "
        "host is gone can be drawn. Needs the job's objects (run it with wren.cleanup false) and, to verify its "
        "records, the host's signing key.",
    )
    p.add_argument("job", help="the job id (future.job_id), or its first characters")
    p.add_argument("-o", "--output", type=Path, help="image file, its format from the extension: .png, .svg, .pdf (default: JOB.png)")
    p.add_argument("--config-file", type=Path, help="read the settings from this file too")
    return parser


def _duration(text: str) -> float:
    """``30s``, ``30m``, ``12h``, ``1d`` (or plain seconds) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (examples: 30m, 12h, 1d)") from None


def options(cls: type[_Options], args: argparse.Namespace) -> _Options:
    """``cls`` from the parsed arguments named like its fields (lists, from repeatable options, as tuples)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "deploy":
            deploy(options(DeployOptions, args))
            return 0
        if args.command == "destroy":
            destroy(options(DestroyOptions, args))
            return 0
        if args.command == "clean":
            return run_clean(older_than=args.older_than, yes=args.yes, config_file=args.config_file)
        if args.command == "jobs":
            return run_jobs(as_json=args.json, config_file=args.config_file)
        if args.command == "job":
            return run_job(args.job, as_json=args.json, unverified=args.unverified, config_file=args.config_file)
        if args.command == "logs":
            return run_logs(args.job, args.call, unverified=args.unverified, config_file=args.config_file)
        if args.command == "plot":
            return run_plot(args.job, output=args.output, config_file=args.config_file)
        return run_test(args.calls, function_name=args.function_name, config_file=args.config_file, timeout=args.timeout)
    except KeyboardInterrupt:
        print("dask-wren: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`dask-wren logs JOB | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141  # 128 + SIGPIPE, as a shell reports it
    except Exception as e:
        message = user_error_message(e) or (str(e) if isinstance(e, StorageError | ConfigError) else None)
        if message is None or args.debug:
            raise
        print(f"dask-wren: error: {message}", file=sys.stderr)
        return 1


# -- dask-wren test ----------------------------------------------------------------------------


def _hello_function() -> Callable[[int], dict[str, Any]]:
    # Defined in a function, so cloudpickle ships it by value: the worker has no dask_wren.
    def hello(x: int) -> dict[str, Any]:
        import os
        import platform
        import time

        start = time.time()
        return {
            "x": x,
            "square": x * x,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "where": os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or platform.node(),
            "memory_mb": os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
            "seconds": time.time() - start,
        }

    return hello


def run_test(
    calls: int = 10, *, function_name: str | None = None, config_file: Path | None = None, timeout: float = 60
) -> int:
    """A hello-world map of ``calls`` calls through ``default_executor(backend="aws")``.

    A call that never reports back (the function cannot start, say) fails after ``timeout`` plus
    half a minute, instead of the default call timeout plus ``wren.aws.lost-call-grace``.
    """
    if calls < 1:
        raise DeployError(f"--calls must be at least 1, not {calls}")
    settings = flatten_settings(read_yaml(Path(config_file).expanduser())) if config_file else {}
    overrides: dict[str, Any] = {"timeout": timeout, "lost_call_grace": 30.0}
    if function_name:
        overrides["function_name"] = function_name
    hint = "deploy first with `dask-wren deploy` (it writes the settings the executor reads)"
    with dask.config.set(settings):
        start = time.perf_counter()
        try:
            executor = dask_wren.default_executor(backend="aws", **overrides)
        except (dask_wren.WrenError, dask_wren.StorageError, ValueError) as e:
            raise DeployError(f"the AWS backend is not available: {e}" + ("" if "dask-wren deploy" in str(e) else f"; {hint}")) from None
        with executor:
            ready = time.perf_counter()
            print(f"executor ready in {ready - start:.2f} s: {executor!r}")
            try:
                futures = executor.map(_hello_function(), range(calls))
            except (dask_wren.BackendError, dask_wren.VersionMismatchError) as e:
                raise DeployError(f"the AWS backend cannot run calls: {e}" + ("" if "dask-wren deploy" in str(e) else f"; {hint}")) from None
            submitted = time.perf_counter()
            first = None
            for _ in dask_wren.as_completed(futures):
                first = first or time.perf_counter()
            done = time.perf_counter()
            failures = 0
            for i, future in enumerate(futures):
                error = future.exception()
                if error is not None:
                    failures += 1
                    print(f"call {i}: FAILED: {type(error).__name__}: {error}")
                    continue
                r = future.result()
                print(f"call {i}: {r['x']}^2 = {r['square']} on {r['where']} (python {r['python']}, {r['machine']})")
    print(
        f"{calls} calls: submitted in {submitted - ready:.2f} s, first result after {((first or done) - ready):.2f} s, "
        f"all done after {done - ready:.2f} s; {calls - failures} succeeded, {failures} failed"
    )
    return 1 if failures else 0


# -- dask-wren jobs / job / logs ---------------------------------------------------------------
#
# Everything below reads the configured store alone, so it works after the host is gone.  Records
# are verified with this process's signing key; one that does not verify is reported, never
# unpickled, and its JSON is shown only with --unverified, marked as such.

_TRACEBACK_LINES = 4  # of each failed attempt, in `dask-wren job`
_FAILURES_SHOWN = 20  # failed attempts listed in full by `dask-wren job` (--json: all)
_TAIL_LINES = 3  # per stream and call, in `dask-wren logs JOB` without CALL
_UNVERIFIED_HINT = (
    "a local job is verified with the user's local key file (or $DASK_WREN_SIGNING_KEY, if the host had it set: set "
    "the same here); on AWS the key is wren.aws.signing-key (the settings file `dask-wren deploy` wrote). "
    "--unverified shows such records' headers unchecked (JSON, never unpickled)"
)


def _store(config_file: Path | None) -> tuple[Settings, Storage]:
    settings = flatten_settings(read_yaml(Path(config_file).expanduser())) if config_file else {}
    with dask.config.set(settings):
        config = Settings.from_config()
    return config, make_storage(config)


def _signing_key(settings: Settings) -> SigningKey | None:
    """The key this host checks records with; ``None`` when it has none (records then do not verify)."""
    try:
        return host_key(settings)
    except ConfigError:
        return None


def _where(settings: Settings, storage: Storage) -> str:
    return f"{storage!r} under {settings.prefix}/"


def _find_job(settings: Settings, storage: Storage, text: str) -> str:
    """The job id that ``text`` is, or is the only job id to start with (one LIST of that prefix)."""
    if next(iter(storage.list(f"{settings.prefix}/{text}/")), None):  # one LIST request, however large the job
        return text
    ids = sorted({k[len(settings.prefix) + 1 :].split("/", 1)[0] for k, _ in storage.list(f"{settings.prefix}/{text}")})
    ids = [i for i in ids if jobs.JOB_ID.match(i) and i.startswith(text)]
    if len(ids) == 1:
        return ids[0]
    if ids:
        raise DeployError(f"{text!r} names {len(ids)} jobs ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}): give more of the id")
    raise DeployError(
        f"no job {text!r} in {_where(settings, storage)}: `dask-wren jobs` lists the jobs there (an executor deletes "
        "its jobs when it shuts down, unless wren.cleanup is false)"
    )


def _when(t: float | None, timespec: str = "seconds") -> str:
    return datetime.fromtimestamp(t).isoformat(sep=" ", timespec=timespec) if t else "-"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 0.001:
        return f"{s * 1e6:.0f} us"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns; numbers right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = [all(str(r[i]).replace(".", "").replace(",", "").isdigit() for r in rows) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if num and row is not header else str(c).ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _clean_text(text: Any) -> str:
    """Text from a record for a terminal: control characters (escape sequences) shown, not obeyed."""
    return "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in str(text))


def _host_state(job: jobs.JobSummary) -> str:
    host = job.host
    if not host:
        return "?"
    who = f"pid {host['pid']}" + ("" if job.host_alive is not None else f" on {host['host']}")
    state = {True: "alive", False: "dead", None: "?"}[job.host_alive]
    return f"{state} ({who})"


def _local(job: jobs.JobSummary) -> bool:
    return (job.manifest or {}).get("backend", "local") != "aws"


def _cost(job: jobs.Job, prices: cost.Prices) -> cost.CostSummary | str:
    """The job's cost, or why it has none (a region the price table lacks)."""
    manifest = job.manifest or {}
    try:
        return cost.summarize(
            job.headers(), host_requests=manifest.get("host_requests"), prices=prices,
            local=_local(job), memory_mb=manifest.get("memory_mb"),
        )
    except ConfigError as e:
        return f"not priced: {e}"


def _money(summary: cost.CostSummary | str) -> str:
    return "-" if isinstance(summary, str) else cost.money(summary.total)


def _job_dict(job: jobs.Job, summary: cost.CostSummary | str) -> dict[str, Any]:
    return {
        "job_id": job.job_id, "submitted": job.submitted, "calls": job.calls, "done": job.done, "failed": job.failed,
        "pending": job.missing, "unverified": job.unverifiable, "objects": job.objects, "bytes": job.bytes,
        "host": job.host, "host_alive": job.host_alive, "cost": summary if isinstance(summary, str) else summary.as_dict(), "manifest": job.manifest,
    }


def run_jobs(*, as_json: bool = False, config_file: Path | None = None) -> int:
    """List the jobs in the configured store (``dask-wren jobs``)."""
    settings, storage = _store(config_file)
    key = _signing_key(settings)
    found = jobs.list_jobs(storage, settings.prefix, key, headers=True)
    prices = cost.Prices.load(settings)
    costs = {job.job_id: _cost(job, prices) for job in found}
    if as_json:
        print(json.dumps([_job_dict(job, costs[job.job_id]) for job in found], indent=2, default=str))
        return 0
    if found:
        rows = [
            [
                job.job_id, _when(job.submitted), str(job.calls), str(job.done), str(job.failed), str(job.missing),
                _size(job.bytes), _money(costs[job.job_id]) + ("*" if _local(job) else ""),
                _host_state(job), (job.manifest or {}).get("function", "?"),
            ]
            for job in found
        ]
        print(_table(["JOB", "SUBMITTED", "CALLS", "DONE", "FAILED", "PENDING", "BYTES", "COST", "HOST", "FUNCTION"], rows))
    unverified = [job for job in found if job.unverifiable]
    for job in unverified:
        print(f"job {job.job_id}: {job.unverifiable} call(s) have records that do not verify (not counted)")
    if unverified:
        print(f"  ({_UNVERIFIED_HINT}, with `dask-wren job JOB`)")
    if any(_local(j) for j in found):
        print("* a local job: what it would cost on Lambda")
    for job in found:
        if isinstance(costs[job.job_id], str):
            print(f"job {job.job_id}: {costs[job.job_id]}")
    if any(j.manifest is None for j in found):
        print("a job without a manifest (older version, or its host died first) shows what its records tell")
    print(f"{len(found)} job(s) in {_where(settings, storage)}; executors delete their jobs at shutdown unless "
          "wren.cleanup is false")
    return 0


def _attempt_label(header: dict[str, Any], unverified: bool) -> str:
    label = f"call {header.get('call_id', '?')} attempt {header.get('attempt', 0)}"
    return f"UNVERIFIED {label}" if unverified else label


def _headers(job: jobs.Job, unverified: bool) -> list[tuple[dict[str, Any], bool]]:
    """Every attempt's header in call and attempt order, flagged when it did not verify (``unverified``: shown)."""
    found = [(h, False) for h in job.headers()]
    if unverified:
        found += [(dict(b.header, call_id=b.call_id, attempt=b.attempt), True) for bs in job.unverified.values() for b in bs if b.header]
    return sorted(found, key=lambda item: (item[0].get("call_id", ""), item[0].get("attempt", 0)))


def _error_lines(header: dict[str, Any]) -> list[str]:
    """``ok``, or the status, the failure's kind (unless the function raised) and its error (a
    message can span lines: a dead worker's quotes the end of its output)."""
    if header.get("status") == protocol.STATUS_OK:
        return ["ok"]
    error = header.get("error") or {}
    kind = f" ({error['kind']})" if error.get("kind") not in (None, "exception") else ""
    what = f"{error['type']}: " if error.get("type") else ""
    return _clean_text(f"{header.get('status')}{kind}: {what}{error.get('message', '')}").splitlines() or ["?"]


def _print_attempt(header: dict[str, Any], unverified: bool, note: str = "", indent: str = "", lines: int | None = None) -> None:
    """An attempt's outcome; of a message's further lines (a dead worker's output), the last ``lines``."""
    first, *more = _error_lines(header)
    print(f"{indent}{_attempt_label(header, unverified)}{note}: {first}")
    if lines is not None and len(more) > lines:
        print(f"{indent}    | ({len(more) - lines} lines before; `dask-wren logs {header.get('job_id', 'JOB')} "
              f"{header.get('call_id', 'CALL')}` shows all)")
        more = more[-lines:]
    for line in more:
        print(f"{indent}    | {line}")


def run_job(job_text: str, *, as_json: bool = False, unverified: bool = False, config_file: Path | None = None) -> int:
    """A job's summary and its failures (``dask-wren job JOB``)."""
    settings, storage = _store(config_file)
    key = _signing_key(settings)
    job = jobs.load_job(storage, settings.prefix, _find_job(settings, storage, job_text), key, unchecked=unverified)
    summary = _cost(job, cost.Prices.load(settings))
    timings = job.timings()
    failures = [(h, bad) for h, bad in _headers(job, unverified) if h.get("status") != protocol.STATUS_OK]
    bad_records = [b for bs in job.unverified.values() for b in bs]
    if as_json:
        out = _job_dict(job, summary)
        out["timings"] = timings
        out["failures"] = [dict(h, unverified=True) if bad else h for h, bad in failures]
        out["unverified_records"] = [{"call_id": b.call_id, "attempt": b.attempt, "key": b.key, "reason": b.reason} for b in bad_records]
        print(json.dumps(out, indent=2, default=str))
        return 0
    m = job.manifest or {}
    rows = [["job", job.job_id], ["storage", _where(settings, storage)]]
    if m:
        rows += [
            ["submitted", f"{_when(m['submitted'], 'milliseconds')} by pid {m.get('pid')} on {m.get('host')} (host {_host_state(job).split(' ')[0]})"],
            ["function", m.get("function", "?")],
            ["backend", ", ".join(
                [m.get("backend", "?")] + [f"{m[k]}" for k in ("function_name", "region") if m.get(k)]
                + [f"{m.get('memory_mb')} MB", f"timeout {m.get('timeout')} s", f"chunksize {m.get('chunksize')}", f"retries {m.get('retries')}"]
            )],
        ]
    else:
        rows += [["manifest", f"none (an older version's job, or its host died before writing it); host {_host_state(job)}"]]
    rows += [
        ["calls", f"{job.calls}: {job.done} done, {job.failed} failed, {job.missing} without a record (running, queued or lost)"
         + (f", {job.unverifiable} with records that do not verify" if job.unverifiable else "")],
        ["attempts", f"{timings['attempts']} recorded, {timings['later_attempts']} of them retries or backups; "
         f"{m.get('invocations', '?')} invocations at submission; {timings['cold_starts']} cold start(s)"],
        ["first submitted", _when(timings["first_submitted"], "milliseconds")],
        ["last result", _when(timings["last_result"], "milliseconds") + (
            f" ({_seconds(timings['last_result'] - timings['first_submitted'])} after)" if timings["last_result"] and timings["first_submitted"] else "")],
        ["call duration", f"median {_seconds(timings['median_call_s'])}, max {_seconds(timings['max_call_s'])}"],
        ["stored", f"{job.objects} objects, {_size(job.bytes)}"],
    ]
    print("\n".join(f"{k:<16}{v}" for k, v in rows))
    print("\ncost" + (" (what it would cost on Lambda)" if _local(job) else ""))
    print("\n".join(f"  {line}" for line in str(summary).splitlines()))
    if failures:
        calls = {h.get("call_id") for h, _ in failures}
        print(f"\nfailures ({len(failures)} attempt(s) of {len(calls)} call(s))")
        for header, bad in failures[:_FAILURES_SHOWN]:
            final = job.final(header.get("call_id", "")) or {}
            later = final.get("status") == protocol.STATUS_OK and final.get("attempt", 0) > header.get("attempt", 0)
            retried = f" (retried: attempt {final['attempt']} succeeded)" if later else ""
            _print_attempt(header, bad, retried, indent="  ", lines=_TRACEBACK_LINES)
            tb = [line for line in str((header.get("error") or {}).get("traceback") or "").splitlines() if line.strip()]
            for line in tb[-_TRACEBACK_LINES:]:
                print(f"      {_clean_text(line)}")
        if len(failures) > _FAILURES_SHOWN:
            print(f"  ... and {len(failures) - _FAILURES_SHOWN} more failed attempt(s): --json lists them all")
    if bad_records:
        print(f"\nrecords that do not verify ({len(bad_records)}; never unpickled{', shown above as UNVERIFIED' if unverified else ''})")
        reasons: dict[str, list[str]] = {}
        for b in bad_records:
            reasons.setdefault(b.reason, []).append(f"{b.call_id}" + (f".{b.attempt}" if b.attempt else ""))
        for reason, where in reasons.items():
            calls = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
            print(f"  {len(where)} record(s) (call {calls}): {reason}" + (f"; the job was signed with key id {m['key_id']}" if m.get("key_id") else ""))
        print(f"  ({_UNVERIFIED_HINT})")
    return 0


def _log_location(header: dict[str, Any], region: str | None) -> list[str]:
    """Where a call's full output is: a CloudWatch stream (Lambda) or a local worker's log file."""
    log = header.get("log") or {}
    group, stream = log.get("group"), log.get("stream")
    if not group or not stream:
        return ["full log: not recorded (a record written by the host, or by an older version)"]
    if group.startswith("/aws/"):
        region_option = f" --region {region}" if region else ""
        return [
            _clean_text(f"full log: CloudWatch log group {group}, stream {stream}"),
            _clean_text(f"  aws logs tail {shlex.quote(group)} --log-stream-names {shlex.quote(stream)} --since 1d{region_option}"),
            "  (or the Lambda console: the function's Monitor tab, View CloudWatch logs)",
        ]
    path = os.path.join(group, stream)
    state = "" if os.path.exists(path) else " (gone: the local backend removes a worker's log when the worker or its host ends)"
    return [_clean_text(f"full log: {path}{state}")]


def _tail(text: str, lines: int | None) -> list[str]:
    kept = _clean_text(text).rstrip("\n").splitlines()
    return kept if lines is None else kept[-lines:]


def run_logs(job_text: str, call: str | None = None, *, unverified: bool = False, config_file: Path | None = None) -> int:
    """The output tail of one call's attempts, or of every call briefly (``dask-wren logs JOB [CALL]``)."""
    settings, storage = _store(config_file)
    key = _signing_key(settings)
    job = jobs.load_job(storage, settings.prefix, _find_job(settings, storage, job_text), key, unchecked=unverified)
    region = (job.manifest or {}).get("region")
    found = _headers(job, unverified)
    if call is not None:
        call_id = protocol.call_id_for(int(call)) if call.isdigit() else call
        found = [(h, bad) for h, bad in found if h.get("call_id") == call_id]
        if not found:
            if call_id in job.unverified:
                raise DeployError(f"call {call_id} of job {job.job_id} has no record that verifies (never unpickled); "
                                  f"--unverified shows it unchecked: {_UNVERIFIED_HINT}")
            raise DeployError(f"call {call!r} of job {job.job_id} has no record: its calls are 000000 to "
                              f"{protocol.call_id_for(max(job.calls - 1, 0))}, {len(job.records)} of them recorded")
    for header, bad in found:
        _print_attempt(header, bad, f" (request {header.get('request_id', '?')})", lines=None if call is not None else _TAIL_LINES)
        for stream in ("stdout", "stderr"):
            text = header.get(stream) or ""
            lines = _tail(text, None if call is not None else _TAIL_LINES)
            dropped = (header.get("output_dropped") or {}).get(stream, 0)
            if call is None and not lines:
                continue
            shown = len(lines) if call is None else None
            more = f" (last {shown} lines)" if shown is not None and shown < len(_tail(text, None)) else ""
            earlier = f" ({dropped} earlier characters not kept)" if dropped else ""
            print(f"  --- {stream}{more}{earlier}" + (" (empty)" if not lines else ""))
            for line in lines:
                print(f"    {line}")
        if call is not None:
            print("\n".join(f"  {line}" for line in _log_location(header, region)))
    if call is None:
        print(f"{len(found)} record(s) of job {job.job_id}; `dask-wren logs {job.job_id} CALL` shows a call's whole tail "
              "and where its full log is")
    if job.unverifiable and not unverified:
        print(f"{job.unverifiable} call(s) have records that do not verify (not shown): {_UNVERIFIED_HINT}")
    return 0


# -- dask-wren clean ---------------------------------------------------------------------------


def _leftover_size(storage: Storage, item: orphans.Leftover) -> str:
    if item.kind == "job":
        return _size(sum(size for _, size in storage.list(item.where)))
    if item.kind == "logs":
        return _size(sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(item.where) for f in names
                         if os.path.isfile(os.path.join(d, f))))
    return "-"


def run_clean(*, older_than: float | None = None, yes: bool = False, config_file: Path | None = None) -> int:
    """List (the default) or, with ``yes``, remove the leftovers ``orphans.find_leftovers`` finds."""
    settings, storage = _store(config_file)
    leftovers = orphans.find_leftovers(storage, settings.prefix, older_than)
    if leftovers:
        print("removing:" if yes else "would remove (nothing is removed without --yes):")
        rows = [[item.kind, item.where, _leftover_size(storage, item), item.reason] for item in leftovers]
        print(_table(["KIND", "WHAT", "SIZE", "WHY"], rows))
    if yes:
        orphans.remove(storage, leftovers)
    counts = ", ".join(f"{sum(1 for f in leftovers if f.kind == k)} {k}" for k in ("job", "record", "logs"))
    if yes or not leftovers:
        print(f"{len(leftovers)} leftover(s) {'removed' if yes else 'found'} ({counts}) in {_where(settings, storage)}")
    else:
        print(f"{len(leftovers)} leftover(s) ({counts}) in {_where(settings, storage)}: `dask-wren clean --yes` removes them")
    return 0



# -- dask-wren plot ----------------------------------------------------------------------------


def run_plot(job_text: str, *, output: Path | None = None, config_file: Path | None = None) -> int:
    """Save the timeline of a job (read from the configured store alone) to ``output``."""
    settings, storage = _store(config_file)
    job_id = _find_job(settings, storage, job_text)
    output = output or Path(f"{job_id}.png")
    try:
        dask_wren.plot(job_id, output, storage=storage, settings=settings)
    except (dask_wren.WrenError, ImportError) as e:  # no key, records that do not verify, no matplotlib
        print(f"dask-wren: error: {e}", file=sys.stderr)
        return 1
    print(f"timeline of job {job_id} saved to {output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
