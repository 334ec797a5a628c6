"""The plans, as data: exactly the commands a deploy sends and the steps a destroy takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from itsacat.deploy import plan

S = plan.Settings(
    region="eu-west-1",
    stack_name="itsacat",
    bucket="my-cats",
    email="me@example.com",
    build_dir=Path("build"),
)


def test_deploy_sends_the_templates_parameters_and_names() -> None:
    steps = plan.deploy_steps(S, "111122223333")
    assert [s.kind for s in steps] == ["ensure-bucket", "run", "run", "run", "run"]
    assert steps[0].args == ("itsacat-artifacts-111122223333-eu-west-1", "eu-west-1")
    assert steps[1].shell() == (
        "aws cloudformation package --template-file build/template.json "
        "--s3-bucket itsacat-artifacts-111122223333-eu-west-1 --s3-prefix itsacat "
        "--output-template-file build/packaged.yaml --region eu-west-1"
    )
    assert steps[2].args == (
        "aws", "cloudformation", "deploy",
        "--template-file", "build/packaged.yaml",
        "--stack-name", "itsacat",
        "--capabilities", "CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND",
        "--no-fail-on-empty-changeset",
        "--parameter-overrides", "BucketName=my-cats", "NotificationEmail=me@example.com",
        "--region", "eu-west-1",
    )  # fmt: skip
    assert "--template-file build/api-template.json" in steps[3].shell()
    api = steps[4].args
    assert api[api.index("--stack-name") + 1] == "itsacat-api"
    assert "DataBucket=<output:BucketName>" in api
    assert "LayerArn=<output:ScientificLayerArn>" in api


def test_placeholders_are_filled_from_outputs() -> None:
    args = plan.deploy_steps(S, "1")[4].args
    filled = plan.fill(args, {"BucketName": "b", "ScientificLayerArn": "arn:layer:1"})
    assert "DataBucket=b" in filled and "LayerArn=arn:layer:1" in filled
    with pytest.raises(KeyError):
        plan.fill(args, {})


def test_destroy_empties_the_bucket_before_deleting_the_stacks() -> None:
    steps = plan.destroy_steps(S, "1", "my-cats", Path("/home/me/.itsacat/aws-itsacat.json"))
    kinds = [(s.kind, s.args[0]) for s in steps]
    assert kinds[:3] == [
        ("empty-bucket", "my-cats"),
        ("delete-stack", "itsacat-api"),
        ("delete-stack", "itsacat"),
    ]
    groups = [a for k, a in kinds if k == "delete-log-group"]
    assert groups == [
        "/aws/lambda/itsacat-launch",
        "/aws/lambda/itsacat-trainer",
        "/aws/lambda/itsacat-neuron",
        "/aws/lambda/itsacat-watchdog",
        "/aws/lambda/itsacat-api",
    ]
    # only this stack's code goes; the shared code bucket only once nothing else is in it
    assert ("empty-bucket", ("itsacat-artifacts-1-eu-west-1", "itsacat/")) in [
        (s.kind, s.args) for s in steps
    ]
    assert steps[-2].kind == "delete-bucket-if-empty"
    assert steps[-1].kind == "forget-target"


def test_destroy_without_a_bucket_skips_emptying() -> None:
    steps = plan.destroy_steps(S, "1", None, Path("t.json"))
    assert steps[0].kind == "delete-stack"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"region": "Europe"}, "does not look like an AWS region"),
        ({"stack_name": "My_Stack"}, "stack name"),
        ({"stack_name": "a" * 31}, "at most 30"),
        ({"bucket": "Bad_Bucket"}, "not a valid S3 bucket name"),
        ({"email": "nobody"}, "not an e-mail address"),
        ({"arch": "sparc"}, "x86_64 or arm64"),
    ],
)
def test_bad_settings_are_named(change: dict[str, str], message: str) -> None:
    fields = {**S.__dict__, **change}
    with pytest.raises(plan.PlanError, match=message):
        plan.validate(plan.Settings(**fields))


def test_every_step_prints_as_a_command() -> None:
    steps = plan.deploy_steps(S, "1") + plan.destroy_steps(S, "1", "b", Path("t.json"))
    assert all(s.shell().startswith(("aws ", "rm ")) for s in steps)
