"""`itsacat watch RUN`: follow a run's progress until it ends."""

import argparse

from itsacat import target
from itsacat.runview import Runs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "watch",
        help="follow a run live until it ends",
        description=(
            "Show a run's progress (epoch, cost, ETA, invocations, faults absorbed) until it "
            "ends, whoever started it (`itsacat train` or an `aws s3 cp` into training_input/)."
            " Exits 0 when the run succeeded, 1 otherwise."
        ),
    )
    p.add_argument("run_id", metavar="RUN", help="the run id (see `itsacat runs`)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return Runs(target.connect()).follow(args.run_id, as_json=False)
