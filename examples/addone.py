"""The PyWren hello world: add one to each of ten numbers, each call on a worker.

``dask_wren`` is imported as ``pywren`` to show that PyWren code runs unchanged; by default the
calls run in local worker processes that pass data through a local object store.

    python examples/addone.py [--n 10]
"""

import argparse

import numpy as np

import dask_wren as pywren


def addone(x):
    return x + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="how many numbers (default 10)")
    args = parser.parse_args()

    wrenexec = pywren.default_executor()
    futures = wrenexec.map(addone, np.arange(args.n))
    results = [f.result() for f in futures]
    print([int(r) for r in results])  # numpy 2 would print np.int64(1), ...; int() keeps it readable

    wrenexec.shutdown()  # optional: waits for the calls, then deletes the job's objects from storage
    return 0 if [int(r) for r in results] == list(range(1, args.n + 1)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
