"""The PyWren seed snippet runs unchanged with one import swapped."""

import subprocess
import sys
import textwrap

import numpy as np


def test_seed_snippet_runs_unchanged(tmp_path):
    code = textwrap.dedent(
        """
        import dask_wren as pywren
        import numpy as np
        def addone(x): return x + 1
        wrenexec = pywren.default_executor()
        futures = wrenexec.map(addone, np.arange(10))
        print([f.result() for f in futures])
        """
    )
    env = {"DASK_WREN__STORAGE__LOCAL_DIR": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # exactly what the same loop prints when run locally (numpy 2 shows np.int64(1), ...)
    assert out.stdout.strip() == str([x + 1 for x in np.arange(10)])
