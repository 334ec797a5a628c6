"""The SQS event source mapping, run locally: queue messages -> the launch function.

On AWS, Lambda polls the template's training-input queue (filled by the bucket's S3
notifications) and invokes the launch function with a batch of messages; a batch that
succeeds is deleted, one that fails becomes visible again after the visibility timeout and,
after `maxReceiveCount` receives, moves to the dead-letter queue. moto fills the queue but
cannot run Lambda code, so this relay does Lambda's part, with the same event shape and
the same outcomes. The queue's visibility timeout runs on the stack's clock
(`RuntimeConfig.time_scale`): a batch whose invocation failed comes back after the queue's
timeout times the scale, when it would on AWS, in proportion. But the relay receives with
at least the function's timeout (which is not scaled) plus Lambda's 10-second init phase,
and shortens it only once it knows how the invocation ended: if the runtime dies meanwhile
(killed, or the emulator restored from its snapshot), the batch must not come back while an
invocation of it may still be running, as AWS guarantees by refusing an event source whose
queue's visibility timeout is shorter than the function's timeout. Otherwise the launch
function's idempotency record of the interrupted invocation, "in progress" until that
invocation's deadline, fails every redelivery until `maxReceiveCount` moves the message to
the dead-letter queue, and the run stays PREPARING for ever.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from embedded.functions import QueueSource

_WAIT_S = 1  # long poll; the emulator turns it into cheap short polls
_INIT_S = 10  # Lambda's init phase: a receive may precede its handler's start by this much


def sqs_event(messages: list[dict[str, Any]], source: QueueSource) -> dict[str, Any]:
    """The event Lambda's SQS poller passes to a function."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": source.queue_arn,
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


def receive_visibility_s(scaled_s: int, function_timeout_s: int) -> int:
    """The visibility timeout the relay receives with: the queue's on the stack's clock, but
    not shorter than an invocation of the function may run (see the module's docstring)."""
    return max(scaled_s, function_timeout_s + _INIT_S)


def s3_keys(body: str) -> list[str]:
    """The object keys named by an S3 notification (none for other messages)."""
    try:
        records = json.loads(body).get("Records", [])
        return [unquote_plus(r["s3"]["object"]["key"]) for r in records if "s3" in r]
    except (ValueError, AttributeError, KeyError, TypeError):
        return []


class Relay:
    """One polling thread per SQS source."""

    def __init__(
        self,
        runtime: Any,
        clients: Any,
        role_client: Callable[[str, str], Any],
        sources: list[QueueSource],
        config: Any,
    ) -> None:
        self.runtime = runtime
        # Lambda polls and deletes with the function's execution role.
        self.role_client = role_client
        self.sqs = clients.client("sqs")
        self.sources = sources
        self.time_scale = float(config.time_scale)
        self.visibility_s: dict[str, int] = {}  # per queue: its visibility timeout, scaled
        self.receive_s: dict[str, int] = {}  # per queue: what the relay receives with
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.received = 0
        self.delivered = 0
        self.failed = 0
        self.duplicated = 0
        self.recent_keys: deque[str] = deque(maxlen=50)

    def start(self) -> None:
        for source in self.sources:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=source.queue_url, AttributeNames=["VisibilityTimeout"]
            )["Attributes"]
            timeout = int(attributes.get("VisibilityTimeout", 30)) * self.time_scale
            self.visibility_s[source.queue_url] = max(1, round(timeout))
            self.receive_s[source.queue_url] = receive_visibility_s(
                self.visibility_s[source.queue_url],
                self.runtime.function(source.function).timeout_s,
            )
            thread = threading.Thread(
                target=self._poll, args=(source,), name=f"relay-{source.function}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=_WAIT_S + 2)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sources": [
                    {"queue": s.queue_arn, "function": s.function, "batch_size": s.batch_size}
                    for s in self.sources
                ],
                "received": self.received,
                "delivered": self.delivered,
                "failed": self.failed,
                "duplicated": self.duplicated,
                "recent_keys": list(self.recent_keys),
            }

    def _poll(self, source: QueueSource) -> None:
        while not self._stop.is_set():
            try:
                response = self.role_client(source.function, "sqs").receive_message(
                    QueueUrl=source.queue_url,
                    MaxNumberOfMessages=min(source.batch_size, 10),
                    WaitTimeSeconds=_WAIT_S,
                    # at least as long as an invocation may run; `_come_back` shortens it
                    VisibilityTimeout=self.receive_s[source.queue_url],
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
                received = time.monotonic()
                messages = response.get("Messages", [])
                if messages:
                    self._deliver(source, messages, received)
            except Exception as e:  # the emulator going away at shutdown, mostly
                if not self._stop.is_set():
                    print(f"relay {source.queue_arn}: {e}", flush=True)
                    time.sleep(0.5)

    def _deliver(
        self, source: QueueSource, messages: list[dict[str, Any]], received: float
    ) -> None:
        with self._lock:
            self.received += len(messages)
            for m in messages:
                self.recent_keys.extend(s3_keys(m["Body"]))
        payload = json.dumps(sqs_event(messages, source)).encode()
        deliveries = 2 if self.runtime.faults.chance("s3_duplicate") else 1
        failed_ids: set[str] = set()
        for _ in range(deliveries):
            failed_ids = self._invoke(source, payload, messages)
        with self._lock:
            self.duplicated += deliveries - 1
            self.delivered += len(messages) - len(failed_ids)
            self.failed += len(failed_ids)
        done = [m for m in messages if m["MessageId"] not in failed_ids]
        if done:
            self.role_client(source.function, "sqs").delete_message_batch(
                QueueUrl=source.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        failed = [m for m in messages if m["MessageId"] in failed_ids]
        if failed:
            self._come_back(source, failed, received)

    def _come_back(
        self, source: QueueSource, messages: list[dict[str, Any]], received: float
    ) -> None:
        """Messages whose invocation failed (it has ended) come back when the queue's
        visibility timeout, on the stack's clock, ends after their receive, as on AWS."""
        scaled = self.visibility_s[source.queue_url]
        if scaled >= self.receive_s[source.queue_url]:
            return
        left = max(0, math.ceil(scaled - (time.monotonic() - received)))
        try:  # Lambda's poller does this itself, not with the function's role
            self.sqs.change_message_visibility_batch(
                QueueUrl=source.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": left}
                    for i, m in enumerate(messages)
                ],
            )
        except Exception as e:  # they come back later, when the longer timeout ends
            print(f"relay {source.queue_arn}: {e}", flush=True)

    def _invoke(
        self, source: QueueSource, payload: bytes, messages: list[dict[str, Any]]
    ) -> set[str]:
        """Invoke the function once; the ids of the messages that failed."""
        all_ids = {m["MessageId"] for m in messages}
        try:
            result = self.runtime.invoke(source.function, payload)
        except Exception:  # throttled: the whole batch goes back
            return all_ids
        if result.failed:
            return all_ids
        if source.report_batch_item_failures:
            try:
                failures = json.loads(result.payload or b"{}").get("batchItemFailures", [])
                return {f["itemIdentifier"] for f in failures} & all_ids
            except (ValueError, AttributeError, KeyError, TypeError):
                return all_ids
        return set()
