import os
import time

import pytest

import dask_wren


@pytest.fixture(scope="session")
def standin():
    """The offline AWS stand-in (moto's S3 server + a local Lambda endpoint), one per session."""
    from dask_wren.testing import aws_standin

    with aws_standin(workers=2) as s:
        yield s


@pytest.fixture(params=["local", "aws"])
def backend_settings(request, tmp_path):
    """Executor settings for each backend: the local pool, and AWS Lambda through the stand-in."""
    if request.param == "local":
        return {"storage_dir": str(tmp_path / "store"), "workers": 2}
    return dict(request.getfixturevalue("standin").ensure_bucket().settings_overrides, lost_call_grace=5)


@pytest.fixture
def faults(standin):
    """The stand-in's fault injection, cleared before and after the test (with a bucket ready)."""
    standin.ensure_bucket()
    standin.faults.reset()
    yield standin.faults
    standin.faults.reset()


@pytest.fixture
def executor(backend_settings):
    """An executor on each backend, with two warm workers."""
    ex = dask_wren.default_executor(timeout=60, **backend_settings)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def local_executor(tmp_path):
    """An executor on the local backend only: for tests of the local worker pool itself."""
    ex = dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=2, timeout=60)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def wait_for_path(path, timeout=30.0, error=AssertionError):
    """Block until ``path`` exists (a remote function signalled a point it reached)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise error(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def wait_until(condition, timeout=30.0, what="the condition"):
    """Poll until ``condition()`` holds; ``AssertionError`` naming ``what`` after ``timeout`` s (a
    bound against hanging, generous on a loaded machine, not a measure of speed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def gate(path, timeout=30.0):
    """Run remotely: wait until the test opens the gate by creating ``path``."""
    wait_for_path(path, timeout, TimeoutError)


def hold_the_gil(seconds):
    """Run remotely: sleep in C with the GIL held, so the handler's watchdog thread cannot run and
    only a kill from outside ends it (a C extension's busy loop does the same)."""
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))
    return seconds


def nap(seconds):
    time.sleep(seconds)
    return seconds


def hog(megabytes):
    """Run remotely: hold ``megabytes`` of memory and keep touching every page until killed."""
    block = bytearray(megabytes << 20)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for i in range(0, len(block), 4096):
            block[i] = (block[i] + 1) & 0xFF
    return len(block)
