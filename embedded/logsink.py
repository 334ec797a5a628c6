"""Function output -> CloudWatch Logs in the emulator, as Lambda ships it on AWS.

Every line a worker prints becomes a log event in the group `/aws/lambda/<function name>`,
in a stream named like Lambda's (`YYYY/MM/DD/[$LATEST]<id>`, one per worker, as one per
execution environment on AWS). Lines are buffered and sent in batches by one background
thread, so printing never waits for the emulator; `aws logs tail` then works on both
targets.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

_MAX_BATCH = 5000  # put_log_events allows 10,000 events and 1 MB per call
_MAX_EVENT_CHARS = 200_000  # events are limited to 256 KB
_FLUSH_S = 0.2


def stream_name() -> str:
    """A fresh log stream name in Lambda's format."""
    return f"{time.strftime('%Y/%m/%d', time.gmtime())}/[$LATEST]{uuid.uuid4().hex}"


class LogSink:
    """Buffers (group, stream, line) and flushes them to CloudWatch Logs in the background."""

    def __init__(
        self,
        logs_client: Any,
        logs_for_group: Callable[[str], Any | None] = lambda group: None,
        flush_s: float = _FLUSH_S,
    ) -> None:
        # A function's logs are shipped with its execution role, as Lambda does: a role
        # without logs:CreateLogStream / logs:PutLogEvents on its group loses them.
        self.logs = logs_client
        self.logs_for_group = logs_for_group
        self.flush_s = flush_s
        self._pending: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._known_groups: set[str] = set()
        self._known_streams: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="logsink", daemon=True)
        self.events_sent = 0
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def emit(self, group: str, stream: str, message: str, timestamp_ms: int | None = None) -> None:
        event = {
            "timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
            "message": message[:_MAX_EVENT_CHARS],
        }
        with self._lock:
            self._pending[(group, stream)].append(event)

    def emit_lines(self, group: str, stream: str, lines: list[str]) -> None:
        """Several lines at once, all stamped now."""
        now = int(time.time() * 1000)
        events = [{"timestamp": now, "message": line[:_MAX_EVENT_CHARS]} for line in lines]
        with self._lock:
            self._pending[(group, stream)].extend(events)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(list)
        for (group, stream), events in pending.items():
            try:
                logs = self.logs_for_group(group) or self.logs
                self._ensure(logs, group, stream)
                events.sort(key=lambda e: e["timestamp"])  # required by put_log_events
                for i in range(0, len(events), _MAX_BATCH):
                    batch = events[i : i + _MAX_BATCH]
                    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
                    self.events_sent += len(batch)
            except Exception:  # logs must never take the runtime down
                self.errors += 1

    def _ensure(self, logs: Any, group: str, stream: str) -> None:
        if group not in self._known_groups:
            # Lambda creates a missing group (the role's logs:CreateLogGroup permitting).
            with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                if not self._group_exists(group):
                    logs.create_log_group(logGroupName=group)
            self._known_groups.add(group)
        if (group, stream) not in self._known_streams:
            with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                logs.create_log_stream(logGroupName=group, logStreamName=stream)
            self._known_streams.add((group, stream))

    def _group_exists(self, group: str) -> bool:
        """Whether the group exists (asked as the service: no function role lists groups)."""
        found = self.logs.describe_log_groups(logGroupNamePrefix=group).get("logGroups", [])
        return any(g["logGroupName"] == group for g in found)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        else:
            self.flush()
