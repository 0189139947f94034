"""``dask-wren deploy`` / ``destroy``: the AWS side of the cloud button, set up idempotently.

``deploy`` makes sure of, in order: the worker's IAM role and its one inline policy, the S3 bucket
(public access blocked, objects under the prefix expiring), the runtime layer (the worker code and
its packages, built with pip for Lambda's platform, no Docker) and the layers of the user's
packages (``--packages`` / ``--requirements``), the Lambda function (or a container-image one,
``--image-uri``), its asynchronous invoke configuration (no Lambda retries: the host is the one
retry authority), a reading of the concurrency the function really has, and the dask-wren
settings file that makes ``default_executor()`` use all of it.

Every step looks its resource up first and returns a ``Change``: what it would do (create, update
or nothing) and a closure that does it.  ``--dry-run`` runs exactly the same planning and only
skips the closures, so the plan it prints is the plan a real run carries out.

The documents that decide what the worker may do (trust policy, inline policy, lifecycle rule,
function settings, settings file) are built by pure functions at the top of this module.
"""

from __future__ import annotations

import base64
import copy
import csv
import functools
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dask_wren.errors import WrenError

# -- constants ---------------------------------------------------------------------------------

HANDLER = "lambda_worker.handler.lambda_handler"
#: Python minors Lambda has a managed runtime for, and the glibc minor of that runtime's OS
#: (python3.10 and 3.11 run on Amazon Linux 2, glibc 2.26; python3.12+ on Amazon Linux 2023, glibc 2.34).
#: 3.9 is left out: the project itself requires Python 3.10 or newer.
LAMBDA_PYTHONS: dict[str, int] = {"3.10": 26, "3.11": 26, "3.12": 34, "3.13": 34, "3.14": 34}
#: The first botocore (and boto3) release whose S3 model has ``IfNoneMatch`` on PutObject: workers
#: write result records with conditional writes (first writer wins), which older SDKs reject.
#: Found by downloading botocore 1.35.1 and 1.35.2 and reading PutObjectRequest in their s3 model.
BOTOCORE_FLOOR = "1.35.2"
ARCHITECTURES: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda name -> wheel tag
LIFECYCLE_RULE_ID = "dask-wren-expire"
POLICY_NAME = "dask-wren-worker"
MiB = 1024 * 1024
LAYER_UNZIPPED_LIMIT = 250 * MiB  # function + layers, unzipped (a Lambda limit)
DIRECT_UPLOAD_LIMIT = 50 * MiB  # larger zips must be published from S3 (a Lambda limit)
MAX_TIMEOUT = 900
MAX_LAYERS = 5  # layers per function (a Lambda limit): the runtime layer and up to 4 package layers
PACKAGE_LAYER_TARGET = 48 * MiB  # unzipped bytes per package layer, so most zips go up directly
EVENT_AGE_RANGE = (60, 21600)  # MaximumEventAgeInSeconds, seconds (a Lambda limit)
ROLE_RETRY_ATTEMPTS = 12  # create_function while a new role propagates through IAM: ~1 min
ROLE_RETRY_DELAY = 5.0
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same zip and sha256
_REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "runtime" / "requirements.txt"
_FALLBACK_REQUIREMENTS = ["cloudpickle>=3.0", "tblib>=3.0", "numpy", "dask", "toolz"]
#: Packages pinned to the host's version in the layer: ``==`` where pickles demand equality,
#: ``<=`` elsewhere (the host's version when Lambda's platform has a wheel, else the newest older one).
_PIN_EXACT = ("cloudpickle",)
_PIN_AT_MOST = ("tblib", "numpy", "dask", "toolz", "boto3", "botocore")
_FUNCTION_README = (
    b"dask-wren worker function.\n\nThe handler (lambda_worker.handler.lambda_handler) and its packages live in the\n"
    b"function's runtime layer (/opt/python); this package holds no code. Managed by `dask-wren deploy`.\n"
)
_FUNCTION_DESCRIPTION = "dask-wren worker (managed by dask-wren deploy)"


class DeployError(WrenError):
    """Something the user can fix stops the deploy; the message says what and how."""


# -- pure documents ----------------------------------------------------------------------------


def trust_policy() -> dict[str, Any]:
    """Only the Lambda service may assume the worker role."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }


def log_group_arn(region: str, account: str, function_name: str, partition: str = "aws") -> str:
    return f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{function_name}"


def worker_policy(
    bucket: str, prefix: str, region: str, account: str, function_name: str, partition: str = "aws"
) -> dict[str, Any]:
    """The worker's only permissions: read payloads and write result records under the prefix, and log.

    The host, not the worker, lists results and deletes job objects: no ``s3:ListBucket`` and no
    ``s3:DeleteObject`` here.  (Without ListBucket, S3 answers a missing key with 403 AccessDenied.)
    """
    group = log_group_arn(region, account, function_name, partition)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "WrenObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/*",
            },
            {"Sid": "LogGroup", "Effect": "Allow", "Action": "logs:CreateLogGroup", "Resource": group},
            {
                "Sid": "LogEvents",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"{group}:*",
            },
        ],
    }


def public_access_block() -> dict[str, bool]:
    return {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }


def lifecycle_rule(prefix: str, expire_days: int) -> dict[str, Any]:
    """Job objects the executor failed to delete (a killed host, say) expire on their own."""
    return {
        "ID": LIFECYCLE_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": f"{prefix}/"},
        "Expiration": {"Days": expire_days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }


def function_environment(
    versions: dict[str, str], *, bucket: str | None = None, prefix: str | None = None
) -> dict[str, str]:
    """What the function was deployed for; the invoker checks these against its host before invoking.

    The four ``DASK_WREN_{PYTHON,CLOUDPICKLE,DASK,PROTOCOL}`` are versions, compared with the host's;
    ``DASK_WREN_BUCKET`` and ``DASK_WREN_PREFIX`` are where the function may read and write (its
    role allows nothing else), compared with the executor's storage.
    """
    env = {
        "DASK_WREN_PYTHON": versions["python"],
        "DASK_WREN_CLOUDPICKLE": versions["cloudpickle"],
        "DASK_WREN_DASK": versions["dask"],
        "DASK_WREN_PROTOCOL": versions["protocol"],
    }
    if bucket is not None:
        env["DASK_WREN_BUCKET"] = bucket
    if prefix is not None:
        env["DASK_WREN_PREFIX"] = prefix
    return env


def event_invoke_config(throttle_timeout: float) -> dict[str, int]:
    """The function's asynchronous invoke configuration: the host is the one retry authority.

    Lambda retries a failed async event twice by default and keeps a throttled one for up to six
    hours; the host already re-invokes lost calls and waits ``wren.aws.throttle-timeout`` on
    throttling, so Lambda retries nothing and drops an event older than that (within 60..21600 s).
    """
    low, high = EVENT_AGE_RANGE
    return {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": int(min(high, max(low, throttle_timeout)))}


def settings_document(
    *,
    function_name: str,
    bucket: str,
    region: str,
    prefix: str,
    endpoint_url: str | None,
    max_concurrency: int | None = None,
) -> dict[str, Any]:
    """The ``wren.*`` settings that point ``default_executor()`` at the deployment.

    ``max_concurrency``, when known, is the concurrency the function really has (its reservation,
    or the account's unreserved pool): more calls in flight would only queue inside Lambda.
    """
    storage: dict[str, Any] = {"kind": "s3", "bucket": bucket, "region": region, "prefix": prefix}
    aws: dict[str, Any] = {"function-name": function_name, "region": region}
    if max_concurrency is not None:
        aws["max-concurrency"] = max_concurrency
    # Always written, null without --endpoint-url: a later deploy to real AWS clears a stand-in's URL.
    storage["endpoint-url"] = endpoint_url
    aws["lambda-endpoint-url"] = endpoint_url
    return {"wren": {"backend": "aws", "storage": storage, "aws": aws}}


def host_versions() -> dict[str, str]:
    """Versions of this interpreter that the worker must share (protocol, Python, cloudpickle, dask)."""
    import cloudpickle
    import dask

    from lambda_worker.protocol import PROTOCOL_VERSION

    return {
        "python": host_python(),
        "cloudpickle": cloudpickle.__version__,
        "dask": dask.__version__,
        "protocol": str(PROTOCOL_VERSION),
    }


def host_python() -> str:
    """This interpreter's ``major.minor``: the runtime and the layer are built for it."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def lambda_runtime(python: str) -> str:
    if python not in LAMBDA_PYTHONS:
        supported = ", ".join(LAMBDA_PYTHONS)
        raise DeployError(
            f"AWS Lambda has no managed runtime for Python {python} (it has {supported}); pickled functions only "
            f"cross between equal Python minors, so deploy from an environment running one of those"
        )
    return f"python{python}"


def lambda_platforms(python: str, arch: str) -> list[str]:
    """pip ``--platform`` tags of the wheels that run on the Lambda OS image for ``python``."""
    machine = ARCHITECTURES[arch]
    glibc = LAMBDA_PYTHONS[python]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc, 16, -1)]
    return tags + [f"manylinux2014_{machine}"]  # pip adds manylinux2010 and manylinux1 to this one


