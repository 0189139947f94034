"""The documents that decide what the worker may do and how its function runs, built by pure functions.

Trust policy, the worker's one inline policy, the bucket's public access block and lifecycle rule,
the async invoke configuration, the function's settings and the ``wren.*`` settings document: no
AWS call here, so each is tested as data, and the steps only compare them with what AWS has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dask_wren.deploy.layer import HANDLER
from dask_wren.deployment import function_environment

if TYPE_CHECKING:
    from dask_wren.deploy.options import DeployConfig

LIFECYCLE_RULE_ID = "dask-wren-expire"
POLICY_NAME = "dask-wren-worker"
EVENT_AGE_RANGE = (60, 21600)  # MaximumEventAgeInSeconds, seconds (a Lambda limit)
_FUNCTION_DESCRIPTION = "dask-wren worker (managed by dask-wren deploy)"


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
    signing_key: str | None = None,
) -> dict[str, Any]:
    """The ``wren.*`` settings that point ``default_executor()`` at the deployment, and the key
    (``signing_key``, hex) that the host shares with the function.

    ``max_concurrency``, when known, is the concurrency the function really has (its reservation,
    or the account's unreserved pool): more calls in flight would only queue inside Lambda.
    """
    storage: dict[str, Any] = {"kind": "s3", "bucket": bucket, "region": region, "prefix": prefix}
    aws: dict[str, Any] = {"function-name": function_name, "region": region}
    if max_concurrency is not None:
        aws["max-concurrency"] = max_concurrency
    if signing_key:
        aws["signing-key"] = signing_key
    # Always written, null without --endpoint-url: a later deploy to real AWS clears a stand-in's URL.
    storage["endpoint-url"] = endpoint_url
    aws["lambda-endpoint-url"] = endpoint_url
    return {"wren": {"backend": "aws", "storage": storage, "aws": aws}}


def function_settings(
    cfg: DeployConfig, role_arn: str, layer_arns: str | Sequence[str], versions: dict[str, str], signing_key: str
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
        "Environment": {"Variables": function_environment(versions, bucket=cfg.bucket, prefix=cfg.prefix, signing_key=signing_key)},
        "Description": _FUNCTION_DESCRIPTION,
    }
    if cfg.image_uri:
        for key in ("Runtime", "Handler", "Layers"):
            del settings[key]
    return settings
