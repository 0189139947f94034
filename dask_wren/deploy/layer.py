"""The runtime layer and the user's package layers: built with pip for Lambda's platform, and checked.

Which Pythons and architectures Lambda runs, how a layer is built (pip, wheels only, no Docker;
deterministic zips), and what a layer zip must hold (the handler, one platform, sizes under
Lambda's limit, the host's versions).  ``runtime/build_layer.py`` and the clean room use only this.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dask_wren.deploy.clients import DeployError
from dask_wren.deployment import host_python

HANDLER = "lambda_worker.handler.lambda_handler"
#: Python minors Lambda has a managed runtime for, and the glibc minor of that runtime's OS
#: (python3.10 and 3.11 run on Amazon Linux 2, glibc 2.26; python3.12+ on Amazon Linux 2023, glibc 2.34).
#: 3.9 is left out: the project itself requires Python 3.10 or newer.
LAMBDA_PYTHONS: dict[str, int] = {"3.10": 26, "3.11": 26, "3.12": 34, "3.13": 34, "3.14": 34}
#: The first botocore (and boto3) release whose S3 model has ``IfNoneMatch`` on PutObject: workers
#: write result records with conditional writes (first writer wins), which older SDKs reject.
#: Found by downloading botocore 1.35.1 and 1.35.2 and reading PutObjectRequest in their s3 model.
BOTOCORE_FLOOR = "1.35.2"
ARCHITECTURES: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda name -> wheel tag
MiB = 1024 * 1024
LAYER_UNZIPPED_LIMIT = 250 * MiB  # function + layers, unzipped (a Lambda limit)
MAX_LAYERS = 5  # layers per function (a Lambda limit): the runtime layer and up to 4 package layers
PACKAGE_LAYER_TARGET = 48 * MiB  # unzipped bytes per package layer, so most zips go up directly
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same zip and sha256
_REQUIREMENTS_FILE = Path(__file__).resolve().parents[2] / "runtime" / "requirements.txt"
_FALLBACK_REQUIREMENTS = ["cloudpickle>=3.0", "tblib>=3.0", "numpy", "dask", "toolz"]
#: Packages pinned to the host's version in the layer: ``==`` where pickles demand equality,
#: ``<=`` elsewhere (the host's version when Lambda's platform has a wheel, else the newest older one).
_PIN_EXACT = ("cloudpickle",)
_PIN_AT_MOST = ("tblib", "numpy", "dask", "toolz", "boto3", "botocore")
_FUNCTION_README = (
    b"dask-wren worker function.\n\nThe handler (lambda_worker.handler.lambda_handler) and its packages live in the\n"
    b"function's runtime layer (/opt/python); this package holds no code. Managed by `dask-wren deploy`.\n"
)


def lambda_runtime(python: str) -> str:
    """Lambda's managed runtime for ``python`` (``python3.X``), or a ``DeployError`` saying there is none."""
    if python not in LAMBDA_PYTHONS:
        supported = ", ".join(LAMBDA_PYTHONS)
        raise DeployError(
            f"AWS Lambda has no managed runtime for Python {python} (it has {supported}); pickled functions only "
            f"cross between equal Python minors, so deploy from an environment running one of those"
        )
    return f"python{python}"


def lambda_platforms(python: str, arch: str) -> list[str]:
    """pip ``--platform`` tags of the wheels that run on the Lambda OS image for ``python``."""
    machine = ARCHITECTURES[arch]
    glibc = LAMBDA_PYTHONS[python]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc, 16, -1)]
    return tags + [f"manylinux2014_{machine}"]  # pip adds manylinux2010 and manylinux1 to this one


def user_requirements(requirements: Iterable[Path] = (), packages: Iterable[str] = ()) -> list[str]:
    """The user's requirements: every ``--requirements`` file's lines, then every ``--packages`` item."""
    reqs: list[str] = []
    for path in requirements:
        reqs += read_requirements(Path(path))
    for spec in packages:
        if not spec.strip():
            continue
        if spec.strip().startswith("-"):
            raise DeployError(f"--packages takes requirement specifiers (like 'scipy>=1.11'), not {spec!r}")
        reqs.append(spec.strip())
    return reqs


