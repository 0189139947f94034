"""What the user asked for (``DeployOptions``, ``DestroyOptions``) and what it resolves to.

The checks that need no AWS call run on the options, so a typo fails before anything is touched;
``resolve`` then adds what needs AWS (account, region, default bucket) into one ``DeployConfig``.
The CLI builds the options from these dataclasses' fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dask_wren.deploy.clients import AwsClients, DeployError
from dask_wren.deploy.layer import ARCHITECTURES, lambda_runtime, user_requirements
from dask_wren.deploy.policies import event_invoke_config, settings_document, worker_policy
from dask_wren.deploy.settings_file import default_config_file
from dask_wren.deployment import host_python, host_versions

MAX_TIMEOUT = 900


@dataclass(frozen=True)
class DeployOptions:
    """What the user asked for, before defaults that need AWS (account, region) are resolved."""

    function_name: str | None = None
    bucket: str | None = None
    region: str | None = None
    prefix: str | None = None
    memory: int = 2048
    timeout: int = 300
    arch: str = "x86_64"
    expire_days: int = 7
    config_file: Path | None = None
    endpoint_url: str | None = None
    layer_zip: Path | None = None
    dry_run: bool = False
    #: the user's packages: requirement files (``-r`` lines, comments and blank lines allowed)
    #: and requirement specifiers, added to the runtime in package layers
    requirements: tuple[Path, ...] = ()
    packages: tuple[str, ...] = ()
    #: deploy the worker as this container image (built from runtime/Dockerfile, in ECR) instead of
    #: the zip function and its layers
    image_uri: str | None = None


class _Names:
    """The names deploy gives the function's role and runtime layer, for deploy and destroy alike."""

    function_name: str

    @property
    def role_name(self) -> str:
        return f"{self.function_name}-role"

    @property
    def layer_name(self) -> str:
        return f"{self.function_name}-runtime"


@dataclass(frozen=True)
class DeployConfig(_Names):
    """Everything resolved: the deployment's names, sizes and where it lives."""

    function_name: str
    bucket: str
    region: str
    account: str
    partition: str
    prefix: str
    memory: int
    timeout: int
    arch: str
    expire_days: int
    config_file: Path
    endpoint_url: str | None
    python: str
    versions: dict[str, str]
    event_age: int = 600  # MaximumEventAgeInSeconds: wren.aws.throttle-timeout within Lambda's range
    image_uri: str | None = None  # a container-image function (PackageType Image), no layers

    def package_layer_name(self, number: int) -> str:
        """The ``number``-th (1-based) layer of the user's packages."""
        return package_layer_name(self.function_name, number)

    @property
    def runtime(self) -> str:
        return lambda_runtime(self.python)

    @property
    def default_role_arn(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/{self.role_name}"

    @property
    def layer_arn(self) -> str:
        return self.layer_arn_of(self.layer_name)

    def layer_arn_of(self, layer_name: str) -> str:
        return f"arn:{self.partition}:lambda:{self.region}:{self.account}:layer:{layer_name}"

    def worker_policy(self) -> dict[str, Any]:
        return worker_policy(self.bucket, self.prefix, self.region, self.account, self.function_name, self.partition)

    def settings_document(self, max_concurrency: int | None = None, signing_key: str | None = None) -> dict[str, Any]:
        return settings_document(
            function_name=self.function_name,
            bucket=self.bucket,
            region=self.region,
            prefix=self.prefix,
            endpoint_url=self.endpoint_url,
            max_concurrency=max_concurrency,
            signing_key=signing_key,
        )


def package_layer_name(function_name: str, number: int) -> str:
    return f"{function_name}-packages-{number}"


def default_bucket(account: str, region: str) -> str:
    return f"dask-wren-{account}-{region}"


def check_options(opts: DeployOptions) -> None:
    """Checks that need no AWS call, so a typo fails before anything is touched."""
    if opts.function_name is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,59}", opts.function_name):
        raise DeployError(
            f"function name {opts.function_name!r} is not valid: use 1-59 letters, digits, '-' or '_' "
            "(the role adds '-role' and IAM allows 64 characters)"
        )
    if opts.bucket is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", opts.bucket):
        raise DeployError(f"bucket name {opts.bucket!r} is not valid: use 3-63 lowercase letters, digits, '.' or '-'")
    if opts.prefix is not None and (not opts.prefix.strip("/") or any(c in opts.prefix for c in "*?")):
        raise DeployError(f"prefix {opts.prefix!r} is not valid: give a non-empty key prefix without '*' or '?'")
    if not 128 <= opts.memory <= 10240:
        raise DeployError(f"--memory must be between 128 and 10240 MB, not {opts.memory}")
    if not 1 <= opts.timeout <= MAX_TIMEOUT:
        raise DeployError(f"--timeout must be between 1 and {MAX_TIMEOUT} seconds (Lambda's limit), not {opts.timeout}")
    if opts.arch not in ARCHITECTURES:
        raise DeployError(f"--arch must be one of {', '.join(ARCHITECTURES)}, not {opts.arch!r}")
    if opts.expire_days < 1:
        raise DeployError(f"--expire-days must be at least 1, not {opts.expire_days}")
    if opts.layer_zip is not None and not Path(opts.layer_zip).is_file():
        raise DeployError(f"--layer-zip {opts.layer_zip}: no such file")
    user_requirements(opts.requirements, opts.packages)  # a missing or unreadable --requirements file fails here
    if opts.image_uri is not None:
        if opts.layer_zip is not None or opts.requirements or opts.packages:
            raise DeployError(
                "--image-uri deploys a container image, which holds the runtime and your packages itself: "
                "drop --layer-zip, --packages and --requirements (install packages in the image: runtime/Dockerfile)"
            )
        if not re.fullmatch(r"[^\s/]+/[^\s:@]+(:[\w][\w.-]*|@sha256:[0-9a-f]{64})", opts.image_uri):
            raise DeployError(
                f"--image-uri {opts.image_uri!r} is not an image URI with a tag or digest, like "
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/dask-wren:1"
            )


