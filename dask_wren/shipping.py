"""Decide which modules travel with a pickled function, and pickle it that way (host side).

A worker imports only installed packages: it does not see the host's working directory, its
``sys.path`` additions, a notebook or a ``python -c`` session.  cloudpickle already pickles
``__main__`` by value; any other module the function or its arguments refer to that a clean
interpreter could not import (the user's own ``analysis.py``) is registered with cloudpickle
to be pickled by value too.  Installed packages stay references, and so do dask-wren's own
packages, which every worker has (a worker is their code).
"""

from __future__ import annotations

import functools
import importlib.machinery
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import types
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import cloudpickle

from dask_wren.errors import SerializationError
from dask_wren.subprocesses import clean_environment, python_command
from lambda_worker.serialize import PROTOCOL, shared_function

_register_lock = threading.Lock()

#: dask-wren's own packages: every worker imports them (they are the worker), so they never travel
#: by value, even when the probe cannot tell (a checkout on ``sys.path`` beside a non-editable
#: install).  Pickling them by value would also pickle the pickling machinery itself.
NEVER_SHIPPED = frozenset({"dask_wren", "lambda_worker"})


class _SharedFunctions:
    """The functions a job's arguments refer to, each pickled once (into ``func.pkl``).

    Dask tasks carry their functions: without this, a function defined in ``__main__`` would be
    pickled by value again inside every one of thousands of task arguments.
    """

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.functions: list[Any] = []
        self._index: dict[int, int] = {}

    def index(self, func: Any) -> int:
        i = self._index.get(id(func))
        if i is None:
            i = self._index[id(func)] = len(self.functions)
            self.functions.append(func)
        return i


class _ModuleRecorder(cloudpickle.Pickler):
    """A cloudpickle pickler that notes the module of every function, class and module it meets,
    and, given a ``_SharedFunctions``, replaces functions by references into it.

    ``reducer_override`` runs in Python for every object that is not a builtin container, so its
    decisions are remembered: per type for plain instances (cloudpickle reduces those the normal
    way) and per object for functions, classes and modules (kept alive here, so ids stay unique).
    A job's thousands of Dask tasks then cost little more than ``pickle.dumps``.
    """

    def __init__(self, file: io.BytesIO, modules: set[str], shared: _SharedFunctions | None = None):
        super().__init__(file, protocol=PROTOCOL)
        self._modules = modules
        self._shared = shared
        self._plain_types: set[type] = set()
        self._decided: dict[int, tuple[Any, Any]] = {}  # id -> (object, its reduction or NotImplemented)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in self._plain_types:
            return NotImplemented
        decided = self._decided.get(id(obj))
        if decided is not None and decided[0] is obj:
            return decided[1]
        if isinstance(obj, types.ModuleType):
            self._modules.add(obj.__name__)
        elif isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            if self._shared is not None and type(obj) is types.FunctionType and obj is not shared_function:
                # Into the job's function table, whose pickling notes the function's modules.
                reduction: Any = (shared_function, (self._shared.token, self._shared.index(obj)))
                self._decided[id(obj)] = (obj, reduction)
                return reduction
            mod = getattr(obj, "__module__", None)
            if isinstance(mod, str):
                self._modules.add(mod)
        else:
            self._plain_types.add(type(obj))  # not a class, function or module: cloudpickle declines
            return NotImplemented
        reduction = super().reducer_override(obj)
        if reduction is NotImplemented:  # pickled by reference: the same answer every time
            self._decided[id(obj)] = (obj, reduction)
        return reduction


def _dump(obj: Any, modules: set[str]) -> bytes:
    buf = io.BytesIO()
    _ModuleRecorder(buf, modules).dump(obj)
    return buf.getvalue()


# Started in an empty directory: without -P (before Python 3.11) its sys.path starts with "" for it.
_PROBE = """
import json, os, sys
here = os.getcwd()
path = [p for p in sys.path if p and os.path.abspath(p) != here]
kinds = [f if isinstance(f, type) else type(f) for f in sys.meta_path]
finders = [k.__module__ + "." + k.__qualname__ for k in kinds]
print(json.dumps({"path": path, "finders": finders}))
"""


@functools.cache
def clean_interpreter() -> tuple[tuple[str, ...], frozenset[str]]:
    """``sys.path`` and meta-path finder types of a clean interpreter, started as workers are
    (``dask_wren.subprocesses``), in an empty directory.

    Finders matter because editable installs are found by a finder that a ``.pth`` file sets up,
    while finders that only this process added (pytest's, an IDE's) must not count.
    """
    with tempfile.TemporaryDirectory() as empty:
        out = subprocess.run(
            python_command("-c", _PROBE), cwd=empty, env=clean_environment(), capture_output=True, text=True, check=True
        ).stdout
    found = json.loads(out)
    return tuple(found["path"]), frozenset(found["finders"])


def _finder_name(finder: Any) -> str:
    cls = finder if isinstance(finder, type) else type(finder)
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=4096)
def _installed(top: str, origin: str | None) -> bool:
    """Whether a clean interpreter imports the top-level package ``top`` from the same place."""
    if top == "__main__":
        return False
    if top in sys.builtin_module_names:
        return True
    path, finders = clean_interpreter()
    spec = importlib.machinery.PathFinder.find_spec(top, list(path))
    if spec is None:
        for finder in sys.meta_path:
            if finder is importlib.machinery.PathFinder or _finder_name(finder) not in finders:
                continue
            try:
                spec = finder.find_spec(top, None)
            except Exception:
                spec = None
            if spec is not None:
                break
    if spec is None:
        return False
    if origin is None or spec.origin in (None, "built-in", "frozen"):
        return True
    found = os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin
    return os.path.realpath(origin).startswith(os.path.realpath(found))