def read_requirements(path: Path, _seen: tuple[Path, ...] = ()) -> list[str]:
    """Requirement lines of a pip requirements file: comments and blank lines dropped, ``-r`` followed.

    Index options (``--index-url``, ``--extra-index-url``, ``--find-links``) and ``-c`` constraint
    files are kept for pip (paths made absolute); editable and source installs are refused, since
    the layer holds wheels for Lambda's platform only.
    """
    path = Path(path).expanduser()
    if path.resolve() in _seen:
        raise DeployError(f"requirements file {path} includes itself (through -r)")
    try:
        text = path.read_text()
    except OSError as e:
        raise DeployError(f"--requirements {path}: cannot read it ({e.strerror or e})") from None
    text = re.sub(r"\\\n", "", text)  # line continuations, joined as pip joins them
    reqs: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        option = re.match(r"(-r|--requirement|-c|--constraint)(?:\s+|=)?(\S+)$", line)
        if option:
            target = Path(option.group(2)).expanduser()
            target = target if target.is_absolute() else path.parent / target
            if option.group(1) in ("-r", "--requirement"):
                reqs += read_requirements(target, (*_seen, path.resolve()))
            else:
                if not target.is_file():
                    raise DeployError(f"{path}:{number}: constraint file {target} not found")
                reqs.append(f"-c {target}")
            continue
        if re.match(r"(-i|--index-url|--extra-index-url|-f|--find-links|--pre|--prefer-binary)\b", line):
            reqs.append(line)
            continue
        if line.startswith("-"):
            raise DeployError(
                f"{path}:{number}: {line!r} is not supported here: the package layers hold wheels for Lambda's "
                "platform only (no -e / source installs); use a container image for those (runtime/Dockerfile)"
            )
        reqs.append(line)
    return reqs


@dataclass(frozen=True)
class LayerZip:
    """A layer zip, checked: its hash, sizes and the package versions its dist-info names."""

    path: Path
    sha256: str
    size: int
    unzipped_size: int
    versions: dict[str, str]
    #: unzipped bytes per package (by top-level name under ``python/``), for size reports
    packages: dict[str, int] = field(default_factory=dict)
    kind: str = "runtime"  # runtime (the handler and its packages) | packages (the user's)

    def description(self, python: str, arch: str) -> str:
        return f"dask-wren {self.kind} python{python} {arch} sha256={self.sha256}"


def format_size(n: int) -> str:
    return f"{n / MiB:.1f} MB" if n >= MiB else f"{n / 1024:.1f} KB"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _older(version: str, floor: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) < Version(floor)
    except InvalidVersion:
        return False


def _package_of(name: str) -> str | None:
    """The package a layer path belongs to, by its top-level entry under ``python/`` (for size reports)."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "python" or not parts[1]:
        return None
    top = parts[1]
    m = re.fullmatch(r"(.+?)-[^-]+\.(?:dist|egg)-info", top)
    if m:
        top = m.group(1)
    elif top.endswith((".libs", ".data")):
        top = top.rsplit(".", 1)[0]
    elif len(parts) == 2:  # a module: six.py, _cffi_backend.cpython-311-x86_64-linux-gnu.so
        top = top.split(".", 1)[0]
    return _normalize(top).strip("-") or top


def size_limit_message(total: int, sizes: Mapping[str, int]) -> str:
    """Over Lambda's unzipped limit: say by how much, which packages weigh most, and what to do."""
    largest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:6]
    named = ", ".join(f"{name} {format_size(n)}" for name, n in largest)
    return (
        f"the function and its layers would unzip to {format_size(total)}, over Lambda's 250 MB limit for a "
        f"function and all its layers together; the largest packages: {named}. Deploy fewer packages "
        "(--packages / --requirements, runtime/requirements.txt), or run the worker as a container image "
        "(up to 10 GB): see runtime/Dockerfile"
    )


def check_unzipped_size(layers: Sequence[LayerZip]) -> None:
    """Refuse, before any upload, a function whose layers together exceed Lambda's unzipped limit."""
    total = len(_FUNCTION_README) + sum(layer.unzipped_size for layer in layers)
    if total > LAYER_UNZIPPED_LIMIT:
        sizes: dict[str, int] = {}
        for layer in layers:
            for name, n in layer.packages.items():
                sizes[name] = sizes.get(name, 0) + n
        raise DeployError(size_limit_message(total, sizes))


