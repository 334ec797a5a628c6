"""The embedded stack runs what a deploy uploads, and only that.

`itsacat up` stages the functions as `itsacat deploy` does and packages the template with
the real `aws cloudformation package` into the emulator's S3. These tests open what the AWS
CLI uploaded (the packaged template and its zips), import every handler from its zip and
layer alone, and check that the workers run that very package, with the function's role's
credentials and nothing of the checkout or the project's virtualenv on their path.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from embedded import lambda_files
from embedded.deploy import load_template
from embedded.stack import StackInfo
from tests.support.stack import wait_for
from tests.support.stack_clients import client

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = "itsacat-fixtures"


def _packaged(info: StackInfo, stack: str) -> dict[str, Any]:
    """The template the AWS CLI wrote for `stack` (CodeUri/ContentUri now s3:// URIs)."""
    return load_template(Path(info.home) / "build" / stack / f"{stack}.packaged.yaml")


def _s3_zip(info: StackInfo, uri: str) -> zipfile.ZipFile:
    assert uri.startswith("s3://"), uri
    bucket, _, key = uri[len("s3://") :].partition("/")
    body = client(info, "s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return zipfile.ZipFile(io.BytesIO(body))


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: r["Properties"]
        for logical_id, r in template["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function"
    }


def test_every_functions_zip_holds_its_handler_at_the_root(embedded_stack: StackInfo) -> None:
    functions = _functions(_packaged(embedded_stack, "itsacat"))
    assert set(functions) == {
        "LaunchFunction",
        "TrainerFunction",
        "NeuronFunction",
        "WatchdogFunction",
    }
    for logical_id, props in functions.items():
        names = set(_s3_zip(embedded_stack, props["CodeUri"]).namelist())
        module = props["Handler"].rpartition(".")[0].replace(".", "/") + ".py"
        assert module in names, f"{logical_id}: {module} is not at the zip's root"
        assert "state/runs.py" in names
        # Only the code: not the layer, nor the template's folder.
        assert not any(n.startswith(("python/", "layer/", "functions/")) for n in names)
        assert sum(1 for n in names if n.endswith(".so")) == 0


def test_each_handler_imports_from_its_zip_and_the_layer_alone(
    embedded_stack: StackInfo, tmp_path: Path
) -> None:
    template = _packaged(embedded_stack, "itsacat")
    layer = tmp_path / "opt"
    content = template["Resources"]["ScientificLayer"]["Properties"]["ContentUri"]
    _s3_zip(embedded_stack, content).extractall(layer)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for logical_id, props in _functions(template).items():
        task = tmp_path / logical_id
        _s3_zip(embedded_stack, props["CodeUri"]).extractall(task)
        module, _, name = props["Handler"].rpartition(".")
        path = [
            str(task),
            str(layer / "python" / "lib" / version / "site-packages"),
            str(layer / "python"),
            str(lambda_files.runtime_packages()),
        ]
        code = (
            f"import sys; sys.path[:0] = {path!r}; import importlib; "
            f"m = importlib.import_module({module!r}); assert callable(getattr(m, {name!r})); "
            f"print(m.__file__)"
        )
        # -S: no site-packages (the project's virtualenv stays out); cwd: not the checkout.
        result = subprocess.run(
            [sys.executable, "-S", "-c", code],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{logical_id}: {result.stderr[-2000:]}"
        assert result.stdout.strip().startswith(str(task)), result.stdout


def test_workers_run_the_deployed_package_with_their_roles_credentials(
    embedded_stack: StackInfo,
) -> None:
    response = client(embedded_stack, "lambda").invoke(FunctionName=f"{FIXTURES}-echo")
    seen = json.loads(response["Payload"].read())
    # The code is the zip the AWS CLI uploaded, unpacked.
    uri = _functions(_packaged(embedded_stack, FIXTURES))["EchoFunction"]["CodeUri"]
    bucket, _, key = uri[len("s3://") :].partition("/")
    task_root = Path(seen["env"]["LAMBDA_TASK_ROOT"])
    assert seen["cwd"] == str(task_root)
    assert json.loads((task_root / ".complete").read_text()) == {"bucket": bucket, "key": key}
    # Nothing of the checkout or of the project's virtualenv is importable.
    for entry in seen["sys_path"]:
        assert not entry.startswith(str(ROOT)), entry
        assert not entry.startswith(sys.prefix), entry
        assert "site-packages" not in entry or entry.startswith(str(lambda_files.cache_dir()))
    # The credentials are those of the function's execution role, not the user's.
    env = seen["env"]
    assert env["AWS_ACCESS_KEY_ID"] != "testing"
    sts = boto3.client(
        "sts",
        endpoint_url=embedded_stack.emulator_url,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env["AWS_SESSION_TOKEN"],
    )
    identity = sts.get_caller_identity()["Arn"]
    role_arn = client(embedded_stack, "lambda").get_function_configuration(
        FunctionName=f"{FIXTURES}-echo"
    )["Role"]
    role_name = role_arn.rsplit("/", 1)[1]
    assert identity.endswith(f":assumed-role/{role_name}/{FIXTURES}-echo"), identity


@pytest.mark.parametrize(
    ("function", "module"),
    [("venv-only", "moto"), ("missing", "itsacat_fixture_module_that_does_not_exist")],
)
def test_a_module_the_package_lacks_fails_with_import_module_error(
    embedded_stack: StackInfo, function: str, module: str
) -> None:
    name = f"{FIXTURES}-{function}"
    response = client(embedded_stack, "lambda").invoke(FunctionName=name)
    error = json.loads(response["Payload"].read())
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert f"No module named '{module}'" in error["errorMessage"]
    logs = client(embedded_stack, "logs")

    def logged() -> bool:
        try:
            events = logs.filter_log_events(logGroupName=f"/aws/lambda/{name}")["events"]
        except logs.exceptions.ResourceNotFoundException:  # not shipped yet
            return False
        return any(
            "Runtime.ImportModuleError" in e["message"] and module in e["message"] for e in events
        )

    wait_for(logged, timeout_s=15)
