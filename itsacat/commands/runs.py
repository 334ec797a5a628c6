"""`itsacat runs`: list runs, or show one."""

import argparse
import json
import sys

from itsacat import target
from itsacat.runview import Runs, describe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list training runs, newest first, or show one",
        description="List the runs on the current target, newest first; `runs show RUN` for one.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=list_runs)
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    s = rsub.add_parser(
        "show",
        help="show one run",
        description="Show one run: status, error, epochs, costs, accuracy, model, counters.",
    )
    s.add_argument("run_id", metavar="RUN")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=show)


def list_runs(args: argparse.Namespace) -> int:
    runs = Runs(target.connect()).listing()
    if args.json:
        json.dump(runs, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if not runs:
        print("no runs yet (start one with `itsacat train DATASET`)")
        return 0
    print(f"{'RUN':<32} {'STATUS':<10} {'EPOCHS':>11} {'COST':>9} {'TEST':>6}  CREATED")
    for r in runs:
        cost = "" if r["final_cost"] is None else f"{r['final_cost']:.5f}"
        acc = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.3f}"
        epochs = f"{r['epochs_done']}/{r['epochs']}"
        print(
            f"{r['run_id']:<32} {r['status']:<10} {epochs:>11} {cost:>9} {acc:>6}  {r['created']}"
        )
        if r["error"]:
            print(f"    error: {r['error']}")
    return 0


def show(args: argparse.Namespace) -> int:
    summary = Runs(target.connect()).summary(args.run_id)
    if args.json:
        json.dump(summary, sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        print(describe(summary))
    return 0
