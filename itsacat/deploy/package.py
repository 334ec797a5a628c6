"""Stage what a deploy uploads and write the final templates into `build/`.

- `build/functions/`: the `trainer_lambdas` and `state` packages (the functions' CodeUri);
- `build/layer/`: the layer (see `layer`), or the directory given with `--layer-from`;
- `build/template.json`: templates/template.yaml with CodeUri/ContentUri pointing there and
  the chosen architecture;
- `build/api/`: a copy of chalice_app/ with `vendor/` holding the parts of `trainer_lambdas`
  and `state` the API imports; `chalice package` turns it into `build/api-package/`;
- `build/api-template.json`: Chalice's SAM template, made deployable next to the training
  stack: the bucket and layer version become parameters, the function gets a fixed name and
  a log group, and its role reads `models/` of that bucket and writes its own log group only;
  the function's reserved concurrency and the stage's throttling are parameters (`API_LIMITS`),
  the stage writes JSON access logs to a log group of the stack, and a throttled request
  gets a JSON 429 (`GATEWAY_RESPONSES`) that `itsacat serve` answers locally too.

The API is deployed as a CloudFormation stack of its own (`<stack>-api`) rather than with
`chalice deploy`: a stack can be linted and inspected offline, and deleted from any
machine, without Chalice's local record of what it deployed.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsacat.deploy import layer as layer_mod
from itsacat.deploy.plan import Settings

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_PACKAGES = ("trainer_lambdas", "state")
# What chalicelib imports from the project (Chalice puts vendor/ at the package root).
API_VENDOR = (
    "trainer_lambdas/__init__.py",
    "trainer_lambdas/nn",
    "state/__init__.py",
    "state/models.py",
    "state/errors.py",
    "state/clients.py",
)
API_STAGE = "prod"
API_LOG_RETENTION_DAYS = 14


@dataclass(frozen=True)
class ApiLimits:
    """How much the API takes at once; the API template's defaults and `itsacat serve`'s.

    `concurrency` is the function's reserved concurrency: the API can never hold more of
    the account's concurrent executions than this, so hostile traffic cannot starve the
    training's fan-out (which shares the account's limit, 1,000 by default), and a 21st
    request in flight is throttled. `rate` and `burst` are the stage's token bucket: `rate`
    requests a second on average, at most `burst` at once. By Little's law a rate of 20/s
    at an ordinary request's 0.1-0.5 s keeps 2-10 executions busy, inside the reservation,
    and a burst of 40 lets a page of clients arrive together; requests held for longer
    (slow picture servers, up to the 15 s fetch deadline) fill the reservation instead,
    and then the function's throttle answers.
    """

    concurrency: int = 20
    rate: float = 20.0
    burst: int = 40


API_LIMITS = ApiLimits()
# The answers of the gateway itself, in the API's error shape. A stage throttle is
# THROTTLED; a function that is throttled (its reserved concurrency is used up) makes the
# integration fail, which API Gateway would answer with a 500: it is answered with 429,
# as it is no fault of the server, and the access log's integration error tells the two
# apart (a broken integration would show there).
GATEWAY_RESPONSES = {
    "THROTTLED": {"error": "too many requests: slow down and retry", "code": "throttled"},
    "INTEGRATION_FAILURE": {"error": "the API is busy: retry in a moment", "code": "busy"},
}
# The stage's access log, one JSON object a request
# (https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-mapping-template-reference.html#context-variable-reference).
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "ip": "$context.identity.sourceIp",
    "requestTime": "$context.requestTime",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "integrationLatency": "$context.integrationLatency",
    "responseLatency": "$context.responseLatency",
    "integrationError": "$context.integration.error",
    "errorMessage": "$context.error.message",
}


def access_log_format(fields: dict[str, str] = ACCESS_LOG_FIELDS) -> str:
    """One line of JSON; every value quoted, as API Gateway substitutes text."""
    return "{" + ",".join(f'"{k}":"{v}"' for k, v in fields.items()) + "}"


def _gateway_response(status: int, body: dict[str, str]) -> dict[str, Any]:
    return {
        "StatusCode": status,
        "ResponseParameters": {
            "Headers": {
                "Cache-Control": "'no-store'",
                "X-Content-Type-Options": "'nosniff'",
                "Retry-After": "'1'",
            }
        },
        "ResponseTemplates": {"application/json": json.dumps(body)},
    }


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "vendor", "deployed", ".pytest_cache")


class PackageError(Exception):
    """Packaging failed; the message says where."""


@dataclass(frozen=True)
class Build:
    """Where the built pieces are."""

    layer: Path
    functions: Path
    template: Path
    api_template: Path


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=_IGNORE, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def package_functions(root: Path, dest: Path) -> Path:
    """A fresh copy of the handlers' packages: the functions' code."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in FUNCTION_PACKAGES:
        _copy(root / name, dest / name)
    return dest


