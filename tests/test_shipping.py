"""Module shipping: code the worker cannot import travels by value with the pickled function.

Worker processes start in an empty directory with a clean ``sys.path``: they import installed
packages only.  These tests write user modules into temporary directories (unique names, since
modules are cached per process), run ``python -c`` sessions and scripts, and check what is shipped,
what is not, and what fails before anything is invoked.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import operator
import os
import subprocess
import sys
import textwrap
import threading
import uuid

import dask
import dask.bag as db
import numpy as np
import pytest

import dask_wren
from dask_wren.futures import get_all_results

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ex(tmp_path):
    e = dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=2, timeout=30)
    yield e
    e.shutdown()


class LocalModules:
    """Writes modules into a directory on ``sys.path`` and forgets them from ``sys.modules`` after."""

    def __init__(self, directory):
        self.dir = directory
        self.names: list[str] = []

    def unique(self, stem: str) -> str:
        name = f"{stem}_{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    def write(self, relpath: str, source: str):
        path = self.dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return path

    def load(self, name: str):
        importlib.invalidate_caches()
        return importlib.import_module(name)

    def forget(self) -> None:
        for mod in list(sys.modules):
            if any(mod == n or mod.startswith(n + ".") for n in self.names):
                del sys.modules[mod]


@pytest.fixture
def local_modules(tmp_path, monkeypatch):
    directory = tmp_path / "mods"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    mods = LocalModules(directory)
    yield mods
    mods.forget()


def _stored_files(root) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files]
    return found


def _run_python(args, cwd, timeout=30):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


# -- 1. user modules and packages in a local directory ----------------------------------------


def test_local_module_is_shipped(ex, local_modules):
    name = local_modules.unique("mylocalmod")
    local_modules.write(f"{name}.py", """
        SCALE = 3

        def _helper(x):
            return x * SCALE

        class Accumulator:
            def __init__(self, start):
                self.total = start

            def add(self, x):
                self.total += _helper(x)
                return self

        def compute(x):
            return Accumulator(1).add(x).add(x).total
    """)
    mod = local_modules.load(name)
    futures = ex.map(mod.compute, range(5))
    assert get_all_results(futures) == [1 + 6 * i for i in range(5)]
    assert name in futures[0].stats["shipped_modules"]
    assert all(f.succeeded() for f in futures)


def test_local_package_with_submodule_is_shipped(ex, local_modules):
    name = local_modules.unique("mylocalpkg")
    local_modules.write(f"{name}/__init__.py", """
        GREETING = "hello"
    """)
    local_modules.write(f"{name}/util.py", """
        def suffix(x):
            return "!" * x
    """)
    local_modules.write(f"{name}/core.py", """
        from . import GREETING
        from .util import suffix

        def greet(x):
            return f"{GREETING} {x}{suffix(x)}"
    """)
    core = local_modules.load(f"{name}.core")
    futures = ex.map(core.greet, [1, 2])
    assert get_all_results(futures) == ["hello 1!", "hello 2!!"]
    assert name in futures[0].stats["shipped_modules"]


def test_local_namespace_package_is_shipped(ex, local_modules):
    name = local_modules.unique("mynspkg")  # a directory without __init__.py
    local_modules.write(f"{name}/ops.py", """
        def plus_hundred(x):
            return x + 100
    """)
    ops = local_modules.load(f"{name}.ops")
    futures = ex.map(ops.plus_hundred, [1, 2])
    assert get_all_results(futures) == [101, 102]
    assert futures[0].stats["shipped_modules"] == [name]


def test_module_importing_another_local_module_ships_both(ex, local_modules):
    base = local_modules.unique("mybase")
    top = local_modules.unique("mytop")
    local_modules.write(f"{base}.py", """
        def triple(x):
            return 3 * x
    """)
    local_modules.write(f"{top}.py", f"""
        import {base}

        def run(x):
            return {base}.triple(x) + 1
    """)
    mod = local_modules.load(top)
    futures = ex.map(mod.run, [1, 2])
    assert get_all_results(futures) == [4, 7]
    assert {base, top} <= set(futures[0].stats["shipped_modules"])


# -- 2. instances of local classes as arguments -----------------------------------------------


def test_local_class_instance_as_argument(ex, local_modules):
    name = local_modules.unique("mytypes")
    local_modules.write(f"{name}.py", """
        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y

            def norm2(self):
                return self.x * self.x + self.y * self.y

            def __repr__(self):
                return f"Point({self.x}, {self.y})"
    """)
    mod = local_modules.load(name)
    points = [mod.Point(1, 2), mod.Point(3, 4)]

    futures = ex.map(operator.methodcaller("norm2"), points)
    assert get_all_results(futures) == [5, 25]
    assert futures[0].stats["shipped_modules"] == [name]

    assert get_all_results(ex.map(repr, points)) == ["Point(1, 2)", "Point(3, 4)"]


def test_local_class_instance_with_function_from_other_local_module(ex, local_modules):
    types_name = local_modules.unique("mytypes")
    ops_name = local_modules.unique("myops")
    local_modules.write(f"{types_name}.py", """
        class Box:
            def __init__(self, items):
                self.items = list(items)
    """)
    local_modules.write(f"{ops_name}.py", """
        def size(box):
            return len(box.items)
    """)
    types_mod = local_modules.load(types_name)
    ops_mod = local_modules.load(ops_name)
    futures = ex.map(ops_mod.size, [types_mod.Box("ab"), types_mod.Box("cde")])
    assert get_all_results(futures) == [2, 3]
    assert futures[0].stats["shipped_modules"] == sorted([types_name, ops_name])


def test_local_dataclass_instances_as_arguments(ex, local_modules):
    name = local_modules.unique("mydataclasses")
    local_modules.write(f"{name}.py", """
        import dataclasses

        @dataclasses.dataclass(frozen=True)
        class Item:
            name: str
            qty: int = 1
    """)
    mod = local_modules.load(name)
    futures = ex.map(repr, [mod.Item("a"), mod.Item("b", 3)])
    assert get_all_results(futures) == ["Item(name='a', qty=1)", "Item(name='b', qty=3)"]
    assert futures[0].stats["shipped_modules"] == [name]


def test_local_class_instance_returned_from_worker(ex, local_modules):
    name = local_modules.unique("mytypes")
    local_modules.write(f"{name}.py", """
        class Pair:
            def __init__(self, a, b):
                self.a, self.b = a, b

        def make(x):
            return Pair(x, -x)
    """)
    mod = local_modules.load(name)
    (value,) = get_all_results(ex.map(mod.make, [7]))
    assert type(value).__name__ == "Pair"
    assert (value.a, value.b) == (7, -7)


# -- 3. python -c sessions and scripts --------------------------------------------------------


def test_python_dash_c_session(tmp_path):
    store = str(tmp_path / "store")
    code = textwrap.dedent(f"""
        import json
        import dask_wren

        OFFSET = 100

        def square(x):
            return x * x

        add = lambda x: x + OFFSET

        ex = dask_wren.default_executor(storage_dir={store!r}, workers=1, timeout=30)
        try:
            fs = ex.map(square, [1, 2, 3])
            gs = ex.map(add, [1, 2, 3])
            print(json.dumps({{
                "square": dask_wren.get_all_results(fs),
                "add": dask_wren.get_all_results(gs),
                "shipped": fs[0].stats["shipped_modules"],
            }}))
        finally:
            ex.shutdown()
    """)
    out = _run_python(["-c", code], cwd=tmp_path)
    assert json.loads(out.strip().splitlines()[-1]) == {"square": [1, 4, 9], "add": [101, 102, 103], "shipped": []}


def test_script_importing_a_sibling_module(tmp_path):
    sibling = f"sibling_{uuid.uuid4().hex[:10]}"
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / f"{sibling}.py").write_text(textwrap.dedent("""
        def shout(s):
            return s.upper() + "!"
    """), encoding="utf-8")
    store = str(tmp_path / "store")
    (proj / "script.py").write_text(textwrap.dedent(f"""
        import json
        import dask_wren
        import {sibling}

        def twice(s):
            return {sibling}.shout(s) * 2

        ex = dask_wren.default_executor(storage_dir={store!r}, workers=1, timeout=30)
        try:
            fs = ex.map({sibling}.shout, ["a", "b"])
            gs = ex.map(twice, ["c"])
            print(json.dumps({{
                "shout": dask_wren.get_all_results(fs),
                "twice": dask_wren.get_all_results(gs),
                "shipped": fs[0].stats["shipped_modules"],
                "shipped_main": gs[0].stats["shipped_modules"],
            }}))
        finally:
            ex.shutdown()
    """), encoding="utf-8")
    out = _run_python(["script.py"], cwd=proj)
    assert json.loads(out.strip().splitlines()[-1]) == {
        "shout": ["A!", "B!"],
        "twice": ["C!C!"],
        "shipped": [sibling],
        "shipped_main": [sibling],
    }


# -- 4. non-ASCII source ----------------------------------------------------------------------


def test_utf8_module_round_trips(ex, local_modules):
    name = local_modules.unique("myutf8mod")
    local_modules.write(f"{name}.py", """
        # -*- coding: utf-8 -*-
        ÉMOJIS = "日本語 ñ ß 🎉 \\u00e9"
        Ωmega = "Ω"

        class Grüßer:
            präfix = "Grüße"

        def grüße(name):
            print(f"→ {name}")
            return f"{Grüßer.präfix}, {name} — π≈3.14159 ✓ {ÉMOJIS} {Ωmega}"
    """)
    mod = local_modules.load(name)
    func = mod.grüße
    names = ["Wörld", "世界", "😀", "zoë\u0301"]
    futures = ex.map(func, names)
    results = get_all_results(futures)
    assert results == [f"Grüße, {n} — π≈3.14159 ✓ 日本語 ñ ß 🎉 é Ω" for n in names]
    assert results == [func(n) for n in names]
    assert [f.stdout for f in futures] == [f"→ {n}\n" for n in names]
    assert futures[0].stats["shipped_modules"] == [name]


def test_non_ascii_module_name(ex, local_modules):
    name = local_modules.unique("módulo_ñ")
    local_modules.write(f"{name}.py", """
        def etiqueta(x):
            return f"número {x} ✓"
    """)
    mod = local_modules.load(name)
    futures = ex.map(mod.etiqueta, [1, 2])
    assert get_all_results(futures) == ["número 1 ✓", "número 2 ✓"]
    assert futures[0].stats["shipped_modules"] == [name]


# -- 5 and 6. exclude_modules / include_modules -----------------------------------------------


def _excluded_call(ex, local_modules):
    name = local_modules.unique("mylocalmod_x")
    local_modules.write(f"{name}.py", """
        def inc(x):
            return x + 1
    """)
    mod = local_modules.load(name)
    future = ex.map(mod.inc, [1], exclude_modules=[name])[0]
    return name, future


def test_exclude_modules_is_not_shipped_and_the_call_raises_import_error(ex, local_modules):
    name, future = _excluded_call(ex, local_modules)
    assert future.stats["shipped_modules"] == []
    exc = future.exception(timeout=20)
    assert isinstance(exc, ImportError), f"{type(exc).__name__}: {exc}"
    assert name in str(exc)
    assert future.errored() and not future.succeeded()
    with pytest.raises(ImportError, match=name):
        future.result()


def test_include_modules_forces_shipping(ex, local_modules):
    name = local_modules.unique("myforced")
    local_modules.write(f"{name}.py", """
        def neg(x):
            return -x
    """)
    mod = local_modules.load(name)
    futures = ex.map(mod.neg, [1, 2], include_modules=[name])
    assert get_all_results(futures) == [-1, -2]
    assert futures[0].stats["shipped_modules"] == [name]


def test_include_modules_not_imported_is_a_value_error(tmp_path):
    store = tmp_path / "store"
    ex = dask_wren.default_executor(storage_dir=str(store), workers=2)
    try:
        missing = f"never_imported_{uuid.uuid4().hex[:10]}"
        with pytest.raises(ValueError, match=missing):
            ex.map(abs, [1], include_modules=[missing])
        assert _stored_files(store) == []
    finally:
        ex.shutdown()


# -- 7. installed packages stay references ----------------------------------------------------


def test_installed_packages_are_not_shipped(ex):
    futures = ex.map(np.sqrt, [4.0, 9.0])
    assert get_all_results(futures) == [2.0, 3.0]
    assert futures[0].stats["shipped_modules"] == []

    futures = ex.map(json.dumps, [{"a": [1, 2]}])
    assert get_all_results(futures) == ['{"a": [1, 2]}']
    assert futures[0].stats["shipped_modules"] == []

    # A function that uses numpy, defined outside any user module (like a python -c session).
    namespace = {"__name__": "__main__"}
    exec(
        "import numpy as np\n"
        "def arange_sum(n):\n"
        "    return int(np.arange(n).sum())\n",
        namespace,
    )
    futures = ex.map(namespace["arange_sum"], [4, 5])
    assert get_all_results(futures) == [6, 10]
    assert futures[0].stats["shipped_modules"] == []


def test_local_module_using_numpy_ships_only_itself(ex, local_modules):
    name = local_modules.unique("mynumeric")
    local_modules.write(f"{name}.py", """
        import numpy as np

        def mean(xs):
            return float(np.mean(np.asarray(xs)))
    """)
    mod = local_modules.load(name)
    futures = ex.map(mod.mean, [[1, 2, 3], [10]])
    assert get_all_results(futures) == [2.0, 10.0]
    assert futures[0].stats["shipped_modules"] == [name]


# -- 8. unpicklable functions and arguments fail at map() time --------------------------------


@pytest.fixture
def fresh(tmp_path):
    store = tmp_path / "fresh-store"
    e = dask_wren.default_executor(storage_dir=str(store), workers=2)
    yield e, store
    e.shutdown()


def test_unpicklable_function_is_rejected_before_invoking(fresh):
    ex, store = fresh
    lock = threading.Lock()

    def locked_double(x):
        with lock:
            return 2 * x

    with pytest.raises(dask_wren.SerializationError) as info:
        ex.map(locked_double, [1, 2])
    assert isinstance(info.value, TypeError)
    assert "locked_double" in str(info.value)
    assert "lock" in str(info.value)
    assert _stored_files(store) == []


@pytest.mark.parametrize("kind", ["generator", "open file"])
def test_unpicklable_argument_is_rejected_before_invoking(fresh, tmp_path, kind):
    ex, store = fresh
    with open(tmp_path / "f.txt", "w") as handle:
        bad = (i for i in range(3)) if kind == "generator" else handle
        with pytest.raises(dask_wren.SerializationError) as info:
            ex.map(repr, [1, bad, 3])
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert "argument 1" in message
    assert type(bad).__name__ in message
    assert _stored_files(store) == []


def test_serialization_error_is_a_type_error_and_wren_error():
    assert issubclass(dask_wren.SerializationError, TypeError)
    assert issubclass(dask_wren.SerializationError, dask_wren.WrenError)


# -- functions defined in a pytest test module ------------------------------------------------
# pytest's assertion-rewriting import hook finds test modules on the host's sys.path; a worker
# has no such hook, so a test module must still count as "not installed" and be shipped.


def module_level_double(x):
    return 2 * x


def test_function_defined_in_a_test_module_is_shipped(ex):
    futures = ex.map(module_level_double, [1, 2])
    assert get_all_results(futures) == [2, 4]
    assert __name__ in futures[0].stats["shipped_modules"]



# -- dask-wren's own packages never travel by value --------------------------------------------
# A checkout of this repository on sys.path while dask-wren is installed non-editable elsewhere:
# the probe's clean interpreter then "cannot import" lambda_worker from the checkout's place.


@pytest.fixture
def own_packages_look_uninstalled(monkeypatch):
    from dask_wren import shipping

    path, finders = shipping.clean_interpreter()
    path = tuple(p for p in path if not os.path.exists(os.path.join(p, "lambda_worker")))
    finders = frozenset(f for f in finders if "editable" not in f.lower())
    monkeypatch.setattr(shipping, "clean_interpreter", lambda: (path, finders))
    shipping._installed.cache_clear()
    assert importlib.machinery.PathFinder.find_spec("lambda_worker", list(path)) is None
    yield shipping
    shipping._installed.cache_clear()


def test_dask_wrens_own_packages_never_travel_by_value(own_packages_look_uninstalled, ex, local_modules):
    shipping = own_packages_look_uninstalled
    assert not shipping.needs_shipping("lambda_worker")
    assert not shipping.needs_shipping("dask_wren")
    total = ex.reduce(sum, ex.map(abs, [-1, -2]))  # its arguments are lambda_worker StorageRefs
    assert total.result(timeout=30) == 3
    assert total.stats["shipped_modules"] == []
    bag = db.from_sequence([-1, -2, -3], npartitions=3).map(abs).sum()  # tasks run lambda_worker code
    assert dask.compute(bag, scheduler=dask_wren.wren_get, executor=ex) == (6,)
    with pytest.raises(ValueError, match="never travel"):
        ex.map(abs, [1], include_modules=["lambda_worker"])
    # the user's own modules still travel
    name = local_modules.unique("mystillshipped")
    local_modules.write(f"{name}.py", "def neg(x):\n    return -x\n")
    futures = ex.map(local_modules.load(name).neg, [1])
    assert get_all_results(futures) == [-1]
    assert futures[0].stats["shipped_modules"] == [name]


def test_the_probe_starts_its_interpreter_as_the_workers_start_theirs(monkeypatch, tmp_path):
    """One way to start clean interpreters (dask_wren.subprocesses): no PYTHONHOME, PYTHONPATH or
    start directory; the probe reports the whole sys.path that such an interpreter has."""
    from dask_wren import shipping, subprocesses

    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "no-such-home"))  # a worker never sees it
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    shipping.clean_interpreter.cache_clear()
    try:
        path, finders = shipping.clean_interpreter()
    finally:
        shipping.clean_interpreter.cache_clear()
    worker_path = subprocess.run(
        subprocesses.python_command("-c", "import json, sys; print(json.dumps(sys.path))"),
        cwd=tmp_path, env=subprocesses.clean_environment(), capture_output=True, text=True, check=True,
    ).stdout
    assert list(path) == [p for p in json.loads(worker_path) if p and p != str(tmp_path)]
    assert str(tmp_path) not in path
    assert os.path.dirname(os.__file__) in path
    assert "_frozen_importlib_external.PathFinder" in finders
