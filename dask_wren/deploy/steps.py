"""The steps of ``deploy`` and ``destroy``: one per AWS resource, each returning a ``Change``.

Deploy's run in ``DEPLOY_STEPS`` order (the runtime layer's step followed by one per package
layer); destroy's delete in the reverse order of dependence.  What each compares against comes
from ``policies``; how a ``Change`` is applied (or only printed, in a dry run) is ``plan``'s.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from dask_wren.deploy.clients import AwsClients, DeployError, client_error, error_code
from dask_wren.deploy.layer import LayerZip, MiB, format_size, function_zip
from dask_wren.deploy.options import DeployConfig, DestroyTarget
from dask_wren.deploy.plan import Change, DeployState, bind
from dask_wren.deploy.policies import (
    LIFECYCLE_RULE_ID,
    POLICY_NAME,
    event_invoke_config,
    function_settings,
    lifecycle_rule,
    public_access_block,
    trust_policy,
)
from dask_wren.deploy.settings_file import plan_settings_file
from lambda_worker.signing import KEY_VARIABLE, SigningKey

DIRECT_UPLOAD_LIMIT = 50 * MiB  # larger zips must be published from S3 (a Lambda limit)
ROLE_RETRY_ATTEMPTS = 12  # create_function while a new role propagates through IAM: ~1 min
ROLE_RETRY_DELAY = 5.0


def _canonical(doc: Any) -> Any:
    """A policy document compared by meaning: single-item lists are scalars, lists unordered."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            return doc
    if isinstance(doc, dict):
        return {k: _canonical(v) for k, v in doc.items()}
    if isinstance(doc, list):
        items = [_canonical(v) for v in doc]
        return items[0] if len(items) == 1 else sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return doc


def plan_role(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    iam, name = aws.iam, cfg.role_name
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except client_error() as e:
        if error_code(e) != "NoSuchEntity":
            raise
        state.role_arn, state.role_exists = cfg.default_role_arn, False

        def create() -> None:
            state.role_exists = True
            state.role_arn = iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(trust_policy()),
                Description=f"dask-wren worker role for Lambda function {cfg.function_name}",
                Tags=[{"Key": "dask-wren", "Value": cfg.function_name}],
            )["Role"]["Arn"]

        return Change(f"role {name}", "create", apply=create)
    state.role_arn, state.role_exists = role["Arn"], True
    if _canonical(role.get("AssumeRolePolicyDocument")) == _canonical(trust_policy()):
        return Change(f"role {name}", "unchanged")

    def update() -> None:
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust_policy()))

    return Change(f"role {name}", "update", "trust policy", update)


