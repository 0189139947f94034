"""The AWS clients deploy uses, made here and nowhere else, and the errors a user can cause, in one line.

``DeployError`` is what every deploy module raises for something the user can fix; and
``user_error_message`` turns it, and botocore's errors, into the one line the CLI prints.
boto3 is imported only when a client is made, so the layer build works without touching it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dask_wren.errors import WrenError


class DeployError(WrenError):
    """Something the user can fix stops the deploy; the message says what and how."""


_NO_REGION = "no AWS region: pass --region, or set AWS_REGION / AWS_DEFAULT_REGION, or 'region' in ~/.aws/config"


def _no_credentials(what: str) -> str:
    """``what`` went wrong, and the advice the worker's S3 store gives too (one text on both sides)."""
    from lambda_worker.storage.s3 import CREDENTIALS_ADVICE

    return f"{what}: {CREDENTIALS_ADVICE}"


def resolve_region(region: str | None) -> str:
    if region:
        return region
    import boto3

    found = boto3.session.Session().region_name
    if not found:
        raise DeployError(_NO_REGION)
    return found


@dataclass
class AwsClients:
    """One client per service deploy calls, all for one region and endpoint, with standard retries."""

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
            raise DeployError(_no_credentials("no AWS credentials found"))
        config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 5})

        def make(name: str) -> Any:
            return session.client(name, region_name=region, endpoint_url=endpoint_url, config=config)

        return cls(make("sts"), make("iam"), make("s3"), make("lambda"), region, endpoint_url)

    def identity(self) -> tuple[str, str]:
        """(account id, partition) of the caller."""
        who = self.sts.get_caller_identity()
        return who["Account"], who["Arn"].split(":")[1]


def error_code(e: Any) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` for anything else)."""
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def client_error() -> type[Exception]:
    """botocore's ``ClientError``, imported when a step first catches it."""
    from botocore.exceptions import ClientError

    return ClientError


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
        return _no_credentials(f"no usable AWS credentials ({exc})")
    if isinstance(exc, NoRegionError):
        return _NO_REGION
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach AWS at {exc.kwargs.get('endpoint_url')}: check the network, --region and --endpoint-url"
    if isinstance(exc, ClientError):
        code = error_code(exc)
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
