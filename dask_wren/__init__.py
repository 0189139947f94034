"""dask-wren: run Python functions and Dask graphs on AWS Lambda or local worker processes.

Names are imported on first use, so the worker (which imports ``dask_wren.protocol``,
``dask_wren.serialize`` and ``dask_wren.storage`` only) never loads the host side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Executor": "dask_wren.executor",
    "default_executor": "dask_wren.executor",
    "local_executor": "dask_wren.executor",
    "lambda_executor": "dask_wren.executor",
    "WrenFuture": "dask_wren.futures",
    "wait": "dask_wren.futures",
    "as_completed": "dask_wren.futures",
    "get_all_results": "dask_wren.futures",
    "ALL_COMPLETED": "dask_wren.futures",
    "ANY_COMPLETED": "dask_wren.futures",
    "FIRST_COMPLETED": "dask_wren.futures",
    "ALWAYS": "dask_wren.futures",
    "Settings": "dask_wren.config",
    "WrenError": "dask_wren.errors",
    "RemoteError": "dask_wren.errors",
    "SerializationError": "dask_wren.errors",
    "WorkerDiedError": "dask_wren.errors",
    "WrenTimeoutError": "dask_wren.errors",
    "VersionMismatchError": "dask_wren.errors",
    "BackendError": "dask_wren.errors",
}

__all__ = [
    "ALL_COMPLETED",
    "ALWAYS",
    "ANY_COMPLETED",
    "BackendError",
    "Executor",
    "FIRST_COMPLETED",
    "RemoteError",
    "SerializationError",
    "Settings",
    "VersionMismatchError",
    "WorkerDiedError",
    "WrenError",
    "WrenFuture",
    "WrenTimeoutError",
    "as_completed",
    "default_executor",
    "get_all_results",
    "lambda_executor",
    "local_executor",
    "wait",
]

if TYPE_CHECKING:
    from dask_wren.config import Settings
    from dask_wren.errors import (
        BackendError,
        RemoteError,
        SerializationError,
        VersionMismatchError,
        WorkerDiedError,
        WrenError,
        WrenTimeoutError,
    )
    from dask_wren.executor import Executor, default_executor, lambda_executor, local_executor
    from dask_wren.futures import (
        ALL_COMPLETED,
        ALWAYS,
        ANY_COMPLETED,
        FIRST_COMPLETED,
        WrenFuture,
        as_completed,
        get_all_results,
        wait,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dask_wren' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
