"""dask-wren: run Python functions and Dask graphs on AWS Lambda or local worker processes."""

from dask_wren.attach import attach
from dask_wren.config import Settings
from dask_wren.cost import estimate
from dask_wren.errors import (
    BackendError,
    BudgetExceededError,
    ConfigError,
    IntegrityError,
    LostCallError,
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
from dask_wren.plot import plot
from dask_wren.scheduler import local, register, remote, wren_get
from lambda_worker.storage import StorageError

register()  # scheduler="wren"
del register

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "ALWAYS",
    "ANY_COMPLETED",
    "BackendError",
    "BudgetExceededError",
    "Executor",
    "FIRST_COMPLETED",
    "IntegrityError",
    "LostCallError",
    "RemoteError",
    "SerializationError",
    "Settings",
    "StorageError",
    "VersionMismatchError",
    "WorkerDiedError",
    "WrenError",
    "ConfigError",
    "WrenFuture",
    "WrenTimeoutError",
    "as_completed",
    "attach",
    "default_executor",
    "estimate",
    "get_all_results",
    "lambda_executor",
    "local",
    "local_executor",
    "plot",
    "remote",
    "wait",
    "wren_get",
]
