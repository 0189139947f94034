"""Object storage behind one small interface: a local directory or S3.

Both sides use it: the host writes payloads and reads results, the worker reads payloads and
writes results.  A store is rebuilt on the worker from its ``spec`` (plain JSON, no secrets).
"""

from __future__ import annotations

from typing import Any

from lambda_worker.storage.base import KeyNotFound, Storage, StorageDenied, StorageError

__all__ = ["KeyNotFound", "Storage", "StorageDenied", "StorageError", "storage_from_spec"]

_CACHE: dict[str, Storage] = {}


def storage_from_spec(spec: dict[str, Any]) -> Storage:
    """Build (or reuse, while warm) the store that a spec describes."""
    import json

    token = json.dumps(spec, sort_keys=True)
    store = _CACHE.get(token)
    if store is None:
        kind = spec.get("kind")
        if kind == "local":
            from lambda_worker.storage.local import LocalStorage

            store = LocalStorage.from_spec(spec)
        elif kind == "s3":
            from lambda_worker.storage.s3 import S3Storage

            store = S3Storage.from_spec(spec)
        else:
            raise StorageError(f"unknown storage kind {kind!r}; expected 'local' or 's3'")
        _CACHE[token] = store
    return store
