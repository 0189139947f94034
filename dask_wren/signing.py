"""Which signing key the host uses (``lambda_worker.signing`` has the MACs and the threat model's mechanics).

- local backend: this process's ``$DASK_WREN_SIGNING_KEY``, or, when it has none, a random key
  made at first use and put into this process's environment, so that what the host starts (its
  local workers, a child process loading a pickled future) holds the same key;
- AWS backend: ``wren.aws.signing-key``, which ``dask-wren deploy`` generated, set on the
  function and wrote into the settings file (created 0600).
A pickled future names its key by id only; where it is loaded, the key with that id is looked
up among this process's keys (``key_with_id``).
"""

from __future__ import annotations

import os
import threading

import dask.config

from dask_wren.config import Settings
from dask_wren.errors import ConfigError
from lambda_worker.signing import KEY_VARIABLE, SigningKey

_lock = threading.Lock()
_local: list[SigningKey] = []

#: What to do about a host that has no key for its AWS deployment.
NO_KEY_ADVICE = (
    "run `dask-wren deploy` (it keeps the function's key and writes it into the settings file), or copy "
    "wren.aws.signing-key from the settings file of the machine that deployed"
)


def local_key() -> SigningKey:
    """The local backend's key (see the module docstring)."""
    with _lock:
        if not _local:
            key = SigningKey.from_environment()
            if key is None:
                key = SigningKey.generate()
                os.environ[KEY_VARIABLE] = key.text()
            _local.append(key)
        return _local[0]


def host_key(settings: Settings) -> SigningKey:
    """The key an executor with ``settings`` signs its payloads with and checks its records with."""
    if settings.backend != "aws":
        return local_key()
    if not settings.signing_key:
        raise ConfigError(f"this host has no signing key for the Lambda function {settings.function_name!r} "
                          f"(wren.aws.signing-key is not set): {NO_KEY_ADVICE}")
    return SigningKey.from_text(settings.signing_key, "wren.aws.signing-key")


def key_with_id(key_id: str | None) -> SigningKey | None:
    """This process's key with id ``key_id`` (the local key, or the configured AWS key), if it has one."""
    candidates = [local_key()]
    configured = dask.config.get("wren.aws.signing-key", None)
    if configured:
        candidates.append(SigningKey.from_text(configured, "wren.aws.signing-key"))
    return next((k for k in candidates if k.id == key_id), None)