def load_template(path: Path) -> dict[str, Any]:
    """Parse YAML or JSON, keeping short-form intrinsics (`!Ref` becomes `{"Ref": ...}`)."""
    from samtranslator.yaml_helper import yaml_parse

    parsed = yaml_parse(path.read_text())
    if not isinstance(parsed, dict) or "Resources" not in parsed:
        raise PackageError(f"{path} is not a CloudFormation template (no Resources)")
    return parsed


def final_template(
    source: dict[str, Any], functions_uri: str, layer_uri: str, arch: str
) -> dict[str, Any]:
    """The project's template pointed at the built code, for one architecture."""
    t = copy.deepcopy(source)
    function_globals = t.setdefault("Globals", {}).setdefault("Function", {})
    # `aws cloudformation package` uploads only the CodeUri a function itself names: it does
    # not read Globals, and zips the template's own folder for a function that has none.
    function_globals.pop("CodeUri", None)
    function_globals["Architectures"] = [arch]
    function_globals["Runtime"] = layer_mod.RUNTIME
    for resource in t["Resources"].values():
        props = resource.get("Properties", {})
        if resource.get("Type") == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = layer_uri
            props["CompatibleArchitectures"] = [arch]
            props["CompatibleRuntimes"] = [layer_mod.RUNTIME]
        elif resource.get("Type") == "AWS::Serverless::Function":
            props["CodeUri"] = functions_uri
            props.pop("Architectures", None)
    return t


def stage_template(source: Path, dest: Path, layer: Path, arch: str, root: Path = ROOT) -> Path:
    """Stage the functions' code beside `dest` (`functions/`) and write `dest`: the template
    at `source` pointed at that code and at `layer` (a folder or a zip), for `arch`.

    What `aws cloudformation package` then uploads, for `itsacat deploy` and `itsacat up` alike.
    """
    out = dest.parent
    functions = package_functions(root, out / "functions")
    template = final_template(
        load_template(source), os.path.relpath(functions, out), os.path.relpath(layer, out), arch
    )
    _write_json(dest, template)
    return dest


def stage_api(root: Path, dest: Path) -> Path:
    """chalice_app/ with vendor/ filled, ready for `chalice package`."""
    shutil.rmtree(dest, ignore_errors=True)
    _copy(root / "chalice_app", dest)
    for rel in API_VENDOR:
        _copy(root / rel, dest / "vendor" / rel)
    return dest


def chalice_package(api_dir: Path, out: Path, region: str) -> Path:
    """Run `chalice package` (offline: requirements.txt is empty); its sam.json."""
    shutil.rmtree(out, ignore_errors=True)
    chalice = Path(sys.executable).with_name("chalice")
    argv = [
        str(chalice) if chalice.exists() else "chalice",
        "--project-dir",
        str(api_dir),
        "package",
        "--stage",
        API_STAGE,
        str(out),
    ]
    env = {**os.environ, "AWS_DEFAULT_REGION": region}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackageError(f"chalice package failed: {result.stderr.strip() or result.stdout}")
    return out / "sam.json"


def _stage_policy(api_dir: Path) -> tuple[dict[str, Any], str]:
    """The stage's policy file and the placeholder bucket name its resources use."""
    config = json.loads((api_dir / ".chalice" / "config.json").read_text())
    stage = config["stages"][API_STAGE]
    policy = json.loads((api_dir / ".chalice" / stage["iam_policy_file"]).read_text())
    return policy, stage["environment_variables"]["ITSACAT_BUCKET"]


