"""Before the first model, the API under its own role answers `no_model`.

S3 answers a GET/HEAD of a missing key with 404 only to a caller that may `s3:ListBucket`
on the bucket, else with 403; the request carries no `s3:prefix`, so a ListBucket allowed
only under a prefix condition does not count. The embedded stack evaluates the role's
policy as AWS does (embedded/authorization.py), with the very policy `itsacat deploy` gives
the function (the API template's `ApiHandlerRole`).

One gap: moto's policy evaluator ignores Condition blocks (it found the old, prefix-
conditioned ListBucket PERMITTED), so this test passed before the fix too; the condition
itself is refused statically (tests/deploy/test_api_limits.py, tests/api/test_api_cli.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from api_support import CHALICE_DIR
from botocore.exceptions import ClientError
from chalice.test import Client
from chalicelib import service

from embedded.stack import StackInfo
from itsacat.commands import serve
from state.models import POINTER_KEYS, PRODUCTION


@pytest.fixture
def no_model_yet(embedded_env: StackInfo) -> Iterator[str]:
    """The stack's bucket without the latest-model pointer (put back afterwards)."""
    env = embedded_env.env()
    owner = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    bucket = env["ITSACAT_BUCKET"]
    saved: bytes | None = None
    try:
        saved = owner.get_object(Bucket=bucket, Key=POINTER_KEYS[PRODUCTION])["Body"].read()
        owner.delete_object(Bucket=bucket, Key=POINTER_KEYS[PRODUCTION])
    except ClientError:
        pass
    try:
        yield bucket
    finally:
        if saved is not None:
            owner.put_object(Bucket=bucket, Key=POINTER_KEYS[PRODUCTION], Body=saved)


def test_the_api_role_gets_404_for_a_missing_model_and_answers_no_model(
    embedded_env: StackInfo, no_model_yet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_env = serve.target_env(embedded_env.env())
    assert api_env["AWS_SESSION_TOKEN"]  # the role's credentials, not the owner's
    role_s3 = boto3.client(
        "s3",
        endpoint_url=api_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=api_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=api_env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=api_env["AWS_SESSION_TOKEN"],
    )
    with pytest.raises(ClientError) as missing:
        role_s3.head_object(Bucket=no_model_yet, Key=POINTER_KEYS[PRODUCTION])
    assert missing.value.response["Error"]["Code"] == "404"

    for name, value in api_env.items():
        monkeypatch.setenv(name, value)
    service.reset()
    from app import app

    with Client(app, stage_name="local", project_dir=str(CHALICE_DIR)) as client:
        response = client.http.get("/model")
        assert response.status_code == 503, response.body
        assert response.json_body["code"] == "no_model"
        response = client.http.post(
            "/image", headers={"Content-Type": "image/png"}, body=b"\x89PNG\r\n\x1a\n"
        )
        assert response.status_code == 503 and response.json_body["code"] == "no_model"
