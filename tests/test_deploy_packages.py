"""The user's packages (``deploy --packages / --requirements``): resolution, layers, size limit.

pip is replaced by a fake that "installs" small made-up distributions into ``--target`` (with
dist-info and RECORD, as pip does), so these run offline and fast; the slow tests at the end run
the real pip against PyPI.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import test_deploy as td

from dask_wren import deploy as dep

pytestmark = pytest.mark.timeout(120)

aws_env, aws = td.aws_env, td.aws  # fixtures: moto in process, fake credentials
FN, PY, HOST, run, lines_of = td.FN, td.PY, td.HOST, td.run, td.lines_of

#: name -> (version, size in bytes of its module, dependencies): what the fake index holds.
INDEX = {
    "cloudpickle": (HOST["cloudpickle"], 100, []),
    "dask": (HOST["dask"], 100, ["toolz"]),
    "numpy": ("2.0.0", 100, []),
    "toolz": ("1.0.0", 100, []),
    "tblib": ("3.0.0", 100, []),
    "boto3": ("1.40.0", 100, ["botocore"]),
    "botocore": ("1.40.0", 100, []),
    "alpha": ("1.0", 600, ["numpy"]),  # a user package needing numpy: the runtime's numpy serves it
    "beta": ("2.0", 600, ["six"]),
    "six": ("1.16.0", 50, []),
    "gamma": ("0.3", 300, []),
    "huge": ("9.9", 2500, []),
    "tabulate": ("0.9.0", 80, []),
}
BASE = ("cloudpickle", "dask", "numpy", "toolz", "tblib", "boto3", "botocore")


class FakePip:
    """Stands in for ``dep.layer._run_pip``: installs from INDEX into --target, records each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, cmd):
        target = Path(cmd[cmd.index("--target") + 1])
        constraints = Path(cmd[cmd.index("-c") + 1]).read_text().split()
        requested = [a for a in cmd[cmd.index("-c") + 2 :] if not a.startswith("-")]
        self.calls.append({"cmd": cmd, "constraints": constraints, "requested": requested})
        assert "--only-binary=:all:" in cmd and cmd[cmd.index("--python-version") + 1] == PY
        todo = [dep.layer._requirement_name(r) for r in requested]
        done = set()
        while todo:
            name = todo.pop()
            if name in done:
                continue
            if name not in INDEX:
                return subprocess.CompletedProcess(cmd, 1, "", (
                    "Looking in indexes: https://pypi.org/simple\n"
                    f"ERROR: Could not find a version that satisfies the requirement {name} (from versions: none)\n"
                    f"ERROR: No matching distribution found for {name}\n"
                ))
            version, size, deps = INDEX[name]
            pin = next((c for c in constraints if dep.layer._requirement_name(c) == name and "==" in c), None)
            assert pin is None or pin.endswith(f"=={version}"), (pin, version)  # the runtime's versions hold
            module = name.replace("-", "_")
            (target / module).mkdir(parents=True)
            (target / module / "__init__.py").write_bytes(b"#" * size)
            info = target / f"{module}-{version}.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Name: {name}\nVersion: {version}\n")
            (target / "bin").mkdir(exist_ok=True)
            (target / "bin" / module).write_text("#!/usr/bin/python\n")  # a console script, as pip writes one
            (info / "RECORD").write_text(
                f"{module}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n../../bin/{module},,\n"
            )
            done.add(name)
            todo += deps
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def pip(monkeypatch):
    fake = FakePip()
    monkeypatch.setattr(dep.layer, "_run_pip", fake)
    return fake


@pytest.fixture
def layer_zip(tmp_path):
    """A runtime layer whose dist-info names every base distribution at the fake index's version."""
    extra = {
        f"python/{n}-{INDEX[n][0]}.dist-info/METADATA": f"Name: {n}\n" for n in BASE if n not in ("cloudpickle", "dask")
    }
    extra["python/numpy/__init__.py"] = "#" * 1000
    return td.make_layer_zip(tmp_path / "layer.zip", extra=extra)


@pytest.fixture
def args(layer_zip, tmp_path):
    config = tmp_path / "dask" / "wren.yaml"
    return ["deploy", "--function-name", FN, "--layer-zip", str(layer_zip), "--config-file", str(config)]


def names_in(path):
    with zipfile.ZipFile(path) as zf:
        return sorted(zf.namelist())


def dists_in(path):
    return sorted(n.split("/")[1].split("-")[0] for n in names_in(path) if n.endswith(".dist-info/METADATA"))


