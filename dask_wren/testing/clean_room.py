"""The clean room: the shipped Lambda layer, run by AWS's own runtime client, and nothing else.

``CleanRoom`` proves that what ``dask-wren deploy`` uploads works on its own.  It builds the
runtime layer with ``deploy.build_layer`` and the user-package layers with
``deploy.build_package_layers`` (pip, from PyPI, for Lambda's platform; cached), lays out a
sandbox the way a Lambda execution environment looks, and starts ``awslambdaric`` processes in
it that pull events from a ``RuntimeAPIServer`` on loopback.  ``CleanRoomBackend`` delivers an
executor's invocations to them, so ``Executor(room.settings(), backend=room.backend)`` runs on
the shipped layer, against S3 (moto's server on loopback unless an endpoint is given)::

    with CleanRoom(["tabulate"]) as room:
        with room.executor(timeout=60) as ex:
            print(ex.map(abs, [-1, -2]))
        print(room.summary())

The sandbox (one directory under /tmp, removed on exit), as Lambda lays it out:

==============  ===============  ==========================================================
Lambda          here             what
==============  ===============  ==========================================================
/var/task       ``task/``        the unzipped function zip (``deploy.function_zip()``): cwd
/opt            ``opt/``         every layer unzipped into it, in order; then the working
                                 tree's ``lambda_worker/`` replaces the layer's copy, so the
                                 room runs today's worker code on the cached packages
/var/runtime    ``runtime/``     ``awslambdaric`` installed by pip from PyPI (cached), not
                                 the host's site-packages
/var/lang       ``lang/``        only when the host interpreter is unreadable to the
                                 sandbox user (root's pyenv): its binary and stdlib, linked
(none)          ``home/``        an empty, read-only ``HOME``
/tmp            ``tmp-N/``       each runtime's own writable ``TMPDIR``
==============  ===============  ==========================================================

Each runtime is ``python -I -S -c BOOTSTRAP``: isolated (no ``PYTHON*`` variables, no user
site) and without ``site``, so no host site-packages; the bootstrap sets ``sys.path`` to
``task/``, ``opt/python``, ``runtime/`` and the interpreter's stdlib, in Lambda's order, and
runs ``awslambdaric`` as ``__main__``.  The environment is built from scratch (Lambda's
variables, the fake credentials, the region); nothing of the host's leaks in.  Under root the
runtimes run as ``nobody`` (permission bits do not stop root), otherwise as the caller with the
sandbox trees made read-only (0o555).  ``writes()`` lists what changed in ``home/``, ``task/``,
``opt/`` and ``runtime/`` since the start: it should stay empty.

The layers are cached in ``$DASK_WREN_LAYER_CACHE`` (default ``~/.cache/dask-wren/layers``),
keyed by requirements, constraints, platform tags, architecture, Python minor and the builder's
source; only pip's part is cached (the worker code is overlaid on every start).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dask_wren import deploy
from dask_wren.backends.base import Invocation, ProgressListeners, write_failure_records
from dask_wren.config import Settings, aws_settings
from dask_wren.deploy import layer
from dask_wren.testing.runtime_api import RuntimeAPIServer, RuntimeInitError
from lambda_worker import protocol
from lambda_worker.signing import SigningKey

__all__ = ["CACHE_ENV", "CleanRoom", "CleanRoomBackend", "CleanRoomError", "Layers", "cache_dir", "cached_layers"]

logger = logging.getLogger(__name__)

CACHE_ENV = "DASK_WREN_LAYER_CACHE"
REGION = "us-east-1"
_FORMAT = 1  # bump to invalidate every cache entry
_FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
_CREDENTIAL_SOURCES = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
_LOG_TAIL = 3000

#: Runs in the sandbox interpreter (``-I -S``): Lambda's ``sys.path``, then awslambdaric's main.
_BOOTSTRAP = """\
import os, runpy, sys
task, opt, runtime, handler = sys.argv[1:5]
site = os.path.join(opt, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
stdlib = [p for p in sys.path if p]
sys.path[:] = [task] + ([site] if os.path.isdir(site) else []) + [opt, runtime] + stdlib
sys.argv = ["awslambdaric", handler]
runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)
"""


class CleanRoomError(RuntimeError):
    """The clean room could not be built or started; the message says why."""


def cache_dir() -> Path:
    """``$DASK_WREN_LAYER_CACHE``, or ``~/.cache/dask-wren/layers``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dask-wren" / "layers").expanduser()


