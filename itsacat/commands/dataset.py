"""`itsacat dataset`: generate a stand-in dataset, or check one."""

import argparse
from pathlib import Path

from itsacat.errors import UserError
from itsacat.inputs import load_dataset
from trainer_lambdas import datasets


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dataset",
        help="generate or check a datasets.h5",
        description="Work with files in the cat/non-cat datasets.h5 schema.",
    )
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    dsub.required = True
    s = dsub.add_parser(
        "synth",
        help="write a generated stand-in dataset (not real cats)",
        description=(
            "Write a generated dataset in the same schema as the cat/non-cat data: smooth "
            "random backgrounds, and for label 1 a warm blob with two ears. It is learnable, "
            "so training can be shown end to end without the real data; it says nothing "
            "about real cat photos."
        ),
    )
    s.add_argument("out", help="where to write the .h5 file")
    s.add_argument("--train", type=int, default=209, help="training examples (default 209)")
    s.add_argument("--test", type=int, default=50, help="test examples (default 50)")
    s.add_argument("--side", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    s.set_defaults(func=synth)
    c = dsub.add_parser(
        "check",
        help="validate a dataset and print its shape",
        description="Validate a datasets.h5 with the rules training applies, and describe it.",
    )
    c.add_argument("path", help="the .h5 file")
    c.set_defaults(func=check)


def synth(args: argparse.Namespace) -> int:
    if args.train < 1 or args.test < 0 or not 1 <= args.side <= datasets.MAX_SIDE:
        raise UserError(f"--train must be >= 1, --test >= 0 and --side 1..{datasets.MAX_SIDE}")
    ds = datasets.synthesize(args.train, args.test, args.side, args.seed)
    out = Path(args.out)
    try:
        datasets.save(ds, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e}") from e
    print(
        f"wrote {out}: {args.train} train + {args.test} test generated images "
        f"({args.side}x{args.side} RGB; a stand-in, not real cat photos)"
    )
    return 0


def check(args: argparse.Namespace) -> int:
    ds = load_dataset(args.path)
    parts = [
        f"{name} {split.m} examples ({int(split.y.sum())} of class 1)"
        for name, split in (("train", ds.train), ("test", ds.test))
        if split is not None
    ]
    h, w, c = ds.image_shape
    print(f"{args.path}: ok; {', '.join(parts)}; images {h}x{w}x{c}; classes {list(ds.classes)}")
    return 0
