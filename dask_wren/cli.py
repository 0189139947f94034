"""The ``dask-wren`` command: ``deploy``, ``destroy``, ``test`` and ``clean``.

``main(argv)`` returns the exit code.  An error the user can cause (no credentials, no region,
access denied, a bad option) ends in one ``dask-wren: error: ...`` line on stderr and exit code 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import dask.config

import dask_wren
from dask_wren import orphans
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
from dask_wren.errors import IntegrityError
from lambda_worker.storage import KeyNotFound

_Options = TypeVar("_Options", DeployOptions, DestroyOptions)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-wren", description="Run Python functions and Dask graphs on AWS Lambda (the cloud button)."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{deploy,destroy,test,clean,plot}")

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
        help="remove what dead hosts left: their jobs in storage, their local workers' logs",
        description=(
            "Remove the jobs (under wren.storage.prefix) and local worker log folders of host processes on this "
            "machine that died (killed, crashed) before cleaning up, and jobs that no host claims. The next "
            "executor start removes the first kind too; other machines' hosts are only touched with --older-than."
        ),
    )
    c.add_argument("--older-than", type=_duration, metavar="AGE", help="also remove every job whose host started longer ago (any machine): 30m, 12h, 1d")
    c.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    c.add_argument("--config-file", type=Path, help="read the settings from this file too")

    p = sub.add_parser(
        "plot",
        help="draw a job's timeline from its records in storage (needs matplotlib: pip install 'dask-wren[plot]')",
        description="Draw the timeline of job JOB (per call: submitted, started, setup, function, cold starts; "
        "calls running over time; call durations) from its result records in storage alone, so a job whose "
        "host is gone can be drawn. Needs the job's objects (run it with wren.cleanup false) and, to verify its "
        "records, the host's signing key.",
    )
    p.add_argument("job", help="the job id (future.job_id)")
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
            return run_clean(older_than=args.older_than, dry_run=args.dry_run, config_file=args.config_file)
        if args.command == "plot":
            return run_plot(args.job, output=args.output, config_file=args.config_file)
        return run_test(args.calls, function_name=args.function_name, config_file=args.config_file, timeout=args.timeout)
    except KeyboardInterrupt:
        print("dask-wren: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error_message(e)
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


# -- dask-wren clean ---------------------------------------------------------------------------


def run_clean(*, older_than: float | None = None, dry_run: bool = False, config_file: Path | None = None) -> int:
    """List (``dry_run``) or remove the leftovers ``orphans.find_leftovers`` finds in the configured store."""
    settings = flatten_settings(read_yaml(Path(config_file).expanduser())) if config_file else {}
    with dask.config.set(settings):
        config = Settings.from_config()
    storage = make_storage(config)
    leftovers = orphans.find_leftovers(storage, config.prefix, older_than)
    for item in leftovers:
        print(f"{'would remove' if dry_run else 'removing'} {item.kind} {item.where}: {item.reason}")
    if not dry_run:
        orphans.remove(storage, leftovers)
    print(f"{len(leftovers)} leftover(s) {'found' if dry_run else 'removed'} in {storage!r}")
    return 0


# -- dask-wren plot ----------------------------------------------------------------------------


def run_plot(job_id: str, *, output: Path | None = None, config_file: Path | None = None) -> int:
    """Save the timeline of ``job_id`` (read from the configured store alone) to ``output``."""
    settings = flatten_settings(read_yaml(Path(config_file).expanduser())) if config_file else {}
    with dask.config.set(settings):
        config = Settings.from_config()
    output = output or Path(f"{job_id}.png")
    try:
        dask_wren.plot(job_id, output, settings=config)
    except (KeyNotFound, IntegrityError, ImportError) as e:
        print(f"dask-wren: error: {e}", file=sys.stderr)
        return 1
    print(f"timeline of job {job_id} saved to {output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
