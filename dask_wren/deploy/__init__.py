"""``dask-wren deploy`` / ``destroy``: the AWS side of the cloud button, set up idempotently.

The data flow: ``DeployOptions`` (what the user asked for, checked without AWS) -> ``resolve``
into a ``DeployConfig`` (account, region, names) -> the layers built and checked, still without
touching AWS (``layer``) -> the ``steps`` planned in order, each a ``Change`` -> ``run_steps``
applies each, or, for ``--dry-run``, only prints it: one path, so a dry run prints the plan a real
run carries out.  ``destroy`` goes the same way with ``DestroyOptions`` and the delete steps.

``deploy`` makes sure of, in order: the worker's IAM role and its one inline policy, the S3 bucket
(public access blocked, objects under the prefix expiring), the runtime layer and the layers of
the user's packages (or a container image, ``--image-uri``), the Lambda function, its async
invoke configuration (no Lambda retries: the host is the one retry authority), a reading of the
concurrency the function really has, and the settings file that makes ``default_executor()`` use it.

Modules: ``policies`` (the documents, pure), ``layer`` (build and checks; all that
``runtime/build_layer.py`` needs), ``options``, ``plan`` (``Change``, ``DeployState``,
``run_steps``), ``steps``, ``clients`` (AWS clients, ``DeployError``, user error messages) and
``settings_file``.  The names below are re-exported, so ``from dask_wren.deploy import X`` works.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dask_wren.deploy.clients import AwsClients, DeployError, resolve_region, user_error_message
from dask_wren.deploy.layer import (
    ARCHITECTURES,
    BOTOCORE_FLOOR,
    HANDLER,
    LAMBDA_PYTHONS,
    LAYER_UNZIPPED_LIMIT,
    Distribution,
    LayerZip,
    MiB,
    build_layer,
    build_package_layers,
    check_unzipped_size,
    format_size,
    function_zip,
    inspect_layer_zip,
    lambda_platforms,
    lambda_runtime,
    layer_constraints,
    layer_differences,
    layer_versions,
    package_layers_for,
    read_requirements,
    runtime_requirements,
    split_layers,
    user_requirements,
)
from dask_wren.deploy.options import (
    MAX_TIMEOUT,
    DeployConfig,
    DeployOptions,
    DestroyOptions,
    check_options,
    resolve,
    resolve_target,
)
from dask_wren.deploy.plan import Change, DeployState, bind, run_steps
from dask_wren.deploy.policies import (
    POLICY_NAME,
    event_invoke_config,
    function_settings,
    lifecycle_rule,
    public_access_block,
    settings_document,
    trust_policy,
    worker_policy,
)
from dask_wren.deploy.settings_file import flatten_settings, read_yaml
from dask_wren.deploy.steps import DEPLOY_STEPS, deploy_steps, destroy_steps, plan_concurrency
from dask_wren.deployment import function_environment, host_python, host_versions


def _prepare_layer(opts: DeployOptions, python: str, workdir: Path, out: Callable[[str], None]) -> LayerZip:
    """The runtime layer: ``--layer-zip`` or built with pip, then checked; notes where its versions differ."""
    if opts.layer_zip is not None:
        path = Path(opts.layer_zip)
    else:
        start = time.monotonic()
        path = build_layer(workdir / "layer.zip", python=python, arch=opts.arch, out=out)
        out(f"building layer: done in {time.monotonic() - start:.0f} s")
    layer = inspect_layer_zip(path, python, opts.arch)
    for note in layer_differences(layer):
        out(f"note: {note}")
    return layer


def _prepare_layers(
    opts: DeployOptions, python: str, workdir: Path, out: Callable[[str], None]
) -> tuple[LayerZip, list[LayerZip]]:
    """The runtime layer and the user's package layers, built and checked (size included), no AWS call."""
    layer = _prepare_layer(opts, python, workdir, out)
    packages: list[LayerZip] = []
    requirements = user_requirements(opts.requirements, opts.packages)
    if requirements:
        start = time.monotonic()
        paths = package_layers_for(requirements, layer, workdir / "packages", python=python, arch=opts.arch, out=out)
        packages = [inspect_layer_zip(p, python, opts.arch, runtime=False) for p in paths]
        out(f"building package layers: done in {time.monotonic() - start:.0f} s")
    check_unzipped_size([layer, *packages])
    return layer, packages