# -- typed settings ----------------------------------------------------------------------------


def default_config_file() -> Path:
    """Where dask.config looks: ``$DASK_CONFIG`` or ``~/.config/dask``."""
    import dask.config

    return Path(dask.config.PATH) / "wren.yaml"


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


@dataclass(frozen=True)
class DeployConfig:
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

    @property
    def role_name(self) -> str:
        return f"{self.function_name}-role"

    @property
    def layer_name(self) -> str:
        return f"{self.function_name}-runtime"

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

    def settings_document(self, max_concurrency: int | None = None) -> dict[str, Any]:
        return settings_document(
            function_name=self.function_name,
            bucket=self.bucket,
            region=self.region,
            prefix=self.prefix,
            endpoint_url=self.endpoint_url,
            max_concurrency=max_concurrency,
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
    user_requirements(opts)  # a missing or unreadable --requirements file fails here
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


def user_requirements(opts: DeployOptions) -> list[str]:
    """The user's requirements: every ``--requirements`` file's lines, then every ``--packages`` item."""
    reqs: list[str] = []
    for path in opts.requirements:
        reqs += read_requirements(Path(path))
    for spec in opts.packages:
        if not spec.strip():
            continue
        if spec.strip().startswith("-"):
            raise DeployError(f"--packages takes requirement specifiers (like 'scipy>=1.11'), not {spec!r}")
        reqs.append(spec.strip())
    return reqs


def read_requirements(path: Path, _seen: tuple[Path, ...] = ()) -> list[str]:
    """Requirement lines of a pip requirements file: comments and blank lines dropped, ``-r`` followed.

    Index options (``--index-url``, ``--extra-index-url``, ``--find-links``) and ``-c`` constraint
    files are kept for pip (paths made absolute); editable and source installs are refused, since
    the layer holds wheels for Lambda's platform only.
    """
    path = Path(path).expanduser()
    if path.resolve() in _seen:
        raise DeployError(f"requirements file {path} includes itself (through -r)")
    try:
        text = path.read_text()
    except OSError as e:
        raise DeployError(f"--requirements {path}: cannot read it ({e.strerror or e})") from None
    text = re.sub(r"\\\n", "", text)  # line continuations, joined as pip joins them
    reqs: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        option = re.match(r"(-r|--requirement|-c|--constraint)(?:\s+|=)?(\S+)$", line)
        if option:
            target = Path(option.group(2)).expanduser()
            target = target if target.is_absolute() else path.parent / target
            if option.group(1) in ("-r", "--requirement"):
                reqs += read_requirements(target, (*_seen, path.resolve()))
            else:
                if not target.is_file():
                    raise DeployError(f"{path}:{number}: constraint file {target} not found")
                reqs.append(f"-c {target}")
            continue
        if re.match(r"(-i|--index-url|--extra-index-url|-f|--find-links|--pre|--prefer-binary)\b", line):
            reqs.append(line)
            continue
        if line.startswith("-"):
            raise DeployError(
                f"{path}:{number}: {line!r} is not supported here: the package layers hold wheels for Lambda's "
                "platform only (no -e / source installs); use a container image for those (runtime/Dockerfile)"
            )
        reqs.append(line)
    return reqs


def resolve_region(region: str | None) -> str:
    if region:
        return region
    import boto3

    found = boto3.session.Session().region_name
    if not found:
        raise DeployError(
            "no AWS region: pass --region, or set AWS_REGION / AWS_DEFAULT_REGION, or 'region' in ~/.aws/config"
        )
    return found


# -- AWS clients: made here and nowhere else ---------------------------------------------------


@dataclass
class AwsClients:
    sts: Any
    iam: Any
    s3: Any
    lambda_: Any
    region: str
    endpoint_url: str | None = None

    @classmethod
    def create(cls, region: str, endpoint_url: str | None = None) -> AwsClients:
        import boto3
        import botocore.config

        session = boto3.session.Session(region_name=region)
        if session.get_credentials() is None:
            raise DeployError(
                "no AWS credentials found: run `aws configure` (or `aws sso login`), or set AWS_PROFILE, "
                "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 5})

        def make(name: str) -> Any:
            return session.client(name, region_name=region, endpoint_url=endpoint_url, config=config)

        return cls(make("sts"), make("iam"), make("s3"), make("lambda"), region, endpoint_url)

    def identity(self) -> tuple[str, str]:
        """(account id, partition) of the caller."""
        who = self.sts.get_caller_identity()
        return who["Account"], who["Arn"].split(":")[1]


def resolve(opts: DeployOptions, clients: AwsClients, account: str, partition: str) -> DeployConfig:
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


# -- the runtime layer -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerZip:
    """A layer zip, checked: its hash, sizes and the package versions its dist-info names."""

    path: Path
    sha256: str
    size: int
    unzipped_size: int
    versions: dict[str, str]
    #: unzipped bytes per package (by top-level name under ``python/``), for size reports
    packages: dict[str, int] = field(default_factory=dict)
    kind: str = "runtime"  # runtime (the handler and its packages) | packages (the user's)

    def description(self, python: str, arch: str) -> str:
        return f"dask-wren {self.kind} python{python} {arch} sha256={self.sha256}"


def format_size(n: int) -> str:
    return f"{n / MiB:.1f} MB" if n >= MiB else f"{n / 1024:.1f} KB"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _older(version: str, floor: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) < Version(floor)
    except InvalidVersion:
        return False


def _package_of(name: str) -> str | None:
    """The package a layer path belongs to, by its top-level entry under ``python/`` (for size reports)."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "python" or not parts[1]:
        return None
    top = parts[1]
    m = re.fullmatch(r"(.+?)-[^-]+\.(?:dist|egg)-info", top)
    if m:
        top = m.group(1)
    elif top.endswith((".libs", ".data")):
        top = top.rsplit(".", 1)[0]
    elif len(parts) == 2:  # a module: six.py, _cffi_backend.cpython-311-x86_64-linux-gnu.so
        top = top.split(".", 1)[0]
    return _normalize(top).strip("-") or top


def size_limit_message(total: int, sizes: Mapping[str, int]) -> str:
    """Over Lambda's unzipped limit: say by how much, which packages weigh most, and what to do."""
    largest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:6]
    named = ", ".join(f"{name} {format_size(n)}" for name, n in largest)
    return (
        f"the function and its layers would unzip to {format_size(total)}, over Lambda's 250 MB limit for a "
        f"function and all its layers together; the largest packages: {named}. Deploy fewer packages "
        "(--packages / --requirements, runtime/requirements.txt), or run the worker as a container image "
        "(up to 10 GB): see runtime/Dockerfile"
    )


def check_unzipped_size(layers: Sequence[LayerZip]) -> None:
    """Refuse, before any upload, a function whose layers together exceed Lambda's unzipped limit."""
    total = len(_FUNCTION_README) + sum(layer.unzipped_size for layer in layers)
    if total > LAYER_UNZIPPED_LIMIT:
        sizes: dict[str, int] = {}
        for layer in layers:
            for name, n in layer.packages.items():
                sizes[name] = sizes.get(name, 0) + n
        raise DeployError(size_limit_message(total, sizes))


def inspect_layer_zip(path: Path, python: str, arch: str, *, runtime: bool = True) -> LayerZip:
    """Hash and measure a layer zip, and refuse one Lambda could not use for this deployment.

    ``runtime``: the layer that holds the handler (else one of the user's package layers).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile) as e:
        raise DeployError(f"layer zip {path} cannot be read: {e}") from None
    names = {i.filename for i in infos}
    if runtime and "python/lambda_worker/handler.py" not in names:
        raise DeployError(
            f"layer zip {path} has no python/lambda_worker/handler.py: the function's handler {HANDLER} "
            "would not import (build it with `python runtime/build_layer.py` or let deploy build it)"
        )
    unzipped = sum(i.file_size for i in infos)
    packages: dict[str, int] = {}
    for info in infos:
        owner = _package_of(info.filename)
        if owner is not None:
            packages[owner] = packages.get(owner, 0) + info.file_size
    if unzipped + len(_FUNCTION_README) > LAYER_UNZIPPED_LIMIT:
        raise DeployError(f"layer zip {path}: " + size_limit_message(unzipped + len(_FUNCTION_README), packages))
    versions: dict[str, str] = {}
    tags: set[str] = set()
    machines: set[str] = set()
    for name in names:
        m = re.fullmatch(r"python/([^/]+?)-([^/-]+)\.dist-info/METADATA", name)
        if m:
            versions[_normalize(m.group(1))] = m.group(2)
        m = re.search(r"\.cpython-(\d)(\d+)-(\w+?)-linux-gnu\.so$", name)
        if m:
            tags.add(f"{m.group(1)}.{m.group(2)}")
            machines.add(m.group(3))
    if tags - {python}:
        raise DeployError(
            f"layer zip {path} holds extension modules for Python {', '.join(sorted(tags))}, "
            f"but this deployment is for Python {python}"
        )
    if machines - {ARCHITECTURES[arch]}:
        raise DeployError(
            f"layer zip {path} holds extension modules for {', '.join(sorted(machines))}, not {arch}: pass the "
            "matching --arch or rebuild the layer"
        )
    botocore = versions.get("botocore")
    if botocore and _older(botocore, BOTOCORE_FLOOR):
        raise DeployError(
            f"layer zip {path} has botocore {botocore}, older than {BOTOCORE_FLOOR}: workers write their result "
            f"records with S3 conditional writes (put_object IfNoneMatch='*', first writer wins), which botocore "
            f"knows from {BOTOCORE_FLOOR} on. Rebuild the layer with boto3 and botocore >= {BOTOCORE_FLOOR}: "
            f"`pip install -U 'boto3>={BOTOCORE_FLOOR}'` here, then deploy without --layer-zip (or run "
            "runtime/build_layer.py)"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return LayerZip(
        path, digest.hexdigest(), path.stat().st_size, unzipped, versions, packages, "runtime" if runtime else "packages"
    )


def runtime_requirements() -> list[str]:
    """``runtime/requirements.txt`` (a source checkout) or the same list built in, plus tblib and boto3.

    boto3 and botocore go into the layer although Lambda's runtime bundles them: the worker's S3
    store uses conditional writes (``IfNoneMatch``) that an older bundled SDK rejects
    (``BOTOCORE_FLOOR``), and the layer's copy comes first on the function's ``sys.path``.
    """
    if _REQUIREMENTS_FILE.is_file():
        lines = _REQUIREMENTS_FILE.read_text().splitlines()
        reqs = [line.split("#", 1)[0].strip() for line in lines]
        reqs = [r for r in reqs if r]
    else:
        reqs = list(_FALLBACK_REQUIREMENTS)
    named = {_requirement_name(r) for r in reqs}
    extras = {"tblib": "tblib", "boto3": f"boto3>={BOTOCORE_FLOOR}", "botocore": f"botocore>={BOTOCORE_FLOOR}"}
    return reqs + [spec for name, spec in extras.items() if name not in named]


def _requirement_name(spec: str) -> str:
    return _normalize(re.split(r"[<>=!~ ;\[@]", spec.strip(), maxsplit=1)[0])


def layer_constraints() -> list[str]:
    """Pins to the host's versions: equal cloudpickle (pickles demand it), nothing newer elsewhere."""
    from importlib import metadata

    pins = []
    for names, op in ((_PIN_EXACT, "=="), (_PIN_AT_MOST, "<=")):
        for name in names:
            try:
                pins.append(f"{name}{op}{metadata.version(name)}")
            except metadata.PackageNotFoundError:
                pass
    return pins


def _layer_filter(rel: Path) -> bool:
    """Keep this file in the layer?

    Bytecode, test suites and console scripts stay out, and so do ``dist-info/RECORD`` files: they
    hash the console scripts, whose first line names the interpreter that ran pip, so keeping them
    would make the same packages zip differently from another virtualenv.  The rest of dist-info
    stays (``importlib.metadata`` versions and entry points read it).
    """
    parts = rel.parts
    if "__pycache__" in parts or "tests" in parts[:-1] or (len(parts) > 1 and parts[1] == "bin"):
        return False
    if rel.name == "RECORD" and rel.parent.name.endswith(".dist-info"):
        return False
    return rel.suffix not in (".pyc", ".pyo")


def write_deterministic_zip(root: Path, dest: Path, keep: Callable[[Path], bool] = lambda rel: True) -> None:
    """Zip ``root``'s files in sorted order with fixed timestamps: same files, same bytes."""
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and keep(p.relative_to(root)))
    _zip_files(root, files, dest)


