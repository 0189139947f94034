"""The base class of dask-wren's own errors, host and worker side alike.

It lives here, on the worker side, because the worker never imports ``dask_wren``;
``dask_wren.errors`` re-exports it, so ``except dask_wren.WrenError`` also catches the errors the
worker side defines (``StorageError`` and its kinds).
"""

from __future__ import annotations


class WrenError(Exception):
    """Base class of dask-wren's own errors."""


class IntegrityError(WrenError):
    """An object in storage does not carry a valid signature: nothing in it was unpickled.

    It was changed after it was written, or written by a host or deployment with another key.
    """
