"""Configuration: dask.config under ``wren.*``, read once into a small typed ``Settings``.

Defaults ship in ``wren.yaml``; users override them in ``~/.config/dask/*.yaml``, with
``DASK_WREN__LOCAL__WORKERS=4``-style environment variables, with ``dask.config.set``, or with
keyword arguments to ``default_executor``.  Only ``Settings`` travels past this module.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import dask.config
import yaml

from dask_wren.errors import ConfigError

_DEFAULTS = os.path.join(os.path.dirname(__file__), "wren.yaml")
with open(_DEFAULTS) as _f:
    dask.config.update_defaults(yaml.safe_load(_f))


@dataclass(frozen=True)
class Settings:
    """Everything an executor needs, flat.  Field ``x`` comes from the config key in ``_KEYS``."""

    backend: str = "local"
    timeout: float = 300.0
    map_item_limit: int = 100_000
    chunksize: int = 1
    output_tail: int = 4096
    result_inline_limit: int = 1 << 20
    poll_interval: float = 0.05
    cancel_poll_interval: float = 2.0
    cleanup: bool = True
    dead_host_grace: float = 86400.0  # a dead host's job outlives it this long (seconds from its submission)
    retries: int = 2
    retry_backoff: float = 0.5
    retry_backoff_max: float = 30.0
    backups: bool = True
    backup_factor: float = 3.0
    progress: bool | str = "auto"  # progress bars in waits: True, False or "auto" (dask_wren.progress)
    budget: float | None = None  # dollars an executor (or a wren_get compute) may spend; None: no cap
    cost_region: str | None = None  # prices local jobs and records without a region (None: us-east-1)
    prices: dict[str, Any] | None = field(default=None, hash=False)  # merged over dask_wren/prices.yaml
    storage: str = "local"
    prefix: str = "dask-wren"
    storage_dir: str | None = None
    bucket: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    workers: int | None = None
    memory_mb: int = 2048
    function_name: str = "dask-wren"
    aws_region: str | None = None
    lambda_endpoint_url: str | None = None
    max_concurrency: int = 1000
    invoke_threads: int = 64
    invoker_processes: int = 2
    invoke_max_attempts: int = 20
    retry_mode: str = "standard"
    throttle_timeout: float = 600.0
    lost_call_grace: float = 60.0
    signing_key: str | None = field(default=None, repr=False)  # hex; written by ``dask-wren deploy`` (0600)

    @classmethod
    def from_config(cls, **overrides: Any) -> Settings:
        """Read ``wren.*`` from dask.config, then apply keyword overrides (field names)."""
        unknown = set(overrides) - set(_KEYS)
        if unknown:
            raise TypeError(
                f"unknown dask-wren setting(s) {sorted(unknown)}; valid ones: {sorted(_KEYS)}"
            )
        values = {name: dask.config.get(key) for name, key in _KEYS.items()}
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if self.backend not in ("local", "aws"):
            raise ConfigError(f"wren.backend must be 'local' or 'aws', not {self.backend!r}")
        if self.storage not in ("local", "s3"):
            raise ConfigError(f"wren.storage.kind must be 'local' or 's3', not {self.storage!r}")
        if self.backend == "aws" and self.storage != "s3":
            raise ConfigError(
                "the aws backend needs S3 storage: set wren.storage.kind to 's3' and wren.storage.bucket "
                "(`dask-wren deploy` writes both), or pass storage='s3', bucket=..."
            )
        if self.storage == "s3" and not self.bucket:
            raise ConfigError("S3 storage needs a bucket: set wren.storage.bucket (or bucket=...)")
        if not self.timeout or self.timeout <= 0:
            raise ConfigError(f"wren.timeout must be a positive number of seconds, not {self.timeout!r}")
        if self.chunksize < 1:
            raise ConfigError(f"chunksize must be at least 1, not {self.chunksize!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"wren.local.workers must be at least 1, not {self.workers!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"wren.retries must be a whole number >= 0, not {self.retries!r}")
        if self.retry_backoff < 0 or self.retry_backoff_max < self.retry_backoff:
            raise ConfigError(
                f"wren.retry-backoff ({self.retry_backoff!r}) must be >= 0 and at most wren.retry-backoff-max "
                f"({self.retry_backoff_max!r})"
            )
        if self.backup_factor <= 1:
            raise ConfigError(f"wren.backup-factor must be more than 1, not {self.backup_factor!r}")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or self.budget < 0):
            raise ConfigError(f"wren.budget must be a number of dollars >= 0, or null for no cap, not {self.budget!r}")
        if self.prices is not None and not isinstance(self.prices, dict):
            raise ConfigError(f"wren.prices must be a mapping of regions to prices (see dask_wren/prices.yaml), not {self.prices!r}")
        if self.progress not in (True, False, "auto"):
            raise ConfigError(f"wren.progress must be true, false or auto, not {self.progress!r}")
        if not isinstance(self.invoker_processes, int) or self.invoker_processes < 0:
            raise ConfigError(
                f"wren.aws.invoker-processes must be a whole number >= 0 (0: send invokes from threads in "
                f"this process), not {self.invoker_processes!r}"
            )


_KEYS = {
    "backend": "wren.backend",
    "timeout": "wren.timeout",
    "map_item_limit": "wren.map-item-limit",
    "chunksize": "wren.chunksize",
    "output_tail": "wren.output-tail",
    "result_inline_limit": "wren.result-inline-limit",
    "poll_interval": "wren.poll-interval",
    "cancel_poll_interval": "wren.cancel-poll-interval",
    "cleanup": "wren.cleanup",
    "dead_host_grace": "wren.dead-host-grace",
    "retries": "wren.retries",
    "retry_backoff": "wren.retry-backoff",
    "retry_backoff_max": "wren.retry-backoff-max",
    "backups": "wren.backups",
    "backup_factor": "wren.backup-factor",
    "progress": "wren.progress",
    "budget": "wren.budget",
    "cost_region": "wren.cost-region",
    "prices": "wren.prices",
    "storage": "wren.storage.kind",
    "prefix": "wren.storage.prefix",
    "storage_dir": "wren.storage.local-dir",
    "bucket": "wren.storage.bucket",
    "region": "wren.storage.region",
    "endpoint_url": "wren.storage.endpoint-url",
    "workers": "wren.local.workers",
    "memory_mb": "wren.local.memory-mb",
    "function_name": "wren.aws.function-name",
    "aws_region": "wren.aws.region",
    "lambda_endpoint_url": "wren.aws.lambda-endpoint-url",
    "max_concurrency": "wren.aws.max-concurrency",
    "invoke_threads": "wren.aws.invoke-threads",
    "invoker_processes": "wren.aws.invoker-processes",
    "invoke_max_attempts": "wren.aws.invoke-max-attempts",
    "retry_mode": "wren.aws.retry-mode",
    "throttle_timeout": "wren.aws.throttle-timeout",
    "lost_call_grace": "wren.aws.lost-call-grace",
    "signing_key": "wren.aws.signing-key",
}


#: The keyword names ``Settings.from_config`` takes.
SETTING_NAMES = frozenset(_KEYS)


def as_dask_config(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"bucket": b}`` (setting names) as ``{"wren.storage.bucket": b}`` (dask.config keys)."""
    return {_KEYS[name]: value for name, value in settings.items()}


def aws_settings(
    *, bucket: str, s3_url: str | None, region: str, function_name: str, signing_key: str,
    lambda_url: str | None = None, prefix: str | None = None,
) -> dict[str, Any]:
    """The settings that point an executor at an AWS deployment: S3 ``bucket`` at ``s3_url``,
    the Lambda function ``function_name`` (at ``lambda_url`` for an offline stand-in) and the
    key its payloads are signed with (hex)."""
    values: dict[str, Any] = {
        "backend": "aws",
        "storage": "s3",
        "bucket": bucket,
        "endpoint_url": s3_url,
        "region": region,
        "aws_region": region,
        "function_name": function_name,
        "signing_key": signing_key,
    }
    if lambda_url is not None:
        values["lambda_endpoint_url"] = lambda_url
    if prefix is not None:
        values["prefix"] = prefix
    return values


def make_storage(settings: Settings):
    """The store the settings describe."""
    if settings.storage == "s3":
        from lambda_worker.storage.s3 import S3Storage

        return S3Storage(settings.bucket, region=settings.region, endpoint_url=settings.endpoint_url)
    from lambda_worker.storage.local import LocalStorage

    return LocalStorage(settings.storage_dir)