def plan_role_policy(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    iam, resource = aws.iam, f"role policy {cfg.role_name}/{POLICY_NAME}"
    wanted = cfg.worker_policy()
    current = None
    if state.role_exists:
        try:
            current = iam.get_role_policy(RoleName=cfg.role_name, PolicyName=POLICY_NAME)["PolicyDocument"]
        except client_error() as e:
            if error_code(e) != "NoSuchEntity":
                raise
    if current is not None and _canonical(current) == _canonical(wanted):
        return Change(resource, "unchanged")

    def put() -> None:
        iam.put_role_policy(RoleName=cfg.role_name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(wanted))

    return Change(resource, "create" if current is None else "update", f"s3://{cfg.bucket}/{cfg.prefix}/*", put)


def _role_exists(aws: AwsClients, name: str) -> bool:
    try:
        aws.iam.get_role(RoleName=name)
        return True
    except client_error() as e:
        if error_code(e) != "NoSuchEntity":
            raise
        return False


def plan_bucket(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    s3, bucket = aws.s3, cfg.bucket
    try:
        s3.head_bucket(Bucket=bucket)
    except client_error() as e:
        code = error_code(e)
        if code in ("403", "AccessDenied", "Forbidden"):
            raise DeployError(
                f"bucket {bucket} exists but this identity may not use it: another account owns it (bucket names "
                "are global: choose another --bucket), or you lack s3:ListBucket on it"
            ) from None
        where = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        if code in ("301", "PermanentRedirect") or (code == "400" and where and where != cfg.region):
            raise DeployError(
                f"bucket {bucket} is in region {where}, not {cfg.region}: pass --region {where} or another --bucket"
            ) from None
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
        state.bucket_exists = False

        def create() -> None:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if cfg.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": cfg.region}
            s3.create_bucket(**kwargs)
            state.bucket_exists = True

        return Change(f"bucket {bucket}", "create", cfg.region, create)
    state.bucket_exists = True
    location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
    location = {"EU": "eu-west-1"}.get(location, location)
    if location != cfg.region:
        raise DeployError(
            f"bucket {bucket} is in region {location}, not {cfg.region}: pass --region {location} or another --bucket"
        )
    return Change(f"bucket {bucket}", "unchanged")


def plan_public_access(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    s3, resource, wanted = aws.s3, f"bucket {cfg.bucket} public access block", public_access_block()
    current = None
    if state.bucket_exists:
        try:
            current = s3.get_public_access_block(Bucket=cfg.bucket)["PublicAccessBlockConfiguration"]
        except client_error() as e:
            if error_code(e) != "NoSuchPublicAccessBlockConfiguration":
                raise
    if current == wanted:
        return Change(resource, "unchanged")

    def put() -> None:
        s3.put_public_access_block(Bucket=cfg.bucket, PublicAccessBlockConfiguration=wanted)

    return Change(resource, "create" if current is None else "update", "all public access blocked", put)


def plan_lifecycle(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    s3, resource = aws.s3, f"bucket {cfg.bucket} lifecycle rule {LIFECYCLE_RULE_ID}"
    wanted = lifecycle_rule(cfg.prefix, cfg.expire_days)
    rules: list[dict[str, Any]] = []
    if state.bucket_exists:
        try:
            rules = s3.get_bucket_lifecycle_configuration(Bucket=cfg.bucket)["Rules"]
        except client_error() as e:
            if error_code(e) != "NoSuchLifecycleConfiguration":
                raise
    ours = next((r for r in rules if r.get("ID") == LIFECYCLE_RULE_ID), None)
    if ours is not None and {k: ours.get(k) for k in wanted} == wanted and not ours.get("Transitions"):
        return Change(resource, "unchanged")
    others = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID]

    def put() -> None:
        s3.put_bucket_lifecycle_configuration(Bucket=cfg.bucket, LifecycleConfiguration={"Rules": [*others, wanted]})

    detail = f"expire {cfg.prefix}/ after {cfg.expire_days} days"
    return Change(resource, "create" if ours is None else "update", detail, put)


def plan_layer(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    """The runtime layer (the handler and its packages): published when its sha256 is new."""

    def record(arn: str) -> None:
        state.layer_arn = arn

    assert state.layer is not None, "no runtime layer for a container-image function"
    return _plan_layer_version(cfg, aws, cfg.layer_name, state.layer, record)


def plan_package_layer(cfg: DeployConfig, aws: AwsClients, state: DeployState, *, number: int) -> Change:
    """The ``number``-th layer of the user's packages (1-based), idempotent like the runtime layer."""
    while len(state.package_layer_arns) < len(state.package_layers):
        state.package_layer_arns.append("")

    def record(arn: str) -> None:
        state.package_layer_arns[number - 1] = arn

    return _plan_layer_version(cfg, aws, cfg.package_layer_name(number), state.package_layers[number - 1], record)


def _plan_layer_version(
    cfg: DeployConfig, aws: AwsClients, layer_name: str, layer: LayerZip, record: Callable[[str], None]
) -> Change:
    lam, resource = aws.lambda_, f"layer {layer_name}"
    description = layer.description(cfg.python, cfg.arch)
    versions: list[dict[str, Any]] = []
    try:
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=layer_name):
            versions += page.get("LayerVersions", [])
    except client_error() as e:
        if error_code(e) != "ResourceNotFoundException":
            raise
    latest = max(versions, key=lambda v: v["Version"], default=None)
    sizes = f"{format_size(layer.size)} zipped, {format_size(layer.unzipped_size)} unzipped"
    if latest is not None and latest.get("Description") == description:
        record(latest["LayerVersionArn"])
        return Change(resource, "unchanged", f"version {latest['Version']}, sha256 {layer.sha256[:12]}, {sizes}")
    number = (latest["Version"] if latest else 0) + 1
    record(f"{cfg.layer_arn_of(layer_name)}:{number}")

    def publish() -> str:
        kwargs: dict[str, Any] = {
            "LayerName": layer_name,
            "Description": description,
            "CompatibleRuntimes": [cfg.runtime],
            "CompatibleArchitectures": [cfg.arch],
        }
        via = "direct upload"
        if layer.size <= DIRECT_UPLOAD_LIMIT:
            published = lam.publish_layer_version(Content={"ZipFile": layer.path.read_bytes()}, **kwargs)
        else:
            key = f"{cfg.prefix}/_deploy/{layer_name}-{layer.sha256}.zip"
            aws.s3.upload_file(str(layer.path), cfg.bucket, key)
            try:
                published = lam.publish_layer_version(Content={"S3Bucket": cfg.bucket, "S3Key": key}, **kwargs)
            finally:
                aws.s3.delete_object(Bucket=cfg.bucket, Key=key)
            via = f"through s3://{cfg.bucket}/{key}"
        record(published["LayerVersionArn"])
        return f"version {published['Version']}, sha256 {layer.sha256[:12]}, {sizes}, {via}"

    return Change(resource, "publish", f"version {number}, sha256 {layer.sha256[:12]}, {sizes}", publish)


def _retry_while_role_propagates(call: Callable[[], Any], role: str, sleep: Callable[[float], None] = time.sleep) -> Any:
    """A role created seconds ago may not be assumable by Lambda yet: retry, boundedly."""
    for attempt in range(1, ROLE_RETRY_ATTEMPTS + 1):
        try:
            return call()
        except client_error() as e:
            message = str(e.response.get("Error", {}).get("Message", ""))
            if error_code(e) != "InvalidParameterValueException" or "cannot be assumed" not in message:
                raise
            if attempt == ROLE_RETRY_ATTEMPTS:
                waited = ROLE_RETRY_DELAY * (ROLE_RETRY_ATTEMPTS - 1)
                raise DeployError(
                    f"Lambda still cannot assume role {role} after {waited:.0f} s (IAM changes take a while to "
                    "propagate): run `dask-wren deploy` again in a minute"
                ) from None
            sleep(ROLE_RETRY_DELAY)
    raise AssertionError("unreachable")


def _wait(lam: Any, waiter: str, name: str) -> None:
    lam.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})


def plan_function(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    lam, name, resource = aws.lambda_, cfg.function_name, f"function {cfg.function_name}"
    versions = state.versions
    code = function_zip()
    code_sha = base64.b64encode(hashlib.sha256(code).digest()).decode()
    try:
        current = lam.get_function_configuration(FunctionName=name)
    except client_error() as e:
        if error_code(e) != "ResourceNotFoundException":
            raise
        current = None
    # The signing key is made once: a re-deploy keeps the function's, so hosts that have it keep working.
    kept = ((current or {}).get("Environment") or {}).get("Variables", {}).get(KEY_VARIABLE)
    state.signing_key = kept or SigningKey.generate().text()
    wanted = function_settings(cfg, state.role_arn, state.layer_arns, versions, state.signing_key)
    image, package_type = cfg.image_uri, "Image" if cfg.image_uri else "Zip"
    summary = f"{f'image {image}' if image else cfg.runtime}, {cfg.arch}, {cfg.memory} MB, {cfg.timeout} s"
    if len(wanted.get("Layers", [])) > 1:
        summary += f", {len(wanted['Layers'])} layers"
    state.function_exists = current is not None
    if current is None:

        def create() -> None:
            _retry_while_role_propagates(
                lambda: lam.create_function(
                    FunctionName=name,
                    Code={"ImageUri": image} if image else {"ZipFile": code},
                    Architectures=[cfg.arch],
                    PackageType=package_type,
                    Publish=False,
                    Tags={"dask-wren": "worker"},
                    **wanted,
                ),
                cfg.role_name,
            )
            _wait(lam, "function_active_v2", name)
            state.function_exists = True

        return Change(resource, "create", summary, create)

    if current.get("PackageType", "Zip") != package_type:
        has, wants = ("a container-image", "a zip") if package_type == "Zip" else ("a zip", "a container-image")
        raise DeployError(
            f"function {name} exists as {has} function, and Lambda cannot turn it into {wants} one: "
            f"`dask-wren destroy --function-name {name} --yes` first, or choose another --function-name"
        )
    # Keep environment variables someone added by hand; ours win.
    env = dict((current.get("Environment") or {}).get("Variables") or {})
    env.update(wanted["Environment"]["Variables"])
    wanted["Environment"] = {"Variables": env}
    have = {
        "Runtime": current.get("Runtime"),
        "Handler": current.get("Handler"),
        "Role": current.get("Role"),
        "MemorySize": current.get("MemorySize"),
        "Timeout": current.get("Timeout"),
        "Layers": [layer["Arn"] for layer in current.get("Layers") or []],
        "Environment": {"Variables": (current.get("Environment") or {}).get("Variables") or {}},
        "Description": current.get("Description", ""),
    }
    config_diff = [k for k in wanted if wanted[k] != have[k]]
    code_diff = []
    if image:
        # A tag pushed again is not seen here: deploy a new tag (or a digest) to update the code.
        if lam.get_function(FunctionName=name).get("Code", {}).get("ImageUri") != image:
            code_diff.append("ImageUri")
    elif current.get("CodeSha256") != code_sha:
        code_diff.append("code")
    if (current.get("Architectures") or ["x86_64"]) != [cfg.arch]:
        code_diff.append("Architectures")
    if not config_diff and not code_diff:
        return Change(resource, "unchanged", summary)

    def update() -> None:
        _wait(lam, "function_updated_v2", name)
        if code_diff:
            new_code: dict[str, Any] = {"ImageUri": image} if image else {"ZipFile": code}
            lam.update_function_code(FunctionName=name, Architectures=[cfg.arch], **new_code)
            _wait(lam, "function_updated_v2", name)
        if config_diff:
            _retry_while_role_propagates(
                lambda: lam.update_function_configuration(FunctionName=name, **wanted), cfg.role_name
            )
            _wait(lam, "function_updated_v2", name)

    return Change(resource, "update", ", ".join(code_diff + config_diff), update)


def plan_event_invoke_config(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    """The function's async invoke configuration: no Lambda retries, events no older than the host waits.

    After the function step: while planning the creation of a function, there is nothing to read
    yet, so it is planned as ``create``.
    """
    lam, name, resource = aws.lambda_, cfg.function_name, f"async invoke config {cfg.function_name}"
    wanted = event_invoke_config(cfg.event_age)
    detail = f"MaximumRetryAttempts {wanted['MaximumRetryAttempts']}, MaximumEventAgeInSeconds {wanted['MaximumEventAgeInSeconds']}"
    current = None
    if state.function_exists:
        try:
            current = lam.get_function_event_invoke_config(FunctionName=name)
        except client_error() as e:
            if error_code(e) != "ResourceNotFoundException":
                raise
    if current is None:

        def put() -> None:
            lam.put_function_event_invoke_config(FunctionName=name, **wanted)

        return Change(resource, "create", detail, put)
    changed = [f"{k} {current.get(k)} -> {v}" for k, v in wanted.items() if current.get(k) != v]
    if not changed:
        return Change(resource, "unchanged", detail)

    def update() -> None:
        # update_ keeps what it is not given (a failure destination someone set up); put_ would drop it.
        lam.update_function_event_invoke_config(FunctionName=name, **wanted)

    return Change(resource, "update", ", ".join(changed), update)


def plan_concurrency(cfg: DeployConfig, aws: AwsClients, state: DeployState) -> Change:
    """Read the concurrency the function really has, for ``wren.aws.max-concurrency`` (changes nothing).

    Its reserved concurrency if it has one, else the account's unreserved concurrency (the pool
    every function without a reservation shares).  When neither can be read, nothing is written.
    """
    lam, name, resource = aws.lambda_, cfg.function_name, f"concurrency {cfg.function_name}"
    reserved = None
    if state.function_exists:
        try:
            reserved = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        except client_error() as e:
            if error_code(e) != "ResourceNotFoundException":
                raise
    if reserved is not None:
        reserved = int(reserved)
        if reserved < 1:
            state.max_concurrency = None
            return Change(
                resource,
                "read",
                f"reserved concurrency {reserved}: the function is throttled entirely and cannot run; "
                "wren.aws.max-concurrency not written",
            )
        state.max_concurrency = reserved
        return Change(resource, "read", f"{reserved} reserved for the function: wren.aws.max-concurrency {reserved}")
    try:
        limit = lam.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"]
    except (client_error(), KeyError) as e:
        state.max_concurrency = None
        why = error_code(e) if hasattr(e, "response") else repr(e)
        message = str(getattr(e, "response", {}).get("Error", {}).get("Message", "")).strip()
        if message and "<" not in message:  # an HTML error page (a server without the route) says nothing more
            why += f": {message.splitlines()[0][:200]}"
        return Change(
            resource,
            "unknown",
            f"no reserved concurrency, and GetAccountSettings is not available here ({why}); "
            "wren.aws.max-concurrency not written",
        )
    state.max_concurrency = int(limit)
    return Change(
        resource,
        "read",
        f"no reservation; the account's unreserved concurrency is {limit}: wren.aws.max-concurrency {limit}",
    )


Step = Callable[[DeployConfig, AwsClients, DeployState], Change]

#: In order; ``plan_layer`` stands for the runtime layer and then each package layer (``deploy_steps``).
DEPLOY_STEPS: tuple[Step, ...] = (
    plan_role,
    plan_role_policy,
    plan_bucket,
    plan_public_access,
    plan_lifecycle,
    plan_layer,
    plan_function,
    plan_event_invoke_config,
    plan_concurrency,
    plan_settings_file,
)


def deploy_steps(state: DeployState) -> list[Step]:
    """``DEPLOY_STEPS`` with one step per package layer after the runtime layer's."""
    steps: list[Step] = []
    for step in DEPLOY_STEPS:
        if step is plan_layer:
            if state.layer is None:  # a container-image function: the image holds the runtime
                continue
            steps.append(step)
            steps += [functools.partial(plan_package_layer, number=n) for n in range(1, len(state.package_layers) + 1)]
        else:
            steps.append(step)
    return steps


def plan_delete_event_invoke_config(t: DestroyTarget, aws: AwsClients) -> Change:
    lam, resource = aws.lambda_, f"async invoke config {t.function_name}"
    try:
        lam.get_function_event_invoke_config(FunctionName=t.function_name)
    except client_error() as e:
        if error_code(e) != "ResourceNotFoundException":  # no function, or no configuration
            raise
        return Change(resource, "absent")

    def delete() -> None:
        lam.delete_function_event_invoke_config(FunctionName=t.function_name)

    return Change(resource, "delete", apply=delete)


def plan_delete_function(t: DestroyTarget, aws: AwsClients) -> Change:
    lam, resource = aws.lambda_, f"function {t.function_name}"
    try:
        lam.get_function_configuration(FunctionName=t.function_name)
    except client_error() as e:
        if error_code(e) != "ResourceNotFoundException":
            raise
        return Change(resource, "absent")

    def delete() -> None:
        lam.delete_function(FunctionName=t.function_name)

    return Change(resource, "delete", apply=delete)


def plan_delete_layers(t: DestroyTarget, aws: AwsClients, layer_name: str | None = None) -> Change:
    """Every version of the runtime layer (or of ``layer_name``, a package layer)."""
    layer_name = layer_name or t.layer_name
    lam, resource = aws.lambda_, f"layer {layer_name}"
    numbers: list[int] = []
    try:
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=layer_name):
            numbers += [v["Version"] for v in page.get("LayerVersions", [])]
    except client_error() as e:
        if error_code(e) != "ResourceNotFoundException":
            raise
    if not numbers:
        return Change(resource, "absent")

    def delete() -> None:
        for n in numbers:
            lam.delete_layer_version(LayerName=layer_name, VersionNumber=n)

    return Change(resource, "delete", f"{len(numbers)} version{'s' if len(numbers) != 1 else ''}", delete)


def package_layer_names(t: DestroyTarget, aws: AwsClients) -> list[str]:
    """The function's package layers that exist (``{function}-packages-N``), in order."""
    pattern = re.compile(re.escape(t.function_name) + r"-packages-(\d+)")
    found: dict[int, str] = {}
    for page in aws.lambda_.get_paginator("list_layers").paginate():
        for layer in page.get("Layers", []):
            m = pattern.fullmatch(layer.get("LayerName", ""))
            if m:
                found[int(m.group(1))] = layer["LayerName"]
    return [found[n] for n in sorted(found)]


def plan_delete_role(t: DestroyTarget, aws: AwsClients) -> Change:
    iam, resource = aws.iam, f"role {t.role_name}"
    if not _role_exists(aws, t.role_name):
        return Change(resource, "absent")
    inline = [n for page in iam.get_paginator("list_role_policies").paginate(RoleName=t.role_name) for n in page["PolicyNames"]]
    attached = [
        p["PolicyArn"]
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=t.role_name)
        for p in page["AttachedPolicies"]
    ]

    def delete() -> None:
        for name in inline:
            iam.delete_role_policy(RoleName=t.role_name, PolicyName=name)
        for arn in attached:
            iam.detach_role_policy(RoleName=t.role_name, PolicyArn=arn)
        iam.delete_role(RoleName=t.role_name)

    detail = f"and its polic{'ies' if len(inline) + len(attached) != 1 else 'y'} {', '.join(inline + attached)}"
    return Change(resource, "delete", detail if inline or attached else "", delete)


def plan_delete_bucket(t: DestroyTarget, aws: AwsClients) -> Change:
    s3, resource = aws.s3, f"bucket {t.bucket}"
    try:
        s3.head_bucket(Bucket=t.bucket)
    except client_error() as e:
        if error_code(e) in ("404", "NoSuchBucket", "NotFound"):
            return Change(resource, "absent")
        raise
    if not t.delete_bucket:
        return Change(resource, "kept", "pass --delete-bucket to delete it and everything in it")

    def delete() -> None:
        for batch in _bucket_contents(s3, t.bucket):
            s3.delete_objects(Bucket=t.bucket, Delete={"Objects": batch, "Quiet": True})
        s3.delete_bucket(Bucket=t.bucket)

    return Change(resource, "delete", "emptied first", delete)


def _bucket_contents(s3: Any, bucket: str) -> Iterator[list[dict[str, str]]]:
    """Batches of up to 1,000 object versions (and delete markers), then any plain objects left."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        items = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for i in range(0, len(items), 1000):
            yield items[i : i + 1000]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        items = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if items:
            yield items


def destroy_steps(t: DestroyTarget, aws: AwsClients) -> list[Callable[[], Change]]:
    """Destroy's steps, in order: what depends on the function goes first, the bucket last.

    The package layers are the ones that exist when this is called.
    """
    return [
        bind(plan_delete_event_invoke_config, t, aws),
        bind(plan_delete_function, t, aws),
        bind(plan_delete_layers, t, aws),
        *(bind(plan_delete_layers, t, aws, name) for name in package_layer_names(t, aws)),
        bind(plan_delete_role, t, aws),
        bind(plan_delete_bucket, t, aws),
    ]
