"""`itsacat report RUN [--out DIR]`: plots and a report.md for one finished run."""

import argparse
from pathlib import Path

from itsacat import target

# `itsacat.report` (matplotlib, about a second to import) is imported by `run` only, so
# that every other command starts fast.


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write plots and a report.md for a finished run",
        description=(
            "Write a report of a SUCCEEDED run on the current target: cost.png, "
            "accuracy.png, confusion.png, misclassified.png and report.md, which embeds "
            "them with the run's parameters, epochs, final cost, train/test accuracy, "
            "wall time, counters, dataset and model location. The confusion matrix and "
            "the misclassified pictures need the dataset's test set; without one they are "
            "left out and the report says so. Prints the path of report.md."
        ),
        epilog="example: itsacat report RUN --out /tmp/report && less /tmp/report/report.md",
    )
    p.add_argument("run_id", metavar="RUN", help="the run id (see `itsacat runs`)")
    p.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="directory to write into, created if needed (default: reports/RUN/)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from itsacat.report import Sources, make_report

    out = args.out if args.out is not None else Path("reports") / args.run_id
    env = target.connect()
    path = make_report(args.run_id, Sources.from_env(env), out)
    print(path)
    return 0
