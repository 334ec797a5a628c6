"""`itsacat reference`: train in one process with the numeric core (the oracle)."""

import argparse
import json
import sys

from itsacat.inputs import load_dataset, load_params
from itsacat.progress import Progress
from trainer_lambdas.nn import network, reference


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reference",
        help="train in-process with the single-process reference trainer",
        description=(
            "Train the network in this process with the numeric core, the same schedule the "
            "distributed trainer uses. Shows a progress bar on stderr; prints a summary, or "
            "with --json exactly one JSON object on stdout."
        ),
    )
    p.add_argument("dataset", help="path to a datasets.h5 (train_set_x/train_set_y, ...)")
    p.add_argument("--params", metavar="FILE", help="parameters.json (default: the shipped one)")
    p.add_argument("--epochs", type=int, metavar="N", help="override the number of epochs")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, epochs=args.epochs)
    ds = load_dataset(args.dataset)
    train = ds.require_train()
    x, y = train.columns()
    bar = Progress(params.epochs)
    result = reference.train(params, x, y, on_epoch=lambda e, c: bar.update(e + 1, cost=c))
    bar.close()
    train_acc = network.accuracy(result.weights, params.activations, x, y)
    test_acc = None
    if ds.test is not None:
        xt, yt = ds.test.columns()
        test_acc = network.accuracy(result.weights, params.activations, xt, yt)
    out = {
        "epochs": result.epochs,
        "costs": result.costs,
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "seconds": result.seconds,
    }
    if args.json:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        test = "n/a (no test set)" if test_acc is None else f"{test_acc:.4f}"
        print(
            f"epochs {result.epochs}  final cost {result.costs[-1]:.6f}  "
            f"train accuracy {train_acc:.4f}  test accuracy {test}  "
            f"({result.seconds:.1f} s, {1000 * result.seconds / result.epochs:.2f} ms/epoch)"
        )
    return 0
