"""Create a SAM template in the emulator the way a deploy creates it on AWS.

Three steps, as on AWS: package (the real `aws cloudformation package`, pointed at the
emulator, zips each local `CodeUri`/`ContentUri` and uploads it to a deployment bucket in the
emulator's S3, exactly as `itsacat deploy` does on AWS), translate (aws-sam-translator turns
the SAM template into plain CloudFormation, as the Serverless transform does), and create the
stack through the emulator's CloudFormation API. Resources and properties moto's
CloudFormation skips are then applied by `embedded.cfn_backfill`, so that the local resources
are the template's resources. Where each function's code package and layers landed in S3 is
recorded, and the local runtime runs exactly those.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedded import cfn_backfill
from itsacat.deploy.plan import package_argv

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
DEPLOYMENT_BUCKET = "itsacat-deployment"


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
    # function name -> {"bucket": ..., "key": ...}: its deployed code package
    code: dict[str, dict[str, str]] = field(default_factory=dict)
    # function name -> its layers' deployed content, in order
    layers: dict[str, list[dict[str, str]]] = field(default_factory=dict)
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
            "code": self.code,
            "layers": self.layers,
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


def aws_cli_package(template_path: Path, out: Path, emulator_url: str, prefix: str) -> Path:
    """Run the real `aws cloudformation package` against the emulator; the packaged template."""
    argv = list(package_argv(template_path, out, DEPLOYMENT_BUCKET, prefix, REGION))
    aws = Path(sys.executable).with_name("aws")
    argv[0] = str(aws) if aws.exists() else "aws"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=emulator_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DeployError(f"aws cloudformation package {template_path.name}: {reason[0]}")
    return out


_ARTIFACTS = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
    "AWS::Lambda::Function": "Code",
    "AWS::Lambda::LayerVersion": "Content",
}


def has_local_artifacts(template: dict[str, Any]) -> bool:
    """Whether `aws cloudformation package` has anything to upload (a local path where code
    goes); without any, it would only copy the template, so the second-long run is spared."""
    for resource in template.get("Resources", {}).values():
        kind, props = resource.get("Type", ""), resource.get("Properties", {})
        if kind == "AWS::Serverless::Function" and not {"CodeUri", "InlineCode"} & set(props):
            return True  # the CLI zips the template's own folder for it (Globals unread)
        value = props.get(_ARTIFACTS.get(kind, ""))
        if isinstance(value, str) and not value.startswith("s3://"):
            return True
    return False


def deployed_code(
    template: dict[str, Any], resources: dict[str, dict[str, str]]
) -> tuple[dict[str, dict[str, str]], dict[str, list[dict[str, str]]]]:
    """Function name -> its code's S3 location, and -> its layers' (from the translated
    template: `Code` of each function, `Content` of each layer version it refers to)."""
    code: dict[str, dict[str, str]] = {}
    layers: dict[str, list[dict[str, str]]] = {}
    body = template.get("Resources", {})
    for logical_id, resource in body.items():
        if resource.get("Type") != "AWS::Lambda::Function":
            continue
        name = resources.get(logical_id, {}).get("physical_id")
        props = resource.get("Properties", {})
        location = props.get("Code", {})
        if not name or "S3Bucket" not in location:
            continue
        code[name] = {"bucket": location["S3Bucket"], "key": location["S3Key"]}
        layers[name] = []
        for ref in props.get("Layers", []):
            target = body.get(ref.get("Ref", "")) if isinstance(ref, dict) else None
            content = (target or {}).get("Properties", {}).get("Content", {})
            if "S3Bucket" in content:
                layers[name].append({"bucket": content["S3Bucket"], "key": content["S3Key"]})
    return code, layers


def api_role_template(api: dict[str, Any]) -> dict[str, Any]:
    """What of the API's template (`itsacat.deploy.package.api_template`) the emulator can
    hold: its role, with the very policy the deployed API gets, and the log group that
    policy names. The function and its REST API are left out: the API runs under
    `chalice local`, and moto's CloudFormation cannot import a REST API from its body."""
    keep = {"ApiHandlerRole", "ApiLogGroup"}
    resources = {k: v for k, v in api["Resources"].items() if k in keep}
    if set(resources) != keep:
        raise DeployError(f"the API template lacks {sorted(keep - set(resources))}")
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "itsacat prediction API: its role (the embedded stack's part of it)",
        "Parameters": {"DataBucket": api["Parameters"]["DataBucket"]},
        "Resources": resources,
        "Outputs": {"ApiRoleArn": {"Value": {"Fn::GetAtt": ["ApiHandlerRole", "Arn"]}}},
    }


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
    clients: cfn_backfill.Clients,
    stack_name: str,
    template_path: Path,
    parameters: dict[str, str] | None = None,
    work_dir: Path | None = None,
) -> DeployedStack:
    """Package, translate and create `template_path` as `stack_name`; apply what moto skips.

    The packaged template is written into `work_dir` (default: beside the template)."""
    parameters = dict(parameters or {})
    s3 = clients.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=DEPLOYMENT_BUCKET)
    template = load_template(template_path)
    if has_local_artifacts(template):
        out = (work_dir or template_path.resolve().parent) / f"{stack_name}.packaged.yaml"
        template = load_template(
            aws_cli_package(template_path, out, clients.endpoint_url, stack_name)
        )
    translated = translate(template, parameters, stack_name, clients.client("iam"))
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
    context = cfn_backfill.Context(stack_name, translated, parameters, resources)
    not_emulated = cfn_backfill.apply(clients, context)
    code, layers = deployed_code(translated, resources)
    return DeployedStack(
        name=stack_name,
        template_path=str(template_path.resolve()),
        outputs={o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])},
        resources=resources,
        code=code,
        layers=layers,
        not_emulated=not_emulated,
        logging=logging_configs(context),
    )


def logging_configs(ctx: cfn_backfill.Context) -> dict[str, dict[str, str]]:
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
