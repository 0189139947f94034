"""Which signing key the host uses (``lambda_worker.signing`` has the MACs and the threat model's mechanics).

- local backend: this process's ``$DASK_WREN_SIGNING_KEY``, or, when it has none, this user's
  local key file (``local_key_path()``, created 0600 with a random key at first use), put into
  this process's environment so that what the host starts (its local workers, a child process
  loading a pickled future) holds the same key.  The file outlives the host, so another process
  of the same user (``dask-wren job``/``plot``, ``dask_wren.attach``) verifies a dead host's
  records; where it cannot be written (a read-only home), the key is this process's alone;
- AWS backend: ``wren.aws.signing-key``, which ``dask-wren deploy`` generated, set on the
  function and wrote into the settings file (created 0600).
A pickled future names its key by id only; where it is loaded, the key with that id is looked
up among this process's keys (``key_with_id``).
"""

from __future__ import annotations

import logging
import os
import threading

import dask.config

from dask_wren.config import Settings
from dask_wren.errors import ConfigError, IntegrityError
from lambda_worker.signing import KEY_VARIABLE, SigningKey

logger = logging.getLogger("dask_wren")
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
                key = _key_from_file(local_key_path())
                os.environ[KEY_VARIABLE] = key.text()
            _local.append(key)
        return _local[0]


def local_key_path() -> str:
    """This user's local signing key file: ``$XDG_CONFIG_HOME/dask-wren/local-signing-key``."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "dask-wren", "local-signing-key")


def _key_from_file(path: str) -> SigningKey:
    """The key in ``path``; made and published there first (atomically: concurrent first uses agree)."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        return _own_key(e)
    key = SigningKey.generate()
    temp = f"{path}.{os.getpid()}.{threading.get_ident()}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(key.text())
        try:
            os.link(temp, path)  # whole, or not at all
        except FileExistsError:
            key = _read_key(path)  # another process published its key first
        finally:
            os.unlink(temp)
    except OSError as e:
        return _own_key(e)
    return key


def _read_key(path: str) -> SigningKey:
    with open(path) as f:
        text = f.read()
    try:
        return SigningKey.from_text(text, path)
    except IntegrityError:
        raise ConfigError(f"{path} does not hold a dask-wren signing key: delete it (a new one is made)") from None


def _own_key(error: OSError) -> SigningKey:
    logger.debug("dask-wren: no local key file (%s): this process's key is its own", error)
    return SigningKey.generate()


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
