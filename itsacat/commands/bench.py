"""`itsacat bench`: time every plan against the reference and project it onto AWS
(`itsacat.bench.plans`)."""

import argparse
import json
import sys
from pathlib import Path

from itsacat.bench import plans as bench
from itsacat.dataset_source import required
from itsacat.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the plans against the reference trainer",
        description=(
            "Start a fresh embedded stack in a temporary home, train the 12288-20-7-5-1 network "
            "(full batch, float64) in-process with the reference trainer and on the stack with "
            "each plan, and report seconds per epoch, the ratio to the reference, and per "
            "epoch the Lambda invocations, AWS requests by operation and bytes moved, with a "
            "projection of a full run's time and cost on AWS. The stack is stopped at the end."
        ),
    )
    p.add_argument(
        "dataset",
        nargs="?",
        metavar="DATASET",
        help="the datasets.h5 to train on (or --dataset; default: the cat data "
        "`itsacat dataset fetch` cached under $ITSACAT_HOME)",
    )
    p.add_argument("--dataset", dest="dataset_option", metavar="PATH", help="the same as DATASET")
    p.add_argument(
        "--epochs",
        type=int,
        default=300,
        help="epochs per run (default: 300; at least 3 commits' worth, commit_every being 50)",
    )
    p.add_argument(
        "--plans",
        nargs="+",
        choices=sorted(bench.PLANS),
        default=list(bench.PLANS),
        help="plans to run (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--scaling",
        action="store_true",
        help="instead: seconds per epoch against layer-1 width (20, 80, 320) and examples "
        "(209, 2090), with a table and a PNG plot (slow)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="also write the JSON (and with --scaling the plot) here: a directory",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    least = 8 if args.scaling else 150
    if args.epochs < least:
        raise UserError(
            f"--epochs must be at least {least}: epochs are timed between commits "
            + ("(four per run)" if args.scaling else "(every 50)")
        )
    if args.dataset and args.dataset_option and args.dataset != args.dataset_option:
        raise UserError("give the dataset once: DATASET or --dataset, not both")
    path = required(args.dataset or args.dataset_option)
    if args.scaling:
        rows = bench.scaling(path, args.epochs, args.plans)
        result: dict = {"scaling": rows}
        if args.out:
            result["plot"] = str(bench.plot(rows, args.out / "scaling.png"))
        text = bench.scaling_table(rows)
        name = "scaling.json"
    else:
        result = bench.bench(path, args.epochs, args.plans)
        text = bench.table(result)
        name = "bench.json"
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_text(json.dumps(result, indent=1) + "\n")
        (args.out / name.replace(".json", ".md")).write_text(text + "\n")
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(text)
    return 0
