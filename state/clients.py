"""Lazily built, cached boto3 clients: adapters take an injected client or get one here.

Endpoints come from the standard environment (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_LAMBDA`),
so the same code talks to AWS or to the embedded stack without knowing which.
"""

import functools
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from state.errors import StateError, translate

# Fan-out threads share one client per service; give them enough pooled connections.
_CONFIG = Config(max_pool_connections=64, retries={"max_attempts": 3, "mode": "standard"})
# Lambda invocations are retried by our own code (it counts them), not by botocore.
# (`max_attempts` counts retries after the first try; `total_max_attempts: 1` is no retry.)
_LAMBDA_CONFIG = Config(
    max_pool_connections=64,
    retries={"total_max_attempts": 1},
    read_timeout=900,
    tcp_keepalive=True,
)


@functools.cache
def client(service: str) -> Any:
    return boto3.session.Session().client(
        service, config=_LAMBDA_CONFIG if service == "lambda" else _CONFIG
    )


class LazyClient:
    """Base of the adapters: an injected boto3 client, or one built on first use.

    Tests hand in a moto-backed client; handlers let the adapter build the shared one.
    """

    service = ""

    def __init__(self, injected: Any = None) -> None:
        self._client = injected

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client(self.service)
        return self._client


BATCH_WRITE_LIMIT = 25  # BatchWriteItem's limit


def batch_write(dynamodb: Any, table: str, requests: list[dict], what: str) -> int:
    """Put/Delete `requests` on `table` with BatchWriteItem, 25 at a time, sending back
    what DynamoDB left unprocessed (with backoff); the number of calls made. Raises
    `StateError` naming `what`."""
    calls = 0
    try:
        for i in range(0, len(requests), BATCH_WRITE_LIMIT):
            pending = {table: requests[i : i + BATCH_WRITE_LIMIT]}
            for attempt in range(8):
                calls += 1
                out = dynamodb.batch_write_item(RequestItems=pending)
                pending = out.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(0.05 * 2**attempt)
            else:
                raise StateError(f"{what}: items still unprocessed after retries")
    except (ClientError, BotoCoreError) as e:
        raise translate(e, what) from e
    return calls
