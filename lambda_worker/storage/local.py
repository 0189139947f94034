"""A local-directory object store: the embedded default.

Keys map to files under a root directory.  Writes go to a temporary file that is renamed into
place, so a reader never sees half an object; ``put_if_absent`` links the temporary file, which
fails if the key exists, so the first writer wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from lambda_worker.storage.base import KeyNotFound, StorageError


def default_root() -> str:
    """Per-user directory under the system temp dir."""
    try:
        user = str(os.getuid())
    except AttributeError:  # pragma: no cover - not POSIX
        user = os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"dask-wren-{user}")


class LocalStorage:
    def __init__(self, root: str | None = None):
        self.root = os.path.abspath(root or default_root())
        self._made: set[str] = set()
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the local storage directory {self.root!r}: {e}") from e

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LocalStorage:
        return cls(spec["root"])

    def spec(self) -> dict[str, Any]:
        return {"kind": "local", "root": self.root}

    def __repr__(self) -> str:
        return f"LocalStorage({self.root!r})"

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return os.path.join(self.root, key)

    def _tmp_for(self, path: str, data: bytes) -> str:
        parent = os.path.dirname(path)
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._tmp_for(path, data)
        os.replace(tmp, path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._tmp_for(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise KeyNotFound(key) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError:
            raise KeyNotFound(key) from None

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        base = self._path(prefix.rstrip("/")) if prefix.rstrip("/") else self.root
        # Fast path: a prefix ending in "/" names a directory; scan only it and below.
        if prefix.endswith("/") or os.path.isdir(base):
            start, match = base, None
        else:
            start, match = os.path.dirname(base), os.path.basename(base)
        found = sorted(self._walk(start, match, start_after))
        yield from found

    def _walk(self, directory: str, name_prefix: str | None, after: str | None) -> Iterator[tuple[str, int]]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(".tmp-"):
                continue
            if name_prefix is not None and not entry.name.startswith(name_prefix):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, None, after)
                continue
            key = os.path.relpath(entry.path, self.root).replace(os.sep, "/")
            if after is not None and key <= after:
                continue  # compared before stat: skipping is what makes start_after cheap
            try:
                size = entry.stat().st_size
            except FileNotFoundError:  # deleted between scan and stat
                continue
            yield key, size

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass

    def delete_prefix(self, prefix: str) -> int:
        keys = [k for k, _ in self.list(prefix)]
        self.delete(keys)
        # Remove the directory a "dir/" prefix names, and forget cached parents below it.
        if prefix.endswith("/"):
            shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)
            gone = self._path(prefix.rstrip("/"))
            self._made = {d for d in self._made if not (d == gone or d.startswith(gone + os.sep))}
        return len(keys)