def inspect_layer_zip(path: Path, python: str, arch: str, *, runtime: bool = True) -> LayerZip:
    """Hash and measure a layer zip, and refuse one Lambda could not use for this deployment.

    ``runtime``: the layer that holds the handler (else one of the user's package layers).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile) as e:
        raise DeployError(f"layer zip {path} cannot be read: {e}") from None
    names = {i.filename for i in infos}
    if runtime and "python/lambda_worker/handler.py" not in names:
        raise DeployError(
            f"layer zip {path} has no python/lambda_worker/handler.py: the function's handler {HANDLER} "
            "would not import (build it with `python runtime/build_layer.py` or let deploy build it)"
        )
    unzipped = sum(i.file_size for i in infos)
    packages: dict[str, int] = {}
    for info in infos:
        owner = _package_of(info.filename)
        if owner is not None:
            packages[owner] = packages.get(owner, 0) + info.file_size
    if unzipped + len(_FUNCTION_README) > LAYER_UNZIPPED_LIMIT:
        raise DeployError(f"layer zip {path}: " + size_limit_message(unzipped + len(_FUNCTION_README), packages))
    versions: dict[str, str] = {}
    tags: set[str] = set()
    machines: set[str] = set()
    for name in names:
        m = re.fullmatch(r"python/([^/]+?)-([^/-]+)\.dist-info/METADATA", name)
        if m:
            versions[_normalize(m.group(1))] = m.group(2)
        m = re.search(r"\.cpython-(\d)(\d+)-(\w+?)-linux-gnu\.so$", name)
        if m:
            tags.add(f"{m.group(1)}.{m.group(2)}")
            machines.add(m.group(3))
    if tags - {python}:
        raise DeployError(
            f"layer zip {path} holds extension modules for Python {', '.join(sorted(tags))}, "
            f"but this deployment is for Python {python}"
        )
    if machines - {ARCHITECTURES[arch]}:
        raise DeployError(
            f"layer zip {path} holds extension modules for {', '.join(sorted(machines))}, not {arch}: pass the "
            "matching --arch or rebuild the layer"
        )
    botocore = versions.get("botocore")
    if botocore and _older(botocore, BOTOCORE_FLOOR):
        raise DeployError(
            f"layer zip {path} has botocore {botocore}, older than {BOTOCORE_FLOOR}: workers write their result "
            f"records with S3 conditional writes (put_object IfNoneMatch='*', first writer wins), which botocore "
            f"knows from {BOTOCORE_FLOOR} on. Rebuild the layer with boto3 and botocore >= {BOTOCORE_FLOOR}: "
            f"`pip install -U 'boto3>={BOTOCORE_FLOOR}'` here, then deploy without --layer-zip (or run "
            "runtime/build_layer.py)"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return LayerZip(
        path, digest.hexdigest(), path.stat().st_size, unzipped, versions, packages, "runtime" if runtime else "packages"
    )


def layer_versions(host: Mapping[str, str], layer: LayerZip) -> dict[str, str]:
    """The versions the function records (the host's), once the layer's own packages agree with them.

    The invoker refuses a function whose recorded cloudpickle or dask differs from its host's, so a
    layer holding other versions (a ``--layer-zip`` built elsewhere) is refused here already.
    """
    for name in ("cloudpickle", "dask"):
        in_layer = layer.versions.get(name)
        if in_layer and in_layer != host[name]:
            raise DeployError(
                f"the layer has {name} {in_layer} but this environment has {host[name]}: pickles only "
                f"cross between equal versions; rebuild the layer from this environment (drop --layer-zip) or "
                f"install {name}=={in_layer} here"
            )
    return dict(host)


def layer_differences(layer: LayerZip) -> list[str]:
    """Packages whose layer version differs from the host's (where pickles tolerate it)."""
    from importlib import metadata

    notes = []
    if "botocore" not in layer.versions:
        notes.append(
            f"the layer has no botocore: the worker will use the one bundled with Lambda's runtime, which may be "
            f"older than {BOTOCORE_FLOOR} and reject the conditional writes of result records; a layer built by "
            "deploy (or runtime/build_layer.py) has its own"
        )
    for name in _PIN_AT_MOST:
        try:
            here = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        there = layer.versions.get(name)
        if there and there != here and name != "dask":  # dask must match: checked by layer_versions
            notes.append(
                f"the layer has {name} {there}, this environment {here} (the newest wheel for Lambda's platform "
                "that is not newer than yours)"
            )
    return notes


def runtime_requirements() -> list[str]:
    """``runtime/requirements.txt`` (a source checkout) or the same list built in, plus tblib and boto3.

    boto3 and botocore go into the layer although Lambda's runtime bundles them: the worker's S3
    store uses conditional writes (``IfNoneMatch``) that an older bundled SDK rejects
    (``BOTOCORE_FLOOR``), and the layer's copy comes first on the function's ``sys.path``.
    """
    if _REQUIREMENTS_FILE.is_file():
        lines = _REQUIREMENTS_FILE.read_text().splitlines()
        reqs = [line.split("#", 1)[0].strip() for line in lines]
        reqs = [r for r in reqs if r]
    else:
        reqs = list(_FALLBACK_REQUIREMENTS)
    named = {_requirement_name(r) for r in reqs}
    extras = {"tblib": "tblib", "boto3": f"boto3>={BOTOCORE_FLOOR}", "botocore": f"botocore>={BOTOCORE_FLOOR}"}
    return reqs + [spec for name, spec in extras.items() if name not in named]


def _requirement_name(spec: str) -> str:
    return _normalize(re.split(r"[<>=!~ ;\[@]", spec.strip(), maxsplit=1)[0])


def layer_constraints() -> list[str]:
    """Pins to the host's versions: equal cloudpickle (pickles demand it), nothing newer elsewhere."""
    from importlib import metadata

    pins = []
    for names, op in ((_PIN_EXACT, "=="), (_PIN_AT_MOST, "<=")):
        for name in names:
            try:
                pins.append(f"{name}{op}{metadata.version(name)}")
            except metadata.PackageNotFoundError:
                pass
    return pins


def _layer_filter(rel: Path) -> bool:
    """Keep this file in the layer?

    Bytecode, test suites and console scripts stay out, and so do ``dist-info/RECORD`` files: they
    hash the console scripts, whose first line names the interpreter that ran pip, so keeping them
    would make the same packages zip differently from another virtualenv.  The rest of dist-info
    stays (``importlib.metadata`` versions and entry points read it).
    """
    parts = rel.parts
    if "__pycache__" in parts or "tests" in parts[:-1] or (len(parts) > 1 and parts[1] == "bin"):
        return False
    if rel.name == "RECORD" and rel.parent.name.endswith(".dist-info"):
        return False
    return rel.suffix not in (".pyc", ".pyo")


def write_deterministic_zip(root: Path, dest: Path, keep: Callable[[Path], bool] = lambda rel: True) -> None:
    """Zip ``root``'s files in sorted order with fixed timestamps: same files, same bytes."""
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and keep(p.relative_to(root)))
    _zip_files(root, files, dest)


