"""Contract tests run against every store (a local directory, S3 via moto), plus per-store tests."""

from __future__ import annotations

import re
import threading

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

import lambda_worker.storage
from lambda_worker.storage import storage_from_spec
from lambda_worker.storage.base import KeyNotFound, Storage, StorageError
from lambda_worker.storage.local import LocalStorage
from lambda_worker.storage.s3 import MiB, S3Storage

BUCKET = "wren-test-bucket"
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _fresh_spec_cache(monkeypatch):
    # storage_from_spec caches stores by spec; a cached one could outlive its test's mock.
    monkeypatch.setattr(lambda_worker.storage, "_CACHE", {})


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


# Building a client from a fresh session reloads the S3 model (~0.1 s); share one session
# so the moto-backed tests stay fast.  The default construction path is still exercised by
# from_spec (spec round trip) and the error tests.
_SESSION = boto3.session.Session()


@pytest.fixture
def s3_client(aws_env):
    """The boto3 client behind ``s3``: the test's own view of the bucket."""
    with mock_aws():
        client = _SESSION.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def s3(s3_client):
    return S3Storage(BUCKET, client=s3_client)


@pytest.fixture
def local(tmp_path):
    return LocalStorage(str(tmp_path))


@pytest.fixture(params=["local", "s3"])
def store(request) -> Storage:
    return request.getfixturevalue(request.param)


# -- the contract, for every store ------------------------------------------------------------


def test_implements_protocol(store):
    assert isinstance(store, Storage)


def test_put_get_roundtrip(store):
    store.put("a/b/c.bin", b"\x00hello\xff")
    store.put("empty", b"")
    assert store.get("a/b/c.bin") == b"\x00hello\xff"
    assert store.get("empty") == b""


def test_overwrite(store):
    store.put("k", b"first version")
    store.put("k", b"second")
    assert store.get("k") == b"second"


def test_get_missing_raises_key_not_found(store):
    with pytest.raises(KeyNotFound) as info:
        store.get("no/such/key")
    assert "no/such/key" in str(info.value)
    with pytest.raises(KeyError):
        store.get("no/such/key")
    with pytest.raises(KeyNotFound):
        store.get_range("no/such/key", 0, 3)


def test_get_range(store):
    store.put("r", b"0123456789")
    assert store.get_range("r", 0, 3) == b"012"
    assert store.get_range("r", 3, 4) == b"3456"
    assert store.get_range("r", 8, 100) == b"89"  # runs past the end
    assert store.get_range("r", 10, 5) == b""  # starts at the end
    assert store.get_range("r", 50, 5) == b""  # starts past the end
    assert store.get_range("r", 4, 0) == b""  # zero length


def test_list_prefix(store):
    store.put("dir/b", b"22")
    store.put("dir/a", b"1")
    store.put("dir/sub/c", b"333")
    store.put("dirty", b"x")
    store.put("other/d", b"4444")
    assert list(store.list("dir/")) == [("dir/a", 1), ("dir/b", 2), ("dir/sub/c", 3)]
    assert sorted(store.list("")) == [
        ("dir/a", 1),
        ("dir/b", 2),
        ("dir/sub/c", 3),
        ("dirty", 1),
        ("other/d", 4),
    ]


def test_list_start_after_skips_keys_up_to_it(store):
    for i in range(5):
        store.put(f"job/r/{i:06d}", b"x" * i)
    store.put("job/other", b"y")
    after = [k for k, _ in store.list("job/r/", start_after="job/r/000002")]
    assert after == ["job/r/000003", "job/r/000004"]
    assert [k for k, _ in store.list("job/r/", start_after="job/r/000004")] == []


def test_delete_keys(store):
    for k in ("d/a", "d/b", "d/c"):
        store.put(k, b"1")
    store.delete(["d/a", "d/c", "d/missing"])
    assert [k for k, _ in store.list("d/")] == ["d/b"]
    store.delete([])


def test_list_missing_prefix_is_empty(store):
    store.put("dir/a", b"1")
    assert list(store.list("nothing/")) == []
    assert list(store.list("dir/nothing/")) == []


def test_exists(store):
    assert not store.exists("x/y")
    store.put("x/y", b"1")
    assert store.exists("x/y")
    assert not store.exists("x/z")


def test_put_if_absent_first_wins(store):
    assert store.put_if_absent("claim", b"first") is True
    assert store.put_if_absent("claim", b"second") is False
    assert store.get("claim") == b"first"


def test_delete_prefix(store):
    for key in ("job/1", "job/2", "job/sub/3", "jobs/keep", "other/keep"):
        store.put(key, b"data")
    assert store.delete_prefix("job/") == 3
    assert list(store.list("job/")) == []
    assert not store.exists("job/1")
    assert sorted(k for k, _ in store.list("")) == ["jobs/keep", "other/keep"]
    assert store.delete_prefix("job/") == 0
    assert store.delete_prefix("missing/") == 0


