"""Keyed MACs (BLAKE2b) over what host and worker leave in storage for each other.

Whoever can write to the bucket must not be able to make a worker or the host unpickle bytes of
their choosing: every object carries a MAC under a key that only the host and the workers hold
(``DASK_WREN_SIGNING_KEY`` on the worker; the host's copy comes from ``dask_wren.signing``).
Each MAC covers the object's storage key as well as its bytes, so a signed object is valid only
under the key it was written to.  ``protocol`` applies these where objects are encoded and
decoded; nothing else calls them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

from lambda_worker.errors import IntegrityError

#: The environment variable that hands the key to a worker (hex).
KEY_VARIABLE = "DASK_WREN_SIGNING_KEY"
MAC_BYTES = 32
_KEY_BYTES = 32
#: Above this size a MAC hashes its data in ``_CHUNK``-byte pieces on threads (hashlib lets go of
#: the GIL), then MACs their digests: a 100 MB result costs wall time on one core less than once.
_PARALLEL_FROM = 8 << 20
_CHUNK = 4 << 20


class SigningKey:
    """A secret shared by a host and its workers.  ``id`` names it in messages (it reveals nothing)."""

    __slots__ = ("_secret", "id")

    def __init__(self, secret: bytes):
        if not 16 <= len(secret) <= 64:  # BLAKE2b takes keys of up to 64 bytes
            raise ValueError("a signing key has 16 to 64 bytes")
        self._secret = secret
        self.id = hashlib.sha256(b"dask-wren key id\0" + secret).hexdigest()[:12]

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(secrets.token_bytes(_KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, source: str) -> SigningKey:
        """The key from its hex form (``text()``); ``source`` says where it came from, for the error."""
        try:
            return cls(bytes.fromhex(text.strip()))
        except (ValueError, AttributeError):
            raise IntegrityError(
                f"{source} does not hold a dask-wren signing key (64 hex digits): run `dask-wren deploy` "
                "again to write the deployment's key there"
            ) from None

    @classmethod
    def from_environment(cls) -> SigningKey | None:
        text = os.environ.get(KEY_VARIABLE)
        return _environment_key(text) if text else None

    def text(self) -> str:
        return self._secret.hex()

    def __repr__(self) -> str:
        return f"<SigningKey {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.id)

    def mac(self, label: str, data: bytes | memoryview) -> bytes:
        """The MAC of ``data`` stored under ``label`` (its storage key, and the byte range if any).

        Keyed BLAKE2b: CPython's own code, with no per-call lookup of the algorithm (OpenSSL 3's
        HMAC fetches it on every call, under a lock that host threads contend for: 5-20 us a call
        here against 1 us).  Large data is hashed in pieces on threads (SHA-256, at hardware speed
        where the CPU has it) and the keyed hash covers their digests and the length."""
        h = hashlib.blake2b(key=self._secret, digest_size=MAC_BYTES)
        h.update(label.encode())
        h.update(b"\0")
        if len(data) < _PARALLEL_FROM:
            h.update(data)
            return h.digest()
        view = memoryview(data)
        pieces = [view[i : i + _CHUNK] for i in range(0, len(view), _CHUNK)]
        for digest in _threads().map(lambda piece: hashlib.sha256(piece).digest(), pieces):
            h.update(digest)
        h.update(len(view).to_bytes(8, "big"))
        return h.digest()

    def check(self, label: str, data: bytes | memoryview, mac: bytes | str | None, what: str) -> None:
        """Raise ``IntegrityError`` unless ``mac`` is ``data``'s MAC under ``label``."""
        expected = self.mac(label, data)
        given = bytes.fromhex(mac) if isinstance(mac, str) and len(mac) == 2 * MAC_BYTES else mac
        if not isinstance(given, bytes) or not hmac.compare_digest(expected, given):
            raise integrity_error(label, what, self)


def integrity_error(label: str, what: str, key: SigningKey | None) -> IntegrityError:
    """The one message for an object that does not verify (``label`` starts with its storage key)."""
    if key is None:
        held = "this process holds no dask-wren signing key"
    else:
        held = f"it does not verify with this side's signing key (id {key.id})"
    return IntegrityError(
        f"{label}: {what} is not signed by this deployment: {held}. Nothing in it was unpickled. Either it was "
        "changed in storage after it was written, or another host or deployment with a different key wrote it "
        "under this prefix. Give each deployment its own bucket or prefix; if no one else should write there, "
        "check who can write to the bucket, and run the job again"
    )


@functools.lru_cache(maxsize=4)
def _environment_key(text: str) -> SigningKey:
    """A worker reads its key for every invocation: parse each text once."""
    return SigningKey.from_text(text, f"${KEY_VARIABLE}")


@functools.cache
def _threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)), thread_name_prefix="dask-wren-mac")
