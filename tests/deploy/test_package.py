"""The dry run's build: the staged code, both final templates (cfn-lint clean), the API."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from itsacat.deploy import layer, package, plan

ROOT = Path(__file__).resolve().parents[2]


def test_every_template_the_dry_run_writes_lints_clean(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    _, built = dry_run
    assert package.lint([built.template, built.api_template]) == []


def test_lint_reports_findings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Resources": {"B": {"Type": "AWS::S3::Bucket", "Nope": 1}}}))
    assert package.lint([bad])


def test_functions_hold_the_handler_packages(dry_run: tuple[plan.Settings, package.Build]) -> None:
    _, built = dry_run
    assert (built.functions / "trainer_lambdas" / "launch.py").is_file()
    assert (built.functions / "trainer_lambdas" / "nn" / "default_parameters.json").is_file()
    assert (built.functions / "state" / "runs.py").is_file()
    assert not list(built.functions.rglob("__pycache__"))


def test_main_template_points_at_the_built_code(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    _, built = dry_run
    t = json.loads(built.template.read_text())
    function_globals = t["Globals"]["Function"]
    template_dir = built.template.parent
    # Each function names its code: `aws cloudformation package` does not read Globals.
    assert "CodeUri" not in function_globals
    functions = [r for r in t["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    assert len(functions) == 4
    for fn in functions:
        assert (template_dir / fn["Properties"]["CodeUri"]).resolve() == built.functions
    assert function_globals["Architectures"] == ["x86_64"]
    assert function_globals["Runtime"] == layer.RUNTIME
    layer_props = t["Resources"]["ScientificLayer"]["Properties"]
    assert (template_dir / layer_props["ContentUri"]).resolve() == built.layer
    assert "ScientificLayerArn" in t["Outputs"]


def test_arm64_rewrites_the_architectures() -> None:
    source = package.load_template(ROOT / "templates" / "template.yaml")
    t = package.final_template(source, "functions", "layer", "arm64")
    assert t["Globals"]["Function"]["Architectures"] == ["arm64"]
    assert t["Resources"]["ScientificLayer"]["Properties"]["CompatibleArchitectures"] == ["arm64"]
    # the source is untouched
    assert source["Resources"]["TrainerFunction"]["Properties"]["CodeUri"] == "../build/functions"
    assert t["Resources"]["TrainerFunction"]["Properties"]["CodeUri"] == "functions"


def test_api_template_takes_bucket_and_layer_from_the_training_stack(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    _, built = dry_run
    t = json.loads(built.api_template.read_text())
    required = {k for k, v in t["Parameters"].items() if "Default" not in v}
    assert required == {"DataBucket", "LayerArn"}  # the limits have defaults
    fn = t["Resources"]["APIHandler"]["Properties"]
    assert fn["Layers"] == [{"Ref": "LayerArn"}]
    assert fn["Environment"]["Variables"]["ITSACAT_BUCKET"] == {"Ref": "DataBucket"}
    assert fn["FunctionName"] == {"Ref": "AWS::StackName"}
    assert fn["Runtime"] == layer.RUNTIME
    assert "itsacat-prod" not in json.dumps(t)  # the config's placeholder bucket is gone
    code = built.api_template.parent / fn["CodeUri"]
    with zipfile.ZipFile(code) as archive:
        names = set(archive.namelist())
    # Chalice puts vendor/ at the package root, beside app.py and chalicelib/
    for name in ("app.py", "chalicelib/views.py", "trainer_lambdas/nn/network.py"):
        assert name in names
    for name in ("state/models.py", "state/errors.py", "state/clients.py"):
        assert name in names
    assert "state/runs.py" not in names  # the API reads models only
    # Production at the root, the staging candidate under /staging (blue/green).
    paths = t["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    for path in ("/", "/image", "/model", "/staging", "/staging/image", "/staging/model"):
        assert "get" in paths[path], path
    assert "post" in paths["/image"] and "post" in paths["/staging/image"]


def test_dry_run_command_prints_the_plan_offline(
    fake_layer: Path, tmp_path: Path, capsys: object, monkeypatch: object
) -> None:
    from itsacat.cli import main

    rc = main(
        [
            "deploy",
            "--dry-run",
            "--region",
            "eu-west-1",
            "--stack-name",
            "cats",
            "--layer-from",
            str(fake_layer),
            "--build-dir",
            str(tmp_path / "build"),
        ]
    )
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert rc == 0
    assert "cfn-lint   clean" in out
    assert "aws cloudformation deploy --template-file" in out
    assert "--stack-name cats-api" in out
    assert (tmp_path / "build" / "template.json").is_file()
    assert (tmp_path / "build" / "api-template.json").is_file()


def test_the_template_pins_one_blas_thread_for_every_function() -> None:
    """The thread count changes the bits of a product; Lambda's
    hosts differ, so the template fixes what it can (the kernel it cannot)."""
    from tests.support.template import template

    variables = template()["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["OPENBLAS_NUM_THREADS"] == "1"
    assert variables["OMP_NUM_THREADS"] == "1"