def resolve(opts: DeployOptions, clients: AwsClients, account: str, partition: str) -> DeployConfig:
    """The deployment ``opts`` describe, with the defaults of the ``wren.*`` settings and of AWS filled in."""
    import dask.config

    import dask_wren.config  # noqa: F401  (loads the wren.* defaults)

    python = host_python()
    prefix = (opts.prefix or dask.config.get("wren.storage.prefix") or "dask-wren").strip("/")
    throttle_timeout = dask.config.get("wren.aws.throttle-timeout", 600)
    throttle_timeout = 600 if throttle_timeout is None else float(throttle_timeout)
    return DeployConfig(
        function_name=opts.function_name or dask.config.get("wren.aws.function-name") or "dask-wren",
        bucket=opts.bucket or default_bucket(account, clients.region),
        region=clients.region,
        account=account,
        partition=partition,
        prefix=prefix,
        memory=opts.memory,
        timeout=opts.timeout,
        arch=opts.arch,
        expire_days=opts.expire_days,
        config_file=Path(opts.config_file or default_config_file()).expanduser(),
        endpoint_url=opts.endpoint_url,
        python=python,
        versions=host_versions(),
        event_age=event_invoke_config(throttle_timeout)["MaximumEventAgeInSeconds"],
        image_uri=opts.image_uri,
    )


@dataclass(frozen=True)
class DestroyOptions:
    """What ``dask-wren destroy`` was asked to delete (unset names resolve as for deploy)."""

    function_name: str | None = None
    bucket: str | None = None
    region: str | None = None
    delete_bucket: bool = False
    endpoint_url: str | None = None
    config_file: Path | None = None
    dry_run: bool = False
    yes: bool = False


@dataclass(frozen=True)
class DestroyTarget(_Names):
    """The deployment ``destroy`` deletes, every name resolved."""

    function_name: str
    bucket: str
    region: str
    delete_bucket: bool
    config_file: Path


def resolve_target(opts: DestroyOptions, region: str, account: str) -> DestroyTarget:
    """The names ``resolve`` gives a deployment, for the one ``opts`` name (defaults alike)."""
    import dask.config

    import dask_wren.config  # noqa: F401  (loads the wren.* defaults)

    return DestroyTarget(
        function_name=opts.function_name or dask.config.get("wren.aws.function-name") or "dask-wren",
        bucket=opts.bucket or default_bucket(account, region),
        region=region,
        delete_bucket=opts.delete_bucket,
        config_file=Path(opts.config_file or default_config_file()).expanduser(),
    )
