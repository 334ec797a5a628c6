"""Reading the functions' CloudWatch Logs: merged in time order, readable, filtered by run."""

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from itsacat.errors import UserError
from state.clients import client

FUNCTIONS = ("launch", "trainer", "neuron", "watchdog")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """'10m', '2h', '30s', '1d' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not m:
        raise UserError(f"--since {text!r}: use a number and a unit, like 30s, 10m, 2h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Line:
    timestamp: int  # ms
    function: str
    message: str
    event_id: str

    @property
    def record(self) -> dict[str, Any] | None:
        if not self.message.startswith("{"):
            return None
        try:
            rec = json.loads(self.message)
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None

    def run_id(self) -> str | None:
        rec = self.record
        return None if rec is None else rec.get("run_id")

    def format(self) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(self.timestamp / 1000))
        t += f".{self.timestamp % 1000:03d}"
        rec = self.record
        if rec is None:
            return f"{t} {self.function:<8} {'':<7} {self.message.rstrip()}"
        skip = {"level", "message", "timestamp", "service", "location", "run_id", "epoch", "epochs"}
        skip |= {"request_id", "xray_trace_id", "cold_start", "function_name"}
        skip |= {"function_memory_size", "function_arn", "function_request_id", "_aws"}
        extras = " ".join(f"{k}={v}" for k, v in rec.items() if k not in skip)
        run = rec.get("run_id") or "-"
        epoch, epochs = rec.get("epoch"), rec.get("epochs")
        where = f"{run}" + (f" epoch {epoch}" if epoch is not None else "")
        if isinstance(epochs, list) and epochs:  # a commit's epochs: first and last
            where += f" epochs {epochs[0]}-{epochs[-1]}"
        return (
            f"{t} {self.function:<8} {rec.get('level', ''):<7} {where}  "
            f"{rec.get('message', 'metric' if '_aws' in rec else '')}"
            f"{'  ' + extras if extras else ''}"
        )


def fetch(groups: dict[str, str], start_ms: int) -> list[Line]:
    """Every event since `start_ms` in the groups ({function: log group}), in time order."""
    logs = client("logs")
    lines: list[Line] = []
    for function, group in groups.items():
        kwargs: dict[str, Any] = {"logGroupName": group, "startTime": start_ms}
        try:
            while True:
                out = logs.filter_log_events(**kwargs)
                lines += [
                    Line(e["timestamp"], function, e["message"], e.get("eventId", ""))
                    for e in out.get("events", [])
                ]
                token = out.get("nextToken")
                if not token or token == kwargs.get("nextToken"):
                    break
                kwargs["nextToken"] = token
        except ClientError as e:
            if e.response["Error"]["Code"] == "ResourceNotFoundException":
                continue  # nothing logged yet
            raise UserError(f"reading {group}: {e}") from e
        except BotoCoreError as e:
            raise UserError(f"reading {group}: {e}") from e
    lines.sort(key=lambda line: (line.timestamp, line.event_id))
    return lines


def follow(groups: dict[str, str], start_ms: int, poll_s: float = 1.0) -> Iterator[Line]:
    """All lines since `start_ms`, then new ones as they arrive (until interrupted)."""
    seen: set[str] = set()
    since = start_ms
    while True:
        for line in fetch(groups, since):
            if line.event_id in seen:
                continue
            seen.add(line.event_id)
            since = max(since, line.timestamp)
            yield line
        time.sleep(poll_s)
