"""The storage interface every store implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from lambda_worker.errors import WrenError


class StorageError(WrenError, RuntimeError):
    """A storage request failed for a reason the user can act on (bucket, permissions, disk)."""


class StorageDenied(StorageError):
    """The store refused the request (403).  S3 also answers so for a missing key when the
    caller may not list the bucket, as a least-privilege Lambda role may not."""


class KeyNotFound(StorageError, KeyError):
    """The key does not exist (yet)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "key not found"


@runtime_checkable
class Storage(Protocol):
    """A flat key/value object store with prefix listing, as S3 offers."""

    def spec(self) -> dict[str, Any]:
        """A JSON description from which ``storage_from_spec`` rebuilds this store elsewhere."""

    def put(self, key: str, data: bytes) -> None:
        """Write an object atomically: readers see the old state or the whole new object."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write only if the key does not exist; return whether this call wrote it."""

    def get(self, key: str) -> bytes:
        """Read a whole object; raise KeyNotFound when missing."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Read ``length`` bytes from ``start`` (fewer at the end of the object)."""

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        """Yield ``(key, size)`` for every object whose key starts with ``prefix``, in key order;
        with ``start_after``, only keys that sort after it (S3's StartAfter)."""

    def exists(self, key: str) -> bool:
        """Whether the key exists."""

    def delete(self, keys: list[str]) -> None:
        """Delete these objects; missing ones are ignored."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""
