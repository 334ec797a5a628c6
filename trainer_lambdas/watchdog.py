"""Lambda handler: re-drive runs whose trainer stopped heartbeating (scheduled).

A run is given up (FAILED) only when its trainer stops `MAX_STALLS` times in a row at the
same committed step: progress resets the count. On AWS an asynchronous retry of a crashed
trainer arrives after its lease has expired (a minute or two later), so nearly every crash
also costs a re-drive, and a budget over the run's whole life would fail a long run after
ten transient failures spread over hours. `redrives` still counts them all, for the record.

A run that never leaves PREPARING (its launch failed on every delivery of the upload) is
failed with the reason after `PREPARE_LIMIT_SECONDS`, instead of staying PREPARING for ever.
"""

import time
from typing import Any

from state.errors import Conflict
from state.runs import PREPARING, TRAINING
from trainer_lambdas import services
from trainer_lambdas.coordinator import Stores
from trainer_lambdas.payloads import TrainerEvent

MAX_STALLS = 10
# A run still PREPARING after this long will not start: the launch function failed on every
# delivery of its upload, and SQS has moved the upload to the dead-letter queue. At least
# the queue's maxReceiveCount x VisibilityTimeout plus the launch function's timeout (3 x
# 360 + 60 s in the template; `tests/deploy` checks it): a preparation still being retried
# is never failed. Not on the stack's scaled clock: the relay waits out the launch
# function's (unscaled) timeout before a redelivery.
PREPARE_LIMIT_SECONDS = 1200


def sweep(now: float | None = None) -> dict[str, Any]:
    """Start a trainer for every TRAINING run whose lease expired; fail hopeless ones."""
    stores, cfg = services.stores(), services.config()
    now = time.time() if now is None else now
    redriven, failed = [], []
    for run in stores.runs.active():
        if run.status == PREPARING and (run.started_at or now) < now - PREPARE_LIMIT_SECONDS:
            if _fail(stores, run.run_id, _NEVER_PREPARED):
                failed.append(run.run_id)
            continue
        if run.status != TRAINING or run.cursor is None:
            continue
        expired = run.lease_until < now
        quiet = run.heartbeat < now - cfg.lease_seconds
        if not (expired and quiet):
            continue
        cursor = run.cursor
        previous = run.stalls
        stalls = previous + 1 if run.stall_cursor == cursor else 1
        if stalls > MAX_STALLS:
            reason = (
                f"the trainer stopped {MAX_STALLS} times in a row at step {cursor}; last "
                f"error: {run.last_error or 'none recorded'}"
            )
            if _fail(stores, run.run_id, reason):
                failed.append(run.run_id)
            continue
        try:
            # Conditional on what this sweep saw: a duplicate tick (same or not) that saw the
            # same stall re-drives it once, and a run that moved on is left alone.
            stores.runs.redrive(run.run_id, cursor, previous, stalls, now)
        except Conflict:
            continue
        stores.functions.start(cfg.trainer_function, TrainerEvent(run.run_id, "watchdog").to_dict())
        redriven.append(run.run_id)
    return {"redriven": redriven, "failed": failed}


_NEVER_PREPARED = (
    f"its preparation did not finish within {PREPARE_LIMIT_SECONDS // 60} minutes: the launch "
    "function failed on every delivery of the upload, which is now in the training-input "
    "dead-letter queue; see `itsacat logs launch`, then upload the dataset again"
)


def _fail(stores: Stores, run_id: str, reason: str) -> bool:
    """Fail an active run and announce it; False if it moved on (or ended) meanwhile."""
    try:
        stores.runs.fail(run_id, reason)
    except Conflict:
        return False
    stores.notifier.run_failed(run_id, reason)
    stores.runs.mark_notified(run_id)
    return True


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    services.setup_logging(context)
    return sweep()