def _zip_files(root: Path, files: Iterable[Path], dest: Path) -> None:
    """Zip these files (relative to ``root``) in sorted order with fixed timestamps and modes."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(files, key=lambda r: r.as_posix()):
            p = root / rel
            info = zipfile.ZipInfo(rel.as_posix(), date_time=_ZIP_TIME)
            mode = 0o755 if p.stat().st_mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, p.read_bytes())


def _check_target(python: str | None, arch: str) -> str:
    python = python or host_python()
    lambda_runtime(python)
    if arch not in ARCHITECTURES:
        raise DeployError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {arch!r}")
    return python


def _run_pip(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run pip (the one place a layer build calls it; tests replace it with a fake)."""
    return subprocess.run(cmd, capture_output=True, text=True)


def _pip_install(
    site: Path, requirements: Sequence[str], *, python: str, arch: str, constraints: Sequence[str], failure: str
) -> None:
    """``pip install --target site`` wheels for Lambda's Linux and ``python``, in one resolution.

    Wheels only (``--only-binary=:all:``), for the glibc of the Lambda image that runs ``python``;
    ``requirements`` items starting with ``-`` are pip options (``-c file``, ``--extra-index-url u``).
    On failure, a ``DeployError``: ``failure`` and pip's last lines.
    """
    site.mkdir(parents=True, exist_ok=True)
    fd, constraints_file = tempfile.mkstemp(prefix="dask-wren-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{c}\n" for c in constraints))
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check"]
        for tag in lambda_platforms(python, arch):
            cmd += ["--platform", tag]
        cmd += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
        cmd += ["--target", str(site), "-c", constraints_file]
        for item in requirements:
            cmd += shlex.split(item) if item.startswith("-") else [item]
        proc = _run_pip(cmd)
    finally:
        os.unlink(constraints_file)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise DeployError(f"{failure}:\n{tail}")