def needs_shipping(name: str) -> bool:
    """Whether the worker cannot import module ``name`` and must receive it by value."""
    mod = sys.modules.get(name)
    if mod is None or name == "__main__":
        return False  # __main__ is pickled by value by cloudpickle itself
    top = name.partition(".")[0]
    if top in NEVER_SHIPPED:
        return False
    top_mod = sys.modules.get(top, mod)
    origin = getattr(top_mod, "__file__", None)
    return not _installed(top, origin)


class PickledPayload:
    """A job's function and arguments pickled consistently, with the modules shipped by value.

    ``func`` unpickles (``lambda_worker.serialize.load_job_function``) to the function, plus the
    table of functions that the arguments refer to.
    """

    def __init__(self, func: bytes, args: list[bytes], shipped: list[str]):
        self.func = func
        self.args = args
        self.shipped = shipped


def pickle_payload(
    func: Any,
    args: Sequence[Any],
    include_modules: Iterable[str] = (),
    exclude_modules: Iterable[str] = (),
) -> PickledPayload:
    """Pickle ``func`` and each argument, shipping by value every module the worker lacks.

    Raises SerializationError naming the object that failed, before anything is stored.
    """
    exclude = set(exclude_modules)
    ship = {m for m in include_modules if m not in exclude}
    for m in ship:
        if m.partition(".")[0] in NEVER_SHIPPED:
            raise ValueError(f"include_modules names {m!r}: dask-wren's own packages are on every worker and never travel by value")
        if m not in sys.modules:
            raise ValueError(f"include_modules names {m!r}, which is not imported in this process")
    # 1. The arguments, pickled again while they meet modules newly found to need shipping (a
    #    class of a shipped module refers to another local module).  The functions they refer to
    #    go into ``shared``, pickled with the function below, not with every argument.
    while True:
        shared = _SharedFunctions()
        arg_bytes, modules = _pickle_arguments(args, shared, ship)
        new = _to_ship(modules, ship, exclude)
        if not new:
            break
        ship |= new
    # 2. The function and the shared functions, again while they meet new modules to ship.  Those
    #    never concern the arguments: every module the arguments meet that needs shipping is in
    #    ``ship`` already.
    while True:
        func_bytes, modules = _pickle_function(func, shared, ship)
        new = _to_ship(modules, ship, exclude)
        if not new:
            break
        ship |= new
    return PickledPayload(func_bytes, arg_bytes, sorted(ship))


@contextmanager
def _by_value(ship: set[str]) -> Iterator[None]:
    """Have cloudpickle pickle the modules ``ship`` by value while the block runs (one thread at a
    time: the registration is cloudpickle's global state)."""
    with _register_lock:
        registered = []
        try:
            for m in sorted(ship):
                cloudpickle.register_pickle_by_value(sys.modules[m])
                registered.append(m)
            yield
        finally:
            for m in registered:
                cloudpickle.unregister_pickle_by_value(sys.modules[m])


def _pickle_arguments(args: Sequence[Any], shared: _SharedFunctions, ship: set[str]) -> tuple[list[bytes], set[str]]:
    """Each argument's bytes, with ``ship`` by value and functions into ``shared``; the modules met."""
    modules: set[str] = set()
    with _by_value(ship):
        return _dump_each(args, modules, shared), modules


def _pickle_function(func: Any, shared: _SharedFunctions, ship: set[str]) -> tuple[bytes, set[str]]:
    """The bytes of ``func`` with the table ``shared``, with ``ship`` by value; the modules met."""
    modules: set[str] = set()
    with _by_value(ship):
        return _dump_named((func, shared.token, shared.functions), modules, _describe_func(func)), modules


def _to_ship(modules: set[str], ship: set[str], exclude: set[str]) -> set[str]:
    """Top-level packages among ``modules`` that must travel by value and are not yet shipped."""
    tops = {m.partition(".")[0] for m in modules if m}
    return {t for t in tops if t not in ship and t not in exclude and t in sys.modules and needs_shipping(t)}


def _dump_each(args: Sequence[Any], seen: set[str], shared: _SharedFunctions) -> list[bytes]:
    """Pickle each argument on its own (each call reads only its own bytes), with one pickler."""
    buf = io.BytesIO()
    pickler = _ModuleRecorder(buf, seen, shared)
    out = []
    for i, arg in enumerate(args):
        buf.seek(0)
        buf.truncate()
        pickler.clear_memo()
        try:
            pickler.dump(arg)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError) as e:
            raise _serialization_error(f"argument {i} ({type(arg).__name__})", e) from e
        out.append(buf.getvalue())
    return out


def _serialization_error(what: str, e: Exception) -> SerializationError:
    return SerializationError(
        f"cannot serialize the {what}: {type(e).__name__}: {e}. Everything sent to a worker "
        "must be picklable by cloudpickle: create locks, open files, sockets and clients "
        "inside the function instead of capturing them."
    )


def _describe_func(func: Any) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return f"function {name!r}"


def _dump_named(obj: Any, seen: set[str], what: str) -> bytes:
    try:
        return _dump(obj, seen)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError) as e:
        raise _serialization_error(what, e) from e
