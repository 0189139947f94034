"""Run one Dask task on a worker: the function the scheduler maps over its remote tasks.

The payload is ``(task, inputs)``: a ``dask._task_spec`` node and the values of its dependencies,
some of which the handler has already read from storage (they travelled as references).
"""

from __future__ import annotations

from typing import Any


def run_task(payload: tuple[Any, dict[Any, Any]]) -> Any:
    task, inputs = payload
    return task(inputs)
