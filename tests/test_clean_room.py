"""The shipped layer in a clean room: awslambdaric, the built layers and nothing of the host.

``CleanRoom`` (``dask_wren/testing/clean_room.py``) builds the runtime layer and a user-package
layer (tabulate) with pip from PyPI for Lambda's platform (cached in ``$DASK_WREN_LAYER_CACHE``;
today's ``lambda_worker/`` is laid over the cached layer), and runs two ``awslambdaric``
processes in an interpreter started with ``-I -S`` whose ``sys.path`` holds only the function
code, the merged layers, awslambdaric and the stdlib, as nobody under root, with a read-only
HOME and working directory, against moto's S3 server on loopback.  An executor runs on it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import dask.bag as db
import numpy as np
import pytest

import lambda_worker
from dask_wren import deploy
from dask_wren.scheduler import wren_get
from lambda_worker import protocol

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the Lambda layer holds Linux wheels: the clean room needs Linux"),
    pytest.mark.timeout(600),  # the first run builds the layers with pip (about 40 s)
]

logger = logging.getLogger(__name__)
USER_PACKAGES = ["tabulate"]


@pytest.fixture(scope="module")
def room(request):
    from dask_wren.testing.clean_room import CleanRoom

    if deploy.host_python() not in deploy.LAMBDA_PYTHONS:
        pytest.skip(f"Lambda has no runtime for Python {deploy.host_python()}: no layer to build for it")
    with CleanRoom(USER_PACKAGES, runtimes=2, timeout=120) as r:
        yield r
        line = r.summary()
    logger.warning(line)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:  # -p no:capture
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


@pytest.fixture(scope="module")
def ex(room):
    executor = room.executor(timeout=60, lost_call_grace=5)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


# -- what runs on the workers (shipped by value: the clean room cannot import this module) -------


def _sandbox_report(_):
    import hashlib
    import importlib.util
    import os
    import sys

    import numpy

    import lambda_worker

    def writable(directory):
        try:
            with open(os.path.join(directory, ".clean-room-probe"), "w") as f:
                f.write("x")
        except OSError:
            return False
        os.unlink(os.path.join(directory, ".clean-room-probe"))
        return True

    worker_dir = os.path.dirname(lambda_worker.__file__)
    sources = {}
    for name in sorted(os.listdir(worker_dir)):
        if name.endswith(".py"):
            with open(os.path.join(worker_dir, name), "rb") as f:
                sources[name] = hashlib.sha256(f.read()).hexdigest()
    return {
        "absent": {m: importlib.util.find_spec(m) is None for m in ("dask_wren", "moto", "pytest", "_pytest")},
        "numpy": numpy.__file__,
        "lambda_worker": worker_dir,
        "sources": sources,
        "path": list(sys.path),
        "flags": (sys.flags.isolated, sys.flags.no_site, sys.flags.ignore_environment),
        "main": getattr(sys.modules.get("__main__"), "__spec__", None) and sys.modules["__main__"].__spec__.name,
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "home": os.environ.get("HOME"),
        "tmp": os.environ.get("TMPDIR"),
        "writable": {"home": writable(os.environ["HOME"]), "cwd": writable(os.getcwd()), "tmp": writable(os.environ["TMPDIR"])},
        "host_env": sorted(k for k in os.environ if k.startswith(("VIRTUAL_ENV", "PYTEST", "PYTHONPATH"))),
    }


def _norm(n):
    return float(np.linalg.norm(np.ones(n)))


def _inc(x):
    return x + 1


def _fail(message):
    raise ValueError(message)


def _square(x):
    return x * x


def _use_tabulate(rows):
    import tabulate

    return tabulate.__file__, tabulate.tabulate(rows, tablefmt="plain")


# -- tests ---------------------------------------------------------------------------------------


def test_the_runtime_sees_only_the_function_the_layers_and_awslambdaric(room, ex):
    report = ex.call_async(_sandbox_report, None).result(timeout=120)
    assert report["absent"] == {"dask_wren": True, "moto": True, "pytest": True, "_pytest": True}
    layers = str(room.layers_dir)
    assert report["numpy"].startswith(layers + os.sep), report["numpy"]
    assert report["main"] == "awslambdaric.__main__"  # run as awslambdaric's main
    # Lambda's order: function code, layers, runtime, then the interpreter's stdlib, nothing else
    assert report["path"][:3] == [str(room.task_dir), layers, str(room.runtime_dir)]
    stdlib = report["path"][3:]
    assert stdlib and not any("site-packages" in p or p.startswith(sys.prefix + os.sep) for p in stdlib), stdlib
    assert report["flags"] == (1, 1, 1)
    assert report["host_env"] == []
    # today's worker code, laid over the cached layer
    here = Path(lambda_worker.__file__).parent
    assert report["lambda_worker"] == str(room.layers_dir / "lambda_worker")
    assert report["sources"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(here.glob("*.py"))}
    # read-only HOME and working directory, a writable TMPDIR of its own, no privileges
    assert report["cwd"] == str(room.task_dir) and report["home"] == str(room.home_dir)
    assert report["writable"] == {"home": False, "cwd": False, "tmp": True}
    assert report["uid"] == (room.uid if os.geteuid() == 0 else os.getuid())
    if os.geteuid() == 0:
        assert report["uid"] != 0


def test_a_numpy_map(ex):
    assert ex.get_result(ex.map(_norm, [4, 9, 16]), timeout=120) == [2.0, 3.0, 4.0]


def test_a_dask_bag_through_wren_get(ex):
    total = db.from_sequence(range(20), npartitions=4).map(_inc).sum()
    assert total.compute(scheduler=wren_get, executor=ex) == 210


def test_a_remote_exception_is_raised_on_the_host(ex):
    future = ex.call_async(_fail, "no good in the clean room")
    with pytest.raises(ValueError, match="no good in the clean room"):
        future.result(timeout=120)


def test_a_duplicate_delivery_leaves_one_result(room, ex):
    room.backend.duplicate_next(1)
    future = ex.call_async(_square, 12)
    assert future.result(timeout=120) == 144
    request_id = future.stats["request_id_sent"]
    answers = room.backend.deliveries(request_id, count=2, timeout=120)
    assert all(ok for ok, _ in answers), answers
    assert sorted(s for _, doc in answers for s in doc["statuses"]) == ["duplicate", "ok"], answers
    keys = [key for key, _ in ex.storage.list(protocol.results_prefix(ex.settings.prefix, future.job_id))]
    assert keys == [future.key]
    header, _ = protocol.decode_header(ex.storage.get(future.key), key=ex.signing_key, storage_key=future.key)
    assert header["status"] == protocol.STATUS_OK
    assert header["request_id"] in {doc["request_id"] for _, doc in answers}
    assert future.result() == 144


def test_a_user_package_comes_from_its_layer(room, ex):
    path, table = ex.call_async(_use_tabulate, [["a", 1], ["b", 22]]).result(timeout=120)
    assert path.startswith(str(room.layers_dir) + os.sep), path
    assert table == "a   1\nb  22"
    assert room.layers.packages, "build_package_layers made no layer for tabulate"


def test_nothing_was_written_to_home_or_the_code(room, ex):
    """Last: after every call above, the read-only trees are as they were built."""
    writes = room.writes()
    assert not writes, f"{len(writes)} changes, the first: {writes[:20]}"
    assert room.processes and all(p.poll() is None for p in room.processes), room.log_tail()
