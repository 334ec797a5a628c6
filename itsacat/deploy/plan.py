"""What a deploy or a destroy sends, as data: pure functions, no AWS, no files.

A plan is a list of `Step`s. A `run` step is a command line (the AWS CLI from the project's
virtualenv); the destroy steps are API operations that `itsacat.deploy.aws` performs with
boto3 (emptying a versioned bucket needs a loop the CLI does not have). `Step.shell()` shows
each step as the command a user could type, which is what `--dry-run` prints.

Values known only once the main stack exists (the bucket and layer version the API stack
needs) appear in a plan as `<output:Name>` and are filled in by the executor.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND")
FUNCTIONS = ("launch", "trainer", "neuron", "watchdog")
OUTPUT = re.compile(r"<output:(\w+)>")


class PlanError(ValueError):
    """A setting that cannot be deployed; the message names it."""


def output(name: str) -> str:
    """A placeholder for one of the main stack's outputs."""
    return f"<output:{name}>"


@dataclass(frozen=True)
class Settings:
    """Everything a deploy or destroy depends on."""

    region: str
    stack_name: str
    bucket: str = ""  # empty: the template's default name
    email: str = ""
    arch: str = "x86_64"
    build_dir: Path = Path("build")

    @property
    def api_stack(self) -> str:
        return f"{self.stack_name}-api"

    def artifacts_bucket(self, account: str) -> str:
        """Where `cloudformation package` uploads code: one per account and region."""
        return f"itsacat-artifacts-{account}-{self.region}"

    def log_groups(self) -> list[str]:
        """The CloudWatch Logs groups of the functions and of the API."""
        names = [f"{self.stack_name}-{f}" for f in FUNCTIONS] + [self.api_stack]
        return [f"/aws/lambda/{n}" for n in names]

    @property
    def template(self) -> Path:
        return self.build_dir / "template.json"

    @property
    def packaged(self) -> Path:
        return self.build_dir / "packaged.yaml"

    @property
    def api_template(self) -> Path:
        return self.build_dir / "api-template.json"

    @property
    def api_packaged(self) -> Path:
        return self.build_dir / "api-packaged.yaml"


def validate(s: Settings) -> None:
    """Reject settings AWS would reject later, with a message naming the setting."""
    if not re.fullmatch(r"[a-z]{2}(-gov)?-[a-z]+-\d", s.region):
        raise PlanError(f"region {s.region!r} does not look like an AWS region (eu-west-1)")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,29}", s.stack_name):
        raise PlanError(
            f"stack name {s.stack_name!r}: lower-case letters, digits and '-', starting with a "
            "letter, at most 30 characters (it prefixes the bucket, tables and functions)"
        )
    if s.bucket and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", s.bucket):
        raise PlanError(f"bucket name {s.bucket!r} is not a valid S3 bucket name")
    if s.email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", s.email):
        raise PlanError(f"{s.email!r} is not an e-mail address")
    if s.arch not in ("x86_64", "arm64"):
        raise PlanError(f"architecture {s.arch!r}: x86_64 or arm64")


@dataclass(frozen=True)
class Step:
    """One thing a deploy or destroy does."""

    kind: str  # run | ensure-bucket | empty-bucket | delete-bucket | delete-stack | ...
    args: tuple[str, ...]
    title: str

    def shell(self) -> str:
        """The step as a command line (the equivalent one, for API operations)."""
        if self.kind == "run":
            return shlex.join(self.args)
        return {
            "ensure-bucket": "aws s3api create-bucket --bucket {0} --region {1}"
            " (unless it exists already)",
            "empty-bucket": "aws s3api delete-objects --bucket {0} --delete <every version and "
            "delete marker under '{1}'>",
            "delete-bucket-if-empty": "aws s3api delete-bucket --bucket {0}"
            " (if nothing else is left in it)",
            "delete-bucket": "aws s3api delete-bucket --bucket {0}",
            "delete-stack": "aws cloudformation delete-stack --stack-name {0} && "
            "aws cloudformation wait stack-delete-complete --stack-name {0}",
            "delete-log-group": "aws logs delete-log-group --log-group-name {0}",
            "forget-target": "rm {0}",
        }[self.kind].format(*self.args)


def package_argv(
    template: Path, out: Path, bucket: str, prefix: str, region: str
) -> tuple[str, ...]:
    """`aws cloudformation package`: what a deploy and the embedded stack both run."""
    return (
        "aws",
        "cloudformation",
        "package",
        "--template-file",
        str(template),
        "--s3-bucket",
        bucket,
        "--s3-prefix",
        prefix,
        "--output-template-file",
        str(out),
        "--region",
        region,
    )


def _deploy(template: Path, stack: str, region: str, overrides: list[str]) -> tuple[str, ...]:
    return (
        "aws",
        "cloudformation",
        "deploy",
        "--template-file",
        str(template),
        "--stack-name",
        stack,
        "--capabilities",
        *CAPABILITIES,
        "--no-fail-on-empty-changeset",
        "--parameter-overrides",
        *overrides,
        "--region",
        region,
    )


def deploy_steps(s: Settings, account: str) -> list[Step]:
    """The AWS side of a deploy, once build/ holds the layer, the code and the templates."""
    artifacts = s.artifacts_bucket(account)
    return [
        Step("ensure-bucket", (artifacts, s.region), "bucket for the packaged code"),
        Step(
            "run",
            package_argv(s.template, s.packaged, artifacts, s.stack_name, s.region),
            "upload the layer and the function code",
        ),
        Step(
            "run",
            _deploy(
                s.packaged,
                s.stack_name,
                s.region,
                [f"BucketName={s.bucket}", f"NotificationEmail={s.email}"],
            ),
            f"create or update stack {s.stack_name}",
        ),
        Step(
            "run",
            package_argv(s.api_template, s.api_packaged, artifacts, s.stack_name, s.region),
            "upload the prediction API",
        ),
        Step(
            "run",
            _deploy(
                s.api_packaged,
                s.api_stack,
                s.region,
                [
                    f"DataBucket={output('BucketName')}",
                    f"LayerArn={output('ScientificLayerArn')}",
                ],
            ),
            f"create or update stack {s.api_stack} (the prediction API)",
        ),
    ]


def destroy_steps(s: Settings, account: str, bucket: str | None, target_file: Path) -> list[Step]:
    """Everything a deploy created, removed in an order that lets each removal succeed."""
    steps = []
    if bucket:
        # CloudFormation cannot delete a bucket that still holds objects (or their versions).
        steps.append(Step("empty-bucket", (bucket, ""), f"empty the data bucket {bucket}"))
    steps += [
        Step("delete-stack", (s.api_stack,), "delete the prediction API"),
        Step("delete-stack", (s.stack_name,), "delete the training stack"),
    ]
    # Lambda (re)creates a function's group when it logs after the stack removed it.
    steps += [Step("delete-log-group", (g,), f"delete {g}") for g in s.log_groups()]
    artifacts = s.artifacts_bucket(account)
    steps += [
        Step("empty-bucket", (artifacts, f"{s.stack_name}/"), "remove the packaged code"),
        Step("delete-bucket-if-empty", (artifacts,), "delete the code bucket if unused"),
        Step("forget-target", (str(target_file),), "forget the aws target"),
    ]
    return steps


def fill(args: tuple[str, ...], outputs: dict[str, str]) -> tuple[str, ...]:
    """Replace `<output:Name>` placeholders; KeyError names a missing output."""
    return tuple(OUTPUT.sub(lambda m: outputs[m[1]], a) for a in args)
