"""What a deployed function records about the host that deployed it, and the check against it.

``dask-wren deploy`` writes these environment variables on the function and the AWS backend's
preflight reads them back; both take the names and the comparison from here, so they cannot drift.
Light on purpose (no boto3, no deploy machinery): the backend imports it at import time.
"""

from __future__ import annotations

from collections.abc import Mapping

from lambda_worker.signing import KEY_VARIABLE

#: The versions a pickle needs equal on both sides, by the environment variable that records each.
VERSION_VARIABLES: dict[str, str] = {
    "python": "DASK_WREN_PYTHON",
    "cloudpickle": "DASK_WREN_CLOUDPICKLE",
    "dask": "DASK_WREN_DASK",
    "protocol": "DASK_WREN_PROTOCOL",
}
#: Where the function may read and write (its role allows nothing else).
BUCKET_VARIABLE = "DASK_WREN_BUCKET"
PREFIX_VARIABLE = "DASK_WREN_PREFIX"


def host_python() -> str:
    """This interpreter's ``major.minor``: the runtime and the layer are built for it."""
    from lambda_worker.serialize import runtime_versions

    return runtime_versions()["python"]


def host_versions() -> dict[str, str]:
    """Versions of this interpreter that the worker must share (protocol, Python, cloudpickle, dask)."""
    import dask

    from lambda_worker.protocol import PROTOCOL_VERSION
    from lambda_worker.serialize import runtime_versions

    here = runtime_versions()
    return {
        "python": here["python"],
        "cloudpickle": here["cloudpickle"],
        "dask": dask.__version__,
        "protocol": str(PROTOCOL_VERSION),
    }


def function_environment(
    versions: Mapping[str, str], *, bucket: str | None = None, prefix: str | None = None, signing_key: str | None = None
) -> dict[str, str]:
    """What the function was deployed for; the invoker checks these against its host before invoking.

    The four ``DASK_WREN_{PYTHON,CLOUDPICKLE,DASK,PROTOCOL}`` are versions, compared with the host's;
    ``DASK_WREN_BUCKET`` and ``DASK_WREN_PREFIX`` are where the function may read and write (its
    role allows nothing else), compared with the executor's storage; ``DASK_WREN_SIGNING_KEY`` is
    the key the workers check payloads and sign records with, compared with the host's.
    """
    env = {variable: versions[name] for name, variable in VERSION_VARIABLES.items()}
    if bucket is not None:
        env[BUCKET_VARIABLE] = bucket
    if prefix is not None:
        env[PREFIX_VARIABLE] = prefix
    if signing_key is not None:
        env[KEY_VARIABLE] = signing_key
    return env


def version_mismatches(recorded: Mapping[str, str]) -> list[str]:
    """``'<name>: deployed <x>, here <y>'`` for each version the function records differently from this host."""
    here = host_versions()
    return [
        f"{name}: deployed {recorded.get(variable, 'unknown')}, here {here[name]}"
        for name, variable in VERSION_VARIABLES.items()
        if recorded.get(variable) != here[name]
    ]
