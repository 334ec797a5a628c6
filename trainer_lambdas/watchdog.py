"""Lambda handler: re-drive runs whose trainer stopped heartbeating (scheduled)."""

import time
from typing import Any

from trainer_lambdas import services
from trainer_lambdas.payloads import TrainerEvent

MAX_REDRIVES = 10


def sweep(now: float | None = None) -> dict[str, Any]:
    """Start a trainer for every TRAINING run whose lease expired; fail hopeless ones."""
    s, cfg = services.stores(), services.config()
    now = time.time() if now is None else now
    redriven, failed = [], []
    for run in s.runs.active():
        if run.status != "TRAINING":
            continue
        expired = float(run.get("lease_until", 0)) < now
        quiet = float(run.get("heartbeat", 0)) < now - cfg.lease_seconds
        if not (expired and quiet):
            continue
        if int(run.get("redrives", 0)) >= MAX_REDRIVES:
            reason = (
                f"the trainer stopped {MAX_REDRIVES} times; last error: "
                f"{run.get('last_error', 'none recorded')}"
            )
            s.runs.fail(run.run_id, reason)
            s.notifier.publish(
                f"itsacat: run {run.run_id} failed",
                reason,
                {"status": "FAILED", "run_id": run.run_id, "error": reason},
            )
            failed.append(run.run_id)
            continue
        s.runs.count(run.run_id, {"redrives": 1})
        s.functions.start(cfg.trainer_function, TrainerEvent(run.run_id, "watchdog").to_dict())
        redriven.append(run.run_id)
    return {"redriven": redriven, "failed": failed}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    services.setup_logging(context)
    return sweep()
