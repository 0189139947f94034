"""``dask-wren deploy`` / ``destroy`` / ``test`` against moto (in process), and the real layer build (slow)."""

import json
import os
import platform
import subprocess
import sys
import time
import zipfile

import boto3
import dask.config
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

import dask_wren
from dask_wren import deploy as dep
from dask_wren.cli import main
from dask_wren.config import Settings
from lambda_worker.protocol import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(120)

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's
FN = "wren-fn"
BUCKET = f"dask-wren-{ACCOUNT}-{REGION}"
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
HOST = dep.host_versions()


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials and a region; nothing from the user's own AWS configuration."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws(aws_env):
    with mock_aws():
        yield {name: boto3.client(name, region_name=REGION) for name in ("iam", "s3", "lambda")}


def make_layer_zip(path, *, cloudpickle=HOST["cloudpickle"], dask_version=HOST["dask"], extra=None):
    """A small stand-in for the real layer: the handler module and the dist-info deploy checks."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("python/lambda_worker/__init__.py", "")
        zf.writestr("python/lambda_worker/handler.py", "def lambda_handler(event, context):\n    return {}\n")
        zf.writestr(f"python/cloudpickle-{cloudpickle}.dist-info/METADATA", "Name: cloudpickle\n")
        zf.writestr(f"python/dask-{dask_version}.dist-info/METADATA", "Name: dask\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def layer_zip(tmp_path):
    return make_layer_zip(tmp_path / "layer.zip")


@pytest.fixture
def config_file(tmp_path):
    return tmp_path / "dask" / "wren.yaml"


@pytest.fixture
def args(layer_zip, config_file):
    return ["deploy", "--function-name", FN, "--layer-zip", str(layer_zip), "--config-file", str(config_file)]


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def lines_of(out):
    """Resource -> its status line."""
    return {line.split(": ")[0]: line for line in out.splitlines() if ": " in line}


# -- pure documents --------------------------------------------------------------------------


def test_trust_policy_lets_only_lambda_assume_the_role():
    doc = dep.trust_policy()
    (statement,) = doc["Statement"]
    assert statement == {
        "Effect": "Allow",
        "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_worker_policy_grants_only_reading_and_writing_its_objects_and_its_log_group():
    doc = dep.worker_policy("bkt", "pre", REGION, ACCOUNT, FN)
    grants = {}
    for s in doc["Statement"]:
        assert s["Effect"] == "Allow"
        for action in _as_list(s["Action"]):
            assert "*" not in action
            grants.setdefault(action, set()).update(_as_list(s["Resource"]))
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{FN}"
    # The worker reads payloads and writes result records; the host lists and deletes.
    assert grants == {
        "s3:GetObject": {"arn:aws:s3:::bkt/pre/*"},
        "s3:PutObject": {"arn:aws:s3:::bkt/pre/*"},
        "logs:CreateLogGroup": {group},
        "logs:CreateLogStream": {f"{group}:*"},
        "logs:PutLogEvents": {f"{group}:*"},
    }
    assert not any(a.startswith(("s3:Delete", "s3:List")) for a in grants)
    assert all("NotAction" not in s and "NotResource" not in s and "Condition" not in s for s in doc["Statement"])


def test_lifecycle_rule_expires_only_the_prefix():
    assert dep.lifecycle_rule("pre", 3) == {
        "ID": "dask-wren-expire",
        "Status": "Enabled",
        "Filter": {"Prefix": "pre/"},
        "Expiration": {"Days": 3},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }


def test_function_environment_is_what_the_aws_backend_checks():
    env = dep.function_environment(HOST)
    assert env["DASK_WREN_PYTHON"] == PY and env["DASK_WREN_PROTOCOL"] == str(PROTOCOL_VERSION)
    aws_backend = pytest.importorskip("dask_wren.backends.aws")
    assert env == aws_backend.host_versions()


def test_runtimes_and_wheel_platforms():
    assert dep.lambda_runtime("3.11") == "python3.11"
    for minor in ("3.10", "3.11", "3.12", "3.13", "3.14"):  # every managed Python runtime Lambda offers
        assert dep.lambda_runtime(minor) == f"python{minor}"
    assert [dep.LAMBDA_PYTHONS[m] for m in ("3.10", "3.11", "3.12", "3.13", "3.14")] == [26, 26, 34, 34, 34]
    for unsupported in ("3.8", "3.9"):  # the project requires Python 3.10
        with pytest.raises(dep.DeployError, match=f"no managed runtime for Python {unsupported}"):
            dep.lambda_runtime(unsupported)
    assert dep.lambda_platforms("3.14", "x86_64")[0] == "manylinux_2_34_x86_64"
    al2 = dep.lambda_platforms("3.11", "x86_64")  # Amazon Linux 2: glibc 2.26
    assert al2[0] == "manylinux_2_26_x86_64" and "manylinux2014_x86_64" in al2 and "manylinux_2_28_x86_64" not in al2
    assert dep.lambda_platforms("3.12", "arm64")[0] == "manylinux_2_34_aarch64"  # Amazon Linux 2023


def test_role_propagation_is_retried_a_bounded_number_of_times(monkeypatch):
    not_yet = ClientError(
        {"Error": {"Code": "InvalidParameterValueException",
                   "Message": "The role defined for the function cannot be assumed by Lambda."}},
        "CreateFunction",
    )
    attempts, sleeps = [], []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise not_yet
        return "created"

    assert dep.steps._retry_while_role_propagates(flaky, "r", sleep=sleeps.append) == "created"
    assert len(attempts) == 3 and len(sleeps) == 2

    def never():
        raise not_yet

    with pytest.raises(dep.DeployError, match="cannot assume role r"):
        dep.steps._retry_while_role_propagates(never, "r", sleep=sleeps.append)
    other = ClientError({"Error": {"Code": "InvalidParameterValueException", "Message": "bad"}}, "CreateFunction")
    with pytest.raises(ClientError):
        dep.steps._retry_while_role_propagates(lambda: (_ for _ in ()).throw(other), "r", sleep=sleeps.append)


# -- deploy against moto ---------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_creates_nothing(aws, args, config_file, capsys):
    code, out, _ = run(capsys, [*args, "--dry-run"])
    assert code == 0
    lines = lines_of(out)
    for resource in (
        f"role {FN}-role", f"bucket {BUCKET}", f"layer {FN}-runtime", f"function {FN}", f"async invoke config {FN}",
        f"settings {config_file}",
    ):
        assert "would create" in lines[resource] or "would publish" in lines[resource], out
    assert lines[f"async invoke config {FN}"].endswith(
        "would create (MaximumRetryAttempts 0, MaximumEventAgeInSeconds 600)"
    )
    order = [line.split(": ")[0] for line in out.splitlines()]
    assert order.index(f"function {FN}") < order.index(f"async invoke config {FN}") < order.index(f"settings {config_file}")
    assert "nothing was changed" in out
    assert aws["iam"].list_roles()["Roles"] == []
    assert aws["s3"].list_buckets()["Buckets"] == []
    assert aws["lambda"].list_functions()["Functions"] == []
    assert aws["lambda"].list_layers()["Layers"] == []
    assert not config_file.exists()


def test_deploy_creates_role_bucket_layer_function_and_settings(aws, args, config_file, capsys):
    code, out, err = run(capsys, args)
    assert code == 0, err
    assert "created" in lines_of(out)[f"function {FN}"]

    role = aws["iam"].get_role(RoleName=f"{FN}-role")["Role"]
    assert role["AssumeRolePolicyDocument"] == dep.trust_policy()
    assert aws["iam"].list_role_policies(RoleName=f"{FN}-role")["PolicyNames"] == [dep.POLICY_NAME]
    assert aws["iam"].list_attached_role_policies(RoleName=f"{FN}-role")["AttachedPolicies"] == []
    policy = aws["iam"].get_role_policy(RoleName=f"{FN}-role", PolicyName=dep.POLICY_NAME)["PolicyDocument"]
    assert policy == dep.worker_policy(BUCKET, "dask-wren", REGION, ACCOUNT, FN)

    (rule,) = aws["s3"].get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert rule["ID"] == "dask-wren-expire" and rule["Filter"] == {"Prefix": "dask-wren/"}
    assert rule["Expiration"] == {"Days": 7} and rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    block = aws["s3"].get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4

    (layer,) = aws["lambda"].list_layer_versions(LayerName=f"{FN}-runtime")["LayerVersions"]
    conf = aws["lambda"].get_function_configuration(FunctionName=FN)
    assert conf["Runtime"] == f"python{PY}"
    assert conf["Handler"] == "lambda_worker.handler.lambda_handler"
    assert conf["Role"] == role["Arn"]
    assert (conf["MemorySize"], conf["Timeout"], conf["Architectures"]) == (2048, 300, ["x86_64"])
    assert [x["Arn"] for x in conf["Layers"]] == [layer["LayerVersionArn"]]
    assert conf["Environment"]["Variables"] == {
        "DASK_WREN_PYTHON": PY,
        "DASK_WREN_CLOUDPICKLE": HOST["cloudpickle"],
        "DASK_WREN_DASK": HOST["dask"],
        "DASK_WREN_PROTOCOL": HOST["protocol"],
        "DASK_WREN_BUCKET": BUCKET,
        "DASK_WREN_PREFIX": "dask-wren",
        "DASK_WREN_SIGNING_KEY": conf["Environment"]["Variables"]["DASK_WREN_SIGNING_KEY"],
    }

    # The settings file is where dask.config finds it, and the executor's Settings read it.
    found = dask.config.collect(paths=[str(config_file.parent)], env={})
    with dask.config.set(dep.flatten_settings(found)):
        settings = Settings.from_config()
    assert (settings.backend, settings.storage, settings.bucket, settings.prefix) == ("aws", "s3", BUCKET, "dask-wren")
    assert (settings.function_name, settings.aws_region, settings.region) == (FN, REGION, REGION)
    assert settings.endpoint_url is None and settings.lambda_endpoint_url is None


def test_second_deploy_changes_nothing(aws, args, config_file, capsys, monkeypatch):
    assert run(capsys, args)[0] == 0
    before = aws["lambda"].get_function_configuration(FunctionName=FN)
    mtime = config_file.stat().st_mtime_ns
    calls = []
    original = dep.run_steps

    def spy(steps, *, dry_run, out):
        changes = original(steps, dry_run=dry_run, out=out)
        calls.extend(c for c in changes if c.apply is not None)
        return changes

    monkeypatch.setattr(dep, "run_steps", spy)
    code, out, _ = run(capsys, args)
    assert code == 0
    assert calls == []  # nothing to apply
    status = [line for line in out.splitlines() if ": " in line and not line.startswith(("deploying", "done", "note"))]
    resources = [line for line in status if not line.startswith("concurrency ")]  # a reading, not a resource
    assert len(resources) == 9 and all(": unchanged" in line for line in resources), out
    assert lines_of(out)[f"async invoke config {FN}"].endswith(
        "unchanged (MaximumRetryAttempts 0, MaximumEventAgeInSeconds 600)"
    )
    after = aws["lambda"].get_function_configuration(FunctionName=FN)
    assert (after["CodeSha256"], after["LastModified"]) == (before["CodeSha256"], before["LastModified"])
    assert len(aws["lambda"].list_layer_versions(LayerName=f"{FN}-runtime")["LayerVersions"]) == 1
    assert config_file.stat().st_mtime_ns == mtime


def test_event_invoke_config_leaves_retries_to_the_host(aws, args, capsys):
    code, out, err = run(capsys, args)
    assert code == 0, err
    assert lines_of(out)[f"async invoke config {FN}"] == (
        f"async invoke config {FN}: created (MaximumRetryAttempts 0, MaximumEventAgeInSeconds 600)"
    )
    conf = aws["lambda"].get_function_event_invoke_config(FunctionName=FN)
    assert (conf["MaximumRetryAttempts"], conf["MaximumEventAgeInSeconds"]) == (0, 600)


def test_event_age_is_the_throttle_timeout_within_lambdas_range():
    assert dep.event_invoke_config(600) == {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 600}
    assert dep.event_invoke_config(5)["MaximumEventAgeInSeconds"] == 60
    assert dep.event_invoke_config(10**6)["MaximumEventAgeInSeconds"] == 21600
    assert dep.event_invoke_config(1234.7)["MaximumEventAgeInSeconds"] == 1234


def test_event_age_follows_wren_aws_throttle_timeout(aws, args, capsys):
    with dask.config.set({"wren.aws.throttle-timeout": 1800}):
        assert run(capsys, args)[0] == 0
    assert aws["lambda"].get_function_event_invoke_config(FunctionName=FN)["MaximumEventAgeInSeconds"] == 1800
    # A changed timeout is an update; a dry run shows it and changes nothing.
    with dask.config.set({"wren.aws.throttle-timeout": 900}):
        code, out, _ = run(capsys, [*args, "--dry-run"])
    assert code == 0
    assert lines_of(out)[f"async invoke config {FN}"].endswith(
        "would update (MaximumEventAgeInSeconds 1800 -> 900)"
    ), out
    assert aws["lambda"].get_function_event_invoke_config(FunctionName=FN)["MaximumEventAgeInSeconds"] == 1800


def test_function_records_its_bucket_and_prefix(aws, args, capsys):
    assert run(capsys, [*args, "--bucket", "my-bkt", "--prefix", "/jobs/a/"])[0] == 0
    env = aws["lambda"].get_function_configuration(FunctionName=FN)["Environment"]["Variables"]
    assert (env["DASK_WREN_BUCKET"], env["DASK_WREN_PREFIX"]) == ("my-bkt", "jobs/a")
    # The four version variables stay exactly those the host compares as versions.
    versions = {k: v for k, v in env.items() if k not in ("DASK_WREN_BUCKET", "DASK_WREN_PREFIX", "DASK_WREN_SIGNING_KEY")}
    assert versions == dep.function_environment(HOST)
    assert dep.function_environment(HOST, bucket="b", prefix="p") == {
        **dep.function_environment(HOST), "DASK_WREN_BUCKET": "b", "DASK_WREN_PREFIX": "p",
    }


def test_max_concurrency_is_what_the_function_really_has(aws, args, config_file, capsys):
    import yaml

    # moto has no GetAccountSettings, and a new function has no reservation: nothing to write.
    code, out, _ = run(capsys, args)
    assert code == 0
    line = lines_of(out)[f"concurrency {FN}"]
    assert "unknown" in line and "GetAccountSettings is not available" in line and "not written" in line, line
    assert "max-concurrency" not in yaml.safe_load(config_file.read_text())["wren"]["aws"]

    aws["lambda"].put_function_concurrency(FunctionName=FN, ReservedConcurrentExecutions=50)
    code, out, _ = run(capsys, [*args, "--dry-run"])
    assert code == 0
    assert lines_of(out)[f"concurrency {FN}"] == (
        f"concurrency {FN}: read (50 reserved for the function: wren.aws.max-concurrency 50)"
    )
    assert "would update (wren.aws.max-concurrency)" in lines_of(out)[f"settings {config_file}"]
    assert "max-concurrency" not in yaml.safe_load(config_file.read_text())["wren"]["aws"]  # dry run

    code, out, _ = run(capsys, args)
    assert code == 0 and "updated (wren.aws.max-concurrency)" in lines_of(out)[f"settings {config_file}"]
    assert yaml.safe_load(config_file.read_text())["wren"]["aws"]["max-concurrency"] == 50
    found = dask.config.collect(paths=[str(config_file.parent)], env={})
    with dask.config.set(dep.flatten_settings(found)):
        assert dask.config.get("wren.aws.max-concurrency") == 50


class _Lambda:
    """A Lambda client with no reservation on the function and an account limit, for what moto lacks."""

    def __init__(self, unreserved=None):
        self.unreserved = unreserved

    def get_function_concurrency(self, FunctionName):
        return {}

    def get_account_settings(self):
        if self.unreserved is None:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "GetAccountSettings")
        return {"AccountLimit": {"ConcurrentExecutions": 1000, "UnreservedConcurrentExecutions": self.unreserved}}


def _cfg(**kw):
    base = dict(
        function_name=FN, bucket=BUCKET, region=REGION, account=ACCOUNT, partition="aws", prefix="dask-wren",
        memory=2048, timeout=300, arch="x86_64", expire_days=7, config_file=None, endpoint_url=None, python=PY,
        versions=HOST,
    )
    return dep.DeployConfig(**{**base, **kw})


def test_max_concurrency_falls_back_to_the_accounts_unreserved_concurrency():
    state = dep.DeployState(layer=None, versions=HOST, function_exists=True)
    aws = dep.AwsClients(None, None, None, _Lambda(unreserved=900), REGION)
    change = dep.plan_concurrency(_cfg(), aws, state)
    assert (change.action, state.max_concurrency, change.apply) == ("read", 900, None)
    assert "unreserved concurrency is 900" in change.line(dry_run=False)
    doc = _cfg().settings_document(state.max_concurrency)
    assert doc["wren"]["aws"]["max-concurrency"] == 900

    state = dep.DeployState(layer=None, versions=HOST, function_exists=True)
    change = dep.plan_concurrency(_cfg(), dep.AwsClients(None, None, None, _Lambda(), REGION), state)
    assert change.action == "unknown" and state.max_concurrency is None and "AccessDeniedException" in change.detail
    assert "max-concurrency" not in _cfg().settings_document(None)["wren"]["aws"]


IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/dask-wren"


def test_container_image_function(aws, config_file, capsys, monkeypatch):
    def no_layers(*a, **k):
        raise AssertionError("a container-image deploy builds no layer")

    monkeypatch.setattr(dep, "build_layer", no_layers)
    argv = ["deploy", "--function-name", FN, "--config-file", str(config_file), "--image-uri", f"{IMAGE}:1"]
    code, out, err = run(capsys, argv)
    assert code == 0, err
    assert f"created (image {IMAGE}:1, x86_64" in lines_of(out)[f"function {FN}"]
    assert not any(line.startswith("layer ") for line in out.splitlines())
    assert "runtime/Dockerfile" in out  # the note on what the image must hold
    fn = aws["lambda"].get_function(FunctionName=FN)
    assert fn["Configuration"]["PackageType"] == "Image" and fn["Code"]["ImageUri"] == f"{IMAGE}:1"
    assert not fn["Configuration"].get("Layers")
    env = fn["Configuration"]["Environment"]["Variables"]
    assert env == dep.function_environment(HOST, bucket=BUCKET, prefix="dask-wren", signing_key=env["DASK_WREN_SIGNING_KEY"])
    assert aws["lambda"].get_function_event_invoke_config(FunctionName=FN)["MaximumRetryAttempts"] == 0

    code, out, _ = run(capsys, argv)
    assert code == 0 and lines_of(out)[f"function {FN}"].split(": ")[1].startswith("unchanged"), out
    code, out, _ = run(capsys, [*argv[:-1], f"{IMAGE}:2"])
    assert code == 0 and lines_of(out)[f"function {FN}"].endswith("updated (ImageUri)"), out
    assert aws["lambda"].get_function(FunctionName=FN)["Code"]["ImageUri"] == f"{IMAGE}:2"

    # A zip deploy over an image function (and the other way round) is refused, not attempted.
    code, _, err = run(capsys, ["deploy", "--function-name", FN, "--layer-zip", str(make_layer_zip(config_file.parent / "l.zip"))])
    assert code == 1 and "exists as a container-image function" in err and "dask-wren destroy" in err


def test_image_uri_options_are_checked_first(capsys, tmp_path):
    code, _, err = run(capsys, ["deploy", "--image-uri", f"{IMAGE}:1", "--packages", "scipy"])
    assert code == 1 and "drop --layer-zip, --packages and --requirements" in err
    code, _, err = run(capsys, ["deploy", "--image-uri", IMAGE])
    assert code == 1 and "with a tag or digest" in err


def test_changed_options_update_only_what_changed(aws, args, capsys, tmp_path):
    assert run(capsys, args)[0] == 0
    new_layer = make_layer_zip(tmp_path / "layer2.zip", extra={"python/extra.py": "x = 1\n"})
    argv = [*args, "--memory", "1024", "--timeout", "900", "--expire-days", "2"]
    argv[argv.index("--layer-zip") + 1] = str(new_layer)
    code, out, _ = run(capsys, argv)
    assert code == 0
    lines = lines_of(out)
    assert lines[f"role {FN}-role"].endswith("unchanged")
    assert "updated" in lines[f"bucket {BUCKET} lifecycle rule dask-wren-expire"]
    assert "published (version 2" in lines[f"layer {FN}-runtime"]
    assert "updated (MemorySize, Timeout, Layers)" in lines[f"function {FN}"]
    conf = aws["lambda"].get_function_configuration(FunctionName=FN)
    assert (conf["MemorySize"], conf["Timeout"]) == (1024, 900)
    assert conf["Layers"][0]["Arn"].endswith(f"{FN}-runtime:2")
    (rule,) = aws["s3"].get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert rule["Expiration"] == {"Days": 2}


def test_settings_merge_into_an_existing_file(aws, args, config_file, capsys):
    config_file.parent.mkdir(parents=True)
    config_file.write_text("wren:\n  timeout: 60\n  storage:\n    prefix: old\ndistributed:\n  x: 1\n")
    assert run(capsys, args)[0] == 0
    import yaml

    data = yaml.safe_load(config_file.read_text())
    assert data["distributed"] == {"x": 1} and data["wren"]["timeout"] == 60
    assert data["wren"]["backend"] == "aws" and data["wren"]["storage"]["bucket"] == BUCKET


def test_settings_document_records_endpoints():
    doc = dep.settings_document(function_name="f", bucket="b", region="r", prefix="p", endpoint_url="http://h:1")
    assert doc["wren"]["storage"]["endpoint-url"] == "http://h:1"
    assert doc["wren"]["aws"]["lambda-endpoint-url"] == "http://h:1"


def test_large_layer_goes_through_the_bucket(aws, args, capsys, monkeypatch):
    monkeypatch.setattr(dep.steps, "DIRECT_UPLOAD_LIMIT", 10)
    code, out, _ = run(capsys, args)
    assert code == 0
    assert f"through s3://{BUCKET}/dask-wren/_deploy/" in lines_of(out)[f"layer {FN}-runtime"]
    assert aws["s3"].list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0  # the upload is removed after publishing


def test_layer_zip_is_checked_before_anything_is_created(aws, args, capsys, tmp_path, monkeypatch):
    def deploy_with(zip_path):
        argv = list(args)
        argv[argv.index("--layer-zip") + 1] = str(zip_path)
        return run(capsys, argv)

    bad = tmp_path / "nohandler.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("python/x.py", "")
    code, _, err = deploy_with(bad)
    assert code == 1 and "lambda_worker/handler.py" in err and "Traceback" not in err

    other = make_layer_zip(tmp_path / "cp.zip", cloudpickle="0.0.1")
    code, _, err = deploy_with(other)
    assert code == 1 and "cloudpickle 0.0.1" in err

    arm = make_layer_zip(tmp_path / "arm.zip", extra={f"python/m.cpython-{PY.replace('.', '')}-aarch64-linux-gnu.so": ""})
    code, _, err = deploy_with(arm)
    assert code == 1 and "aarch64" in err and "--arch" in err

    monkeypatch.setattr(dep.layer, "LAYER_UNZIPPED_LIMIT", 10)
    code, _, err = deploy_with(args[args.index("--layer-zip") + 1])
    assert code == 1 and "250 MB" in err
    assert aws["iam"].list_roles()["Roles"] == [] and aws["s3"].list_buckets()["Buckets"] == []


def test_destroy_removes_function_layers_and_role_but_keeps_the_bucket(aws, args, config_file, capsys):
    assert run(capsys, args)[0] == 0
    code, _, err = run(capsys, ["destroy", "--function-name", FN])
    assert code == 1 and "--yes" in err
    code, out, _ = run(capsys, ["destroy", "--function-name", FN, "--dry-run"])
    assert code == 0 and "would delete" in lines_of(out)[f"function {FN}"]
    assert "would delete" in lines_of(out)[f"async invoke config {FN}"]
    assert aws["lambda"].list_functions()["Functions"]
    assert aws["lambda"].get_function_event_invoke_config(FunctionName=FN)["MaximumRetryAttempts"] == 0

    code, out, _ = run(capsys, ["destroy", "--function-name", FN, "--yes", "--config-file", str(config_file)])
    assert code == 0
    order = [line.split(": ")[0] for line in out.splitlines()]
    assert order.index(f"async invoke config {FN}") < order.index(f"function {FN}")
    assert lines_of(out)[f"async invoke config {FN}"].endswith("deleted")
    assert aws["lambda"].list_functions()["Functions"] == []
    assert aws["lambda"].list_layer_versions(LayerName=f"{FN}-runtime")["LayerVersions"] == []
    assert aws["iam"].list_roles()["Roles"] == []
    assert [b["Name"] for b in aws["s3"].list_buckets()["Buckets"]] == [BUCKET]
    assert "kept" in lines_of(out)[f"bucket {BUCKET}"] and "still selects backend 'aws'" in out

    aws["s3"].put_object(Bucket=BUCKET, Key="dask-wren/job/r/000000", Body=b"x")
    code, out, _ = run(capsys, ["destroy", "--function-name", FN, "--yes", "--delete-bucket"])
    assert code == 0 and aws["s3"].list_buckets()["Buckets"] == []
    assert lines_of(out)[f"function {FN}"].endswith("absent")
    assert lines_of(out)[f"async invoke config {FN}"].endswith("absent")


def test_layer_with_a_botocore_older_than_the_floor_is_refused(tmp_path):
    old = make_layer_zip(tmp_path / "old.zip", extra={"python/botocore-1.35.1.dist-info/METADATA": "Name: botocore\n"})
    with pytest.raises(dep.DeployError) as info:
        dep.inspect_layer_zip(old, PY, "x86_64")
    message = str(info.value)
    assert "botocore 1.35.1" in message and f"older than {dep.BOTOCORE_FLOOR}" in message
    assert "conditional writes" in message and "IfNoneMatch" in message and "Rebuild" in message
    ok = make_layer_zip(tmp_path / "ok.zip", extra={"python/botocore-1.35.2.dist-info/METADATA": "Name: botocore\n"})
    assert dep.inspect_layer_zip(ok, PY, "x86_64").versions["botocore"] == "1.35.2"


def test_the_botocore_floor_is_the_same_everywhere():
    """One constant; pyproject.toml and runtime/requirements.txt (the Dockerfile's list) say the same."""
    from pathlib import Path

    root = Path(dep.__file__).resolve().parents[2]
    floor = dep.BOTOCORE_FLOOR
    pyproject = (root / "pyproject.toml").read_text()
    assert f'"boto3>={floor}"' in pyproject and f'"botocore>={floor}"' in pyproject
    requirements = (root / "runtime" / "requirements.txt").read_text().split()
    assert f"boto3>={floor}" in requirements and f"botocore>={floor}" in requirements
    reqs = dep.runtime_requirements()
    assert f"boto3>={floor}" in reqs and f"botocore>={floor}" in reqs
    import botocore

    assert not dep.layer._older(botocore.__version__, floor)  # this environment can write conditionally


# -- errors a user can cause -----------------------------------------------------------------


def test_no_credentials_is_one_clear_error(aws_env, monkeypatch, args, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, out, err = run(capsys, args)
    assert code == 1
    assert "credentials" in err and "Traceback" not in err and err.count("\n") == 1


def test_no_region_is_one_clear_error(aws_env, monkeypatch, args, capsys):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    code, _, err = run(capsys, args)
    assert code == 1 and "region" in err and "--region" in err and "Traceback" not in err


def test_bad_options_fail_before_any_aws_call(capsys, monkeypatch):
    code, _, err = run(capsys, ["deploy", "--timeout", "901"])
    assert code == 1 and "900" in err
    code, _, err = run(capsys, ["deploy", "--function-name", "no spaces"])
    assert code == 1 and "not valid" in err
    monkeypatch.setattr(dep, "host_python", lambda: "3.8")
    code, _, err = run(capsys, ["deploy"])
    assert code == 1 and "no managed runtime for Python 3.8" in err and "Traceback" not in err


def test_access_denied_says_what_is_needed():
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "CreateRole")
    message = dep.user_error_message(denied)
    assert "access denied on CreateRole" in message and "IAM" in message
    expired = ClientError({"Error": {"Code": "ExpiredToken", "Message": "old"}}, "GetCallerIdentity")
    assert "credentials" in dep.user_error_message(expired)
    assert dep.user_error_message(RuntimeError("a bug")) is None


# -- dask-wren test --------------------------------------------------------------------------


def test_test_command_says_when_the_aws_backend_is_unavailable(monkeypatch, capsys):
    def unavailable(**overrides):
        raise dask_wren.BackendError("the 'aws' backend is not part of this build")

    monkeypatch.setattr(dask_wren, "default_executor", unavailable)
    code, _, err = run(capsys, ["test"])
    assert code == 1
    assert "AWS backend is not available" in err and "not part of this build" in err and "Traceback" not in err


def test_test_command_runs_ten_calls_through_the_aws_backend(standin, tmp_path, capsys):
    """Through the offline stand-in (conftest's ``standin``: moto S3 and a local Lambda endpoint)."""
    import yaml

    standin.ensure_bucket().faults.reset()
    nested = {}
    for key, value in standin.dask_config.items():
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "wren.yaml"
    path.write_text(yaml.safe_dump(nested))
    code, out, err = run(capsys, ["test", "--config-file", str(path)])
    assert code == 0, out + err
    assert "10 calls" in out and "10 succeeded, 0 failed" in out
    assert "call 9: 9^2 = 81" in out


# -- the real layer (pip, PyPI) --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_build_real_layer(tmp_path, arch):
    start = time.monotonic()
    path = dep.build_layer(tmp_path / "layer.zip", arch=arch, out=lambda line: None)
    seconds = time.monotonic() - start
    layer = dep.inspect_layer_zip(path, PY, arch)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    tops = {n.split("/")[1] for n in names}
    for package in ("numpy", "cloudpickle", "dask", "toolz", "tblib", "boto3", "lambda_worker"):
        assert package in tops, sorted(tops)
    assert "python/lambda_worker/handler.py" in names and "python/lambda_worker/protocol.py" in names
    machine = dep.ARCHITECTURES[arch]
    tag = PY.replace(".", "")
    assert any(
        n.startswith("python/numpy/") and n.endswith(f".cpython-{tag}-{machine}-linux-gnu.so") for n in names
    ), "numpy's extension modules must be built for the target platform"
    (wheel,) = [n for n in names if n.startswith("python/numpy-") and n.endswith(".dist-info/WHEEL")]
    with zipfile.ZipFile(path) as zf:
        assert "manylinux" in zf.read(wheel).decode()
    assert not any("__pycache__" in n or "/tests/" in n or n.endswith((".pyc", ".dist-info/RECORD")) for n in names)
    assert layer.versions["cloudpickle"] == HOST["cloudpickle"] and layer.versions["dask"] == HOST["dask"]
    assert layer.unzipped_size < dep.LAYER_UNZIPPED_LIMIT
    # The same inputs give the same bytes: a redeploy finds the layer unchanged.
    again = dep.inspect_layer_zip(dep.build_layer(tmp_path / "again.zip", arch=arch, out=lambda line: None), PY, arch)
    assert again.sha256 == layer.sha256
    print(
        f"\nlayer {arch}: {layer.size / dep.MiB:.1f} MB zipped, {layer.unzipped_size / dep.MiB:.1f} MB unzipped, "
        f"built in {seconds:.1f} s; numpy {layer.versions.get('numpy')}, dask {layer.versions['dask']}"
    )

    if machine != platform.machine():
        return
    # Run a numpy call through the layer's own handler, in an interpreter that sees only the layer
    # (and the standard library): the layer is self-contained for a call on local storage.
    from dask_wren.shipping import pickle_payload
    from lambda_worker import protocol, serialize
    from lambda_worker.signing import KEY_VARIABLE, SigningKey
    from lambda_worker.storage.local import LocalStorage

    site = tmp_path / "opt"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(site)

    def numpy_call(n):
        import numpy

        return {"sum": float(numpy.arange(n).sum()), "numpy": numpy.__version__, "file": numpy.__file__}

    store = LocalStorage(str(tmp_path / "store"))
    payload = pickle_payload(numpy_call, [10])  # as the executor ships a job, signed
    key, func_key, args_key = SigningKey.generate(), protocol.func_key("t", "job"), protocol.args_key("t", "job", "0000")
    store.put(func_key, protocol.sign_object(key, func_key, payload.func))
    store.put(args_key, payload.args[0])
    mac = protocol.argument_mac(key, args_key, 0, payload.args[0])
    event = protocol.build_event(
        prefix="t", job_id="job", storage=store.spec(), timeout=60, host_versions=serialize.runtime_versions(),
        calls=[{"id": protocol.call_id_for(0), "range": [0, len(payload.args[0])], "mac": mac}],
    )
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from lambda_worker.handler import lambda_handler;"
        "import lambda_worker.storage.s3, dask.array, dask.bag, dask.delayed, numpy.linalg, tblib, toolz;"
        "print(json.dumps(lambda_handler(json.loads(sys.argv[2]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, str(site / "python"), json.dumps(event)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), KEY_VARIABLE: key.text()},
    )
    assert proc.returncode == 0, proc.stderr
    record_key = protocol.result_key("t", "job", protocol.call_id_for(0))
    blob = store.get(record_key)
    header, offset = protocol.decode_header(blob, key=key, storage_key=record_key)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["statuses"] == {"ok": 1}, header.get("error")
    value = serialize.loads(blob[offset:])
    assert header["status"] == "ok" and value["sum"] == 45.0
    assert value["file"].startswith(str(site)), value  # numpy came from the layer
