"""Backends start invocations; nothing outside this package special-cases one."""

from __future__ import annotations

from dask_wren.backends.base import Backend, Invocation
from dask_wren.config import Settings

__all__ = ["Backend", "Invocation", "make_backend"]


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "local":
        from dask_wren.backends.local import shared_local_backend

        return shared_local_backend(settings.workers, settings.memory_mb)
    from dask_wren.backends.aws import shared_aws_backend

    return shared_aws_backend(settings)
