"""A map whose payloads and results travel through S3 (moto's server on loopback)."""

import boto3
import pytest

import dask_wren

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    # Fake credentials in the environment: local worker processes inherit them.
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def cube(x):
    return x**3


def fail(x):
    raise ArithmeticError(f"bad {x}")


def test_map_reduce_through_s3(s3_endpoint, aws_env):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="wren-e2e")
    with dask_wren.default_executor(storage="s3", bucket="wren-e2e", endpoint_url=s3_endpoint, workers=2) as ex:
        futures = ex.map(cube, range(20))
        assert dask_wren.get_all_results(futures) == [i**3 for i in range(20)]
        assert ex.reduce(sum, futures).result() == sum(i**3 for i in range(20))
        with pytest.raises(ArithmeticError, match="bad 3"):
            ex.call_async(fail, 3).result()
        listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="wren-e2e")
        assert listed["KeyCount"] > 0
    # shutting down removed the job objects
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="wren-e2e")
    assert listed["KeyCount"] == 0


def test_missing_bucket_is_one_clear_error(s3_endpoint, aws_env):
    with pytest.raises(dask_wren.StorageError, match="no-such-bucket"):
        with dask_wren.default_executor(storage="s3", bucket="no-such-bucket", endpoint_url=s3_endpoint) as ex:
            ex.call_async(cube, 2)
