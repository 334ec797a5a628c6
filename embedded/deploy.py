"""Create a SAM template in the emulator the way `sam deploy` would create it on AWS.

Three steps, as on AWS: package (zip each local `CodeUri`/`ContentUri` and upload it to
a deployment bucket, as `aws cloudformation package` does), translate (aws-sam-translator
turns the SAM template into plain CloudFormation, as the Serverless transform does), and
create the stack through the emulator's CloudFormation API. Resources and properties moto's
CloudFormation skips are then applied by `embedded.gaps`, so that the local resources are
the template's resources.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedded import gaps

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
DEPLOYMENT_BUCKET = "itsacat-deployment"

# Where a local path is a packaged artifact, per resource type (as `cloudformation package`).
_ARTIFACT_PROPERTIES = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}


class DeployError(Exception):
    """The template could not be created in the emulator; the message says why."""


@dataclass
class DeployedStack:
    """What a created stack consists of, as the runtime and the CLI need it."""

    name: str
    template_path: str
    outputs: dict[str, str]
    # logical id -> {"type": ..., "physical_id": ...}
    resources: dict[str, dict[str, str]]
    # function name -> local code directories (the function's CodeUri, when it exists)
    code_dirs: dict[str, list[str]] = field(default_factory=dict)
    # resources moto's CloudFormation skipped and nobody applied (should stay empty)
    not_emulated: list[str] = field(default_factory=list)
    # function name -> its LoggingConfig (moto does not keep it; the runtime applies it)
    logging: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "template_path": self.template_path,
            "outputs": self.outputs,
            "resources": self.resources,
            "code_dirs": self.code_dirs,
            "not_emulated": self.not_emulated,
            "logging": self.logging,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeployedStack:
        return cls(**data)


def load_template(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON template, keeping short-form intrinsics (`!Ref`, `!Sub`, ...)."""
    from samtranslator.yaml_helper import yaml_parse

    try:
        parsed = yaml_parse(path.read_text())
    except OSError as e:
        raise DeployError(f"cannot read template {path}: {e.strerror}") from e
    if not isinstance(parsed, dict) or "Resources" not in parsed:
        raise DeployError(f"{path} is not a CloudFormation template (no Resources)")
    return parsed


