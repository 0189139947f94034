"""Exceptions the host raises.  Each says what happened and what to do about it."""

from __future__ import annotations

from lambda_worker.errors import IntegrityError, WrenError

__all__ = [
    "BackendError",
    "BudgetExceededError",
    "ConfigError",
    "IntegrityError",
    "LostCallError",
    "RemoteError",
    "SerializationError",
    "VersionMismatchError",
    "WorkerDiedError",
    "WrenError",
    "WrenTimeoutError",
]


class ConfigError(WrenError, ValueError):
    """A setting has a value dask-wren cannot work with (a ``ValueError`` too)."""


class SerializationError(WrenError, TypeError):
    """A function or argument cannot be pickled; raised before anything is invoked."""


class RemoteError(WrenError):
    """A remote exception that could not be rebuilt on the host (it did not unpickle).

    Carries the remote type name, message and formatted traceback.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str = ""):
        super().__init__(remote_type, message, remote_traceback)
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += f"\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"
        return text


class WorkerDiedError(WrenError):
    """The worker process running the call exited or was killed before writing a result."""


class WrenTimeoutError(WrenError, TimeoutError):
    """A call ran past its timeout and was stopped."""


class LostCallError(WrenError):
    """A call of an attached job (``dask_wren.attach``) has no result and never will: its worker died
    with its host, or no record came within the bound for it.  Attach never runs a call again."""


class VersionMismatchError(WrenError):
    """Host and worker run different Python, cloudpickle or protocol versions."""


class BackendError(WrenError):
    """The backend cannot run calls at all (workers do not start, function not deployed, ...)."""


class BudgetExceededError(WrenError):
    """A call was not sent: with it, the executor's spending would pass ``wren.budget``.

    The message says the budget, what finished calls spent, what is estimated for the calls in
    flight (they finish normally) and how many calls were not sent."""