def test_spec_roundtrip(store):
    store.put("shared", b"payload")
    again = storage_from_spec(store.spec())
    assert type(again) is type(store)
    assert again.spec() == store.spec()
    assert again.get("shared") == b"payload"
    again.put("back", b"result")
    assert store.get("back") == b"result"
    if isinstance(store, LocalStorage):
        assert again.root == store.root
    else:
        assert again.bucket == store.bucket


# -- S3 only ------------------------------------------------------------------------------------


def test_s3_spec_has_no_credentials(s3):
    assert s3.spec() == {"kind": "s3", "bucket": BUCKET, "region": REGION, "endpoint_url": None}


@pytest.mark.slow
def test_s3_list_and_delete_more_than_1000_keys(s3):
    keys = [f"many/{i:05d}" for i in range(1005)]
    for k in keys:
        s3.put(k, b"x")
    listed = list(s3.list("many/"))
    assert listed == [(k, 1) for k in keys]
    assert s3.delete_prefix("many/") == 1005
    assert list(s3.list("many/")) == []


def _parts_of(client, key: str) -> int:
    etag = client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


def _big_store(client) -> S3Storage:
    return S3Storage(
        BUCKET, client=client, multipart_threshold=5 * MiB + 1, multipart_chunk=5 * MiB
    )


def test_s3_multipart_put(s3_client):
    store = _big_store(s3_client)
    data = bytes(range(256)) * (11 * MiB // 256) + b"tail"
    store.put("big", data)
    assert _parts_of(s3_client, "big") == 3  # 5 MiB + 5 MiB + the rest
    assert store.get("big") == data
    assert store.get_range("big", 5 * MiB - 2, 4) == data[5 * MiB - 2 : 5 * MiB + 2]
    store.put("small", b"below the threshold")
    assert _parts_of(s3_client, "small") == 1


def test_s3_multipart_put_if_absent(s3_client):
    store = _big_store(s3_client)
    first, second = b"1" * (6 * MiB), b"2" * (6 * MiB)
    assert store.put_if_absent("big", first) is True
    assert store.put_if_absent("big", second) is False
    assert store.get("big") == first
    uploads = s3_client.list_multipart_uploads(Bucket=BUCKET)
    assert uploads.get("Uploads", []) == []  # the losing upload was aborted


def test_s3_multipart_failure_aborts_upload(s3_client, monkeypatch):
    store = _big_store(s3_client)
    calls = []
    real_upload_part = s3_client.upload_part

    def flaky_upload_part(**kwargs):
        calls.append(kwargs["PartNumber"])
        if len(calls) == 2:
            raise RuntimeError("connection dropped")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(s3_client, "upload_part", flaky_upload_part)
    with pytest.raises(RuntimeError, match="connection dropped"):
        store.put("big", b"z" * (11 * MiB))
    assert calls == [1, 2]
    assert not store.exists("big")
    assert s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_s3_missing_bucket(s3):
    gone = S3Storage("no-such-wren-bucket")
    for call in (lambda: gone.put("k", b"1"), lambda: gone.get("k"), lambda: list(gone.list(""))):
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, KeyNotFound)
        assert "no-such-wren-bucket" in str(info.value)
        assert "does not exist" in str(info.value)


def test_s3_access_denied_names_bucket_and_key(aws_env):
    client = _SESSION.client("s3", region_name=REGION)
    store = S3Storage(BUCKET, client=client)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(StorageError) as info:
            store.get("secret/key")
    msg = str(info.value)
    assert BUCKET in msg and "secret/key" in msg and "permission" in msg


def test_s3_no_credentials(monkeypatch, tmp_path):
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SECURITY_TOKEN",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("BOTO_CONFIG", str(tmp_path / "no-boto-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Signing fails before any request is sent; the unroutable endpoint is a second guard.
    store = S3Storage(BUCKET, region=REGION, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="credentials") as info:
        store.get("k")
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


def test_s3_endpoint_unreachable_names_endpoint(aws_env):
    store = S3Storage(BUCKET, endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(StorageError, match=re.escape("127.0.0.1:9")):
        store.exists("k")


# -- local only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "a/..", "/abs"])
def test_local_rejects_escaping_keys(local, key):
    with pytest.raises(ValueError):
        local.put(key, b"x")
    with pytest.raises(ValueError):
        local.get(key)


def test_local_concurrent_put_if_absent_one_winner(local):
    n = 8
    barrier = threading.Barrier(n)
    results: list[bool] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        barrier.wait()
        won = local.put_if_absent("claim", f"writer {i}".encode())
        with lock:
            results.append(won)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * (n - 1) + [True]
    assert local.get("claim").startswith(b"writer ")
