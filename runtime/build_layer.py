"""Build the dask-wren runtime layer zip without deploying it (``dask-wren deploy`` builds it too).

    python runtime/build_layer.py                      # dask-wren-layer-py3.X-x86_64.zip
    python runtime/build_layer.py --arch arm64 -o layer.zip
    python runtime/build_layer.py --packages scipy --requirements my-requirements.txt
    dask-wren deploy --layer-zip layer.zip             # publish a layer built earlier

The layer is built with pip for Lambda's Linux (manylinux wheels, no Docker) for this
interpreter's Python minor, with cloudpickle pinned to this environment's version, and holds the
project's ``lambda_worker`` package.  The same files always give the same zip (and sha256).

With ``--packages`` / ``--requirements``, your packages are resolved together with the runtime's
(whose versions they cannot change) and written next to it as package layer zips
(``<output stem>-packages-1.zip``, ...), at most four, as ``dask-wren deploy --packages`` publishes
them.  Together they must stay under Lambda's 250 MB unzipped; beyond that, use a container image
(``runtime/Dockerfile``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dask_wren.deploy.layer import (
    DeployError,
    build_layer,
    check_unzipped_size,
    format_size,
    inspect_layer_zip,
    package_layers_for,
    user_requirements,
)


def main(argv: list[str] | None = None) -> int:
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64")
    parser.add_argument("-o", "--output", type=Path, help="zip to write (default: dask-wren-layer-py<ver>-<arch>.zip)")
    parser.add_argument(
        "--packages", nargs="+", action="extend", default=[], metavar="PKG", help="your packages, as pip specifiers"
    )
    parser.add_argument(
        "--requirements", type=Path, action="append", default=[], metavar="FILE", help="a pip requirements file"
    )
    args = parser.parse_args(argv)
    output = args.output or Path(f"dask-wren-layer-py{python}-{args.arch}.zip")
    start = time.monotonic()
    try:
        requirements = user_requirements(args.requirements, args.packages)
        build_layer(output, python=python, arch=args.arch)
        layer = inspect_layer_zip(output, python, args.arch)
        packages = []
        for stale in output.parent.glob(f"{output.stem}-packages-*.zip"):
            stale.unlink()  # from an earlier build with more package layers
        if requirements:
            with tempfile.TemporaryDirectory(prefix="dask-wren-packages-") as tmp:
                for number, path in enumerate(
                    package_layers_for(requirements, layer, Path(tmp), python=python, arch=args.arch), 1
                ):
                    dest = output.with_name(f"{output.stem}-packages-{number}.zip")
                    shutil.move(path, dest)
                    packages.append(inspect_layer_zip(dest, python, args.arch, runtime=False))
        check_unzipped_size([layer, *packages])
    except DeployError as e:
        print(f"build_layer: error: {e}", file=sys.stderr)
        return 1
    for built in (layer, *packages):
        print(
            f"{built.path}: {format_size(built.size)} zipped, {format_size(built.unzipped_size)} unzipped, "
            f"sha256 {built.sha256}"
        )
    print(f"built in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