def zip_directory(directory: Path) -> bytes:
    """A deterministic zip of a directory (sorted, fixed timestamps, no caches)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if directory.is_dir():
            for path in sorted(directory.rglob("*")):
                if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                    continue
                info = zipfile.ZipInfo(str(path.relative_to(directory)), (1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
        else:
            # Not built yet (e.g. the layer, built by `make layer`): the local runtime does not
            # run the uploaded code, so a placeholder keeps the stack deployable.
            info = zipfile.ZipInfo("NOT_BUILT.txt", (1980, 1, 1, 0, 0, 0))
            archive.writestr(info, f"{directory} was not built when this stack was created.\n")
    return buffer.getvalue()


def package(template: dict[str, Any], template_dir: Path, s3: Any) -> dict[str, Any]:
    """Upload each local artifact and point the template at it; returns a new template."""
    packaged = copy.deepcopy(template)
    uploaded: dict[Path, dict[str, str]] = {}

    def upload(uri: Any) -> Any:
        if not isinstance(uri, str) or uri.startswith("s3://"):
            return uri
        directory = (template_dir / uri).resolve()
        if directory not in uploaded:
            body = zip_directory(directory)
            key = f"{hashlib.md5(body).hexdigest()}.zip"
            s3.put_object(Bucket=DEPLOYMENT_BUCKET, Key=key, Body=body)
            uploaded[directory] = {"Bucket": DEPLOYMENT_BUCKET, "Key": key}
        return {**uploaded[directory]}

    globals_function = packaged.get("Globals", {}).get("Function", {})
    if "CodeUri" in globals_function:
        globals_function["CodeUri"] = upload(globals_function["CodeUri"])
    for resource in packaged["Resources"].values():
        prop = _ARTIFACT_PROPERTIES.get(resource.get("Type", ""))
        properties = resource.get("Properties", {})
        if prop and prop in properties:
            properties[prop] = upload(properties[prop])
    return packaged


def local_code_dirs(
    template: dict[str, Any], template_dir: Path, parameters: dict[str, str], stack_name: str
) -> dict[str, list[str]]:
    """Function name -> its CodeUri directory, when that directory exists locally."""
    default_uri = template.get("Globals", {}).get("Function", {}).get("CodeUri")
    result: dict[str, list[str]] = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties", {})
        uri = properties.get("CodeUri", default_uri)
        name = gaps.resolve_static(
            properties.get("FunctionName", logical_id), parameters, stack_name
        )
        dirs = []
        if isinstance(uri, str) and (template_dir / uri).is_dir():
            dirs.append(str((template_dir / uri).resolve()))
        result[str(name)] = dirs
    return result


class _EmulatorPolicyLoader:
    """SAM's managed-policy lookup, answered by the emulator's IAM (it knows AWS's policies)."""

    def __init__(self, iam: Any) -> None:
        self.iam = iam
        self._map: dict[str, str] | None = None

    def load(self) -> dict[str, str]:
        if self._map is None:
            self._map = {}
            for page in self.iam.get_paginator("list_policies").paginate(Scope="AWS"):
                self._map.update((p["PolicyName"], p["Arn"]) for p in page["Policies"])
        return self._map


def translate(
    template: dict[str, Any], parameters: dict[str, str], stack_name: str, iam: Any
) -> dict[str, Any]:
    """Run the Serverless transform; a template without it is returned unchanged."""
    if "Transform" not in template:
        return copy.deepcopy(template)
    import boto3
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    values = {
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT_ID,
        "AWS::Partition": "aws",
        "AWS::StackName": stack_name,
        "AWS::URLSuffix": "amazonaws.com",
        **parameters,
    }
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    loader = _EmulatorPolicyLoader(iam)
    try:
        translated: dict[str, Any] = translator.translate(
            copy.deepcopy(template), values, get_managed_policy_map=loader.load
        )
        return translated
    except InvalidDocumentException as e:
        reasons = "; ".join(str(cause) for cause in e.causes)
        raise DeployError(f"invalid SAM template: {reasons}") from e


def create_stack(
    clients: gaps.Clients,
    stack_name: str,
    template_path: Path,
    parameters: dict[str, str] | None = None,
) -> DeployedStack:
    """Package, translate and create `template_path` as `stack_name`; apply what moto skips."""
    parameters = dict(parameters or {})
    template = load_template(template_path)
    template_dir = template_path.resolve().parent
    s3 = clients.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=DEPLOYMENT_BUCKET)
    translated = translate(
        package(template, template_dir, s3), parameters, stack_name, clients.client("iam")
    )
    cfn = clients.client("cloudformation")
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(translated),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    description = _wait_for_stack(cfn, stack_name)
    resources = {
        r["LogicalResourceId"]: {
            "type": r["ResourceType"],
            "physical_id": r.get("PhysicalResourceId", ""),
        }
        for r in cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        if "LogicalResourceId" in r  # moto lists the resources it skipped without one
    }
    context = gaps.Context(stack_name, translated, parameters, resources)
    not_emulated = gaps.apply(clients, context)
    return DeployedStack(
        name=stack_name,
        template_path=str(template_path.resolve()),
        outputs={o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])},
        resources=resources,
        code_dirs=local_code_dirs(template, template_dir, parameters, stack_name),
        not_emulated=not_emulated,
        logging=logging_configs(context),
    )


def logging_configs(ctx: gaps.Context) -> dict[str, dict[str, str]]:
    """Each function's `LoggingConfig` from the translated template, resolved, by name."""
    out = {}
    for logical_id, resource in ctx.template.get("Resources", {}).items():
        config = resource.get("Properties", {}).get("LoggingConfig")
        if resource.get("Type") == "AWS::Lambda::Function" and config:
            name = ctx.resources.get(logical_id, {}).get("physical_id")
            if name:
                out[name] = {k: str(v) for k, v in ctx.resolve(config).items()}
    return out


def _wait_for_stack(cfn: Any, stack_name: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        description: dict[str, Any] = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = description["StackStatus"]
        if status == "CREATE_COMPLETE":
            return description
        if not status.endswith("IN_PROGRESS"):
            events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
            reasons = [
                e.get("ResourceStatusReason") for e in events if "FAILED" in e["ResourceStatus"]
            ]
            raise DeployError(
                f"stack {stack_name} ended in {status}: {reasons or 'no reason given'}"
            )
        if time.monotonic() > deadline:
            raise DeployError(f"stack {stack_name} still {status} after {timeout_s:.0f} s")
        time.sleep(0.1)
