"""boto3 clients for a test's embedded stack, with the account owner's credentials."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from embedded.stack import StackInfo


def client(info: StackInfo, service: str, **config: Any) -> Any:
    env = info.env()
    endpoint = env["AWS_ENDPOINT_URL_LAMBDA"] if service == "lambda" else env["AWS_ENDPOINT_URL"]
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(**config) if config else None,
    )