def host_arch() -> str:
    """Lambda's name for this machine's architecture: the sandbox runs the layer's binaries here."""
    machine = platform.machine().lower()
    if machine not in _MACHINES:
        raise CleanRoomError(f"no Lambda architecture matches this machine ({machine})")
    return _MACHINES[machine]


# -- layers, built once and cached ---------------------------------------------------------------


@dataclass(frozen=True)
class Layers:
    """The layer zips of a clean room, in the order Lambda unzips them into /opt."""

    base: Path
    packages: tuple[Path, ...]
    cached: bool  # every zip came from the cache
    build_seconds: float  # pip's time for the zips that were not

    @property
    def zips(self) -> tuple[Path, ...]:
        return (self.base, *self.packages)

    def sizes(self, paths: Sequence[Path] | None = None) -> tuple[int, int]:
        """(zipped, unzipped) bytes of ``paths`` (default: every layer)."""
        zipped = unzipped = 0
        for p in self.zips if paths is None else paths:
            zipped += p.stat().st_size
            with zipfile.ZipFile(p) as zf:
                unzipped += sum(i.file_size for i in zf.infolist())
        return zipped, unzipped


def _source_token(*names: str) -> str:
    """A hash of the source of the named ``deploy.layer`` functions: a changed builder rebuilds its layers."""
    digest = hashlib.sha256()
    for name in names:
        func = getattr(layer, name, None)
        try:
            digest.update(inspect.getsource(func).encode() if func is not None else name.encode())
        except (OSError, TypeError):
            digest.update(name.encode())
    return digest.hexdigest()[:16]


