"""`itsacat models`, `itsacat promote RUN`, `itsacat rollback`: the blue/green model stages.

Every successful run's model becomes the staging ("green") candidate; production ("blue"),
what `/image` serves, changes only by `promote` or `rollback` (the first model ever goes
to production at once). See `state.models` for how a promotion stays one conditional write.
"""

import argparse
import json
import sys
from typing import Any

from itsacat import target
from itsacat.errors import UserError
from state.models import (
    PRODUCTION,
    STAGING,
    ModelNotFound,
    ModelStore,
    ModelStoreError,
    PromotionConflict,
    PromotionRefused,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list trained models and which one is in production and staging",
        description=(
            "List the models in the bucket, oldest first, with their run, date, accuracies "
            "and stage: production (what /image serves) and staging (the newest candidate, "
            "served at /staging/image)."
        ),
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=list_models)

    q = sub.add_parser(
        "promote",
        help="make a run's model the production model (after checking it is not worse)",
        description=(
            "Make RUN's model production, in one conditional write: refused when its test "
            "accuracy is below production's (unless --force), or when production changed "
            "meanwhile (another promotion won: check and retry). `itsacat rollback` undoes it."
        ),
    )
    q.add_argument("run_id", metavar="RUN", help="the run whose model to promote")
    q.add_argument(
        "--force", action="store_true", help="promote even if its test accuracy is lower"
    )
    q.set_defaults(func=promote)

    r = sub.add_parser(
        "rollback",
        help="put the previous production model back",
        description="Make the model production held before the current one production again.",
    )
    r.set_defaults(func=rollback)


def store() -> ModelStore:
    env = target.connect()
    bucket = env.get("ITSACAT_BUCKET")
    if not bucket:
        raise UserError("no bucket: set ITSACAT_BUCKET or start the stack with `itsacat up`")
    return ModelStore(bucket)


def _share(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def list_models(args: argparse.Namespace) -> int:
    try:
        models = store().models()
    except ModelStoreError as e:
        raise UserError(f"cannot list models: {e}") from e
    rows = [
        {
            "run_id": m["run_id"],
            "trained_at": m.get("trained_at"),
            "train_accuracy": m.get("train_accuracy"),
            "test_accuracy": m.get("test_accuracy"),
            "final_cost": m.get("final_cost"),
            "epochs": m.get("epochs"),
            "stages": m["stages"],
        }
        for m in models
    ]
    if args.json:
        json.dump(rows, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print("no models yet (train one with `itsacat train DATASET`)")
        return 0
    print(f"{'RUN':<34} {'TRAINED':<25} {'TRAIN':>6} {'TEST':>6}  STAGE")
    for row in rows:
        print(
            f"{row['run_id']:<34} {row['trained_at'] or '-':<25} "
            f"{_share(row['train_accuracy']):>6} {_share(row['test_accuracy']):>6}  "
            f"{', '.join(row['stages'])}"
        )
    return 0


def promote(args: argparse.Namespace) -> int:
    models = store()
    try:
        done = models.promote(args.run_id, force=args.force)
    except ModelNotFound as e:
        raise UserError(f"cannot promote: {e} (see `itsacat models`)") from e
    except (PromotionRefused, PromotionConflict) as e:
        raise UserError(f"promotion refused: {e}", exit_code=1) from e
    except ModelStoreError as e:
        raise UserError(f"cannot promote: {e}") from e
    if not done.changed:
        print(f"{done.run_id} is already in {PRODUCTION}")
    else:
        was = done.previous or "nothing"
        print(
            f"{done.run_id} is now in {PRODUCTION} (it replaces {was}; "
            "`itsacat rollback` puts that back)"
        )
    staging = models.pointer(STAGING)
    if staging is not None and staging.run_id != done.run_id:
        print(f"{STAGING} still holds {staging.run_id}")
    return 0


def rollback(args: argparse.Namespace) -> int:
    try:
        done = store().rollback()
    except (PromotionRefused, PromotionConflict) as e:
        raise UserError(f"rollback refused: {e}", exit_code=1) from e
    except ModelStoreError as e:
        raise UserError(f"cannot roll back: {e}") from e
    print(f"{done.run_id} is back in {PRODUCTION} (it replaces {done.previous})")
    return 0