def deploy(opts: DeployOptions, out: Callable[[str], None] = print) -> list[Change]:
    """Make the deployment exist as ``opts`` describe it; print one line per resource."""
    check_options(opts)
    python = host_python()
    lambda_runtime(python)
    region = resolve_region(opts.region)
    aws = AwsClients.create(region, opts.endpoint_url)
    account, partition = aws.identity()
    cfg = resolve(opts, aws, account, partition)
    out(
        f"{'plan (dry run, nothing will change)' if opts.dry_run else 'deploying'}: function {cfg.function_name} "
        f"({f'image {cfg.image_uri}' if cfg.image_uri else cfg.runtime}, {cfg.arch}) in account {account}, "
        f"region {region}; storage s3://{cfg.bucket}/{cfg.prefix}/"
        + (f"; endpoint {cfg.endpoint_url}" if cfg.endpoint_url else "")
    )
    with tempfile.TemporaryDirectory(prefix="dask-wren-deploy-") as tmp:
        if cfg.image_uri:
            out(
                f"note: the image must hold this environment's Python {cfg.versions['python']}, cloudpickle "
                f"{cfg.versions['cloudpickle']} and dask {cfg.versions['dask']} (build it from runtime/Dockerfile "
                "with those build arguments): the function records them and the host checks them before invoking"
            )
            state = DeployState(layer=None, versions=dict(cfg.versions))
        else:
            # Built and checked (size limit, platform) before anything in AWS is touched.
            layer, packages = _prepare_layers(opts, python, Path(tmp), out)
            state = DeployState(layer=layer, versions=layer_versions(cfg.versions, layer), package_layers=packages)
        changes = run_steps(
            [bind(step, cfg, aws, state) for step in deploy_steps(state)], dry_run=opts.dry_run, out=out
        )
    if opts.dry_run:
        out("dry run: nothing was changed")
    else:
        out(f"done: dask_wren.default_executor() now runs on {cfg.function_name}; try `dask-wren test`")
    return changes


def destroy(opts: DestroyOptions, out: Callable[[str], None] = print) -> list[Change]:
    """Delete the function (its async invoke config first), its layers' versions and role; the bucket
    only with ``delete_bucket``."""
    if not opts.yes and not opts.dry_run:
        raise DeployError("destroy deletes the function, its layers and its role: pass --yes (or --dry-run to look)")
    if opts.function_name is not None:
        check_options(DeployOptions(function_name=opts.function_name))
    region = resolve_region(opts.region)
    aws = AwsClients.create(region, opts.endpoint_url)
    account, _ = aws.identity()
    target = resolve_target(opts, region, account)
    out(f"{'plan (dry run, nothing will change)' if opts.dry_run else 'destroying'}: function {target.function_name} "
        f"in account {account}, region {region}")
    changes = run_steps(destroy_steps(target, aws), dry_run=opts.dry_run, out=out)
    settings = read_yaml(target.config_file).get("wren") or {}
    if settings.get("backend") == "aws" and (settings.get("aws") or {}).get("function-name") == target.function_name:
        out(f"note: {target.config_file} still selects backend 'aws' for {target.function_name}; "
            "set wren.backend: local there (or redeploy)")
    if opts.dry_run:
        out("dry run: nothing was changed")
    return changes


__all__ = [
    "ARCHITECTURES",
    "BOTOCORE_FLOOR",
    "DEPLOY_STEPS",
    "HANDLER",
    "LAMBDA_PYTHONS",
    "LAYER_UNZIPPED_LIMIT",
    "MAX_TIMEOUT",
    "POLICY_NAME",
    "AwsClients",
    "Change",
    "DeployConfig",
    "DeployError",
    "DeployOptions",
    "DeployState",
    "DestroyOptions",
    "Distribution",
    "LayerZip",
    "MiB",
    "build_layer",
    "build_package_layers",
    "check_options",
    "check_unzipped_size",
    "deploy",
    "destroy",
    "event_invoke_config",
    "flatten_settings",
    "format_size",
    "function_environment",
    "function_settings",
    "function_zip",
    "host_python",
    "host_versions",
    "inspect_layer_zip",
    "lambda_platforms",
    "lambda_runtime",
    "layer_constraints",
    "lifecycle_rule",
    "package_layers_for",
    "plan_concurrency",
    "public_access_block",
    "read_requirements",
    "read_yaml",
    "run_steps",
    "runtime_requirements",
    "settings_document",
    "split_layers",
    "trust_policy",
    "user_error_message",
    "user_requirements",
    "worker_policy",
]
