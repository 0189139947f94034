"""Byte formats for values and exceptions, shared by host and worker.

Values are cloudpickled.  An exception travels as a pickled ``(exception, traceback dict)`` pair
(the traceback through tblib), and its type, message and formatted traceback also go into the
result header, so the host can still report it when the exception itself cannot be unpickled.
"""

from __future__ import annotations

import pickle
import platform
import sys
import traceback
from typing import Any

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def loads(data: bytes) -> Any:
    return pickle.loads(data)


#: The function table of the job whose arguments are being unpickled (see dask_wren.shipping):
#: token -> functions.  The handler registers a job's table before unpickling its arguments.
_SHARED: dict[str, list[Any]] = {}


def shared_function(token: str, index: int) -> Any:
    """Unpickling hook: function ``index`` of the job table ``token``."""
    try:
        return _SHARED[token][index]
    except KeyError:
        raise RuntimeError(f"function table {token} was not loaded before the arguments that use it") from None


def load_job_function(data: bytes) -> tuple[Any, str, list[Any]]:
    """Unpickle a job's ``func.pkl``: the function, its table's token and the table."""
    return loads(data)


def use_function_table(token: str, functions: list[Any]) -> None:
    """Make ``token``'s table the one argument unpickling resolves against (one job at a time)."""
    if token not in _SHARED:
        _SHARED.clear()
        _SHARED[token] = functions


def runtime_versions() -> dict[str, str]:
    """What must match between host and worker for pickles to cross: Python minor, cloudpickle."""
    return {
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "python_full": platform.python_version(),
        "cloudpickle": cloudpickle.__version__,
    }


def describe_exception(exc: BaseException) -> dict[str, str]:
    """Type, message and traceback text: enough to report an exception that cannot be unpickled."""
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}" if cls.__module__ != "builtins" else cls.__qualname__,
        "message": _safe_str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
    }


def dumps_exception(exc: BaseException) -> bytes | None:
    """Pickle an exception with its traceback; ``None`` if it cannot be pickled and unpickled."""
    from tblib import Traceback

    tb = Traceback(exc.__traceback__).as_dict() if exc.__traceback__ is not None else None
    try:
        data = dumps((exc, tb))
        pickle.loads(data)  # an exception whose __init__ rejects its own args fails only here
    except Exception:
        return None
    return data


def loads_exception(data: bytes) -> BaseException:
    """Rebuild an exception pickled by ``dumps_exception``, with its remote traceback attached."""
    from tblib import Traceback

    exc, tb = pickle.loads(data)
    if tb is not None:
        try:
            exc = exc.with_traceback(Traceback.from_dict(tb).as_traceback())
        except Exception:  # a damaged traceback must not hide the exception itself
            pass
    return exc


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"
