"""`itsacat deploy` and `itsacat destroy`: the project on an AWS account, and gone again.

Settings come from flags, then the environment (`ITSACAT_REGION`, `ITSACAT_STACK`,
`ITSACAT_BUCKET_NAME`, `ITSACAT_EMAIL`, `ITSACAT_ARCH`), then, on a terminal, questions as
the original `bin/deploy` asked them. The work itself lives in `itsacat.deploy`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from itsacat import target
from itsacat.deploy import aws, layer, package, plan
from itsacat.errors import UserError

ACCOUNT_PLACEHOLDER = "<account>"


def register(sub: Any) -> None:
    deploy = sub.add_parser(
        "deploy",
        help="deploy the training stack and the prediction API to AWS",
        description=(
            "Build the Lambda layer (numpy, h5py, pillow for the Lambda platform), package the "
            "functions and the Chalice API, and deploy both with `aws cloudformation package` "
            "and `deploy` (stacks <stack> and <stack>-api). Records the stack's outputs in "
            "$ITSACAT_HOME/aws-<stack>.json for ITSACAT_TARGET=aws. --dry-run does everything "
            "that needs no AWS: builds, writes the final templates into build/, validates them "
            "and prints the commands."
        ),
    )
    _common(deploy)
    deploy.add_argument("--bucket", help="data bucket name (default: <stack>-data-<acct>-<region>)")
    deploy.add_argument("--email", help="e-mail address for training updates (default: none)")
    deploy.add_argument(
        "--arch", choices=sorted(layer.ARCHES), help="Lambda architecture (default: x86_64)"
    )
    deploy.add_argument("--dry-run", action="store_true", help="build and validate; no AWS")
    deploy.add_argument(
        "--layer-from", type=Path, metavar="DIR", help="use this built layer (holding python/)"
    )
    deploy.add_argument(
        "--build-dir", type=Path, default=Path("build"), help="where to build (default: build)"
    )
    deploy.set_defaults(func=cmd_deploy)

    destroy = sub.add_parser(
        "destroy",
        help="delete everything `itsacat deploy` created",
        description=(
            "Empty the data bucket (every object version and delete marker), delete the API "
            "stack, the training stack and the functions' log groups, and the packaged code. "
            "Asks for the stack name first unless --yes."
        ),
    )
    _common(destroy)
    destroy.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    destroy.set_defaults(func=cmd_destroy)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", help="AWS region (env ITSACAT_REGION or AWS_REGION)")
    p.add_argument("--stack-name", help="CloudFormation stack name (default: itsacat)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask questions")


def _interactive(args: argparse.Namespace) -> bool:
    return not args.yes and not getattr(args, "dry_run", False) and sys.stdin.isatty()


def _value(
    args: argparse.Namespace, flag: str | None, env: tuple[str, ...], question: str, default: str
) -> str:
    if flag is not None:
        return flag
    for name in env:
        if os.environ.get(name) is not None:
            return os.environ[name]
    if _interactive(args):
        answer = input(f"{question} [{default}]: ").strip()
        return answer or default
    return default


def _region(args: argparse.Namespace) -> str:
    default = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    region = _value(args, args.region, ("ITSACAT_REGION",), "AWS region", default)
    if not region and getattr(args, "dry_run", False):
        region = "us-east-1"
    if not region:
        raise UserError("no AWS region: pass --region or set ITSACAT_REGION / AWS_REGION")
    return region


def settings(args: argparse.Namespace) -> plan.Settings:
    region = _region(args)
    stack = _value(args, args.stack_name, ("ITSACAT_STACK",), "Stack name", "itsacat")
    if args.command == "deploy":
        bucket = _value(
            args, args.bucket, ("ITSACAT_BUCKET_NAME",), "Bucket name (empty: generated)", ""
        )
        email = _value(
            args, args.email, ("ITSACAT_EMAIL",), "E-mail for training updates (empty: none)", ""
        )
        arch = args.arch or os.environ.get("ITSACAT_ARCH") or "x86_64"
        s = plan.Settings(region, stack, bucket, email, arch, args.build_dir)
    else:
        s = plan.Settings(region, stack)
    try:
        plan.validate(s)
    except plan.PlanError as e:
        raise UserError(str(e)) from None
    return s


def _confirm(question: str, expected: str = "y") -> None:
    answer = input(f"{question} ").strip()
    if answer.lower() != expected.lower():
        raise UserError("cancelled")


def build_and_check(s: plan.Settings, layer_from: Path | None) -> list[str]:
    """Build everything into build/ and validate it; the problems found (empty: good)."""
    try:
        built = package.build(s, layer_from)
    except package.PackageError as e:
        raise UserError(str(e)) from None
    code_bytes = layer.unzipped_size(built.functions)
    report = layer.check(built.layer, s.arch, other_bytes=code_bytes)
    glibc = ".".join(map(str, report.max_glibc)) if report.max_glibc else "none"
    print(f"layer      {built.layer}")
    print(
        f"           {report.unzipped_bytes / 2**20:.1f} MB unzipped (+ {code_bytes / 2**20:.1f} "
        f"MB of code; limit {layer.UNZIPPED_LIMIT / 2**20:.0f} MB), {layer.RUNTIME} "
        f"{s.arch}, newest glibc needed {glibc}"
    )
    print(f"functions  {built.functions}")
    print(f"templates  {built.template}")
    print(f"           {built.api_template}")
    findings = package.lint([built.template, built.api_template])
    print(f"cfn-lint   {'clean' if not findings else f'{len(findings)} findings'}")
    return report.problems + findings


def _print_steps(steps: list[plan.Step]) -> None:
    for i, step in enumerate(steps, 1):
        print(f"# {i}. {step.title}")
        print(step.shell())


def cmd_deploy(args: argparse.Namespace) -> int:
    s = settings(args)
    if args.dry_run:
        problems = build_and_check(s, args.layer_from)
        print("\nThe commands a deploy runs (AWS CLI from the project's virtualenv):\n")
        _print_steps(plan.deploy_steps(s, ACCOUNT_PLACEHOLDER))
        if problems:
            for p in problems:
                print(f"problem: {p}", file=sys.stderr)
            raise UserError(f"the dry run found {len(problems)} problem(s)")
        return 0

    import boto3

    cloud = aws.Aws(boto3.Session(), s.region)
    account = cloud.account()
    print(f"Deploying stack {s.stack_name} (and {s.api_stack}) to account {account} in {s.region}")
    if _interactive(args):
        _confirm("Go ahead? [y/N]")
    problems = build_and_check(s, args.layer_from)
    if problems:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        raise UserError(f"not deploying: {len(problems)} problem(s) in the build")
    cloud.execute(plan.deploy_steps(s, account), main_stack=s.stack_name)
    outputs = cloud.stack_outputs(s.stack_name) or {}
    api_outputs = cloud.stack_outputs(s.api_stack) or {}
    record = aws.target_record(s, outputs, api_outputs)
    path = target.aws_target_path(s.stack_name)
    aws.write_target(path, record)
    print(f"\nbucket      s3://{outputs.get('BucketName', '?')}")
    print(f"API         {record['api_url'] or '?'}image?image=URL")
    print("log groups  " + "\n            ".join(record["log_groups"]))
    print(f"target      {path} (use it: export ITSACAT_TARGET=aws ITSACAT_STACK={s.stack_name})")
    print(
        f"\nStart a run: aws s3 cp datasets.h5 s3://{outputs.get('BucketName', '?')}"
        "/training_input/datasets.h5"
    )
    if s.email:
        print(
            f"Confirm the SNS subscription: AWS sent a mail to {s.email}; no training updates "
            "arrive until you click its link."
        )
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    s = settings(args)
    path = target.aws_target_path(s.stack_name)
    if args.dry_run:
        print(f"# the data bucket comes from stack {s.stack_name}'s BucketName output")
        _print_steps(plan.destroy_steps(s, ACCOUNT_PLACEHOLDER, "<output:BucketName>", path))
        return 0

    import boto3

    cloud = aws.Aws(boto3.Session(), s.region)
    account = cloud.account()
    outputs = cloud.stack_outputs(s.stack_name)
    bucket = (outputs or {}).get("BucketName") or _recorded_bucket(path)
    steps = plan.destroy_steps(s, account, bucket, path)
    print(f"Destroying stack {s.stack_name} in account {account}, {s.region}:")
    _print_steps(steps)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("destroy deletes data: pass --yes to run it without a terminal")
        _confirm(
            f"All data in the bucket is lost. Type the stack name ({s.stack_name}):", s.stack_name
        )
    cloud.execute(steps)
    print(f"itsacat: stack {s.stack_name} and everything it held are gone")
    return 0


def _recorded_bucket(path: Path) -> str | None:
    import json

    try:
        return str(json.loads(path.read_text())["outputs"]["BucketName"])
    except (OSError, ValueError, KeyError):
        return None