def _zip_files(root: Path, files: Iterable[Path], dest: Path) -> None:
    """Zip these files (relative to ``root``) in sorted order with fixed timestamps and modes."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(files, key=lambda r: r.as_posix()):
            p = root / rel
            info = zipfile.ZipInfo(rel.as_posix(), date_time=_ZIP_TIME)
            mode = 0o755 if p.stat().st_mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, p.read_bytes())


def _check_target(python: str | None, arch: str) -> str:
    python = python or host_python()
    lambda_runtime(python)
    if arch not in ARCHITECTURES:
        raise DeployError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {arch!r}")
    return python


def _run_pip(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run pip (the one place a layer build calls it; tests replace it with a fake)."""
    return subprocess.run(cmd, capture_output=True, text=True)


def _pip_install(
    site: Path, requirements: Sequence[str], *, python: str, arch: str, constraints: Sequence[str], failure: str
) -> None:
    """``pip install --target site`` wheels for Lambda's Linux and ``python``, in one resolution.

    Wheels only (``--only-binary=:all:``), for the glibc of the Lambda image that runs ``python``;
    ``requirements`` items starting with ``-`` are pip options (``-c file``, ``--extra-index-url u``).
    On failure, a ``DeployError``: ``failure`` and pip's last lines.
    """
    site.mkdir(parents=True, exist_ok=True)
    fd, constraints_file = tempfile.mkstemp(prefix="dask-wren-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{c}\n" for c in constraints))
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check"]
        for tag in lambda_platforms(python, arch):
            cmd += ["--platform", tag]
        cmd += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
        cmd += ["--target", str(site), "-c", constraints_file]
        for item in requirements:
            cmd += shlex.split(item) if item.startswith("-") else [item]
        proc = _run_pip(cmd)
    finally:
        os.unlink(constraints_file)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise DeployError(f"{failure}:\n{tail}")


def _install_runtime(site: Path, python: str, arch: str, out: Callable[[str], None]) -> None:
    """The runtime layer's tree: the runtime requirements (pinned to the host's), and ``lambda_worker``."""
    import lambda_worker

    out(f"building layer: pip install for python{python} {arch} ({', '.join(layer_constraints())})")
    _pip_install(
        site,
        runtime_requirements(),
        python=python,
        arch=arch,
        constraints=layer_constraints(),
        failure=f"pip could not build the runtime layer for python{python} {arch}",
    )
    shutil.copytree(
        Path(lambda_worker.__file__).parent,
        site / "lambda_worker",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )


