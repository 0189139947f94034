"""Build the dask-wren runtime layer zip without deploying it (``dask-wren deploy`` builds it too).

    python runtime/build_layer.py                      # dask-wren-layer-py3.X-x86_64.zip
    python runtime/build_layer.py --arch arm64 -o layer.zip
    dask-wren deploy --layer-zip layer.zip             # publish a layer built earlier

The layer is built with pip for Lambda's Linux (manylinux wheels, no Docker) for this
interpreter's Python minor, with cloudpickle pinned to this environment's version, and holds the
project's ``lambda_worker`` package.  The same files always give the same zip (and sha256).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dask_wren.deploy import DeployError, build_layer, format_size, inspect_layer_zip


def main(argv: list[str] | None = None) -> int:
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64")
    parser.add_argument("-o", "--output", type=Path, help="zip to write (default: dask-wren-layer-py<ver>-<arch>.zip)")
    args = parser.parse_args(argv)
    output = args.output or Path(f"dask-wren-layer-py{python}-{args.arch}.zip")
    start = time.monotonic()
    try:
        build_layer(output, python=python, arch=args.arch)
        layer = inspect_layer_zip(output, python, args.arch)
    except DeployError as e:
        print(f"build_layer: error: {e}", file=sys.stderr)
        return 1
    print(
        f"{output}: {format_size(layer.size)} zipped, {format_size(layer.unzipped_size)} unzipped, sha256 {layer.sha256}, "
        f"built in {time.monotonic() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
