"""How dask-wren starts the Python processes it runs beside the host: one way, used everywhere.

Two kinds:
- *clean* interpreters (local workers, the stand-in's one-shot workers, the shipping probe that
  predicts what a worker can import) see installed packages only, as a Lambda runtime does: no
  ``PYTHONPATH``/``PYTHONSTARTUP``/``PYTHONHOME`` from the host, and (``-P``, Python 3.11+) not
  the directory they start in;
- *host-path* interpreters (the AWS invoker processes) import what the host imports.
"""

from __future__ import annotations

import os
import sys

#: Variables a clean interpreter does not inherit: each would show it more than a worker sees.
HOST_ONLY_VARIABLES = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")


def python_command(*args: str) -> list[str]:
    """``[this Python, -P, *args]``: the current directory never lands on ``sys.path``."""
    cmd = [sys.executable]
    if sys.version_info >= (3, 11):
        cmd.append("-P")
    return cmd + list(args)


def clean_environment() -> dict[str, str]:
    """This process's environment without the variables that change what Python imports."""
    return {k: v for k, v in os.environ.items() if k not in HOST_ONLY_VARIABLES}


def host_path_environment() -> dict[str, str]:
    """This process's environment with ``PYTHONPATH`` set to this process's ``sys.path``."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
