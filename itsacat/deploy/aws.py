"""Execute deploy and destroy plans against an AWS account.

`run` steps are command lines for the AWS CLI installed in the project's virtualenv; the
other steps are API operations done here with boto3, through one injected session, so that
tests run them against the emulator. Credential problems become one clear `UserError` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from itsacat.deploy import plan
from itsacat.deploy.package import ROOT
from itsacat.errors import UserError

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class Aws:
    """One account and region, reached through a boto3 session."""

    page_size = 1000  # S3 lists and deletes at most this many versions per request

    def __init__(self, session: Any, region: str, echo: Echo = _stderr) -> None:
        self.session = session
        self.region = region
        self.echo = echo

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=self.region)

    def account(self) -> str:
        """The caller's account id; a `UserError` saying what is wrong with the credentials."""
        try:
            return str(self.client("sts").get_caller_identity()["Account"])
        except NoCredentialsError:
            raise UserError(
                "no AWS credentials found: run `aws configure` (or set AWS_PROFILE, or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and try again"
            ) from None
        except NoRegionError:
            raise UserError("no AWS region: pass --region or set AWS_DEFAULT_REGION") from None
        except ClientError as e:
            message = e.response.get("Error", {}).get("Message", "")
            raise UserError(f"AWS rejected the credentials ({_code(e)}: {message})") from None
        except BotoCoreError as e:
            raise UserError(f"cannot check the AWS credentials: {e}") from None

    def stack_outputs(self, name: str) -> dict[str, str] | None:
        """A stack's outputs; None when there is no such stack."""
        try:
            stacks = self.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
        except ClientError as e:
            if _code(e) == "ValidationError" and "does not exist" in str(e):
                return None
            raise
        return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}

    # ------------------------------------------------------------------ executing a plan

    def execute(self, steps: list[plan.Step], main_stack: str | None = None) -> None:
        """Run the steps in order; `<output:...>` placeholders come from `main_stack`."""
        outputs: dict[str, str] | None = None
        for step in steps:
            self.echo(f"itsacat: {step.title}")
            args = step.args
            if any(plan.OUTPUT.search(a) for a in args):
                if outputs is None:
                    outputs = (self.stack_outputs(main_stack) if main_stack else None) or {}
                try:
                    args = plan.fill(args, outputs)
                except KeyError as e:
                    raise UserError(f"stack {main_stack} has no output {e}") from None
            getattr(self, "_" + step.kind.replace("-", "_"))(*args)

    def _run(self, *argv: str) -> None:
        program = Path(sys.executable).with_name(argv[0])
        full = [str(program) if program.exists() else argv[0], *argv[1:]]
        self.echo("  $ " + plan.Step("run", argv, "").shell())
        result = subprocess.run(full, cwd=ROOT, check=False)
        if result.returncode != 0:
            raise UserError(f"`{' '.join(argv[:3])}` failed (exit {result.returncode})")

    def _ensure_bucket(self, bucket: str, region: str) -> None:
        s3 = self.client("s3")
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            s3.create_bucket(**kwargs)
        except ClientError as e:
            if _code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
            if _code(e) == "BucketAlreadyExists":
                raise UserError(f"bucket {bucket} belongs to another account") from None
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )

    def _empty_bucket(self, bucket: str, prefix: str = "") -> None:
        """Delete every object version and delete marker (under `prefix`)."""
        s3 = self.client("s3")
        deleted = 0
        try:
            # Always the first page, until there is none: markers into a listing whose entries
            # were just deleted are not reliable. A page holds at most 1000 entries, which is
            # also delete_objects' limit.
            while True:
                page = s3.list_object_versions(Bucket=bucket, Prefix=prefix, MaxKeys=self.page_size)
                batch = [
                    {"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ][: self.page_size]
                if not batch:
                    break
                out = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                if out.get("Errors"):
                    first = out["Errors"][0]
                    raise UserError(
                        f"cannot delete s3://{bucket}/{first['Key']}: {first['Message']}"
                    )
                deleted += len(batch)
        except ClientError as e:
            if _code(e) == "NoSuchBucket":
                self.echo(f"  (bucket {bucket} is already gone)")
                return
            raise
        self.echo(f"  deleted {deleted} object versions and delete markers")

    def _delete_bucket(self, bucket: str) -> None:
        try:
            self.client("s3").delete_bucket(Bucket=bucket)
        except ClientError as e:
            if _code(e) != "NoSuchBucket":
                raise

    def _delete_bucket_if_empty(self, bucket: str) -> None:
        s3 = self.client("s3")
        try:
            listing = s3.list_object_versions(Bucket=bucket, MaxKeys=1)
        except ClientError as e:
            if _code(e) == "NoSuchBucket":
                return
            raise
        if listing.get("Versions") or listing.get("DeleteMarkers"):
            self.echo(f"  {bucket} still holds other stacks' code: kept")
            return
        self._delete_bucket(bucket)

    def _delete_stack(self, name: str) -> None:
        cfn = self.client("cloudformation")
        if self.stack_outputs(name) is None:
            self.echo(f"  (stack {name} does not exist)")
            return
        cfn.delete_stack(StackName=name)
        cfn.get_waiter("stack_delete_complete").wait(
            StackName=name, WaiterConfig={"Delay": 5, "MaxAttempts": 360}
        )

    def _delete_log_group(self, name: str) -> None:
        logs = self.client("logs")
        try:
            logs.delete_log_group(logGroupName=name)
        except ClientError as e:
            if _code(e) != "ResourceNotFoundException":
                raise

    def _forget_target(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)


def target_record(
    s: plan.Settings, outputs: dict[str, str], api_outputs: dict[str, str]
) -> dict[str, Any]:
    """What `--target aws` needs of a deployed stack: its environment, API URL and logs."""
    env = {
        "AWS_REGION": s.region,
        "AWS_DEFAULT_REGION": s.region,
        "ITSACAT_BUCKET": outputs.get("BucketName", ""),
        "RUNS_TABLE": outputs.get("RunsTableName", ""),
        "WEIGHTS_TABLE": outputs.get("WeightsTableName", ""),
        "COSTS_TABLE": outputs.get("CostsTableName", ""),
        "IDEMPOTENCY_TABLE": outputs.get("IdempotencyTableName", ""),
        "TOPIC_ARN": outputs.get("TopicArn", ""),
        "TRAINER_FUNCTION": outputs.get("TrainerFunctionName", ""),
        "NEURON_FUNCTION": outputs.get("NeuronFunctionName", ""),
    }
    return {
        "stack": s.stack_name,
        "api_stack": s.api_stack,
        "region": s.region,
        "env": {k: v for k, v in env.items() if v},
        "api_url": api_outputs.get("EndpointURL", ""),
        "log_groups": s.log_groups(),
        "outputs": outputs,
    }


def write_target(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