def api_template(
    sam: dict[str, Any], policy: dict[str, Any], placeholder_bucket: str, code_uri: str, arch: str
) -> dict[str, Any]:
    """Chalice's SAM template with the bucket and layer as parameters (see the docstring)."""
    t = copy.deepcopy(sam)
    t["Description"] = "itsacat prediction API (Chalice), reading models from the data bucket"
    t["Parameters"] = {
        "DataBucket": {"Type": "String", "Description": "The training stack's data bucket"},
        "LayerArn": {"Type": "String", "Description": "The training stack's layer version"},
        "ApiReservedConcurrency": {
            "Type": "Number",
            "Default": API_LIMITS.concurrency,
            "MinValue": 0,
            "Description": "Concurrent executions reserved for (and the most used by) the API "
            "function; 0: no reservation (for accounts whose limit leaves no room for one)",
        },
        "ApiThrottlingRateLimit": {
            "Type": "Number",
            "Default": API_LIMITS.rate,
            "MinValue": 1,
            "Description": "The stage's steady request rate, per second",
        },
        "ApiThrottlingBurstLimit": {
            "Type": "Number",
            "Default": API_LIMITS.burst,
            "MinValue": 1,
            "Description": "The stage's burst: requests accepted at once",
        },
    }
    t["Conditions"] = {
        "ReserveConcurrency": {"Fn::Not": [{"Fn::Equals": [{"Ref": "ApiReservedConcurrency"}, 0]}]}
    }
    resources = t["Resources"]
    fn = resources["APIHandler"]["Properties"]
    fn.update(
        FunctionName={"Ref": "AWS::StackName"},
        CodeUri=code_uri,
        Runtime=layer_mod.RUNTIME,
        Architectures=[arch],
        Layers=[{"Ref": "LayerArn"}],
        ReservedConcurrentExecutions={
            "Fn::If": [
                "ReserveConcurrency",
                {"Ref": "ApiReservedConcurrency"},
                {"Ref": "AWS::NoValue"},
            ]
        },
    )
    fn.setdefault("Environment", {}).setdefault("Variables", {})["ITSACAT_BUCKET"] = {
        "Ref": "DataBucket"
    }
    resources["APIHandler"]["DependsOn"] = "ApiLogGroup"
    resources["ApiLogGroup"] = {
        "Type": "AWS::Logs::LogGroup",
        "Properties": {
            "LogGroupName": {"Fn::Sub": "/aws/lambda/${AWS::StackName}"},
            "RetentionInDays": API_LOG_RETENTION_DAYS,
        },
    }
    resources["ApiAccessLogGroup"] = {
        "Type": "AWS::Logs::LogGroup",
        "Properties": {
            "LogGroupName": {"Fn::Sub": "/aws/apigateway/${AWS::StackName}-access"},
            "RetentionInDays": API_LOG_RETENTION_DAYS,
        },
    }
    api = resources["RestAPI"]["Properties"]
    api["MethodSettings"] = [
        {
            "ResourcePath": "/*",
            "HttpMethod": "*",
            "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
            "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        }
    ]
    # Needs the account's CloudWatch role for API Gateway (docs/deploy.md).
    api["AccessLogSetting"] = {
        "DestinationArn": {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]},
        "Format": access_log_format(),
    }
    api["GatewayResponses"] = {
        name: _gateway_response(429, body) for name, body in GATEWAY_RESPONSES.items()
    }
    bucket_arn = f"arn:aws:s3:::{placeholder_bucket}"
    statements = []
    for statement in policy["Statement"]:
        statement = copy.deepcopy(statement)
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        if all(a.startswith("logs:") for a in actions):
            # The group exists (ApiLogGroup): writing to it is all the function needs.
            statement["Action"] = ["logs:CreateLogStream", "logs:PutLogEvents"]
            statement["Resource"] = {"Fn::GetAtt": ["ApiLogGroup", "Arn"]}
        else:
            resources_ = statement["Resource"]
            resources_ = [resources_] if isinstance(resources_, str) else resources_
            statement["Resource"] = [
                {"Fn::Sub": "arn:${AWS::Partition}:s3:::${DataBucket}" + r[len(bucket_arn) :]}
                if r.startswith(bucket_arn)
                else r
                for r in resources_
            ]
        statements.append(statement)
    role = resources["ApiHandlerRole"]["Properties"]
    role["Policies"] = [
        {
            "PolicyName": "ApiHandlerRolePolicy",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        }
    ]
    outputs = t.setdefault("Outputs", {})
    outputs["ApiLogGroupName"] = {"Value": {"Ref": "ApiLogGroup"}}
    outputs["ApiAccessLogGroupName"] = {"Value": {"Ref": "ApiAccessLogGroup"}}
    return t


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def build(s: Settings, layer_from: Path | None = None, root: Path = ROOT) -> Build:
    """Build the layer (unless given), stage the code and write both final templates."""
    out = (root / s.build_dir).resolve()  # relative: to the project root
    out.mkdir(parents=True, exist_ok=True)
    if layer_from is not None:
        layer_dir = layer_from.resolve()
        if not layer_dir.is_dir():
            raise PackageError(f"--layer-from {layer_from}: not a directory")
    else:
        try:
            layer_dir = layer_mod.build(
                out / "layer",
                s.arch,
                root / "layers" / "requirements.txt",
                root / "constraints.txt",
            )
        except layer_mod.LayerError as e:
            raise PackageError(str(e)) from e
    functions = out / "functions"
    stage_template(root / "templates" / "template.yaml", out / s.template.name, layer_dir, s.arch)

    stage_api_template(out / s.api_template.name, s.region, s.arch, root)
    return Build(layer_dir, functions, out / s.template.name, out / s.api_template.name)


def stage_api_template(dest: Path, region: str, arch: str, root: Path = ROOT) -> Path:
    """Stage the API beside `dest` (`api/`, `api-package/` from `chalice package`) and write
    `dest`: its template, for `itsacat deploy` and `itsacat up` alike."""
    out = dest.parent
    api_dir = stage_api(root, out / "api")
    sam = json.loads(chalice_package(api_dir, out / "api-package", region).read_text())
    policy, placeholder = _stage_policy(api_dir)
    code_uri = os.path.relpath(out / "api-package" / "deployment.zip", out)
    _write_json(dest, api_template(sam, policy, placeholder, code_uri, arch))
    return dest


def lint(paths: Iterable[Path]) -> list[str]:
    """cfn-lint's findings on the templates (empty: clean)."""
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    argv = [str(cfn_lint) if cfn_lint.exists() else "cfn-lint", *map(str, paths)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return []
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
