"""The executor against the emulator and botocore's Stubber: the packaged template is created
in the emulator's CloudFormation; destroy removes everything; credentials fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from embedded import cfn_backfill
from embedded import deploy as embedded_deploy
from itsacat import target
from itsacat.cli import main
from itsacat.deploy import aws, package, plan

REGION = "us-east-1"


def _session() -> boto3.Session:
    return boto3.Session(region_name=REGION)


def _package_in_emulator(built: package.Build, bucket: str) -> Path:
    """`aws cloudformation package`, the real CLI, uploading into the emulator."""
    out = built.template.with_name("packaged.yaml")
    argv = [
        str(Path(sys.executable).with_name("aws")),
        *plan.deploy_steps(plan.Settings(REGION, "itsacat", build_dir=built.template.parent), "x")[
            1
        ].args[1:],
    ]
    argv[argv.index("--s3-bucket") + 1] = bucket
    subprocess.run(argv, check=True, capture_output=True, env=os.environ)
    return out


def test_packaged_template_is_created_in_the_emulator_and_destroy_removes_it(
    dry_run: tuple[plan.Settings, package.Build], emulator_env: str, capsys: object
) -> None:
    _, built = dry_run
    settings = plan.Settings(REGION, "deployed")
    cloud = aws.Aws(_session(), REGION, echo=lambda line: None)
    account = cloud.account()
    artifacts = settings.artifacts_bucket(account)
    cloud.execute([plan.Step("ensure-bucket", (artifacts, REGION), "code bucket")])
    cloud.execute([plan.Step("ensure-bucket", (artifacts, REGION), "again: no error")])

    packaged = _package_in_emulator(built, artifacts)
    text = packaged.read_text()
    assert f"s3://{artifacts}/itsacat/" in text  # CodeUri and ContentUri now point to S3
    assert "../" not in text

    stack = embedded_deploy.create_stack(
        cfn_backfill.Clients(emulator_env), "deployed", packaged, {"NotificationEmail": ""}
    )
    assert stack.outputs["TrainerFunctionName"] == "deployed-trainer"
    assert "ScientificLayerArn" in stack.outputs
    bucket = stack.outputs["BucketName"]

    # a versioned bucket with versions and delete markers, and the functions' log groups
    s3 = boto3.client("s3", region_name=REGION)
    for body in (b"1", b"2"):
        s3.put_object(Bucket=bucket, Key="training_input/datasets.h5", Body=body)
    s3.delete_object(Bucket=bucket, Key="training_input/datasets.h5")
    s3.put_object(Bucket=bucket, Key="models/production.json", Body=b"{}")
    versions = s3.list_object_versions(Bucket=bucket)
    assert len(versions["Versions"]) == 3 and len(versions["DeleteMarkers"]) == 1
    logs = boto3.client("logs", region_name=REGION)
    for group in settings.log_groups():
        if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
            logs.create_log_group(logGroupName=group)
    s3.put_object(Bucket=artifacts, Key="deployed/code.zip", Body=b"zip")
    record = target.aws_target_path("deployed")
    aws.write_target(record, aws.target_record(settings, stack.outputs, {}))

    rc = main(["destroy", "--yes", "--region", REGION, "--stack-name", "deployed"])
    assert rc == 0
    cfn = boto3.client("cloudformation", region_name=REGION)
    assert all(
        s["StackStatus"] == "DELETE_COMPLETE"
        for s in cfn.list_stacks()["StackSummaries"]
        if s["StackName"] == "deployed"
    )
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert bucket not in names
    assert artifacts in names  # still holds the first test's packaged code (itsacat/)
    assert not s3.list_object_versions(Bucket=artifacts, Prefix="deployed/").get("Versions")
    remaining = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
    assert not set(settings.log_groups()) & set(remaining)
    assert not record.exists()


def test_empty_bucket_takes_as_many_pages_as_needed(emulator_env: str) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="many")
    s3.put_bucket_versioning(Bucket="many", VersioningConfiguration={"Status": "Enabled"})
    for i in range(7):
        s3.put_object(Bucket="many", Key=f"k{i % 3}", Body=b"x")
    s3.delete_object(Bucket="many", Key="k0")  # and a delete marker
    lines: list[str] = []
    cloud = aws.Aws(_session(), REGION, echo=lines.append)
    cloud.page_size = 3  # as 1000 is for S3: more entries than one request takes
    cloud.execute(
        [
            plan.Step("empty-bucket", ("many", ""), "empty"),
            plan.Step("delete-bucket", ("many",), "delete"),
        ]
    )
    assert "deleted 8 object versions and delete markers" in "\n".join(lines)
    assert "many" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_target_file_makes_the_aws_target(
    emulator_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = plan.Settings("eu-west-1", "cats")
    outputs = {"BucketName": "cats-data", "RunsTableName": "cats-runs", "TopicArn": "arn:t"}
    aws.write_target(
        target.aws_target_path("cats"),
        aws.target_record(settings, outputs, {"EndpointURL": "https://x/api/"}),
    )
    monkeypatch.setenv("ITSACAT_TARGET", "aws")
    env = target.resolve()
    assert env["ITSACAT_BUCKET"] == "cats-data"
    assert env["RUNS_TABLE"] == "cats-runs"
    assert env["AWS_REGION"] == "eu-west-1"
    assert "AWS_ENDPOINT_URL" not in env  # never the emulator's endpoint
    monkeypatch.setenv("ITSACAT_STACK", "dogs")
    with pytest.raises(Exception, match="no deployed stack 'dogs'"):
        target.resolve()


def test_stack_outputs_and_rejected_credentials_with_the_stubber() -> None:
    # dummy credentials: without any, botocore's chain asks the EC2 metadata service
    # (169.254.169.254), which this tier's guard refuses
    session = boto3.Session(
        region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    cfn = session.client("cloudformation", region_name=REGION)
    sts = session.client("sts", region_name=REGION)
    clients = {"cloudformation": cfn, "sts": sts}

    class Session:
        def client(self, service: str, region_name: str) -> object:
            return clients[service]

    cloud = aws.Aws(Session(), REGION)
    with Stubber(cfn) as cfn_stub, Stubber(sts) as sts_stub:
        cfn_stub.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": "s",
                        "CreationTime": "2020-01-01",
                        "StackStatus": "CREATE_COMPLETE",
                        "Outputs": [{"OutputKey": "BucketName", "OutputValue": "b"}],
                    }
                ]
            },
            {"StackName": "s"},
        )
        cfn_stub.add_client_error(
            "describe_stacks", "ValidationError", "Stack with id gone does not exist"
        )
        sts_stub.add_client_error(
            "get_caller_identity", "ExpiredToken", "The security token included has expired"
        )
        assert cloud.stack_outputs("s") == {"BucketName": "b"}
        assert cloud.stack_outputs("gone") is None
        with pytest.raises(Exception, match=r"AWS rejected the credentials \(ExpiredToken"):
            cloud.account()


def test_missing_credentials_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for command in ("deploy", "destroy"):
        rc = main([command, "--yes", "--region", "eu-west-1", "--stack-name", "cats"])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("itsacat: error: no AWS credentials found: run `aws configure`")


def test_destroy_dry_run_lists_the_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["destroy", "--dry-run", "--region", "eu-west-1", "--stack-name", "cats"]) == 0
    out = capsys.readouterr().out
    assert "aws cloudformation delete-stack --stack-name cats-api" in out
    assert "aws logs delete-log-group --log-group-name /aws/lambda/cats-trainer" in out
