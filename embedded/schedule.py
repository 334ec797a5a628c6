"""The template's scheduled events (the watchdog's `rate(1 minute)`), fired locally.

moto stores EventBridge rules but never fires them. The scheduler reads each `rate(...)`
rule that targets a function and invokes it asynchronously with the event EventBridge
sends, at the rule's rate multiplied by a scale factor (quicker locally; 0 turns it off).
"""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from typing import Any

from embedded.functions import Schedule


def scheduled_event(schedule: Schedule) -> dict[str, Any]:
    """The event EventBridge passes to a function for a scheduled rule."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": [schedule.rule_arn],
        "detail": {},
    }


class Scheduler:
    def __init__(self, runtime: Any, schedules: list[Schedule], scale: float) -> None:
        self.runtime = runtime
        self.schedules = schedules
        self.scale = scale
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.fired: dict[str, int] = {s.rule_arn: 0 for s in schedules}

    def start(self) -> None:
        if self.scale <= 0:
            return
        for schedule in self.schedules:
            thread = threading.Thread(
                target=self._run,
                args=(schedule,),
                name=f"schedule-{schedule.function}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _run(self, schedule: Schedule) -> None:
        period = schedule.period_s * self.scale
        while not self._stop.wait(period):
            try:
                self.runtime.invoke_async(
                    schedule.function, json.dumps(scheduled_event(schedule)).encode()
                )
                self.fired[schedule.rule_arn] += 1
            except Exception as e:
                print(f"schedule {schedule.rule_arn}: {e}", flush=True)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "rule": s.rule_arn,
                "function": s.function,
                "expression": s.expression,
                "local_period_s": s.period_s * self.scale if self.scale > 0 else None,
                "fired": self.fired.get(s.rule_arn, 0),
            }
            for s in self.schedules
        ]
