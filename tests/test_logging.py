"""Logging, not printing: the library writes nothing to stderr itself (a 3-call map through the
AWS stand-in prints not a line), and what a user may want to know goes to the ``dask_wren`` logger:
jobs submitted, retries, throttling pauses, lost calls, the preflight's decisions."""

from __future__ import annotations

import ast
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import dask_wren
from dask_wren.backends import base
from dask_wren.backends.base import Invocation

pytestmark = pytest.mark.timeout(90)

PACKAGE = pathlib.Path(dask_wren.__file__).parent


def die_the_first_time(marker):
    """Run remotely: the worker dies on the call's first attempt (a machinery failure, retried)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "second time lucky"


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("dask_wren")]


def test_the_library_never_prints():
    """Only the CLI talks to the terminal; everything else logs (the worker side, ``lambda_worker``,
    writes to its own log, CloudWatch on Lambda, and is not checked here)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, offenders


def test_a_three_call_map_through_the_standin_prints_nothing():
    script = textwrap.dedent(
        """
        import sys
        import dask_wren
        from dask_wren.testing import aws_standin

        def shout(x):
            print(f"the user's code says {x}", file=sys.stderr)
            return x + 1

        with aws_standin(workers=2) as standin:
            with dask_wren.default_executor(**standin.settings_overrides) as ex:
                fs = ex.map(shout, [1, 2, 3])
                assert ex.get_result(fs) == [2, 3, 4]
                assert "the user's code says 1" in fs[0].stderr
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    assert proc.stderr == ""  # nothing from dask-wren, the stand-in or moto; the worker's output is in fs[0].stderr


def test_submits_and_retries_are_logged(tmp_path, caplog):
    marker = str(tmp_path / "died-once")
    with caplog.at_level(logging.INFO, logger="dask_wren"):
        with dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=2, retry_backoff=0.01) as ex:
            fs = ex.map(die_the_first_time, [marker])
            assert fs[0].result(timeout=60) == "second time lucky"
    logged = messages(caplog)
    assert any(
        f"job {fs[0].job_id} submitted: 1 call(s) of {__name__}.die_the_first_time" in m for m in logged
    ), logged
    assert any(f"call {fs[0].job_id}/{fs[0].call_id} failed (worker_died" in m and "retrying" in m for m in logged), logged


def test_throttling_pauses_and_the_preflight_are_logged(standin, faults, caplog):
    with caplog.at_level(logging.INFO, logger="dask_wren"):
        # one botocore retry: the stand-in's six 429s reach the backend's own pauses
        with dask_wren.default_executor(**standin.settings_overrides, invoke_max_attempts=1) as ex:
            faults.throttle_first = 6
            assert ex.get_result(ex.map(abs, [-1, -2])) == [1, 2]
    logged = messages(caplog)
    assert any("preflight passed for the Lambda function" in m for m in logged), logged
    assert any("Lambda throttled" in m and "invokes pause" in m for m in logged), logged


def test_lost_calls_are_logged(standin, faults, caplog):
    faults.drop_rate = 1.0  # accepted with 202, never run
    with caplog.at_level(logging.INFO, logger="dask_wren"):
        with dask_wren.default_executor(**standin.settings_overrides, lost_call_grace=0.2, retries=0) as ex:
            fs = ex.map(abs, [-1], timeout=1)
            with pytest.raises(dask_wren.WrenTimeoutError):
                fs[0].result(timeout=60)
    assert any(f"invocation {fs[0].job_id}-000000 (calls 000000) lost" in m for m in messages(caplog)), messages(caplog)


def test_a_failure_record_that_cannot_be_written_is_logged(monkeypatch, caplog):
    def refuse(*args):
        raise OSError("disk full")

    monkeypatch.setattr(base, "_write_failure_records", refuse)
    inv = Invocation("job-000000", {}, ["000000"], 1.0)
    with caplog.at_level(logging.ERROR, logger="dask_wren"):
        base.write_failure_records(inv, "lost", "gone", None)
    assert [r.getMessage() for r in caplog.records] == ["dask-wren: could not record the failure of job-000000 (gone): disk full"]
