"""Lazily built, cached boto3 clients: adapters take an injected client or get one here.

Endpoints come from the standard environment (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_LAMBDA`),
so the same code talks to AWS or to the embedded stack without knowing which.
"""

import functools
import random
import threading
import time
from collections.abc import Callable
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

    def _all_items(self, operation: str, what: str, **request: Any) -> list[dict]:
        """Every item a DynamoDB `operation` ("query" or "scan") with `request` returns,
        page after page; `StateError` naming `what` if a request fails."""
        items: list[dict] = []
        try:
            call = getattr(self.client, operation)
            while True:
                out = call(**request)
                items += out["Items"]
                if "LastEvaluatedKey" not in out:
                    return items
                request = {**request, "ExclusiveStartKey": out["LastEvaluatedKey"]}
        except (ClientError, BotoCoreError) as e:
            raise translate(e, what) from e


BATCH_WRITE_LIMIT = 25  # BatchWriteItem's limit
BATCH_WRITE_ROUNDS = 8  # calls per 25 requests before giving up on what stays unprocessed
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0
_JITTER = random.Random()


class UnprocessedCounter:
    """Items DynamoDB left unprocessed and that `batch_write` sent again, in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rounds = 0  # calls that left something unprocessed
        self.items = 0  # requests sent again
        self._taken = 0

    def add(self, items: int) -> None:
        with self._lock:
            self.rounds += 1
            self.items += items

    def take(self) -> int:
        """The items sent again since the last take (what the trainer's next commit counts)."""
        with self._lock:
            taken, self._taken = self.items - self._taken, self.items
        return taken


UNPROCESSED = UnprocessedCounter()


def batch_write(
    dynamodb: Any,
    table: str,
    requests: list[dict],
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Put/Delete `requests` on `table` with BatchWriteItem, 25 at a time, sending back what
    DynamoDB left unprocessed after an exponential backoff with full jitter, as AWS
    recommends (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/
    API_BatchWriteItem.html), at most `BATCH_WRITE_ROUNDS` calls per 25; the number of
    calls made. Raises `StateError` naming `what`, also when items are still unprocessed
    after the last call. `sleep`: for tests."""
    calls = 0
    try:
        for i in range(0, len(requests), BATCH_WRITE_LIMIT):
            pending = {table: requests[i : i + BATCH_WRITE_LIMIT]}
            for attempt in range(BATCH_WRITE_ROUNDS):
                if attempt:
                    sleep(_JITTER.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt)))
                calls += 1
                out = dynamodb.batch_write_item(RequestItems=pending)
                pending = out.get("UnprocessedItems") or {}
                if not pending:
                    break
                UNPROCESSED.add(sum(len(r) for r in pending.values()))
            else:
                left = sum(len(r) for r in pending.values())
                raise StateError(
                    f"{what}: {left} of {len(requests[i : i + BATCH_WRITE_LIMIT])} items still "
                    f"unprocessed after {BATCH_WRITE_ROUNDS} BatchWriteItem calls"
                )
    except (ClientError, BotoCoreError) as e:
        raise translate(e, what) from e
    return calls
