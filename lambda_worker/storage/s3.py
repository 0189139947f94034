"""An S3 object store, for when workers run on AWS Lambda and cannot see the host's disk.

Retries are botocore's own (``standard`` mode by default); one client is shared by all threads
(boto3 clients are thread-safe).  The spec names only the bucket, region and endpoint: a worker
takes its credentials from its own environment or role, so no secret ever travels in a spec.
Errors a user can fix (missing bucket, no credentials, no permission, endpoint unreachable)
become one ``StorageError`` saying what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import boto3
import botocore.config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from lambda_worker.storage.base import KeyNotFound, StorageDenied, StorageError

MiB = 1024 * 1024
_MIN_PART = 5 * MiB  # S3 rejects smaller parts, except the last one
_MAX_PARTS = 10_000  # S3's limit on parts per upload
_DELETE_BATCH = 1000  # S3's limit on keys per DeleteObjects request

_MISSING = {"NoSuchKey", "404", "NotFound"}
_LOST_RACE = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
#: What to do without AWS credentials: the one text of it, also for the host (the AWS backend, deploy).
CREDENTIALS_ADVICE = (
    "run `aws configure` (or `aws sso login`), or set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3Storage:
    def __init__(
        self,
        bucket: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        retry_mode: str = "standard",
        max_attempts: int = 5,
        max_pool_connections: int = 64,
        multipart_threshold: int = 64 * MiB,
        multipart_chunk: int = 16 * MiB,
        client: Any = None,
    ):
        if not bucket:
            raise StorageError("no S3 bucket given: set wren.storage.bucket")
        if multipart_chunk < _MIN_PART:
            raise ValueError(f"multipart_chunk must be at least {_MIN_PART} bytes (an S3 rule)")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.multipart_threshold = multipart_threshold
        self.multipart_chunk = multipart_chunk
        if client is None:
            config = botocore.config.Config(
                retries={"mode": retry_mode, "max_attempts": max_attempts},
                max_pool_connections=max_pool_connections,
            )
            client = boto3.session.Session().client(
                "s3", region_name=region, endpoint_url=endpoint_url, config=config
            )
        self._client = client
        # Record the region actually used, so a worker with another default region matches.
        self.region: str | None = region or client.meta.region_name

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> S3Storage:
        return cls(spec["bucket"], region=spec.get("region"), endpoint_url=spec.get("endpoint_url"))

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "s3",
            "bucket": self.bucket,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
        }

    def __repr__(self) -> str:
        return f"S3Storage({self.bucket!r}, region={self.region!r})"

    @contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        """Turn boto errors a user can act on into KeyNotFound or one clear StorageError."""
        where = f"s3://{self.bucket}/{key}"
        try:
            yield
        except ClientError as e:
            code = _code(e)
            if code in _MISSING and key:
                raise KeyNotFound(key) from None
            if code == "NoSuchBucket":
                msg = (
                    f"S3 bucket {self.bucket!r} does not exist (region {self.region}): create it "
                    "or run `dask-wren deploy`, or set wren.storage.bucket"
                )
            elif code in _DENIED:
                raise StorageDenied(
                    f"access denied to {where} ({e.operation_name}): the AWS credentials in use "
                    f"lack permission on bucket {self.bucket!r}; check the IAM or bucket policy"
                ) from e
            elif code in _BAD_CREDENTIALS:
                msg = (
                    f"AWS rejected the credentials for {where} ({code}): they are wrong or "
                    "expired; refresh them (e.g. `aws sso login`) or run `aws configure`"
                )
            else:
                msg = f"S3 {e.operation_name} on {where} failed: {e}"
            raise StorageError(msg) from e
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise StorageError(f"no AWS credentials found for {where} ({e}): {CREDENTIALS_ADVICE}") from e
        except BotoConnectionError as e:
            endpoint = e.kwargs.get("endpoint_url") or self._client.meta.endpoint_url
            raise StorageError(
                f"cannot connect to the S3 endpoint {endpoint} for {where}: check the network, "
                f"the region ({self.region}) and endpoint_url ({self.endpoint_url})"
            ) from e

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            if len(data) > self.multipart_threshold:
                self._put_multipart(key, data)
            else:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with self._errors(key):
            try:
                if len(data) > self.multipart_threshold:
                    self._put_multipart(key, data, IfNoneMatch="*")
                else:
                    self._client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
            except ClientError as e:
                if _code(e) in _LOST_RACE:  # another writer got there first
                    return False
                raise
        return True

    def _put_multipart(self, key: str, data: bytes, **complete_args: Any) -> None:
        # Like boto3's transfer manager: with default checksums on, ask S3 for CRC32 parts and
        # hand the part checksums back on completion (S3 requires them once the upload has one).
        checksum = self._client.meta.config.request_checksum_calculation == "when_supported"
        extra = {"ChecksumAlgorithm": "CRC32"} if checksum else {}
        upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
        upload_id = upload["UploadId"]
        chunk = max(self.multipart_chunk, -(-len(data) // _MAX_PARTS))
        try:
            parts = []
            for number, offset in enumerate(range(0, len(data), chunk), start=1):
                r = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data[offset : offset + chunk],
                    **extra,
                )
                part = {"ETag": r["ETag"], "PartNumber": number}
                if checksum and "ChecksumCRC32" in r:
                    part["ChecksumCRC32"] = r["ChecksumCRC32"]
                parts.append(part)
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **complete_args,
            )
        except BaseException:
            # Do not leave billed, invisible parts behind.  If the abort fails too, the original
            # error is the one worth reporting (a lifecycle rule can reap what is left).
            with suppress(ClientError, BotoCoreError):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def get(self, key: str) -> bytes:
        with self._errors(key):
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        if length == 0:
            return b""
        with self._errors(key):
            try:
                r = self._client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
                )
            except ClientError as e:
                if _code(e) == "InvalidRange":  # start is at or past the end of the object
                    return b""
                raise
            return r["Body"].read()

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        extra = {"StartAfter": start_after} if start_after else {}
        with self._errors(prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, **extra
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield obj["Key"], obj["Size"]

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except KeyNotFound:
            return False
        return True

    def delete(self, keys: list[str]) -> None:
        keys = list(keys)
        where = keys[0] if keys else ""
        with self._errors(where):
            for i in range(0, len(keys), _DELETE_BATCH):
                batch = keys[i : i + _DELETE_BATCH]
                r = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
                if r.get("Errors"):
                    err = r["Errors"][0]
                    raise StorageError(
                        f"could not delete {len(r['Errors'])} of {len(batch)} objects in "
                        f"s3://{self.bucket}, e.g. {err.get('Key')!r}: "
                        f"{err.get('Code')}: {err.get('Message')}"
                    )

    def delete_prefix(self, prefix: str) -> int:
        keys = [k for k, _ in self.list(prefix)]
        self.delete(keys)
        return len(keys)
