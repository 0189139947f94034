"""The plan/apply core: each step plans a ``Change``, and ``run_steps`` applies it, or not.

A step looks its resource up and returns what it would do and a closure that does it; a dry run
goes through the very same planning and only skips the closures, so the plan it prints is the
plan a real run carries out.  ``DeployState`` carries what later steps need from earlier ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dask_wren.deploy.layer import LayerZip

_DONE = {"create": "created", "update": "updated", "delete": "deleted", "publish": "published"}


@dataclass
class Change:
    """One resource's planned action.  ``apply`` carries it out; ``None`` when there is nothing to do."""

    resource: str
    action: str  # create | update | publish | delete | unchanged | absent | kept | read | unknown
    detail: str = ""
    apply: Callable[[], str | None] | None = None

    def line(self, dry_run: bool, result: str | None = None) -> str:
        if self.action in _DONE:
            verb = f"would {self.action}" if dry_run else _DONE[self.action]
        else:
            verb = self.action
        detail = result or self.detail
        return f"{self.resource}: {verb}" + (f" ({detail})" if detail else "")


@dataclass
class DeployState:
    """What later steps need from earlier ones; predicted values during a dry run."""

    layer: LayerZip | None  # None for a container-image function
    versions: dict[str, str]
    package_layers: list[LayerZip] = field(default_factory=list)
    role_arn: str = ""
    role_exists: bool = False
    bucket_exists: bool = False
    layer_arn: str = ""
    package_layer_arns: list[str] = field(default_factory=list)
    function_exists: bool = False
    max_concurrency: int | None = None  # what the function really has, when known
    signing_key: str = ""  # hex: the function's own, kept on a re-deploy, else made by ``plan_function``

    @property
    def layer_arns(self) -> list[str]:
        """The function's ``Layers``, in order: the runtime layer, then the package layers."""
        return [self.layer_arn, *self.package_layer_arns]


def run_steps(
    steps: Iterable[Callable[[], Change]], *, dry_run: bool, out: Callable[[str], None]
) -> list[Change]:
    """Plan each step, print its line, apply it unless this is a dry run.  One code path for both."""
    changes = []
    for plan in steps:
        change = plan()
        result = None
        if change.apply is not None and not dry_run:
            result = change.apply()
        out(change.line(dry_run, result))
        changes.append(change)
    return changes


def bind(step: Callable[..., Change], *args: Any) -> Callable[[], Change]:
    """``step`` with its arguments, planned when ``run_steps`` comes to it (after the steps before it)."""
    return lambda: step(*args)
