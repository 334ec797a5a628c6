"""The prediction API runs under its own role on the embedded stack, as deployed on AWS.

`itsacat up` creates the API template's role (`ApiHandlerRole`, the policy `itsacat deploy`
gives the deployed function), and `itsacat serve` / `make demo` run `chalice local` with that
role's credentials. With IAM enforced, the API can read models and nothing else.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from embedded.stack import StackInfo
from itsacat.commands import serve


def _client(service: str, env: dict[str, str]) -> object:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
    )


def test_serve_takes_the_api_role_which_reads_models_only(embedded_env: StackInfo) -> None:
    stack_env = embedded_env.env()
    assert stack_env["ITSACAT_API_ROLE_ARN"].split("/")[-1].startswith("itsacat-api-")
    api_env = serve.target_env(stack_env)
    assert api_env["AWS_ACCESS_KEY_ID"] != stack_env["AWS_ACCESS_KEY_ID"]
    identity = _client("sts", api_env).get_caller_identity()["Arn"]  # type: ignore[attr-defined]
    role_name = stack_env["ITSACAT_API_ROLE_ARN"].rsplit("/", 1)[1]
    assert identity.endswith(f":assumed-role/{role_name}/itsacat-api")

    bucket = stack_env["ITSACAT_BUCKET"]
    owner = _client("s3", stack_env)
    owner.put_object(Bucket=bucket, Key="models/role-test.json", Body=b"{}")  # type: ignore[attr-defined]
    owner.put_object(Bucket=bucket, Key="runs/role-test/data.npz", Body=b"x")  # type: ignore[attr-defined]
    api = _client("s3", api_env)
    body = api.get_object(Bucket=bucket, Key="models/role-test.json")["Body"].read()  # type: ignore[attr-defined]
    assert body == b"{}"
    with pytest.raises(ClientError) as denied:
        api.get_object(Bucket=bucket, Key="runs/role-test/data.npz")  # type: ignore[attr-defined]
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as denied:
        api.put_object(Bucket=bucket, Key="models/role-test.json", Body=b"x")  # type: ignore[attr-defined]
    assert denied.value.response["Error"]["Code"] == "AccessDenied"


def test_elsewhere_the_credentials_are_left_alone() -> None:
    """Without the stack's API role (AWS, or a bucket given by hand) nothing changes."""
    env = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s", "ITSACAT_BUCKET": "b"}
    assert serve.api_identity(dict(env), env) == env
