"""One base class: every error of dask-wren's own, host or worker side, is a dask_wren.WrenError."""

from __future__ import annotations

import subprocess

import dask
import pytest

import dask_wren
from dask_wren.config import Settings
from dask_wren.subprocesses import clean_environment, python_command
from lambda_worker.storage import KeyNotFound, StorageDenied, StorageError
from lambda_worker.storage.local import LocalStorage


def test_one_base_class_on_both_sides():
    import dask_wren.errors
    import lambda_worker.errors

    assert dask_wren.WrenError is dask_wren.errors.WrenError is lambda_worker.errors.WrenError
    assert dask_wren.StorageError is StorageError
    for cls in (StorageError, StorageDenied, KeyNotFound, dask_wren.errors.ConfigError):
        assert issubclass(cls, dask_wren.WrenError), cls
    assert issubclass(StorageError, RuntimeError) and issubclass(KeyNotFound, KeyError)  # as before


def test_a_storage_failure_is_caught_as_a_wren_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(dask_wren.WrenError, match="cannot create the local storage directory"):
        LocalStorage(str(blocker / "store"))
    with pytest.raises(dask_wren.WrenError):
        LocalStorage(str(tmp_path / "store")).get("missing")


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"storage": "s3"}, "S3 storage needs a bucket"),
        ({"backend": "nowhere"}, "wren.backend"),
        ({"workers": 0}, "wren.local.workers"),
        ({"timeout": -1}, "wren.timeout"),
    ],
)
def test_invalid_settings_are_wren_errors_and_value_errors(overrides, words):
    with dask.config.set({"wren.storage.bucket": None}):
        with pytest.raises(dask_wren.WrenError, match=words) as info:
            Settings.from_config(**overrides)
        assert isinstance(info.value, ValueError)  # existing `except ValueError` code still works
        with pytest.raises(dask_wren.WrenError, match=words):
            dask_wren.default_executor(**overrides)


def test_the_worker_side_never_imports_dask_wren():
    code = (
        "import sys, lambda_worker.errors, lambda_worker.storage, lambda_worker.handler\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'dask_wren'], sorted(sys.modules)\n"
    )
    subprocess.run(python_command("-c", code), env=clean_environment(), check=True, timeout=60)