def _cached_zips(cache: Path, name: str, key: dict[str, Any], build: Callable[[Path], list[Path]]) -> tuple[list[Path], bool]:
    """The zips cached under ``key``, built by ``build(workdir)`` on a miss; (paths, was_cached)."""
    digest = hashlib.sha256(json.dumps(dict(key, format=_FORMAT), sort_keys=True).encode()).hexdigest()[:16]
    entry = cache / f"{name}-{digest}"
    manifest = entry / "manifest.json"
    if manifest.is_file():
        zips = [entry / n for n in json.loads(manifest.read_text())["zips"]]
        if all(z.is_file() for z in zips):
            return zips, True
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        names = []
        for i, built in enumerate(build(tmp / "work")):
            names.append(f"{i:02d}-{built.name}")
            shutil.move(str(built), tmp / names[-1])
        shutil.rmtree(tmp / "work", ignore_errors=True)
        (tmp / "manifest.json").write_text(json.dumps({"zips": names, "key": key}, indent=1, sort_keys=True))
        _publish(tmp, entry, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [entry / n for n in names], False


def _publish(tmp: Path, entry: Path, done: Path) -> None:
    """Move a finished cache entry into place; a broken old entry is replaced, and a race lost to
    another process that published a complete entry (``done`` exists) is fine."""
    shutil.rmtree(entry, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if not done.is_file():
            raise


def cached_layers(
    packages: Sequence[str] = (),
    *,
    python: str | None = None,
    arch: str | None = None,
    cache: Path | None = None,
    out: Callable[[str], None] = logger.info,
) -> Layers:
    """The runtime layer (``deploy.build_layer``) and the layers of ``packages``
    (``deploy.build_package_layers``), from the cache or built with pip (which needs PyPI)."""
    python = python or deploy.host_python()
    arch = arch or host_arch()
    cache = Path(cache) if cache is not None else cache_dir()
    common = {
        "constraints": deploy.layer_constraints(),
        "platforms": deploy.lambda_platforms(python, arch),
        "python": python,
        "arch": arch,
    }
    seconds = 0.0

    def timed(build: Callable[[Path], list[Path]]) -> Callable[[Path], list[Path]]:
        def run(work: Path) -> list[Path]:
            nonlocal seconds
            start = time.monotonic()
            try:
                return build(work)
            except deploy.DeployError as e:
                raise CleanRoomError(
                    f"could not build the clean room's Lambda layers (pip must reach PyPI for python{python} {arch} "
                    f"wheels): {e}"
                ) from e
            finally:
                seconds += time.monotonic() - start

        return run

    def build_base(work: Path) -> list[Path]:
        return [deploy.build_layer(work / "layer.zip", python=python, arch=arch, out=out)]

    base, base_cached = _cached_zips(
        cache,
        f"layer-py{python}-{arch}",
        dict(common, requirements=deploy.runtime_requirements(), builder=_source_token("build_layer", "_install_runtime", "_pip_install")),
        timed(build_base),
    )
    extra: list[Path] = []
    extra_cached = True
    if packages:
        builder = deploy.build_package_layers

        def build_packages(work: Path) -> list[Path]:
            work.mkdir(parents=True, exist_ok=True)
            return [Path(p) for p in builder(list(packages), work, python=python, arch=arch, out=out)]

        extra, extra_cached = _cached_zips(
            cache,
            f"packages-py{python}-{arch}",
            dict(common, requirements=list(packages), builder=_source_token("build_package_layers", "package_layers_for", "_pip_install")),
            timed(build_packages),
        )
    return Layers(base[0], tuple(extra), base_cached and extra_cached, seconds)


def _awslambdaric_requirement() -> str:
    from importlib import metadata

    try:
        return f"awslambdaric=={metadata.version('awslambdaric')}"  # the version the test extra installs
    except metadata.PackageNotFoundError:
        return "awslambdaric"


def cached_runtime(cache: Path | None = None, out: Callable[[str], None] = logger.info) -> tuple[Path, bool]:
    """``<cache>/runtime-pyX.Y``: awslambdaric from PyPI, as Lambda ships it in /var/runtime."""
    cache = Path(cache) if cache is not None else cache_dir()
    requirement = _awslambdaric_requirement()
    entry = cache / f"runtime-py{deploy.host_python()}"
    marker = entry / ".dask-wren-runtime"
    if marker.is_file() and marker.read_text() == requirement:
        return entry, True
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".runtime-", dir=cache))
    try:
        out(f"clean room: pip install {requirement} (the runtime interface client)")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(tmp), requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise CleanRoomError(f"could not install {requirement} for the clean room (pip must reach PyPI):\n{tail}")
        shutil.rmtree(tmp / "bin", ignore_errors=True)
        (tmp / marker.name).write_text(requirement)
        _publish(tmp, entry, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry, False


# -- the backend ---------------------------------------------------------------------------------


class CleanRoomBackend(ProgressListeners):
    """Delivers invocations to the runtimes of a ``RuntimeAPIServer`` (whichever runtime asks).

    ``duplicate_next(n)``: the next ``n`` invocations are delivered twice, as Lambda's
    at-least-once async delivery may.  A handler that raised, a runtime that died or failed to
    initialise, or no answer within the invocation's timeout plus ``grace``: the calls get
    failure records, so their futures end.  ``cancel`` cannot recall a delivered event (Lambda
    cannot either): the result is ignored by the executor.
    """

    stops_running_calls = False  # as Lambda: a runtime's invocation runs on

    def __init__(
        self, server: RuntimeAPIServer, signing_key: SigningKey, *, grace: float = 30.0, health: Callable[[], str | None] | None = None
    ):
        super().__init__()
        self.server = server
        self.signing_key = signing_key  # the runtimes' key: failure records are signed with it
        self.grace = grace
        self._health = health
        self._cond = threading.Condition()
        self._duplicates = 0
        self._deliveries: dict[str, list[str]] = {}  # invocation request id -> runtime request ids
        self._results: dict[str, tuple[bool, Any]] = {}  # runtime request id -> (ok, document)
        self._closed = threading.Event()

    def duplicate_next(self, count: int = 1) -> None:
        with self._cond:
            self._duplicates += count

    def invoke(self, invocations: list[Invocation]) -> None:
        for inv in invocations:
            with self._cond:
                copies = 2 if self._duplicates > 0 else 1
                self._duplicates = max(0, self._duplicates - 1)
            for _ in range(copies):
                self.deliver(inv)

    def deliver(self, inv: Invocation) -> str:
        """Queue ``inv``'s event once more; returns the runtime request id of this delivery."""
        if self._closed.is_set():
            raise RuntimeError("the clean room backend is shut down")
        rid = self.server.submit(inv.event, timeout=inv.timeout)
        with self._cond:
            self._deliveries.setdefault(inv.request_id, []).append(rid)
        threading.Thread(target=self._await, args=(inv, rid), name=f"clean-room-{rid[:8]}", daemon=True).start()
        return rid

    def cancel(self, request_id: str, call_id: str) -> None:
        pass

    def call_done(self, request_id: str, call_id: str) -> None:
        pass

    def shutdown(self) -> None:
        self._closed.set()

    # -- what happened -------------------------------------------------------------------------

    def deliveries(self, request_id: str, count: int = 1, timeout: float = 60.0) -> list[tuple[bool, Any]]:
        """The answers to the deliveries of invocation ``request_id``, once ``count`` have one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                rids = self._deliveries.get(request_id, [])
                answers = [self._results[r] for r in rids if r in self._results]
                if len(answers) >= count:
                    return answers
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(answers)} of {count} deliveries of {request_id} answered within {timeout} s")
                self._cond.wait(remaining)

    @property
    def calls_ok(self) -> int:
        """Calls the runtimes reported as ``ok`` (a duplicate delivery counts once)."""
        with self._cond:
            docs = [doc for ok, doc in self._results.values() if ok and isinstance(doc, dict)]
        return sum(int((doc.get("statuses") or {}).get(protocol.STATUS_OK, 0)) for doc in docs)

    @property
    def delivered(self) -> int:
        with self._cond:
            return sum(len(r) for r in self._deliveries.values())

    # -- internals -----------------------------------------------------------------------------

    def _await(self, inv: Invocation, rid: str) -> None:
        deadline = time.monotonic() + inv.timeout + self.grace
        failure: tuple[str, str] | None = None
        answer: tuple[bool, Any] | None = None
        while answer is None and failure is None:
            try:
                answer = self.server.wait_result(rid, timeout=0.5)
            except TimeoutError:
                if self._closed.is_set():
                    return
                problem = self._health() if self._health is not None else None
                if problem:
                    failure = (protocol.FAIL_WORKER_DIED, problem)
                elif time.monotonic() > deadline:
                    failure = (protocol.FAIL_TIMEOUT, f"no answer from the clean room's runtimes within {inv.timeout + self.grace:g} s")
            except RuntimeInitError as e:
                failure = (protocol.FAIL_HANDLER, f"the Lambda runtime failed to initialise: {e.document}")
        if answer is not None and not answer[0]:
            doc = answer[1] if isinstance(answer[1], dict) else {"errorMessage": answer[1]}
            failure = (protocol.FAIL_HANDLER, f"the handler failed: {doc.get('errorType')}: {doc.get('errorMessage')}")
        if failure is not None:
            write_failure_records(inv, *failure, self.signing_key)
        with self._cond:
            self._results[rid] = answer if answer is not None else (False, {"errorMessage": failure[1] if failure else ""})
            self._cond.notify_all()
        self.notify()


# -- the room --------------------------------------------------------------------------------


def _others_can_read(path: Path) -> bool:
    """Whether a user with no relation to the file's owner can reach and read ``path``."""
    path = Path(os.path.realpath(path))
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)
    except OSError:
        return False


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry below ``root``: relative path -> (mode, size, mtime_ns)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            found[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    st = os.lstat(root)
    found["."] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


class CleanRoom:
    """The shipped layers under ``awslambdaric`` in a Lambda-like sandbox, plus S3 and a backend.

    ``packages``: requirements built into user-package layers (``deploy.build_package_layers``).
    ``runtimes``: awslambdaric processes pulling from one Runtime API.  ``s3_endpoint``: an S3
    endpoint to use (with the credentials in the environment) instead of starting moto's server.
    After ``start()``: ``backend``, ``server``, ``s3_url``, ``bucket``, ``layers`` and the sandbox
    paths (``task_dir``, ``layers_dir`` = /opt/python, ``runtime_dir``, ``home_dir``).
    """

    def __init__(
        self,
        packages: Sequence[str] = (),
        *,
        runtimes: int = 2,
        cache: Path | None = None,
        bucket: str = "dask-wren-clean-room",
        function_name: str = "dask-wren",
        memory_mb: int = 2048,
        timeout: float = 300.0,
        s3_endpoint: str | None = None,
        out: Callable[[str], None] = logger.info,
    ):
        self.packages = tuple(packages)
        self.runtimes = runtimes
        self.python = deploy.host_python()  # the sandbox runs this interpreter, on this machine
        self.arch = host_arch()
        self.cache = Path(cache) if cache is not None else cache_dir()
        self.bucket = bucket
        self.function_name = function_name
        self.memory_mb = memory_mb
        self.timeout = timeout
        self.region = REGION
        self.out = out
        self._s3_endpoint = s3_endpoint
        self.signing_key = SigningKey.generate()  # as `dask-wren deploy` makes one for a function
        self.as_root = os.geteuid() == 0
        self.uid, self.gid = self._sandbox_user()
        self.layers: Layers | None = None
        self.runtime_cached = False
        self.root: Path | None = None
        self.processes: list[subprocess.Popen] = []
        self.server: RuntimeAPIServer | None = None
        self.backend: CleanRoomBackend | None = None
        self.s3_url: str | None = None
        self._moto: Any = None
        self._saved_env: dict[str, str] | None = None
        self._snapshot: dict[str, dict[str, tuple[int, int, int]]] = {}
        self._logs: list[Path] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> CleanRoom:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> CleanRoom:
        try:
            self.layers = cached_layers(self.packages, python=self.python, arch=self.arch, cache=self.cache, out=self.out)
            runtime, self.runtime_cached = cached_runtime(self.cache, self.out)
            self._build_sandbox(runtime)
            self._start_s3()
            self.server = RuntimeAPIServer(function_name=self.function_name, timeout=self.timeout, region=self.region).start()
            self.backend = CleanRoomBackend(self.server, self.signing_key, health=self._health)
            for i in range(self.runtimes):
                self.processes.append(self._start_runtime(i))
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the runtimes, the server and S3; remove the sandbox; restore the environment."""
        if self.backend is not None:
            self.backend.shutdown()
        for proc in self.processes:
            _end(proc)
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        if self._saved_env is not None:
            for name in set(os.environ) - set(self._saved_env):
                del os.environ[name]
            os.environ.update(self._saved_env)
            self._saved_env = None
        if self.root is not None:
            for dirpath, _, _ in os.walk(self.root):
                try:
                    os.chmod(dirpath, 0o755)
                except OSError:
                    pass
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- use -------------------------------------------------------------------------------------

    def settings(self, **overrides: Any) -> Settings:
        """Executor settings for this room: backend aws, S3 storage on the room's endpoint."""
        values = aws_settings(
            bucket=self.bucket, s3_url=self.s3_url, region=self.region, function_name=self.function_name,
            signing_key=self.signing_key.text(),
        )
        return Settings.from_config(**{**values, **overrides})

    def executor(self, **overrides: Any):
        """An ``Executor`` whose invocations run in this room."""
        from dask_wren.executor import Executor

        return Executor(self.settings(**overrides), backend=self.backend)

    @property
    def task_dir(self) -> Path:
        return self._path("task")

    @property
    def opt_dir(self) -> Path:
        return self._path("opt")

    @property
    def layers_dir(self) -> Path:
        """/opt/python: every layer's ``python/``, merged."""
        return self._path("opt") / "python"

    @property
    def runtime_dir(self) -> Path:
        return self._path("runtime")

    @property
    def home_dir(self) -> Path:
        return self._path("home")

    def writes(self) -> list[str]:
        """What appeared, vanished or changed in home, task, opt and runtime since the start."""
        changed = []
        for name, before in self._snapshot.items():
            after = _tree(self._path(name))
            for rel in sorted(set(before) | set(after)):
                if before.get(rel) != after.get(rel):
                    what = "new" if rel not in before else "gone" if rel not in after else "changed"
                    changed.append(f"{name}/{rel} ({what})")
        return changed

    def log_tail(self, limit: int = _LOG_TAIL) -> str:
        parts = []
        for i, path in enumerate(self._logs):
            try:
                text = path.read_bytes()[-limit:].decode(errors="replace").strip()
            except OSError:
                continue
            if text:
                parts.append(f"-- runtime {i} --\n{text}")
        return "\n".join(parts)

    def summary(self) -> str:
        """One line: layer sizes, cached or built, calls that ran ok."""
        layers = self.layers
        if layers is None:
            return "clean room: not started"
        zipped, unzipped = layers.sizes([layers.base])
        line = f"clean room: layer {deploy.format_size(zipped)} zipped / {deploy.format_size(unzipped)} unzipped"
        if layers.packages:
            pz, pu = layers.sizes(layers.packages)
            line += f" + {len(layers.packages)} package layer{'s' if len(layers.packages) != 1 else ''} {deploy.format_size(pz)} / {deploy.format_size(pu)}"
        line += " (cached)" if layers.cached else f" (built in {layers.build_seconds:.0f} s)"
        calls = self.backend.calls_ok if self.backend is not None else 0
        who = f"uid {self.uid}" if self.as_root else "read-only trees"
        return f"{line}, {calls} calls ok on {self.runtimes} awslambdaric runtimes ({who}, python{self.python} {self.arch})"

    # -- internals -------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.root is None:
            raise RuntimeError("the clean room is not started")
        return self.root / name

    @staticmethod
    def _sandbox_user() -> tuple[int, int]:
        if os.geteuid() != 0:
            return os.getuid(), os.getgid()
        try:
            pw = pwd.getpwnam("nobody")
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            return 65534, 65534

    def _build_sandbox(self, runtime: Path) -> None:
        import io

        import lambda_worker

        assert self.layers is not None
        # Under root the sandbox user must reach it: /tmp (world-searchable), not a 0700 temp dir.
        self.root = Path(tempfile.mkdtemp(prefix="dask-wren-clean-room-", dir="/tmp" if self.as_root else None))
        os.chmod(self.root, 0o755)
        task, opt, home = self.root / "task", self.root / "opt", self.root / "home"
        for d in (task, opt, home):
            d.mkdir()
        with zipfile.ZipFile(io.BytesIO(deploy.function_zip())) as zf:
            zf.extractall(task)
        _, unzipped = self.layers.sizes()
        unzipped += sum(p.stat().st_size for p in task.rglob("*") if p.is_file())
        if unzipped > deploy.LAYER_UNZIPPED_LIMIT:
            raise CleanRoomError(f"the function and its layers unzip to {deploy.format_size(unzipped)}, over Lambda's 250 MB")
        for z in self.layers.zips:  # Lambda unzips the layers into /opt in order; later files win
            with zipfile.ZipFile(z) as zf:
                zf.extractall(opt)
        shipped = opt / "python" / "lambda_worker"
        if not (shipped / "handler.py").is_file():
            raise CleanRoomError(f"the runtime layer {self.layers.base} has no python/lambda_worker/handler.py")
        shutil.rmtree(shipped)
        shutil.copytree(
            Path(lambda_worker.__file__).parent, shipped, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        shutil.copytree(runtime, self.root / "runtime", ignore=shutil.ignore_patterns(".dask-wren-runtime"))
        self._interpreter = self._make_interpreter()
        for name in ("task", "opt", "runtime", "home"):
            _read_only(self.root / name)
        self._snapshot = {name: _tree(self.root / name) for name in ("task", "opt", "runtime", "home")}
        (self.root / "logs").mkdir(mode=0o700)

    def _make_interpreter(self) -> tuple[str, dict[str, str]]:
        """(python executable, extra environment) the sandbox user can run: this interpreter's
        base, or under root, when that is unreadable to others, a linked copy in ``lang/``."""
        assert self.root is not None
        exe = Path(os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable))
        stdlib = Path(os.path.dirname(os.__file__))
        dynload = Path(sysconfig.get_path("platstdlib")) / "lib-dynload"
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        soname = sysconfig.get_config_var("INSTSONAME") or ""
        shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED")) and soname and Path(libdir, soname).is_file()
        needed = [exe, stdlib / "os.py"] + ([Path(libdir, soname)] if shared else [])
        if not self.as_root or all(_others_can_read(p) for p in needed):
            return str(exe), {}
        lang = self.root / "lang"
        lib = lang / "lib"
        target = lib / f"python{self.python}"
        (lang / "bin").mkdir(parents=True)
        _link_or_copy(str(exe), str(lang / "bin" / f"python{self.python}"))
        shutil.copytree(
            stdlib, target, copy_function=_link_or_copy, ignore=lambda d, names: [n for n in names if n in _STDLIB_SKIP]
        )
        if not (target / "lib-dynload").is_dir() and dynload.is_dir():
            shutil.copytree(dynload, target / "lib-dynload", copy_function=_link_or_copy)
        env = {}
        if shared:
            _link_or_copy(str(Path(libdir, soname)), str(lib / soname))
            env["LD_LIBRARY_PATH"] = str(lib)
        for dirpath, _, _ in os.walk(lang):  # the directories only: the files are the host's, linked
            os.chmod(dirpath, 0o755)
        return str(lang / "bin" / f"python{self.python}"), env

    def _start_s3(self) -> None:
        import boto3
        from botocore.exceptions import ClientError

        if self._s3_endpoint is None:
            from moto.server import ThreadedMotoServer

            self._saved_env = dict(os.environ)
            for name in _CREDENTIAL_SOURCES:
                os.environ.pop(name, None)
            os.environ.update(_FAKE_CREDENTIALS)
            os.environ["AWS_DEFAULT_REGION"] = self.region
            self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._moto.start()
            host, port = self._moto.get_host_and_port()
            self.s3_url = f"http://{host}:{port}"
        else:
            self.s3_url = self._s3_endpoint.rstrip("/")
        client = boto3.client("s3", endpoint_url=self.s3_url, region_name=self.region)
        try:
            client.create_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _environment(self, tmp: Path, index: int) -> dict[str, str]:
        """Lambda's variables for the function, built from nothing: the host's do not leak in."""
        assert self.root is not None and self.server is not None
        exe_env = self._interpreter[1]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "HOME": str(self.home_dir),
            "TMPDIR": str(tmp),
            "LAMBDA_TASK_ROOT": str(self.task_dir),
            "LAMBDA_RUNTIME_DIR": str(self.runtime_dir),
            "_HANDLER": deploy.HANDLER,
            "AWS_LAMBDA_RUNTIME_API": self.server.address,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{self.python}",
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"clean-room-{index}",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            **deploy.function_environment(
                deploy.host_versions(), bucket=self.bucket, prefix=self.settings().prefix, signing_key=self.signing_key.text()
            ),
            **exe_env,
        }
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env

    def _start_runtime(self, index: int) -> subprocess.Popen:
        assert self.root is not None
        tmp = self.root / f"tmp-{index}"
        tmp.mkdir(mode=0o700)
        if self.as_root:
            os.chown(tmp, self.uid, self.gid)
        log_path = self.root / "logs" / f"runtime-{index}.log"
        self._logs.append(log_path)
        cmd = [self._interpreter[0], "-I", "-S", "-c", _BOOTSTRAP]
        cmd += [str(self.task_dir), str(self.layers_dir), str(self.runtime_dir), deploy.HANDLER]
        user: dict[str, Any] = {"user": self.uid, "group": self.gid, "extra_groups": []} if self.as_root else {}
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                cmd, cwd=self.task_dir, env=self._environment(tmp, index), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **user,
            )

    def _health(self) -> str | None:
        """Why the room cannot answer (a runtime exited), or None."""
        for i, proc in enumerate(self.processes):
            code = proc.poll()
            if code is not None:
                return f"clean-room runtime {i} exited with code {code}; its output:\n{self.log_tail()}"
        return None


def _read_only(root: Path) -> None:
    """Directories 0o555, files 0o444 (0o555 if executable): a Lambda sandbox's read-only trees."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o555 if os.stat(p).st_mode & stat.S_IXUSR else 0o444)
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o555)


def _end(proc: subprocess.Popen) -> None:
    """Stop one runtime we started, and its process group (it leads one)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
