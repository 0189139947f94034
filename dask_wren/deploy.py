"""``dask-wren deploy`` / ``destroy``: the AWS side of the cloud button, set up idempotently.

``deploy`` makes sure of, in order: the worker's IAM role and its one inline policy, the S3 bucket
(public access blocked, objects under the prefix expiring), the runtime layer (the worker code and
its packages, built with pip for Lambda's platform, no Docker), the Lambda function, and the
dask-wren settings file that makes ``default_executor()`` use all of it.

Every step looks its resource up first and returns a ``Change``: what it would do (create, update
or nothing) and a closure that does it.  ``--dry-run`` runs exactly the same planning and only
skips the closures, so the plan it prints is the plan a real run carries out.

The documents that decide what the worker may do (trust policy, inline policy, lifecycle rule,
function settings, settings file) are built by pure functions at the top of this module.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dask_wren.errors import WrenError

# -- constants ---------------------------------------------------------------------------------

HANDLER = "lambda_worker.handler.lambda_handler"
#: Python minors Lambda has a managed runtime for, and the glibc minor of that runtime's OS
#: (python3.9-3.11 run on Amazon Linux 2, glibc 2.26; python3.12+ on Amazon Linux 2023, glibc 2.34).
LAMBDA_PYTHONS: dict[str, int] = {"3.9": 26, "3.10": 26, "3.11": 26, "3.12": 34, "3.13": 34}
ARCHITECTURES: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda name -> wheel tag
LIFECYCLE_RULE_ID = "dask-wren-expire"
POLICY_NAME = "dask-wren-worker"
MiB = 1024 * 1024
LAYER_UNZIPPED_LIMIT = 250 * MiB  # function + layers, unzipped (a Lambda limit)
DIRECT_UPLOAD_LIMIT = 50 * MiB  # larger zips must be published from S3 (a Lambda limit)
MAX_TIMEOUT = 900
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
    """The worker's only permissions: its objects under the prefix, and its own log group."""
    group = log_group_arn(region, account, function_name, partition)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "WrenObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/*",
            },
            {
                "Sid": "WrenListPrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:{partition}:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
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


def function_environment(versions: dict[str, str]) -> dict[str, str]:
    """What the function was deployed for; the invoker compares these with its own host."""
    return {
        "DASK_WREN_PYTHON": versions["python"],
        "DASK_WREN_CLOUDPICKLE": versions["cloudpickle"],
        "DASK_WREN_DASK": versions["dask"],
        "DASK_WREN_PROTOCOL": versions["protocol"],
    }


def settings_document(
    *, function_name: str, bucket: str, region: str, prefix: str, endpoint_url: str | None
) -> dict[str, Any]:
    """The ``wren.*`` settings that point ``default_executor()`` at the deployment."""
    storage: dict[str, Any] = {"kind": "s3", "bucket": bucket, "region": region, "prefix": prefix}
    aws: dict[str, Any] = {"function-name": function_name, "region": region}
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

    @property
    def role_name(self) -> str:
        return f"{self.function_name}-role"

    @property
    def layer_name(self) -> str:
        return f"{self.function_name}-runtime"

    @property
    def runtime(self) -> str:
        return lambda_runtime(self.python)

    @property
    def default_role_arn(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/{self.role_name}"

    @property
    def layer_arn(self) -> str:
        return f"arn:{self.partition}:lambda:{self.region}:{self.account}:layer:{self.layer_name}"

    def worker_policy(self) -> dict[str, Any]:
        return worker_policy(self.bucket, self.prefix, self.region, self.account, self.function_name, self.partition)

    def settings_document(self) -> dict[str, Any]:
        return settings_document(
            function_name=self.function_name,
            bucket=self.bucket,
            region=self.region,
            prefix=self.prefix,
            endpoint_url=self.endpoint_url,
        )


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

    def description(self, python: str, arch: str) -> str:
        return f"dask-wren runtime python{python} {arch} sha256={self.sha256}"


def format_size(n: int) -> str:
    return f"{n / MiB:.1f} MB" if n >= MiB else f"{n / 1024:.1f} KB"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def inspect_layer_zip(path: Path, python: str, arch: str) -> LayerZip:
    """Hash and measure a layer zip, and refuse one Lambda could not use for this deployment."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile) as e:
        raise DeployError(f"layer zip {path} cannot be read: {e}") from None
    names = {i.filename for i in infos}
    if "python/lambda_worker/handler.py" not in names:
        raise DeployError(
            f"layer zip {path} has no python/lambda_worker/handler.py: the function's handler {HANDLER} "
            "would not import (build it with `python runtime/build_layer.py` or let deploy build it)"
        )
    unzipped = sum(i.file_size for i in infos)
    if unzipped + len(_FUNCTION_README) > LAYER_UNZIPPED_LIMIT:
        raise DeployError(
            f"layer zip {path} unzips to {unzipped / MiB:.1f} MB, over Lambda's 250 MB limit for a function "
            "and its layers: trim runtime/requirements.txt"
        )
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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return LayerZip(path, digest.hexdigest(), path.stat().st_size, unzipped, versions)


def runtime_requirements() -> list[str]:
    """``runtime/requirements.txt`` (a source checkout) or the same list built in, plus tblib and boto3.

    boto3 goes into the layer although Lambda's runtime bundles one: the worker's S3 store uses
    conditional writes (``IfNoneMatch``) that an older bundled SDK rejects, and the layer's copy
    comes first on the function's ``sys.path``.
    """
    if _REQUIREMENTS_FILE.is_file():
        lines = _REQUIREMENTS_FILE.read_text().splitlines()
        reqs = [line.split("#", 1)[0].strip() for line in lines]
        reqs = [r for r in reqs if r]
    else:
        reqs = list(_FALLBACK_REQUIREMENTS)
    named = {_normalize(re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]) for r in reqs}
    return reqs + [extra for extra in ("tblib", "boto3") if extra not in named]


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
    files = sorted(p for p in root.rglob("*") if p.is_file() and keep(p.relative_to(root)))
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            info = zipfile.ZipInfo(p.relative_to(root).as_posix(), date_time=_ZIP_TIME)
            mode = 0o755 if p.stat().st_mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, p.read_bytes())


def build_layer(
    dest: Path, *, python: str | None = None, arch: str = "x86_64", out: Callable[[str], None] = print
) -> Path:
    """Build the runtime layer zip at ``dest`` with pip, for Lambda's Linux, without Docker.

    Wheels only (``--only-binary=:all:``), for ``python`` (default: this interpreter's minor) and
    the glibc of the Lambda image that runs it; then the project's ``lambda_worker`` is added.
    """
    import lambda_worker

    python = python or host_python()
    lambda_runtime(python)
    if arch not in ARCHITECTURES:
        raise DeployError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {arch!r}")
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="dask-wren-layer-") as tmp:
        site = Path(tmp) / "layer" / "python"
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{c}\n" for c in layer_constraints()))
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check"]
        for tag in lambda_platforms(python, arch):
            cmd += ["--platform", tag]
        cmd += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
        cmd += ["--target", str(site), "-c", str(constraints), *runtime_requirements()]
        out(f"building layer: pip install for python{python} {arch} ({', '.join(layer_constraints())})")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise DeployError(f"pip could not build the runtime layer for python{python} {arch}:\n{tail}")
        shutil.copytree(
            Path(lambda_worker.__file__).parent,
            site / "lambda_worker",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_deterministic_zip(site.parent, dest, _layer_filter)
    return dest


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
    action: str  # create | update | publish | delete | unchanged | absent | kept
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

    layer: LayerZip
    versions: dict[str, str]
    role_arn: str = ""
    role_exists: bool = False
    bucket_exists: bool = False
    layer_arn: str = ""


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
    lam, layer, resource = aws.lambda_, state.layer, f"layer {cfg.layer_name}"
    description = layer.description(cfg.python, cfg.arch)
    versions: list[dict[str, Any]] = []
    try:
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=cfg.layer_name):
            versions += page.get("LayerVersions", [])
    except _client_error() as e:
        if _code(e) != "ResourceNotFoundException":
            raise
    latest = max(versions, key=lambda v: v["Version"], default=None)
    sizes = f"{format_size(layer.size)} zipped, {format_size(layer.unzipped_size)} unzipped"
    if latest is not None and latest.get("Description") == description:
        state.layer_arn = latest["LayerVersionArn"]
        return Change(resource, "unchanged", f"version {latest['Version']}, sha256 {layer.sha256[:12]}, {sizes}")
    number = (latest["Version"] if latest else 0) + 1
    state.layer_arn = f"{cfg.layer_arn}:{number}"

    def publish() -> str:
        kwargs: dict[str, Any] = {
            "LayerName": cfg.layer_name,
            "Description": description,
            "CompatibleRuntimes": [cfg.runtime],
            "CompatibleArchitectures": [cfg.arch],
        }
        via = "direct upload"
        if layer.size <= DIRECT_UPLOAD_LIMIT:
            published = lam.publish_layer_version(Content={"ZipFile": layer.path.read_bytes()}, **kwargs)
        else:
            key = f"{cfg.prefix}/_deploy/{cfg.layer_name}-{layer.sha256}.zip"
            aws.s3.upload_file(str(layer.path), cfg.bucket, key)
            try:
                published = lam.publish_layer_version(Content={"S3Bucket": cfg.bucket, "S3Key": key}, **kwargs)
            finally:
                aws.s3.delete_object(Bucket=cfg.bucket, Key=key)
            via = f"through s3://{cfg.bucket}/{key}"
        state.layer_arn = published["LayerVersionArn"]
        return f"version {published['Version']}, sha256 {layer.sha256[:12]}, {sizes}, {via}"

    return Change(resource, "publish", f"version {number}, sha256 {layer.sha256[:12]}, {sizes}", publish)


def function_settings(cfg: DeployConfig, role_arn: str, layer_arn: str, versions: dict[str, str]) -> dict[str, Any]:
    """The function configuration ``deploy`` wants (update_function_configuration's arguments)."""
    return {
        "Runtime": cfg.runtime,
        "Handler": HANDLER,
        "Role": role_arn,
        "MemorySize": cfg.memory,
        "Timeout": cfg.timeout,
        "Layers": [layer_arn],
        "Environment": {"Variables": function_environment(versions)},
        "Description": _FUNCTION_DESCRIPTION,
    }


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
    wanted = function_settings(cfg, state.role_arn, state.layer_arn, versions)
    summary = f"{cfg.runtime}, {cfg.arch}, {cfg.memory} MB, {cfg.timeout} s"
    if current is None:

        def create() -> None:
            _retry_while_role_propagates(
                lambda: lam.create_function(
                    FunctionName=name,
                    Code={"ZipFile": code},
                    Architectures=[cfg.arch],
                    PackageType="Zip",
                    Publish=False,
                    Tags={"dask-wren": "worker"},
                    **wanted,
                ),
                cfg.role_name,
            )
            _wait(lam, "function_active_v2", name)

        return Change(resource, "create", summary, create)

    if current.get("PackageType", "Zip") != "Zip":
        raise DeployError(
            f"function {name} exists as a container-image function; deploy manages zip functions: delete it or "
            "choose another --function-name"
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
    if current.get("CodeSha256") != code_sha:
        code_diff.append("code")
    if (current.get("Architectures") or ["x86_64"]) != [cfg.arch]:
        code_diff.append("Architectures")
    if not config_diff and not code_diff:
        return Change(resource, "unchanged", summary)

    def update() -> None:
        _wait(lam, "function_updated_v2", name)
        if code_diff:
            lam.update_function_code(FunctionName=name, ZipFile=code, Architectures=[cfg.arch])
            _wait(lam, "function_updated_v2", name)
        if config_diff:
            _retry_while_role_propagates(
                lambda: lam.update_function_configuration(FunctionName=name, **wanted), cfg.role_name
            )
            _wait(lam, "function_updated_v2", name)

    return Change(resource, "update", ", ".join(code_diff + config_diff), update)


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
    merged = _merge(current, cfg.settings_document())
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


DEPLOY_STEPS: tuple[Callable[[DeployConfig, AwsClients, DeployState], Change], ...] = (
    plan_role,
    plan_role_policy,
    plan_bucket,
    plan_public_access,
    plan_lifecycle,
    plan_layer,
    plan_function,
    plan_settings_file,
)


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


def layer_differences(layer: LayerZip) -> list[str]:
    """Packages whose layer version differs from the host's (where pickles tolerate it)."""
    from importlib import metadata

    notes = []
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
        f"({cfg.runtime}, {cfg.arch}) in account {account}, region {region}; storage s3://{cfg.bucket}/{cfg.prefix}/"
        + (f"; endpoint {cfg.endpoint_url}" if cfg.endpoint_url else "")
    )
    with tempfile.TemporaryDirectory(prefix="dask-wren-deploy-") as tmp:
        # Built and checked (size limit, platform) before anything in AWS is touched.
        layer = _prepare_layer(opts, python, Path(tmp), out)
        state = DeployState(layer=layer, versions=layer_versions(cfg, layer))
        changes = run_steps(
            [_bind(step, cfg, aws, state) for step in DEPLOY_STEPS], dry_run=opts.dry_run, out=out
        )
    if opts.dry_run:
        out("dry run: nothing was changed")
    else:
        out(f"done: dask_wren.default_executor() now runs on {cfg.function_name}; try `dask-wren test`")
    return changes


def _bind(step: Callable[[DeployConfig, AwsClients, DeployState], Change], *args: Any) -> Callable[[], Change]:
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


def plan_delete_layers(t: DestroyTarget, aws: AwsClients) -> Change:
    lam, resource = aws.lambda_, f"layer {t.layer_name}"
    numbers: list[int] = []
    try:
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=t.layer_name):
            numbers += [v["Version"] for v in page.get("LayerVersions", [])]
    except _client_error() as e:
        if _code(e) != "ResourceNotFoundException":
            raise
    if not numbers:
        return Change(resource, "absent")

    def delete() -> None:
        for n in numbers:
            lam.delete_layer_version(LayerName=t.layer_name, VersionNumber=n)

    return Change(resource, "delete", f"{len(numbers)} version{'s' if len(numbers) != 1 else ''}", delete)


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
    """Delete the function, its layer versions and role; the bucket only with ``delete_bucket``."""
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
    steps = (plan_delete_function, plan_delete_layers, plan_delete_role, plan_delete_bucket)
    changes = run_steps([_bind(s, target, aws) for s in steps], dry_run=opts.dry_run, out=out)
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
