"""The settings file (``~/.config/dask/wren.yaml``) that points ``default_executor()`` at the deployment.

Deploy's last step merges the ``wren.*`` document into it (keys someone added stay) and writes it
atomically, readable by its owner only (mode 0600 from its creation: it holds the signing key,
``wren.aws.signing-key``, with which anyone could make the workers run their code); ``flatten_settings`` gives the ``dask.config.set`` keys ``dask-wren test`` reads.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dask_wren.deploy.clients import DeployError
from dask_wren.deploy.plan import Change

if TYPE_CHECKING:
    from dask_wren.deploy.clients import AwsClients
    from dask_wren.deploy.options import DeployConfig
    from dask_wren.deploy.plan import DeployState


def default_config_file() -> Path:
    """Where dask.config looks: ``$DASK_CONFIG`` or ``~/.config/dask``."""
    import dask.config

    return Path(dask.config.PATH) / "wren.yaml"


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """The settings file's mapping (``{}`` when there is none yet); a ``DeployError`` if it is not one."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DeployError(f"cannot read settings file {path}: {e}") from None
    if not isinstance(data, dict):
        raise DeployError(f"settings file {path} does not hold a YAML mapping; fix or move it")
    return data


def plan_settings_file(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    """Deploy's last step: the ``wren.*`` document merged into the file, with the concurrency just read."""
    path = cfg.config_file
    current = read_yaml(path)
    merged = _merge(current, cfg.settings_document(state.max_concurrency, state.signing_key))
    if merged == current:
        return Change(f"settings {path}", "unchanged")

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)  # a leftover would keep its own mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(yaml.safe_dump(merged, sort_keys=False, default_flow_style=False))
        os.replace(tmp, path)

    before, after = flatten_settings(current), flatten_settings(merged)
    changed = [k for k in after if before.get(k, _ABSENT) != after[k]]
    detail = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    if not path.exists():
        return Change(f"settings {path}", "create", "wren.* settings for backend aws", write)
    return Change(f"settings {path}", "update", detail, write)


_ABSENT = object()


def flatten_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'wren': {'aws': {'region': r}}}`` -> ``{'wren.aws.region': r}`` (dask.config.set keys)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_settings(value, name))
        else:
            out[name] = value
    return out
