"""`itsacat train`: upload a dataset into the bucket's training_input/ and follow the run."""

import argparse
import sys
from pathlib import Path

from itsacat import target
from itsacat.errors import UserError
from itsacat.inputs import load_params
from itsacat.runview import TRAIN_JSON_KEYS, Runs
from itsacat.uploads import upload_dataset
from trainer_lambdas import datasets
from trainer_lambdas.nn.params import DISTRIBUTIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="upload a dataset and train it on the stack",
        description=(
            "Upload DATASET (and its parameters) under training_input/ in the bucket, exactly "
            "as a user dropping the file into S3 would; the upload starts the run. Starts the "
            "embedded stack first if it is not running. Prints the run id; with --wait follows "
            "the run with a progress bar until it ends."
        ),
    )
    p.add_argument("dataset", help="a datasets.h5 file")
    p.add_argument("--params", metavar="FILE", help="parameters.json (default: the shipped one)")
    p.add_argument("--epochs", type=int, metavar="N", help="override the number of epochs")
    p.add_argument("--fanout", type=int, metavar="K", help="neurons per invocation (default 1)")
    p.add_argument("--commit-every", type=int, metavar="N", help="commit every N steps")
    p.add_argument(
        "--plan",
        choices=DISTRIBUTIONS,
        help="fanout: every layer fans out (default); hybrid: only layer 1, the trainer "
        "computes the small layers",
    )
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")
    p.add_argument(
        "--json",
        action="store_true",
        help="with --wait: print one JSON object with the outcome on stdout",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = load_params(
        args.params,
        epochs=args.epochs,
        fanout=args.fanout,
        commit_every=args.commit_every,
        plan=args.plan,
    )
    path = Path(args.dataset)
    try:
        datasets.load(path)  # the launch validates too; this fails faster and locally
    except datasets.DatasetError as e:
        raise UserError(str(e)) from e
    env = target.connect(start=True)
    run_id, key = upload_dataset(env, path, params)
    runs = Runs(env)
    print(f"run {run_id} started from s3://{env['ITSACAT_BUCKET']}/{key}", file=sys.stderr)
    if not args.wait:
        print(run_id)
        return 0
    return runs.follow(run_id, as_json=args.json, keys=TRAIN_JSON_KEYS)
