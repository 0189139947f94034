import os
import time

import pytest

import dask_wren


@pytest.fixture
def executor(tmp_path):
    """A local executor with its own storage directory and two warm workers."""
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


def gate(path, timeout=30.0):
    """Run remotely: wait until the test opens the gate by creating ``path``."""
    wait_for_path(path, timeout, TimeoutError)
