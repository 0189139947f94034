"""Offline stand-ins for AWS: test the Lambda path of dask-wren without an AWS account.

``aws_standin()`` starts everything the AWS backend talks to, on loopback:

- an S3 server (moto's ``ThreadedMotoServer``; or any S3-compatible endpoint you pass as
  ``s3_endpoint``, e.g. MinIO) with the bucket created;
- a Lambda endpoint (``LambdaEndpoint``) serving one function whose invocations run the real
  ``lambda_worker.handler.lambda_handler`` in local worker processes, with injectable faults.
  The function is configured as ``dask-wren deploy`` configures one (no asynchronous retries;
  ``DASK_WREN_BUCKET`` / ``DASK_WREN_PREFIX`` and a fresh ``DASK_WREN_SIGNING_KEY`` in its
  environment, the same key in ``settings_overrides``), and the stand-in is never
  kinder than Lambda: it kills an invocation at the function's Timeout or when it exceeds the
  function's memory, and writes no failure record for it (Lambda writes none).

::

    import dask, dask_wren
    from dask_wren.testing import aws_standin

    with aws_standin(workers=2) as standin:
        with dask_wren.default_executor(**standin.settings_overrides) as ex:
            print(ex.map(abs, [-1, -2]))
        with dask.config.set(standin.dask_config):   # or the same through dask.config
            ...
        standin.faults.throttle_first = 3            # the next 3 invoke requests get 429
        print(standin.faults.counters)               # ... retried, killed_timeout, killed_memory
        print(len(standin.executions(job_id=job, call_id="000000")))  # how often a call ran

As a pytest fixture (in your ``conftest.py`` or test module)::

    @pytest.fixture(scope="module")
    def wren_aws():
        with aws_standin(workers=2) as standin:
            yield standin

While the block runs, ``os.environ`` holds fake credentials (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` = ``testing``; with your own ``s3_endpoint``, credentials already in
the environment are kept) and ``AWS_DEFAULT_REGION=us-east-1``; the previous environment comes
back on exit.  They are set before the worker pool starts, because workers inherit the
environment they start with.  Leaving the block stops the endpoint and the moto server (a bucket
on your own endpoint is left in place).

``RuntimeAPIServer`` (``dask_wren.testing.runtime_api``) is the Lambda Runtime API, for running
the handler under AWS's own runtime interface client (``awslambdaric``).  ``CountingStorage``
(``dask_wren.testing.counting``) wraps a store and counts the requests made through it, as S3
would bill them.  ``FaultyS3`` (``dask_wren.testing.s3_faults``) is a proxy in front of an S3
endpoint that answers a share of the requests with S3's 503 SlowDown / 500 InternalError: point
``endpoint_url`` at it.  The fidelity notes (where the stand-ins differ from AWS) are in
``dask_wren.testing.lambda_endpoint``.  moto is needed only for the default S3 server:
``pip install "dask-wren[test]"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dask_wren.config import as_dask_config, aws_settings
from dask_wren.testing.lambda_endpoint import (
    DEFAULT_RETRY_DELAYS,
    Execution,
    FaultCounters,
    Faults,
    LambdaEndpoint,
    default_environment,
)
from dask_wren.testing.runtime_api import RuntimeAPIServer, RuntimeInitError
from lambda_worker.signing import KEY_VARIABLE, SigningKey

__all__ = [
    "Execution",
    "FaultCounters",
    "Faults",
    "LambdaEndpoint",
    "RuntimeAPIServer",
    "RuntimeInitError",
    "StandIn",
    "aws_standin",
    "default_environment",
]

REGION = "us-east-1"
#: The job prefix of ``wren.storage.prefix``'s default, which the stand-in's function is deployed for.
PREFIX = "dask-wren"
_FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Variables that would make boto3 use something other than the fake credentials.
_CREDENTIAL_SOURCES = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@dataclass
class StandIn:
    """What ``aws_standin`` started: URLs, the bucket, the function, and the fault knobs."""

    s3_url: str
    lambda_url: str
    bucket: str
    function_name: str
    region: str
    endpoint: LambdaEndpoint
    faults: Faults
    prefix: str = PREFIX
    #: The key the function and its hosts share (hex), as ``dask-wren deploy`` makes one.
    signing_key: str = field(default_factory=lambda: SigningKey.generate().text(), repr=False)
    settings_overrides: dict[str, Any] = field(init=False, repr=False)
    dask_config: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.settings_overrides = aws_settings(
            bucket=self.bucket, s3_url=self.s3_url, region=self.region, function_name=self.function_name,
            signing_key=self.signing_key, lambda_url=self.lambda_url, prefix=self.prefix,
        )
        self.dask_config = as_dask_config(self.settings_overrides)

    def ensure_bucket(self) -> StandIn:
        """Create the bucket again if it is gone (moto's in-process mocks reset the state that
        its server shares when they stop); returns the stand-in."""
        _ensure_bucket(self.s3_url, self.bucket)
        return self

    def s3_client(self, **kwargs: Any) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_url, region_name=self.region, **kwargs)

    def executions(self, request_id: str | None = None, **filters: Any) -> list[Execution]:
        """The function's executions (see ``LambdaEndpoint.executions``): how often a call ran is
        ``len(standin.executions(job_id=job, call_id=call))``."""
        return self.endpoint.executions(request_id, function=self.function_name, **filters)

    def lambda_client(self, **kwargs: Any) -> Any:
        """A boto3 Lambda client for the stand-in; ``config=`` etc. pass through."""
        import boto3

        return boto3.client("lambda", endpoint_url=self.lambda_url, region_name=self.region, **kwargs)


@contextmanager
def aws_standin(
    workers: int = 2,
    faults: Faults | None = None,
    bucket: str = "dask-wren-test",
    function_name: str = "dask-wren",
    s3_endpoint: str | None = None,
    *,
    timeout: float = 300,
    memory_mb: int = 2048,
    enforce_memory: bool = True,
    async_retries: int = 0,
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    prefix: str = PREFIX,
    verbose: bool = False,
) -> Iterator[StandIn]:
    """Start S3 (moto, unless ``s3_endpoint`` is given) and a Lambda endpoint; yield a ``StandIn``.

    ``workers``: worker processes behind the function (its concurrency).  ``faults``: a
    ``Faults`` to inject (default: none; change ``standin.faults`` at any time).

    The function is configured as ``dask-wren deploy`` configures it: ``timeout`` / ``memory_mb``
    are its Timeout and MemorySize, both enforced as Lambda enforces them (memory unless
    ``enforce_memory`` is False); its event-invoke-config sets ``MaximumRetryAttempts`` to
    ``async_retries`` (0, as deploy does; 1 or 2 to test Lambda's retries, which come after
    ``retry_delays`` seconds); its ``Environment`` carries the host's versions and
    ``DASK_WREN_BUCKET`` / ``DASK_WREN_PREFIX`` (``bucket``, ``prefix``).  ``settings_overrides``
    and ``dask_config`` use the same prefix.  moto's server logs each S3 request (through the
    ``werkzeug`` logger); that log is kept to warnings while the block runs unless ``verbose``.
    """
    saved = dict(os.environ)
    request_log = logging.getLogger("werkzeug")
    request_log_level = request_log.level
    moto_server = None
    endpoint = None
    try:
        if s3_endpoint is None or not os.environ.get("AWS_ACCESS_KEY_ID"):
            for name in _CREDENTIAL_SOURCES:
                os.environ.pop(name, None)
            os.environ.update(_FAKE_CREDENTIALS)
        os.environ["AWS_DEFAULT_REGION"] = REGION
        if s3_endpoint is None:
            from moto.server import ThreadedMotoServer

            if not verbose:  # a line per request otherwise (26 for a 3-call map)
                request_log.setLevel(logging.WARNING)

            moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            moto_server.start()
            host, port = moto_server.get_host_and_port()
            s3_url = f"http://{host}:{port}"
        else:
            s3_url = s3_endpoint.rstrip("/")
        _ensure_bucket(s3_url, bucket)
        endpoint = LambdaEndpoint(workers=workers, faults=faults, region=REGION, retry_delays=retry_delays).start()
        signing_key = SigningKey.generate().text()
        endpoint.add_function(
            function_name, timeout=timeout, memory_mb=memory_mb, enforce_memory=enforce_memory,
            environment={"DASK_WREN_BUCKET": bucket, "DASK_WREN_PREFIX": prefix, KEY_VARIABLE: signing_key},
        )
        endpoint.put_event_invoke_config(function_name, MaximumRetryAttempts=async_retries)
        yield StandIn(
            s3_url=s3_url,
            lambda_url=endpoint.url,
            bucket=bucket,
            function_name=function_name,
            region=REGION,
            endpoint=endpoint,
            faults=endpoint.faults,
            prefix=prefix,
            signing_key=signing_key,
        )
    finally:
        try:
            if endpoint is not None:
                endpoint.stop()
            if moto_server is not None:
                moto_server.stop()
        finally:
            _restore_environment(saved)
            request_log.setLevel(request_log_level)


def _restore_environment(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _ensure_bucket(s3_url: str, bucket: str) -> None:
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=s3_url, region_name=REGION)
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
