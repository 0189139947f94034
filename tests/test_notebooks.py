"""The examples run: every ``examples/*.ipynb`` top to bottom in a fresh kernel, and the
``dask.delayed`` DGEMM script with tiny sizes.  Both run in a temporary directory, with the local
object store in a temporary directory too, so nothing is written into the repository."""

import os
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_examples_have_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"bag_parameter_sweep.ipynb", "monte_carlo_pi.ipynb"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:  # committed without outputs
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has saved outputs"
    # The kernel is started by this process and inherits its environment.
    monkeypatch.setenv("DASK_WREN__STORAGE__LOCAL_DIR", str(tmp_path / "store"))
    monkeypatch.delenv("DASK_WREN__BACKEND", raising=False)
    monkeypatch.delenv("DASK_WREN__STORAGE__KIND", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    # One more cell, run last: the kernel must be this interpreter (ipykernel's "python3" spec
    # runs ``python``, which jupyter_client maps to sys.executable), or workers may lack dask_wren.
    nb.cells.append(nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.getcwd())"))
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    lines = "".join(o.get("text", "") for o in nb.cells[-1].outputs).splitlines()
    assert os.path.realpath(lines[0]) == os.path.realpath(sys.executable)
    assert os.path.realpath(lines[1]) == os.path.realpath(work)
    assert not list(work.iterdir()), "the notebook wrote files into its working directory"


def test_big_flops_delayed_script(tmp_path):
    env = {**os.environ, "DASK_WREN__STORAGE__LOCAL_DIR": str(tmp_path / "store")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "big_flops_delayed.py"), "--tasks", "3", "--size", "32", "--loops", "2",
         "--workers", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 dask.delayed tasks" in proc.stdout
    assert "aggregate GFLOP/s:" in proc.stdout
    assert "per-task GFLOP/s:" in proc.stdout
