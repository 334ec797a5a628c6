"""`itsacat resume RUN` and `itsacat cancel RUN`: move a run on, or stop it, by hand.

Both are one conditional write on the run record (`RunStore.resume`, `RunStore.cancel`), so
they cannot race a trainer into a wrong state: a cancelled run's trainer finds its next
commit refused and stops; a resumed run is taken up by a fresh trainer invocation, which
continues from the last committed step (training is deterministic, so the numbers are those
of an uninterrupted run). Resuming a TRAINING run whose trainer stopped without giving its
lease back is what the watchdog does on its schedule, done now.
"""

import argparse
import sys
import time

from itsacat import target
from itsacat.errors import UserError
from itsacat.runview import Runs
from state.errors import Conflict, StateError
from state.functions import Functions
from state.runs import CANCELLED, FAILED, PREPARING, SUCCEEDED, TRAINING, RunRecord
from trainer_lambdas.payloads import TrainerEvent


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "resume",
        help="continue a failed, cancelled or stalled run from its last committed step",
        description=(
            "Continue RUN from its last committed step. A FAILED or CANCELLED run that got as "
            "far as training goes back to TRAINING; a TRAINING run whose trainer stopped (its "
            "lease expired) is re-driven at once instead of at the watchdog's next sweep. "
            "Either way a new trainer invocation (reason 'resume') takes it up."
        ),
    )
    r.add_argument("run_id", metavar="RUN")
    r.add_argument("--wait", action="store_true", help="follow the run until it ends")
    r.add_argument("--json", action="store_true", help="with --wait: print one JSON object")
    r.set_defaults(func=resume)

    c = sub.add_parser(
        "cancel",
        help="stop a run cleanly (it can be resumed later)",
        description=(
            "Mark RUN as CANCELLED. Its trainer stops at its next commit (the commit is refused); "
            "everything committed so far is kept, so `itsacat resume RUN` continues from there."
        ),
    )
    c.add_argument("run_id", metavar="RUN")
    c.set_defaults(func=cancel)


def _where(run: RunRecord) -> str:
    epochs = int((run.params or {}).get("epochs", 0))
    return f"epoch {run.epochs_done} of {epochs}, step {run.cursor or 0}"


def resume(args: argparse.Namespace) -> int:
    env = target.connect()
    runs = Runs(env)
    run = runs.get(args.run_id)
    if run.status == SUCCEEDED:
        raise UserError(f"run {run.run_id} already succeeded; there is nothing to resume")
    if run.status == PREPARING:
        raise UserError(
            f"run {run.run_id} is still being prepared by the launch function; "
            "it starts training by itself"
        )
    if run.status in (FAILED, CANCELLED):
        if run.cursor is None:
            raise UserError(
                f"run {run.run_id} {run.status.lower()} before training started "
                f"({run.error}); fix the input and upload it again"
            )
        try:
            run = runs.runs.resume(run.run_id)
        except Conflict as e:
            raise UserError(f"run {run.run_id} changed meanwhile; look again: {e}") from e
        except StateError as e:
            raise UserError(str(e)) from e
        print(f"run {run.run_id} is TRAINING again from {_where(run)}", file=sys.stderr)
    elif run.status == TRAINING:
        until = float(run.lease_until)
        if run.lease_owner and until > time.time():
            print(
                f"run {run.run_id} is training ({_where(run)}); its trainer holds the lease for "
                f"{until - time.time():.0f} s more, so there is nothing to resume"
            )
            return 0
        print(
            f"run {run.run_id} has no live trainer; re-driving it from {_where(run)}",
            file=sys.stderr,
        )
    else:
        raise UserError(f"run {run.run_id} is {run.status}; it cannot be resumed")
    try:
        Functions().start(env["TRAINER_FUNCTION"], TrainerEvent(run.run_id, "resume").to_dict())
    except StateError as e:
        raise UserError(f"could not start the trainer: {e}") from e
    if not args.wait:
        print(run.run_id)
        return 0
    return runs.follow(run.run_id, as_json=args.json)


def cancel(args: argparse.Namespace) -> int:
    runs = Runs(target.connect())
    run = runs.get(args.run_id)
    try:
        run = runs.runs.cancel(run.run_id)
    except Conflict as e:
        current = runs.get(args.run_id)
        raise UserError(
            f"run {current.run_id} is {current.status}, not running; nothing to cancel"
        ) from e
    except StateError as e:
        raise UserError(str(e)) from e
    where = f" at {_where(run)}" if run.cursor is not None else " before training began"
    print(f"cancelled run {run.run_id}{where}; `itsacat resume {run.run_id}` continues it")
    return 0