# -- requirements --------------------------------------------------------------------------------


def test_requirements_files_follow_includes_and_skip_comments(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.txt").write_text("gamma==0.3  # pinned\n")
    (tmp_path / "c.txt").write_text("six<2\n")
    (tmp_path / "req.txt").write_text(
        "# my packages\n\nalpha>=1.0\n  beta\\\n[x]\n-r sub/more.txt\n-c c.txt\n--extra-index-url https://x/simple\n"
    )
    reqs = dep.read_requirements(tmp_path / "req.txt")
    assert reqs == ["alpha>=1.0", "beta[x]", "gamma==0.3", f"-c {tmp_path / 'c.txt'}",
                    "--extra-index-url https://x/simple"]
    opts = dep.DeployOptions(requirements=(tmp_path / "req.txt",), packages=("tabulate", "huge>1"))
    assert dep.user_requirements(opts.requirements, opts.packages)[-2:] == ["tabulate", "huge>1"]

    with pytest.raises(dep.DeployError, match="cannot read"):
        dep.read_requirements(tmp_path / "missing.txt")
    (tmp_path / "edit.txt").write_text("-e ./src\n")
    with pytest.raises(dep.DeployError, match=r"edit.txt:1: '-e ./src' is not supported.*runtime/Dockerfile"):
        dep.read_requirements(tmp_path / "edit.txt")
    (tmp_path / "loop.txt").write_text("-r loop.txt\n")
    with pytest.raises(dep.DeployError, match="includes itself"):
        dep.read_requirements(tmp_path / "loop.txt")


def test_a_missing_requirements_file_fails_before_any_aws_call(capsys):
    code, _, err = run(capsys, ["deploy", "--requirements", "/nonexistent/req.txt"])
    assert code == 1 and "--requirements /nonexistent/req.txt: cannot read it" in err and "Traceback" not in err


# -- layers ----------------------------------------------------------------------------------


def _dist(name, size):
    return dep.Distribution(name, "1", (Path(f"python/{name}/__init__.py"),), size)


def test_split_layers_never_splits_a_distribution_and_makes_at_most_four():
    dists = [_dist(n, s) for n, s in [("e", 10), ("a", 30), ("c", 30), ("b", 50), ("d", 200)]]
    groups = dep.split_layers(dists, target=60)  # 320 bytes in 4 layers: at least 80 a layer
    assert [[d.name for d in g] for g in groups] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert dep.split_layers(list(reversed(dists)), target=60) == groups  # the same packages, the same layers
    assert [[d.name for d in g] for g in dep.split_layers(dists, target=100)] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert [[d.name for d in g] for g in dep.split_layers(dists, target=400)] == [["a", "b", "c", "d", "e"]]
    many = [_dist(f"p{i:02d}", 40) for i in range(20)]
    groups = dep.split_layers(many, target=50)
    assert len(groups) == 4 and sorted(d.name for g in groups for d in g) == [d.name for d in many]
    assert dep.split_layers([], target=50) == []


def test_build_package_layers_holds_only_the_users_packages(pip, tmp_path):
    lines = []
    paths = dep.build_package_layers(["alpha", "beta"], tmp_path / "work", out=lines.append)
    assert [p.name for p in paths] == ["packages-1.zip"]
    (layer,) = paths
    assert dists_in(layer) == ["alpha", "beta", "six"]  # numpy (alpha's dependency) stays in the runtime layer
    assert all(n.startswith("python/") for n in names_in(layer))
    assert not any("/bin/" in n or n.endswith("RECORD") for n in names_in(layer))
    base_call, packages_call = pip.calls
    assert "lambda_worker" not in str(base_call["requested"]) and "alpha" not in base_call["requested"]
    # One resolution: the runtime's requirements and the user's, the runtime's versions pinned.
    assert {dep.layer._requirement_name(r) for r in packages_call["requested"]} >= {*BASE, "alpha", "beta"}
    assert "numpy==2.0.0" in packages_call["constraints"] and f"cloudpickle=={HOST['cloudpickle']}" in packages_call["constraints"]
    assert any("package layer 1: alpha 1.0, beta 2.0, six 1.16.0" in line for line in lines), lines
    # Nothing missing: no layers.
    assert dep.build_package_layers(["numpy", "dask"], tmp_path / "work2", out=lines.append) == []


def test_unknown_package_is_one_clear_error_quoting_pip(pip, tmp_path):
    with pytest.raises(dep.DeployError) as info:
        dep.build_package_layers(["alpha", "no-such-package-xyz"], tmp_path, out=lambda line: None)
    message = str(info.value)
    assert "pip could not install alpha, no-such-package-xyz for Lambda's python" in message
    assert "No matching distribution found for no-such-package-xyz" in message
    assert "runtime/Dockerfile" in message


def test_deploy_publishes_package_layers_in_order(aws, pip, args, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(dep.layer, "PACKAGE_LAYER_TARGET", 1000)
    (tmp_path / "req.txt").write_text("# two\nalpha\n\ngamma\n")
    argv = [*args, "--requirements", str(tmp_path / "req.txt"), "--packages", "huge", "beta"]
    code, out, err = run(capsys, argv)
    assert code == 0, err
    lines = lines_of(out)
    # In name order, ~1 KB a layer: alpha | beta + gamma | huge (alone: larger than that) | six.
    # numpy, which alpha needs, is the runtime layer's: no second copy.
    for n in (1, 2, 3, 4):
        assert "published (version 1" in lines[f"layer {FN}-packages-{n}"], out
    assert f"layer {FN}-packages-5" not in lines and "5 layers" in lines[f"function {FN}"], out
    lam = aws["lambda"]
    conf = lam.get_function_configuration(FunctionName=FN)
    arns = [x["Arn"] for x in conf["Layers"]]
    assert [a.split(":layer:")[1] for a in arns] == [f"{FN}-runtime:1", *(f"{FN}-packages-{n}:1" for n in (1, 2, 3, 4))]
    for n in (1, 2, 3, 4):
        (version,) = lam.list_layer_versions(LayerName=f"{FN}-packages-{n}")["LayerVersions"]
        assert version["Description"].startswith(f"dask-wren packages python{PY} x86_64 sha256=")
    assert "package layer 1: alpha 1.0 (" in out and "package layer 2: beta 2.0, gamma 0.3 (" in out
    assert "package layer 3: huge 9.9 (" in out and "package layer 4: six 1.16.0 (" in out
    assert "numpy" not in out.split("building package layers: pip")[1].split("building package layers: done")[0]

    # Idempotent: the same packages publish nothing.
    code, out, _ = run(capsys, argv)
    assert code == 0
    lines = lines_of(out)
    assert all(lines[f"layer {FN}-packages-{n}"].split(": ")[1].startswith("unchanged") for n in (1, 2, 3, 4)), out
    assert lines[f"function {FN}"].split(": ")[1].startswith("unchanged")

    # Without packages, the function goes back to its one runtime layer; destroy removes every layer.
    code, out, _ = run(capsys, args)
    assert code == 0 and "updated (Layers)" in lines_of(out)[f"function {FN}"]
    assert len(lam.get_function_configuration(FunctionName=FN)["Layers"]) == 1
    code, out, _ = run(capsys, ["destroy", "--function-name", FN, "--yes"])
    assert code == 0
    for n in (1, 2, 3, 4):
        assert lines_of(out)[f"layer {FN}-packages-{n}"].endswith("deleted (1 version)")
        assert lam.list_layer_versions(LayerName=f"{FN}-packages-{n}")["LayerVersions"] == []


def test_dry_run_with_packages_plans_the_layers_and_creates_nothing(aws, pip, args, capsys):
    code, out, _ = run(capsys, [*args, "--packages", "tabulate", "--dry-run"])
    assert code == 0
    assert "would publish (version 1" in lines_of(out)[f"layer {FN}-packages-1"]
    assert "2 layers" in lines_of(out)[f"function {FN}"]
    assert aws["lambda"].list_layers()["Layers"] == [] and aws["iam"].list_roles()["Roles"] == []


def test_too_large_stops_before_any_aws_change_and_names_the_largest_packages(aws, pip, args, capsys, monkeypatch):
    monkeypatch.setattr(dep.layer, "LAYER_UNZIPPED_LIMIT", 4000)
    code, out, err = run(capsys, [*args, "--packages", "huge", "alpha", "tabulate"])
    assert code == 1 and "Traceback" not in err
    assert "over Lambda's 250 MB limit" in err
    assert "the largest packages: huge 2.5 KB" in err and "numpy 1.0 KB" in err and "alpha" in err
    assert err.index("huge") < err.index("numpy") < err.index("alpha 0.6 KB")  # largest first
    assert "runtime/Dockerfile" in err and "container image" in err
    assert aws["iam"].list_roles()["Roles"] == [] and aws["s3"].list_buckets()["Buckets"] == []
    assert aws["lambda"].list_layers()["Layers"] == []


def test_too_large_is_checked_over_all_layers_together(tmp_path, monkeypatch):
    """check_unzipped_size adds the function and every layer, and names packages across layers."""
    base = dep.LayerZip(tmp_path / "a.zip", "0" * 64, 1, 900, {}, {"numpy": 700, "dask": 200})
    extra = dep.LayerZip(tmp_path / "b.zip", "1" * 64, 1, 900, {}, {"scipy": 850, "six": 50}, "packages")
    monkeypatch.setattr(dep.layer, "LAYER_UNZIPPED_LIMIT", 2500)
    dep.check_unzipped_size([base, extra])
    monkeypatch.setattr(dep.layer, "LAYER_UNZIPPED_LIMIT", 1900)
    with pytest.raises(dep.DeployError, match=r"largest packages: scipy 0.8 KB, numpy 0.7 KB, dask 0.2 KB, six"):
        dep.check_unzipped_size([base, extra])


def test_package_sizes_of_a_layer_zip(tmp_path):
    path = td.make_layer_zip(tmp_path / "l.zip", extra={
        "python/numpy/core.so": "x" * 500,
        "python/numpy.libs/libopenblas.so": "x" * 300,
        "python/numpy-2.0.0.dist-info/METADATA": "Name: numpy\n",
        "python/six.py": "x" * 40,
        "python/_cffi_backend.cpython-311-x86_64-linux-gnu.so": "x" * 10,
    })
    layer = dep.inspect_layer_zip(path, PY, "x86_64")
    assert layer.packages["numpy"] == 800 + len("Name: numpy\n")
    assert layer.packages["six"] == 40 and layer.packages["cffi-backend"] == 10


# -- runtime/build_layer.py and runtime/Dockerfile -----------------------------------------------

RUNTIME = Path(dep.__file__).resolve().parents[2] / "runtime"


def test_build_layer_script_writes_package_layers_next_to_the_runtime_layer(pip, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_layer_script", RUNTIME / "build_layer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    output = tmp_path / "layer.zip"
    (tmp_path / "layer-packages-7.zip").write_bytes(b"stale")
    assert script.main(["-o", str(output), "--packages", "tabulate", "alpha"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.zip")) == ["layer-packages-1.zip", "layer.zip"]
    assert "python/lambda_worker/handler.py" in names_in(output)
    assert dists_in(tmp_path / "layer-packages-1.zip") == ["alpha", "tabulate"]
    assert "layer-packages-1.zip:" in capsys.readouterr().out
    assert script.main(["-o", str(output), "--packages", "no-such-thing"]) == 1
    assert "No matching distribution found for no-such-thing" in capsys.readouterr().err


def test_dockerfile_installs_what_the_layers_hold():
    text = (RUNTIME / "Dockerfile").read_text()
    default = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ARG PYTHON_VERSION="))
    assert default in dep.LAMBDA_PYTHONS and "FROM public.ecr.aws/lambda/python:${PYTHON_VERSION}" in text
    assert "-r /tmp/requirements.txt" in text and "COPY runtime/requirements.txt" in text
    assert "${PACKAGES}" in text and "cloudpickle==${CLOUDPICKLE_VERSION}" in text and "dask==${DASK_VERSION}" in text
    assert "COPY lambda_worker/ ${LAMBDA_TASK_ROOT}/lambda_worker/" in text
    assert f'CMD [ "{dep.HANDLER}" ]' in text
    for name in dep.function_environment(HOST, bucket="b", prefix="p"):
        assert name in text
    assert "MaximumRetryAttempts 0" in text


# -- the real pip, PyPI --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_package_layer_next_to_the_runtime_layer(tmp_path):
    """tabulate (pure Python) in a package layer; unzipped next to the runtime layer, both import."""
    runtime = dep.build_layer(tmp_path / "runtime.zip", out=lambda line: None)
    paths = dep.build_package_layers(["tabulate"], tmp_path / "work", out=lambda line: None)
    assert [p.name for p in paths] == ["packages-1.zip"]
    assert dists_in(paths[0]) == ["tabulate"]
    site = tmp_path / "opt"
    for path in [runtime, *paths]:
        with zipfile.ZipFile(path) as zf:
            zf.extractall(site)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import tabulate, numpy, lambda_worker.handler; "
         "print(tabulate.tabulate([[1, 2]]))", str(site / "python")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_pip_unknown_package(tmp_path):
    with pytest.raises(dep.DeployError, match="no-such-package-dask-wren-xyz"):
        dep.build_package_layers(["no-such-package-dask-wren-xyz"], tmp_path, out=lambda line: None)