def _install_runtime(site: Path, python: str, arch: str, out: Callable[[str], None]) -> None:
    """The runtime layer's tree: the runtime requirements (pinned to the host's), and ``lambda_worker``."""
    import lambda_worker

    out(f"building layer: pip install for python{python} {arch} ({', '.join(layer_constraints())})")
    _pip_install(
        site,
        runtime_requirements(),
        python=python,
        arch=arch,
        constraints=layer_constraints(),
        failure=f"pip could not build the runtime layer for python{python} {arch}",
    )
    shutil.copytree(
        Path(lambda_worker.__file__).parent,
        site / "lambda_worker",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )


def build_layer(
    dest: Path, *, python: str | None = None, arch: str = "x86_64", out: Callable[[str], None] = print
) -> Path:
    """Build the runtime layer zip at ``dest`` with pip, for Lambda's Linux, without Docker.

    Wheels only (``--only-binary=:all:``), for ``python`` (default: this interpreter's minor) and
    the glibc of the Lambda image that runs it; then the project's ``lambda_worker`` is added.
    """
    python = _check_target(python, arch)
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="dask-wren-layer-") as tmp:
        site = Path(tmp) / "layer" / "python"
        _install_runtime(site, python, arch, out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_deterministic_zip(site.parent, dest, _layer_filter)
    return dest


@dataclass(frozen=True)
class Distribution:
    """One installed distribution of a ``--target`` tree: the files (relative to the layer root) it owns."""

    name: str  # normalized
    version: str
    files: tuple[Path, ...]
    size: int


def site_distributions(site: Path) -> dict[str, Distribution]:
    """The distributions pip installed into ``site`` (a ``--target`` directory named ``python``).

    Each owns the files its ``RECORD`` lists and its dist-info; a file no RECORD lists goes with
    the distribution owning others under the same top-level entry (or makes one of its own, named
    after that entry).  Files a layer leaves out (``_layer_filter``) are not counted.
    """
    root = site.parent
    owned: dict[Path, str] = {}
    versions: dict[str, str] = {}
    for info in sorted(site.glob("*.dist-info")):
        m = re.fullmatch(r"(.+?)-([^-]+)\.dist-info", info.name)
        if not m or not info.is_dir():
            continue
        name = _normalize(m.group(1))
        versions[name] = m.group(2)
        record = info / "RECORD"
        rows = csv.reader(record.read_text().splitlines()) if record.is_file() else []
        for row in rows:
            if not row or not row[0]:
                continue
            path = Path(os.path.normpath(site / row[0]))
            if path.is_file() and path.is_relative_to(site):
                owned.setdefault(path.relative_to(root), name)
        for path in info.rglob("*"):
            if path.is_file():
                owned.setdefault(path.relative_to(root), name)
    top_owner: dict[str, str] = {}
    for rel, name in sorted(owned.items()):
        top_owner.setdefault(rel.parts[1], name)
    for path in sorted(site.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel not in owned:
            name = top_owner.get(rel.parts[1]) or _package_of(rel.as_posix()) or rel.parts[1]
            versions.setdefault(name, "")
            owned[rel] = name
    files: dict[str, list[Path]] = {}
    for rel, name in owned.items():
        if _layer_filter(rel):
            files.setdefault(name, []).append(rel)
    return {  # a distribution always keeps its METADATA; an entry left empty (bin/, say) is nothing to ship
        name: Distribution(name, versions[name], tuple(sorted(fs)), sum((root / f).stat().st_size for f in fs))
        for name, fs in sorted(files.items())
    }


def split_layers(
    dists: Sequence[Distribution], max_layers: int = MAX_LAYERS - 1, target: int | None = None
) -> list[list[Distribution]]:
    """Group distributions into at most ``max_layers`` layers, a distribution never split.

    Groups are runs in name order of at most ``target`` unzipped bytes (a larger distribution makes
    a layer of its own), so most zips are small enough to upload directly and a change to one
    package republishes only its layer.  When that makes too many layers the groups grow.
    """
    ordered = sorted(dists, key=lambda d: d.name)
    if not ordered:
        return []
    capacity = max(PACKAGE_LAYER_TARGET if target is None else target, -(-sum(d.size for d in ordered) // max_layers))
    while True:
        groups: list[list[Distribution]] = [[]]
        size = 0
        for d in ordered:
            if groups[-1] and size + d.size > capacity:
                groups.append([])
                size = 0
            groups[-1].append(d)
            size += d.size
        if len(groups) <= max_layers:
            return groups
        capacity = capacity * 5 // 4 + 1


def package_layers_for(
    requirements: Sequence[str],
    base: LayerZip | Mapping[str, Distribution],
    workdir: Path,
    *,
    python: str,
    arch: str,
    out: Callable[[str], None] = print,
) -> list[Path]:
    """Zips of the user's packages for a function whose runtime layer is ``base``.

    One pip resolution of the runtime's requirements together with ``requirements``, under the
    runtime's constraints plus every distribution of ``base`` pinned to its version there: a user
    package cannot bring a second numpy or another cloudpickle.  The distributions ``base`` lacks
    go into at most four layers (``split_layers``); the size of everything together is checked
    against Lambda's limit before a zip is written.
    """
    if not requirements:
        return []
    if isinstance(base, LayerZip):
        pinned, base_sizes, base_size = dict(base.versions), dict(base.packages), base.unzipped_size
    else:
        pinned = {d.name: d.version for d in base.values() if d.version}
        base_sizes = {d.name: d.size for d in base.values()}
        base_size = sum(base_sizes.values())
    workdir = Path(workdir)
    site = workdir / "packages-site" / "python"
    shutil.rmtree(site.parent, ignore_errors=True)
    for old in workdir.glob("packages-*.zip"):
        old.unlink()
    user = [r for r in requirements if not r.startswith("-")]
    out(f"building package layers: pip install {' '.join(user)} for python{python} {arch}, with the runtime's "
        f"{len(pinned)} distributions pinned")
    _pip_install(
        site,
        [*runtime_requirements(), *requirements],
        python=python,
        arch=arch,
        constraints=[*layer_constraints(), *(f"{name}=={v}" for name, v in sorted(pinned.items()))],
        failure=(
            f"pip could not install {', '.join(user) or 'the requested packages'} for Lambda's python{python} {arch} "
            "together with the runtime's packages (wheels for Lambda's platform only; the runtime's versions pinned). "
            "A package without such a wheel needs a container image (runtime/Dockerfile). pip said"
        ),
    )
    installed = site_distributions(site)
    mine = [d for name, d in installed.items() if name not in pinned]
    if not mine:
        out("package layers: none needed, the runtime layer has every requested package")
        return []
    total = len(_FUNCTION_README) + base_size + sum(d.size for d in mine)
    if total > LAYER_UNZIPPED_LIMIT:
        raise DeployError(size_limit_message(total, {**base_sizes, **{d.name: d.size for d in mine}}))
    paths = []
    for number, group in enumerate(split_layers(mine), 1):
        dest = workdir / f"packages-{number}.zip"
        _zip_files(site.parent, [f for d in group for f in d.files], dest)
        names = ", ".join(f"{d.name} {d.version}".strip() for d in group)
        out(f"package layer {number}: {names} ({format_size(sum(d.size for d in group))} unzipped)")
        paths.append(dest)
    return paths


def build_package_layers(
    requirements: Sequence[str],
    workdir: Path,
    *,
    python: str | None = None,
    arch: str = "x86_64",
    out: Callable[[str], None] = print,
) -> list[Path]:
    """Zips (each with a top-level ``python/``) of layers holding only the user's ``requirements``.

    They hold the requested packages and the dependencies the runtime layer (``build_layer``) does
    not have, resolved with pip for Lambda's platform and ``python`` minor (default: this
    interpreter's) together with the runtime's requirements, the runtime's versions as constraints.
    Unzipped next to the runtime layer (``/opt/python``, in order), they complete it.  Written
    into ``workdir`` (``packages-1.zip``, ...); an empty list when nothing is missing.
    """
    python = _check_target(python, arch)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    site = workdir / "runtime-site" / "python"
    shutil.rmtree(site.parent, ignore_errors=True)
    _install_runtime(site, python, arch, out)
    base = site_distributions(site)
    return package_layers_for(requirements, base, workdir, python=python, arch=arch, out=out)


def function_zip() -> bytes:
    """The function's own package: a README (the code comes from the layer).  Always the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("README.txt", date_time=_ZIP_TIME)
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, _FUNCTION_README)
    return buf.getvalue()