def build_layer(
    dest: Path, *, python: str | None = None, arch: str = "x86_64", out: Callable[[str], None] = print
) -> Path:
    """Build the runtime layer zip at ``dest`` with pip, for Lambda's Linux, without Docker.

    Wheels only (``--only-binary=:all:``), for ``python`` (default: this interpreter's minor) and
    the glibc of the Lambda image that runs it; then the project's ``lambda_worker`` is added.
    """
    python = _check_target(python, arch)
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="dask-wren-layer-") as tmp:
        site = Path(tmp) / "layer" / "python"
        _install_runtime(site, python, arch, out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_deterministic_zip(site.parent, dest, _layer_filter)
    return dest


# -- the user's packages -----------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """One installed distribution of a ``--target`` tree: the files (relative to the layer root) it owns."""

    name: str  # normalized
    version: str
    files: tuple[Path, ...]
    size: int


def site_distributions(site: Path) -> dict[str, Distribution]:
    """The distributions pip installed into ``site`` (a ``--target`` directory named ``python``).

    Each owns the files its ``RECORD`` lists and its dist-info; a file no RECORD lists goes with
    the distribution owning others under the same top-level entry (or makes one of its own, named
    after that entry).  Files a layer leaves out (``_layer_filter``) are not counted.
    """
    root = site.parent
    owned: dict[Path, str] = {}
    versions: dict[str, str] = {}
    for info in sorted(site.glob("*.dist-info")):
        m = re.fullmatch(r"(.+?)-([^-]+)\.dist-info", info.name)
        if not m or not info.is_dir():
            continue
        name = _normalize(m.group(1))
        versions[name] = m.group(2)
        record = info / "RECORD"
        rows = csv.reader(record.read_text().splitlines()) if record.is_file() else []
        for row in rows:
            if not row or not row[0]:
                continue
            path = Path(os.path.normpath(site / row[0]))
            if path.is_file() and path.is_relative_to(site):
                owned.setdefault(path.relative_to(root), name)
        for path in info.rglob("*"):
            if path.is_file():
                owned.setdefault(path.relative_to(root), name)
    top_owner: dict[str, str] = {}
    for rel, name in sorted(owned.items()):
        top_owner.setdefault(rel.parts[1], name)
    for path in sorted(site.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel not in owned:
            name = top_owner.get(rel.parts[1]) or _package_of(rel.as_posix()) or rel.parts[1]
            versions.setdefault(name, "")
            owned[rel] = name
    files: dict[str, list[Path]] = {}
    for rel, name in owned.items():
        if _layer_filter(rel):
            files.setdefault(name, []).append(rel)
    return {  # a distribution always keeps its METADATA; an entry left empty (bin/, say) is nothing to ship
        name: Distribution(name, versions[name], tuple(sorted(fs)), sum((root / f).stat().st_size for f in fs))
        for name, fs in sorted(files.items())
    }


def split_layers(
    dists: Sequence[Distribution], max_layers: int = MAX_LAYERS - 1, target: int | None = None
) -> list[list[Distribution]]:
    """Group distributions into at most ``max_layers`` layers, a distribution never split.

    Groups are runs in name order of at most ``target`` unzipped bytes (a larger distribution makes
    a layer of its own), so most zips are small enough to upload directly and a change to one
    package republishes only its layer.  When that makes too many layers the groups grow.
    """
    ordered = sorted(dists, key=lambda d: d.name)
    if not ordered:
        return []
    capacity = max(PACKAGE_LAYER_TARGET if target is None else target, -(-sum(d.size for d in ordered) // max_layers))
    while True:
        groups: list[list[Distribution]] = [[]]
        size = 0
        for d in ordered:
            if groups[-1] and size + d.size > capacity:
                groups.append([])
                size = 0
            groups[-1].append(d)
            size += d.size
        if len(groups) <= max_layers:
            return groups
        capacity = capacity * 5 // 4 + 1


def package_layers_for(
    requirements: Sequence[str],
    base: LayerZip | Mapping[str, Distribution],
    workdir: Path,
    *,
    python: str,
    arch: str,
    out: Callable[[str], None] = print,
) -> list[Path]:
    """Zips of the user's packages for a function whose runtime layer is ``base``.

    One pip resolution of the runtime's requirements together with ``requirements``, under the
    runtime's constraints plus every distribution of ``base`` pinned to its version there: a user
    package cannot bring a second numpy or another cloudpickle.  The distributions ``base`` lacks
    go into at most four layers (``split_layers``); the size of everything together is checked
    against Lambda's limit before a zip is written.
    """
    if not requirements:
        return []
    if isinstance(base, LayerZip):
        pinned, base_sizes, base_size = dict(base.versions), dict(base.packages), base.unzipped_size
    else:
        pinned = {d.name: d.version for d in base.values() if d.version}
        base_sizes = {d.name: d.size for d in base.values()}
        base_size = sum(base_sizes.values())
    workdir = Path(workdir)
    site = workdir / "packages-site" / "python"
    shutil.rmtree(site.parent, ignore_errors=True)
    for old in workdir.glob("packages-*.zip"):
        old.unlink()
    user = [r for r in requirements if not r.startswith("-")]
    out(f"building package layers: pip install {' '.join(user)} for python{python} {arch}, with the runtime's "
        f"{len(pinned)} distributions pinned")
    _pip_install(
        site,
        [*runtime_requirements(), *requirements],
        python=python,
        arch=arch,
        constraints=[*layer_constraints(), *(f"{name}=={v}" for name, v in sorted(pinned.items()))],
        failure=(
            f"pip could not install {', '.join(user) or 'the requested packages'} for Lambda's python{python} {arch} "
            "together with the runtime's packages (wheels for Lambda's platform only; the runtime's versions pinned). "
            "A package without such a wheel needs a container image (runtime/Dockerfile). pip said"
        ),
    )
    installed = site_distributions(site)
    mine = [d for name, d in installed.items() if name not in pinned]
    if not mine:
        out("package layers: none needed, the runtime layer has every requested package")
        return []
    total = len(_FUNCTION_README) + base_size + sum(d.size for d in mine)
    if total > LAYER_UNZIPPED_LIMIT:
        raise DeployError(size_limit_message(total, {**base_sizes, **{d.name: d.size for d in mine}}))
    paths = []
    for number, group in enumerate(split_layers(mine), 1):
        dest = workdir / f"packages-{number}.zip"
        _zip_files(site.parent, [f for d in group for f in d.files], dest)
        names = ", ".join(f"{d.name} {d.version}".strip() for d in group)
        out(f"package layer {number}: {names} ({format_size(sum(d.size for d in group))} unzipped)")
        paths.append(dest)
    return paths


def build_package_layers(
    requirements: Sequence[str],
    workdir: Path,
    *,
    python: str | None = None,
    arch: str = "x86_64",
    out: Callable[[str], None] = print,
) -> list[Path]:
    """Zips (each with a top-level ``python/``) of layers holding only the user's ``requirements``.

    They hold the requested packages and the dependencies the runtime layer (``build_layer``) does
    not have, resolved with pip for Lambda's platform and ``python`` minor (default: this
    interpreter's) together with the runtime's requirements, the runtime's versions as constraints.
    Unzipped next to the runtime layer (``/opt/python``, in order), they complete it.  Written
    into ``workdir`` (``packages-1.zip``, ...); an empty list when nothing is missing.
    """
    python = _check_target(python, arch)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    site = workdir / "runtime-site" / "python"
    shutil.rmtree(site.parent, ignore_errors=True)
    _install_runtime(site, python, arch, out)
    base = site_distributions(site)
    return package_layers_for(requirements, base, workdir, python=python, arch=arch, out=out)


def _function_zip() -> bytes:
    """The function's own package: a README (the code comes from the layer).  Always the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("README.txt", date_time=_ZIP_TIME)
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, _FUNCTION_README)
    return buf.getvalue()


# -- plans -------------------------------------------------------------------------------------

_DONE = {"create": "created", "update": "updated", "delete": "deleted", "publish": "published"}


@dataclass
class Change:
    """One resource's planned action.  ``apply`` carries it out; ``None`` when there is nothing to do."""

    resource: str
    action: str  # create | update | publish | delete | unchanged | absent | kept | read | unknown
    detail: str = ""
    apply: Callable[[], str | None] | None = None

    def line(self, dry_run: bool, result: str | None = None) -> str:
        if self.action in _DONE:
            verb = f"would {self.action}" if dry_run else _DONE[self.action]
        else:
            verb = self.action
        detail = result or self.detail
        return f"{self.resource}: {verb}" + (f" ({detail})" if detail else "")


@dataclass
class DeployState:
    """What later steps need from earlier ones; predicted values during a dry run."""

    layer: LayerZip | None  # None for a container-image function
    versions: dict[str, str]
    package_layers: list[LayerZip] = field(default_factory=list)
    role_arn: str = ""
    role_exists: bool = False
    bucket_exists: bool = False
    layer_arn: str = ""
    package_layer_arns: list[str] = field(default_factory=list)
    function_exists: bool = False
    max_concurrency: int | None = None  # what the function really has, when known

    @property
    def layer_arns(self) -> list[str]:
        """The function's ``Layers``, in order: the runtime layer, then the package layers."""
        return [self.layer_arn, *self.package_layer_arns]


def _code(e: Any) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


def _canonical(doc: Any) -> Any:
    """A policy document compared by meaning: single-item lists are scalars, lists unordered."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            return doc
    if isinstance(doc, dict):
        return {k: _canonical(v) for k, v in doc.items()}
    if isinstance(doc, list):
        items = [_canonical(v) for v in doc]
        return items[0] if len(items) == 1 else sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return doc


def plan_role(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    iam, name = aws.iam, cfg.role_name
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except _client_error() as e:
        if _code(e) != "NoSuchEntity":
            raise
        state.role_arn, state.role_exists = cfg.default_role_arn, False

        def create() -> None:
            state.role_exists = True
            state.role_arn = iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(trust_policy()),
                Description=f"dask-wren worker role for Lambda function {cfg.function_name}",
                Tags=[{"Key": "dask-wren", "Value": cfg.function_name}],
            )["Role"]["Arn"]

        return Change(f"role {name}", "create", apply=create)
    state.role_arn, state.role_exists = role["Arn"], True
    if _canonical(role.get("AssumeRolePolicyDocument")) == _canonical(trust_policy()):
        return Change(f"role {name}", "unchanged")

    def update() -> None:
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust_policy()))

    return Change(f"role {name}", "update", "trust policy", update)


def plan_role_policy(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    iam, resource = aws.iam, f"role policy {cfg.role_name}/{POLICY_NAME}"
    wanted = cfg.worker_policy()
    current = None
    if state.role_exists:
        try:
            current = iam.get_role_policy(RoleName=cfg.role_name, PolicyName=POLICY_NAME)["PolicyDocument"]
        except _client_error() as e:
            if _code(e) != "NoSuchEntity":
                raise
    if current is not None and _canonical(current) == _canonical(wanted):
        return Change(resource, "unchanged")

    def put() -> None:
        iam.put_role_policy(RoleName=cfg.role_name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(wanted))

    return Change(resource, "create" if current is None else "update", f"s3://{cfg.bucket}/{cfg.prefix}/*", put)


def _role_exists(aws: AwsClients, name: str) -> bool:
    try:
        aws.iam.get_role(RoleName=name)
        return True
    except _client_error() as e:
        if _code(e) != "NoSuchEntity":
            raise
        return False


def plan_bucket(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    s3, bucket = aws.s3, cfg.bucket
    try:
        s3.head_bucket(Bucket=bucket)
    except _client_error() as e:
        code = _code(e)
        if code in ("403", "AccessDenied", "Forbidden"):
            raise DeployError(
                f"bucket {bucket} exists but this identity may not use it: another account owns it (bucket names "
                "are global: choose another --bucket), or you lack s3:ListBucket on it"
            ) from None
        where = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        if code in ("301", "PermanentRedirect") or (code == "400" and where and where != cfg.region):
            raise DeployError(
                f"bucket {bucket} is in region {where}, not {cfg.region}: pass --region {where} or another --bucket"
            ) from None
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
        state.bucket_exists = False

        def create() -> None:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if cfg.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": cfg.region}
            s3.create_bucket(**kwargs)
            state.bucket_exists = True

        return Change(f"bucket {bucket}", "create", cfg.region, create)
    state.bucket_exists = True
    location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
    location = {"EU": "eu-west-1"}.get(location, location)
    if location != cfg.region:
        raise DeployError(
            f"bucket {bucket} is in region {location}, not {cfg.region}: pass --region {location} or another --bucket"
        )
    return Change(f"bucket {bucket}", "unchanged")


def plan_public_access(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    s3, resource, wanted = aws.s3, f"bucket {cfg.bucket} public access block", public_access_block()
    current = None
    if state.bucket_exists:
        try:
            current = s3.get_public_access_block(Bucket=cfg.bucket)["PublicAccessBlockConfiguration"]
        except _client_error() as e:
            if _code(e) != "NoSuchPublicAccessBlockConfiguration":
                raise
    if current == wanted:
        return Change(resource, "unchanged")

    def put() -> None:
        s3.put_public_access_block(Bucket=cfg.bucket, PublicAccessBlockConfiguration=wanted)

    return Change(resource, "create" if current is None else "update", "all public access blocked", put)


def plan_lifecycle(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    s3, resource = aws.s3, f"bucket {cfg.bucket} lifecycle rule {LIFECYCLE_RULE_ID}"
    wanted = lifecycle_rule(cfg.prefix, cfg.expire_days)
    rules: list[dict[str, Any]] = []
    if state.bucket_exists:
        try:
            rules = s3.get_bucket_lifecycle_configuration(Bucket=cfg.bucket)["Rules"]
        except _client_error() as e:
            if _code(e) != "NoSuchLifecycleConfiguration":
                raise
    ours = next((r for r in rules if r.get("ID") == LIFECYCLE_RULE_ID), None)
    if ours is not None and {k: ours.get(k) for k in wanted} == wanted and not ours.get("Transitions"):
        return Change(resource, "unchanged")
    others = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID]

    def put() -> None:
        s3.put_bucket_lifecycle_configuration(Bucket=cfg.bucket, LifecycleConfiguration={"Rules": [*others, wanted]})

    detail = f"expire {cfg.prefix}/ after {cfg.expire_days} days"
    return Change(resource, "create" if ours is None else "update", detail, put)


def plan_layer(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    """The runtime layer (the handler and its packages): published when its sha256 is new."""

    def record(arn: str) -> None:
        state.layer_arn = arn

    assert state.layer is not None, "no runtime layer for a container-image function"
    return _plan_layer_version(cfg, aws, cfg.layer_name, state.layer, record)


def plan_package_layer(cfg: DeployConfig, aws: AwsClients, state: DeployState, *, number: int) -> Change:
    """The ``number``-th layer of the user's packages (1-based), idempotent like the runtime layer."""
    while len(state.package_layer_arns) < len(state.package_layers):
        state.package_layer_arns.append("")

    def record(arn: str) -> None:
        state.package_layer_arns[number - 1] = arn

    return _plan_layer_version(cfg, aws, cfg.package_layer_name(number), state.package_layers[number - 1], record)


def _plan_layer_version(
    cfg: DeployConfig, aws: AwsClients, layer_name: str, layer: LayerZip, record: Callable[[str], None]
) -> Change:
    lam, resource = aws.lambda_, f"layer {layer_name}"
    description = layer.description(cfg.python, cfg.arch)
    versions: list[dict[str, Any]] = []
    try:
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=layer_name):
            versions += page.get("LayerVersions", [])
    except _client_error() as e:
        if _code(e) != "ResourceNotFoundException":
            raise
    latest = max(versions, key=lambda v: v["Version"], default=None)
    sizes = f"{format_size(layer.size)} zipped, {format_size(layer.unzipped_size)} unzipped"
    if latest is not None and latest.get("Description") == description:
        record(latest["LayerVersionArn"])
        return Change(resource, "unchanged", f"version {latest['Version']}, sha256 {layer.sha256[:12]}, {sizes}")
    number = (latest["Version"] if latest else 0) + 1
    record(f"{cfg.layer_arn_of(layer_name)}:{number}")

    def publish() -> str:
        kwargs: dict[str, Any] = {
            "LayerName": layer_name,
            "Description": description,
            "CompatibleRuntimes": [cfg.runtime],
            "CompatibleArchitectures": [cfg.arch],
        }
        via = "direct upload"
        if layer.size <= DIRECT_UPLOAD_LIMIT:
            published = lam.publish_layer_version(Content={"ZipFile": layer.path.read_bytes()}, **kwargs)
        else:
            key = f"{cfg.prefix}/_deploy/{layer_name}-{layer.sha256}.zip"
            aws.s3.upload_file(str(layer.path), cfg.bucket, key)
            try:
                published = lam.publish_layer_version(Content={"S3Bucket": cfg.bucket, "S3Key": key}, **kwargs)
            finally:
                aws.s3.delete_object(Bucket=cfg.bucket, Key=key)
            via = f"through s3://{cfg.bucket}/{key}"
        record(published["LayerVersionArn"])
        return f"version {published['Version']}, sha256 {layer.sha256[:12]}, {sizes}, {via}"

    return Change(resource, "publish", f"version {number}, sha256 {layer.sha256[:12]}, {sizes}", publish)


def function_settings(
    cfg: DeployConfig, role_arn: str, layer_arns: str | Sequence[str], versions: dict[str, str]
) -> dict[str, Any]:
    """The function configuration ``deploy`` wants (update_function_configuration's arguments).

    A container-image function has no runtime, handler or layers: the image holds them.
    """
    settings = {
        "Runtime": cfg.runtime,
        "Handler": HANDLER,
        "Role": role_arn,
        "MemorySize": cfg.memory,
        "Timeout": cfg.timeout,
        "Layers": [layer_arns] if isinstance(layer_arns, str) else list(layer_arns),
        "Environment": {"Variables": function_environment(versions, bucket=cfg.bucket, prefix=cfg.prefix)},
        "Description": _FUNCTION_DESCRIPTION,
    }
    if cfg.image_uri:
        for key in ("Runtime", "Handler", "Layers"):
            del settings[key]
    return settings


def layer_versions(cfg: DeployConfig, layer: LayerZip) -> dict[str, str]:
    """The versions the function records (the host's), once the layer's own packages agree with them.

    The invoker refuses a function whose recorded cloudpickle or dask differs from its host's, so a
    layer holding other versions (a ``--layer-zip`` built elsewhere) is refused here already.
    """
    for name in ("cloudpickle", "dask"):
        in_layer = layer.versions.get(name)
        if in_layer and in_layer != cfg.versions[name]:
            raise DeployError(
                f"the layer has {name} {in_layer} but this environment has {cfg.versions[name]}: pickles only "
                f"cross between equal versions; rebuild the layer from this environment (drop --layer-zip) or "
                f"install {name}=={in_layer} here"
            )
    return dict(cfg.versions)


def _retry_while_role_propagates(call: Callable[[], Any], role: str, sleep: Callable[[float], None] = time.sleep) -> Any:
    """A role created seconds ago may not be assumable by Lambda yet: retry, boundedly."""
    for attempt in range(1, ROLE_RETRY_ATTEMPTS + 1):
        try:
            return call()
        except _client_error() as e:
            message = str(e.response.get("Error", {}).get("Message", ""))
            if _code(e) != "InvalidParameterValueException" or "cannot be assumed" not in message:
                raise
            if attempt == ROLE_RETRY_ATTEMPTS:
                waited = ROLE_RETRY_DELAY * (ROLE_RETRY_ATTEMPTS - 1)
                raise DeployError(
                    f"Lambda still cannot assume role {role} after {waited:.0f} s (IAM changes take a while to "
                    "propagate): run `dask-wren deploy` again in a minute"
                ) from None
            sleep(ROLE_RETRY_DELAY)
    raise AssertionError("unreachable")


def _wait(lam: Any, waiter: str, name: str) -> None:
    lam.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})


def plan_function(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    lam, name, resource = aws.lambda_, cfg.function_name, f"function {cfg.function_name}"
    versions = state.versions
    code = _function_zip()
    code_sha = base64.b64encode(hashlib.sha256(code).digest()).decode()
    try:
        current = lam.get_function_configuration(FunctionName=name)
    except _client_error() as e:
        if _code(e) != "ResourceNotFoundException":
            raise
        current = None
    wanted = function_settings(cfg, state.role_arn, state.layer_arns, versions)
    image, package_type = cfg.image_uri, "Image" if cfg.image_uri else "Zip"
    summary = f"{f'image {image}' if image else cfg.runtime}, {cfg.arch}, {cfg.memory} MB, {cfg.timeout} s"
    if len(wanted.get("Layers", [])) > 1:
        summary += f", {len(wanted['Layers'])} layers"
    state.function_exists = current is not None
    if current is None:

        def create() -> None:
            _retry_while_role_propagates(
                lambda: lam.create_function(
                    FunctionName=name,
                    Code={"ImageUri": image} if image else {"ZipFile": code},
                    Architectures=[cfg.arch],
                    PackageType=package_type,
                    Publish=False,
                    Tags={"dask-wren": "worker"},
                    **wanted,
                ),
                cfg.role_name,
            )
            _wait(lam, "function_active_v2", name)
            state.function_exists = True

        return Change(resource, "create", summary, create)

    if current.get("PackageType", "Zip") != package_type:
        has, wants = ("a container-image", "a zip") if package_type == "Zip" else ("a zip", "a container-image")
        raise DeployError(
            f"function {name} exists as {has} function, and Lambda cannot turn it into {wants} one: "
            f"`dask-wren destroy --function-name {name} --yes` first, or choose another --function-name"
        )
    # Keep environment variables someone added by hand; ours win.
    env = dict((current.get("Environment") or {}).get("Variables") or {})
    env.update(wanted["Environment"]["Variables"])
    wanted["Environment"] = {"Variables": env}
    have = {
        "Runtime": current.get("Runtime"),
        "Handler": current.get("Handler"),
        "Role": current.get("Role"),
        "MemorySize": current.get("MemorySize"),
        "Timeout": current.get("Timeout"),
        "Layers": [layer["Arn"] for layer in current.get("Layers") or []],
        "Environment": {"Variables": (current.get("Environment") or {}).get("Variables") or {}},
        "Description": current.get("Description", ""),
    }
    config_diff = [k for k in wanted if wanted[k] != have[k]]
    code_diff = []
    if image:
        # A tag pushed again is not seen here: deploy a new tag (or a digest) to update the code.
        if lam.get_function(FunctionName=name).get("Code", {}).get("ImageUri") != image:
            code_diff.append("ImageUri")
    elif current.get("CodeSha256") != code_sha:
        code_diff.append("code")
    if (current.get("Architectures") or ["x86_64"]) != [cfg.arch]:
        code_diff.append("Architectures")
    if not config_diff and not code_diff:
        return Change(resource, "unchanged", summary)

    def update() -> None:
        _wait(lam, "function_updated_v2", name)
        if code_diff:
            new_code: dict[str, Any] = {"ImageUri": image} if image else {"ZipFile": code}
            lam.update_function_code(FunctionName=name, Architectures=[cfg.arch], **new_code)
            _wait(lam, "function_updated_v2", name)
        if config_diff:
            _retry_while_role_propagates(
                lambda: lam.update_function_configuration(FunctionName=name, **wanted), cfg.role_name
            )
            _wait(lam, "function_updated_v2", name)

    return Change(resource, "update", ", ".join(code_diff + config_diff), update)


def plan_event_invoke_config(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    """The function's async invoke configuration: no Lambda retries, events no older than the host waits.

    After the function step: while planning the creation of a function, there is nothing to read
    yet, so it is planned as ``create``.
    """
    lam, name, resource = aws.lambda_, cfg.function_name, f"async invoke config {cfg.function_name}"
    wanted = event_invoke_config(cfg.event_age)
    detail = f"MaximumRetryAttempts {wanted['MaximumRetryAttempts']}, MaximumEventAgeInSeconds {wanted['MaximumEventAgeInSeconds']}"
    current = None
    if state.function_exists:
        try:
            current = lam.get_function_event_invoke_config(FunctionName=name)
        except _client_error() as e:
            if _code(e) != "ResourceNotFoundException":
                raise
    if current is None:

        def put() -> None:
            lam.put_function_event_invoke_config(FunctionName=name, **wanted)

        return Change(resource, "create", detail, put)
    changed = [f"{k} {current.get(k)} -> {v}" for k, v in wanted.items() if current.get(k) != v]
    if not changed:
        return Change(resource, "unchanged", detail)

    def update() -> None:
        # update_ keeps what it is not given (a failure destination someone set up); put_ would drop it.
        lam.update_function_event_invoke_config(FunctionName=name, **wanted)

    return Change(resource, "update", ", ".join(changed), update)


def plan_concurrency(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    """Read the concurrency the function really has, for ``wren.aws.max-concurrency`` (changes nothing).

    Its reserved concurrency if it has one, else the account's unreserved concurrency (the pool
    every function without a reservation shares).  When neither can be read, nothing is written.
    """
    lam, name, resource = aws.lambda_, cfg.function_name, f"concurrency {cfg.function_name}"
    reserved = None
    if state.function_exists:
        try:
            reserved = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        except _client_error() as e:
            if _code(e) != "ResourceNotFoundException":
                raise
    if reserved is not None:
        reserved = int(reserved)
        if reserved < 1:
            state.max_concurrency = None
            return Change(
                resource,
                "read",
                f"reserved concurrency {reserved}: the function is throttled entirely and cannot run; "
                "wren.aws.max-concurrency not written",
            )
        state.max_concurrency = reserved
        return Change(resource, "read", f"{reserved} reserved for the function: wren.aws.max-concurrency {reserved}")
    try:
        limit = lam.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"]
    except (_client_error(), KeyError) as e:
        state.max_concurrency = None
        why = _code(e) if hasattr(e, "response") else repr(e)
        message = str(getattr(e, "response", {}).get("Error", {}).get("Message", "")).strip()
        if message and "<" not in message:  # an HTML error page (a server without the route) says nothing more
            why += f": {message.splitlines()[0][:200]}"
        return Change(
            resource,
            "unknown",
            f"no reserved concurrency, and GetAccountSettings is not available here ({why}); "
            "wren.aws.max-concurrency not written",
        )
    state.max_concurrency = int(limit)
    return Change(
        resource,
        "read",
        f"no reservation; the account's unreserved concurrency is {limit}: wren.aws.max-concurrency {limit}",
    )


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DeployError(f"cannot read settings file {path}: {e}") from None
    if not isinstance(data, dict):
        raise DeployError(f"settings file {path} does not hold a YAML mapping; fix or move it")
    return data


def plan_settings_file(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    path = cfg.config_file
    current = read_yaml(path)
    merged = _merge(current, cfg.settings_document(state.max_concurrency))
    if merged == current:
        return Change(f"settings {path}", "unchanged")

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(yaml.safe_dump(merged, sort_keys=False, default_flow_style=False))
        os.replace(tmp, path)

    before, after = flatten_settings(current), flatten_settings(merged)
    changed = [k for k in after if before.get(k, _ABSENT) != after[k]]
    detail = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    if not path.exists():
        return Change(f"settings {path}", "create", "wren.* settings for backend aws", write)
    return Change(f"settings {path}", "update", detail, write)


_ABSENT = object()


def flatten_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'wren': {'aws': {'region': r}}}`` -> ``{'wren.aws.region': r}`` (dask.config.set keys)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_settings(value, name))
        else:
            out[name] = value
    return out


Step = Callable[[DeployConfig, AwsClients, DeployState], Change]

#: In order; ``plan_layer`` stands for the runtime layer and then each package layer (``deploy_steps``).
DEPLOY_STEPS: tuple[Step, ...] = (
    plan_role,
    plan_role_policy,
    plan_bucket,
    plan_public_access,
    plan_lifecycle,
    plan_layer,
    plan_function,
    plan_event_invoke_config,
    plan_concurrency,
    plan_settings_file,
)


def deploy_steps(state: DeployState) -> list[Step]:
    """``DEPLOY_STEPS`` with one step per package layer after the runtime layer's."""
    steps: list[Step] = []
    for step in DEPLOY_STEPS:
        if step is plan_layer:
            if state.layer is None:  # a container-image function: the image holds the runtime
                continue
            steps.append(step)
            steps += [functools.partial(plan_package_layer, number=n) for n in range(1, len(state.package_layers) + 1)]
        else:
            steps.append(step)
    return steps


def run_steps(
    steps: Iterable[Callable[[], Change]], *, dry_run: bool, out: Callable[[str], None]
) -> list[Change]:
    """Plan each step, print its line, apply it unless this is a dry run.  One code path for both."""
    changes = []
    for plan in steps:
        change = plan()
        result = None
        if change.apply is not None and not dry_run:
            result = change.apply()
        out(change.line(dry_run, result))
        changes.append(change)
    return changes


def _prepare_layer(opts: DeployOptions, python: str, workdir: Path, out: Callable[[str], None]) -> LayerZip:
    if opts.layer_zip is not None:
        path = Path(opts.layer_zip)
    else:
        start = time.monotonic()
        path = build_layer(workdir / "layer.zip", python=python, arch=opts.arch, out=out)
        out(f"building layer: done in {time.monotonic() - start:.0f} s")
    layer = inspect_layer_zip(path, python, opts.arch)
    for note in layer_differences(layer):
        out(f"note: {note}")
    return layer


def _prepare_layers(
    opts: DeployOptions, python: str, workdir: Path, out: Callable[[str], None]
) -> tuple[LayerZip, list[LayerZip]]:
    """The runtime layer and the user's package layers, built and checked (size included), no AWS call."""
    layer = _prepare_layer(opts, python, workdir, out)
    packages: list[LayerZip] = []
    requirements = user_requirements(opts)
    if requirements:
        start = time.monotonic()
        paths = package_layers_for(requirements, layer, workdir / "packages", python=python, arch=opts.arch, out=out)
        packages = [inspect_layer_zip(p, python, opts.arch, runtime=False) for p in paths]
        out(f"building package layers: done in {time.monotonic() - start:.0f} s")
    check_unzipped_size([layer, *packages])
    return layer, packages


def layer_differences(layer: LayerZip) -> list[str]:
    """Packages whose layer version differs from the host's (where pickles tolerate it)."""
    from importlib import metadata

    notes = []
    if "botocore" not in layer.versions:
        notes.append(
            f"the layer has no botocore: the worker will use the one bundled with Lambda's runtime, which may be "
            f"older than {BOTOCORE_FLOOR} and reject the conditional writes of result records; a layer built by "
            "deploy (or runtime/build_layer.py) has its own"
        )
    for name in _PIN_AT_MOST:
        try:
            here = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        there = layer.versions.get(name)
        if there and there != here and name != "dask":  # dask must match: checked by layer_versions
            notes.append(
                f"the layer has {name} {there}, this environment {here} (the newest wheel for Lambda's platform "
                "that is not newer than yours)"
            )
    return notes


def deploy(opts: DeployOptions, out: Callable[[str], None] = print) -> list[Change]:
    """Make the deployment exist as ``opts`` describe it; print one line per resource."""
    check_options(opts)
    python = host_python()
    lambda_runtime(python)
    region = resolve_region(opts.region)
    aws = AwsClients.create(region, opts.endpoint_url)
    account, partition = aws.identity()
    cfg = resolve(opts, aws, account, partition)
    out(
        f"{'plan (dry run, nothing will change)' if opts.dry_run else 'deploying'}: function {cfg.function_name} "
        f"({f'image {cfg.image_uri}' if cfg.image_uri else cfg.runtime}, {cfg.arch}) in account {account}, "
        f"region {region}; storage s3://{cfg.bucket}/{cfg.prefix}/"
        + (f"; endpoint {cfg.endpoint_url}" if cfg.endpoint_url else "")
    )
    with tempfile.TemporaryDirectory(prefix="dask-wren-deploy-") as tmp:
        if cfg.image_uri:
            out(
                f"note: the image must hold this environment's Python {cfg.versions['python']}, cloudpickle "
                f"{cfg.versions['cloudpickle']} and dask {cfg.versions['dask']} (build it from runtime/Dockerfile "
                "with those build arguments): the function records them and the host checks them before invoking"
            )
            state = DeployState(layer=None, versions=dict(cfg.versions))
        else:
            # Built and checked (size limit, platform) before anything in AWS is touched.
            layer, packages = _prepare_layers(opts, python, Path(tmp), out)
            state = DeployState(layer=layer, versions=layer_versions(cfg, layer), package_layers=packages)
        changes = run_steps(
            [_bind(step, cfg, aws, state) for step in deploy_steps(state)], dry_run=opts.dry_run, out=out
        )
    if opts.dry_run:
        out("dry run: nothing was changed")
    else:
        out(f"done: dask_wren.default_executor() now runs on {cfg.function_name}; try `dask-wren test`")
    return changes


def _bind(step: Callable[..., Change], *args: Any) -> Callable[[], Change]:
    return lambda: step(*args)


# -- destroy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DestroyOptions:
    function_name: str | None = None
    bucket: str | None = None
    region: str | None = None
    delete_bucket: bool = False
    endpoint_url: str | None = None
    config_file: Path | None = None
    dry_run: bool = False
    yes: bool = False


@dataclass(frozen=True)
class DestroyTarget:
    function_name: str
    bucket: str
    region: str
    delete_bucket: bool
    config_file: Path

    @property
    def role_name(self) -> str:
        return f"{self.function_name}-role"

    @property
    def layer_name(self) -> str:
        return f"{self.function_name}-runtime"


def plan_delete_event_invoke_config(t: DestroyTarget, aws: AwsClients) -> Change:
    lam, resource = aws.lambda_, f"async invoke config {t.function_name}"
    try:
        lam.get_function_event_invoke_config(FunctionName=t.function_name)
    except _client_error() as e:
        if _code(e) != "ResourceNotFoundException":  # no function, or no configuration
            raise
        return Change(resource, "absent")

    def delete() -> None:
        lam.delete_function_event_invoke_config(FunctionName=t.function_name)

    return Change(resource, "delete", apply=delete)


def plan_delete_function(t: DestroyTarget, aws: AwsClients) -> Change:
    lam, resource = aws.lambda_, f"function {t.function_name}"
    try:
        lam.get_function_configuration(FunctionName=t.function_name)
    except _client_error() as e:
        if _code(e) != "ResourceNotFoundException":
            raise
        return Change(resource, "absent")

    def delete() -> None:
        lam.delete_function(FunctionName=t.function_name)

    return Change(resource, "delete", apply=delete)


def plan_delete_layers(t: DestroyTarget, aws: AwsClients, layer_name: str | None = None) -> Change:
    """Every version of the runtime layer (or of ``layer_name``, a package layer)."""
    layer_name = layer_name or t.layer_name
    lam, resource = aws.lambda_, f"layer {layer_name}"
    numbers: list[int] = []
    try:
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=layer_name):
            numbers += [v["Version"] for v in page.get("LayerVersions", [])]
    except _client_error() as e:
        if _code(e) != "ResourceNotFoundException":
            raise
    if not numbers:
        return Change(resource, "absent")

    def delete() -> None:
        for n in numbers:
            lam.delete_layer_version(LayerName=layer_name, VersionNumber=n)

    return Change(resource, "delete", f"{len(numbers)} version{'s' if len(numbers) != 1 else ''}", delete)


def package_layer_names(t: DestroyTarget, aws: AwsClients) -> list[str]:
    """The function's package layers that exist (``{function}-packages-N``), in order."""
    pattern = re.compile(re.escape(t.function_name) + r"-packages-(\d+)")
    found: dict[int, str] = {}
    for page in aws.lambda_.get_paginator("list_layers").paginate():
        for layer in page.get("Layers", []):
            m = pattern.fullmatch(layer.get("LayerName", ""))
            if m:
                found[int(m.group(1))] = layer["LayerName"]
    return [found[n] for n in sorted(found)]


def plan_delete_role(t: DestroyTarget, aws: AwsClients) -> Change:
    iam, resource = aws.iam, f"role {t.role_name}"
    if not _role_exists(aws, t.role_name):
        return Change(resource, "absent")
    inline = [n for page in iam.get_paginator("list_role_policies").paginate(RoleName=t.role_name) for n in page["PolicyNames"]]
    attached = [
        p["PolicyArn"]
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=t.role_name)
        for p in page["AttachedPolicies"]
    ]

    def delete() -> None:
        for name in inline:
            iam.delete_role_policy(RoleName=t.role_name, PolicyName=name)
        for arn in attached:
            iam.detach_role_policy(RoleName=t.role_name, PolicyArn=arn)
        iam.delete_role(RoleName=t.role_name)

    detail = f"and its polic{'ies' if len(inline) + len(attached) != 1 else 'y'} {', '.join(inline + attached)}"
    return Change(resource, "delete", detail if inline or attached else "", delete)


def plan_delete_bucket(t: DestroyTarget, aws: AwsClients) -> Change:
    s3, resource = aws.s3, f"bucket {t.bucket}"
    try:
        s3.head_bucket(Bucket=t.bucket)
    except _client_error() as e:
        if _code(e) in ("404", "NoSuchBucket", "NotFound"):
            return Change(resource, "absent")
        raise
    if not t.delete_bucket:
        return Change(resource, "kept", "pass --delete-bucket to delete it and everything in it")

    def delete() -> None:
        for batch in _bucket_contents(s3, t.bucket):
            s3.delete_objects(Bucket=t.bucket, Delete={"Objects": batch, "Quiet": True})
        s3.delete_bucket(Bucket=t.bucket)

    return Change(resource, "delete", "emptied first", delete)


def _bucket_contents(s3: Any, bucket: str) -> Iterator[list[dict[str, str]]]:
    """Batches of up to 1,000 object versions (and delete markers), then any plain objects left."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        items = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for i in range(0, len(items), 1000):
            yield items[i : i + 1000]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        items = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if items:
            yield items


def destroy(opts: DestroyOptions, out: Callable[[str], None] = print) -> list[Change]:
    """Delete the function (its async invoke config first), its layers' versions and role; the bucket
    only with ``delete_bucket``."""
    import dask.config

    import dask_wren.config  # noqa: F401  (loads the wren.* defaults)

    if not opts.yes and not opts.dry_run:
        raise DeployError("destroy deletes the function, its layers and its role: pass --yes (or --dry-run to look)")
    if opts.function_name is not None:
        check_options(DeployOptions(function_name=opts.function_name))
    region = resolve_region(opts.region)
    aws = AwsClients.create(region, opts.endpoint_url)
    account, _ = aws.identity()
    target = DestroyTarget(
        function_name=opts.function_name or dask.config.get("wren.aws.function-name") or "dask-wren",
        bucket=opts.bucket or default_bucket(account, region),
        region=region,
        delete_bucket=opts.delete_bucket,
        config_file=Path(opts.config_file or default_config_file()).expanduser(),
    )
    out(f"{'plan (dry run, nothing will change)' if opts.dry_run else 'destroying'}: function {target.function_name} "
        f"in account {account}, region {region}")
    steps: list[Callable[[], Change]] = [
        _bind(plan_delete_event_invoke_config, target, aws),
        _bind(plan_delete_function, target, aws),
        _bind(plan_delete_layers, target, aws),
        *(_bind(plan_delete_layers, target, aws, name) for name in package_layer_names(target, aws)),
        _bind(plan_delete_role, target, aws),
        _bind(plan_delete_bucket, target, aws),
    ]
    changes = run_steps(steps, dry_run=opts.dry_run, out=out)
    settings = read_yaml(target.config_file).get("wren") or {}
    if settings.get("backend") == "aws" and (settings.get("aws") or {}).get("function-name") == target.function_name:
        out(f"note: {target.config_file} still selects backend 'aws' for {target.function_name}; "
            "set wren.backend: local there (or redeploy)")
    if opts.dry_run:
        out("dry run: nothing was changed")
    return changes


# -- errors a user can cause, in one sentence --------------------------------------------------

_CREDENTIAL_CODES = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
    "AuthFailure",
}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403", "Forbidden"}


def user_error_message(exc: BaseException) -> str | None:
    """The one-line explanation of an error the user can fix, or ``None`` for a bug."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        TokenRetrievalError,
    )

    if isinstance(exc, DeployError):
        return str(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | TokenRetrievalError):
        return (
            f"no usable AWS credentials ({exc}): run `aws configure` (or `aws sso login`), or set AWS_PROFILE, "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region, or set AWS_REGION / AWS_DEFAULT_REGION, or 'region' in ~/.aws/config"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach AWS at {exc.kwargs.get('endpoint_url')}: check the network, --region and --endpoint-url"
    if isinstance(exc, ClientError):
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        operation = getattr(exc, "operation_name", "?")
        if code in _CREDENTIAL_CODES:
            return f"AWS rejected the credentials ({code}: {message}): check or refresh your AWS credentials"
        if code in _DENIED_CODES:
            return (
                f"access denied on {operation}: {message or code}. The deploying identity needs IAM (roles, role "
                "policies), S3 (bucket, lifecycle, public access block), Lambda (functions, layers) and STS "
                "GetCallerIdentity permissions"
            )
        return f"AWS refused {operation}: {code}: {message}"
    return None


__all__ = [
    "AwsClients",
    "Change",
    "DeployConfig",
    "DeployError",
    "DeployOptions",
    "DestroyOptions",
    "LayerZip",
    "build_layer",
    "build_package_layers",
    "event_invoke_config",
    "deploy",
    "destroy",
    "function_environment",
    "inspect_layer_zip",
    "lifecycle_rule",
    "public_access_block",
    "trust_policy",
    "user_error_message",
    "worker_policy",
]
