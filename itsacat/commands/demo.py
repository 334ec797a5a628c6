"""`itsacat demo`: start the stack, train, report, serve and predict, in one command."""

import argparse
from pathlib import Path

from itsacat import demo
from trainer_lambdas.nn.params import (
    DISTRIBUTIONS,
    EVERY_LAYER_REMOTE,
    FIRST_LAYER_REMOTE,
    MAX_NEURONS,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole story on the embedded stack: upload, train, report, serve, approve",
        description=(
            "Start the embedded stack (or use the running one) and find the dataset: "
            "--dataset, else the cat data cached in $ITSACAT_HOME (itsacat dataset fetch), "
            "else a download of it, else a generated stand-in, saying which. "
            "Upload it (which starts a run), train with the default parameters and a live "
            "progress bar, print the summary and write the report; the first model goes to "
            "production. Train a second, shorter run, whose model lands in staging; serve "
            "both APIs (production and staging), ask both about a few pictures of the test set "
            "(or --images), and "
            "promote the candidate only if its test accuracy is at least production's. "
            "Leaves the stack and the APIs running (stop them with `itsacat down`), unless "
            "--exit."
        ),
    )
    p.add_argument("--dataset", metavar="PATH", help="the datasets.h5 to train on")
    p.add_argument(
        "--dataset-url",
        metavar="URL",
        help="where to download the cat data if it is not cached "
        "(default: $ITSACAT_DATASET_URL, else the original project's published file)",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help="ask the APIs about the .jpeg/.jpg/.png pictures in DIR (default: a few "
        "pictures of the dataset's test set)",
    )
    p.add_argument(
        "--epochs", type=int, metavar="N", help="train only N epochs (a shorter demo, for tests)"
    )
    p.add_argument(
        "--plan",
        choices=DISTRIBUTIONS,
        default=EVERY_LAYER_REMOTE,
        help="fanout (default): every layer fans out, one neuron per invocation unless "
        "--fanout; hybrid: layer 1 fans out over the neuron function, the trainer computes "
        "the small layers (the same numbers, far fewer invocations)",
    )
    p.add_argument(
        "--fanout",
        type=int,
        metavar="K",
        help=f"neurons per Lambda invocation (default: 1 with fanout, {MAX_NEURONS} with hybrid)",
    )
    p.add_argument(
        "--commit-every",
        type=int,
        metavar="N",
        help="commit every N steps (default: the parameters' commit_every, 50)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="the production API's port (8000; if 0 or busy, a free one)",
    )
    p.add_argument(
        "--staging-port",
        type=int,
        default=8080,
        help="the staging API's port (8080, the original project's green API; if 0 or busy, "
        "a free one)",
    )
    p.add_argument("--out", default="reports", help="where reports go (reports/)")
    p.add_argument("--exit", action="store_true", help="stop everything at the end (for CI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.images:
        demo.pictures_in(Path(args.images))  # a wrong folder fails now, not after training
    return demo.run(
        demo.Options(
            dataset=args.dataset,
            dataset_url=args.dataset_url,
            images=Path(args.images) if args.images else None,
            epochs=args.epochs,
            plan=args.plan,
            fanout=args.fanout
            if args.fanout is not None
            else (MAX_NEURONS if args.plan == FIRST_LAYER_REMOTE else 1),
            commit_every=args.commit_every,
            port=args.port,
            staging_port=args.staging_port,
            exit=args.exit,
            out=Path(args.out),
        )
    )
