"""Stage what a deploy uploads and write the final templates into `build/`.

- `build/functions/`: the `trainer_lambdas` and `state` packages (the functions' CodeUri);
- `build/layer/`: the layer (see `layer`), or the directory given with `--layer-from`;
- `build/template.json`: templates/template.yaml with CodeUri/ContentUri pointing there and
  the chosen architecture;
- `build/api/`: a copy of chalice_app/ with `vendor/` holding the parts of `trainer_lambdas`
  and `state` the API imports; `chalice package` turns it into `build/api-package/`;
- `build/api-template.json`: Chalice's SAM template, made deployable next to the training
  stack: the bucket and layer version become parameters, the function gets a fixed name and
  a log group, and its role reads `models/` of that bucket and writes its own log group only.

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
    }
    resources = t["Resources"]
    fn = resources["APIHandler"]["Properties"]
    fn.update(
        FunctionName={"Ref": "AWS::StackName"},
        CodeUri=code_uri,
        Runtime=layer_mod.RUNTIME,
        Architectures=[arch],
        Layers=[{"Ref": "LayerArn"}],
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
    t.setdefault("Outputs", {})["ApiLogGroupName"] = {"Value": {"Ref": "ApiLogGroup"}}
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
