"""`itsacat dataset`: generate a stand-in dataset, check one, fetch the cat data, or build
one from folders of pictures."""

import argparse
import sys
from pathlib import Path

from itsacat import dataset_build, dataset_fetch
from itsacat.errors import UserError
from itsacat.inputs import load_dataset
from trainer_lambdas import datasets


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dataset",
        help="generate, check, fetch or build a datasets.h5",
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
    f = dsub.add_parser(
        "fetch",
        help="download the original project's cat/non-cat datasets.h5 (checked, cached)",
        description=(
            "Download the cat/non-cat datasets.h5 the original project published, check its "
            f"SHA-256 ({dataset_fetch.SHA256}) and cache it in $ITSACAT_HOME/datasets/ "
            "(default ~/.itsacat), where `itsacat demo` finds it. Nothing is downloaded when "
            "the cache already holds it; a file with another checksum is refused and nothing "
            f"is cached. At most {dataset_fetch.MAX_BYTES // 2**20} MB, "
            f"{dataset_fetch.TIMEOUT:g} s per connect or read."
        ),
    )
    f.add_argument(
        "--url",
        help=f"where to download from (default: ${dataset_fetch.URL_VARIABLE}, else "
        f"{dataset_fetch.DEFAULT_URL})",
    )
    f.add_argument(
        "--out",
        metavar="PATH",
        help="also copy the checked file here (a file, or a directory to put datasets.h5 "
        "in); the cache is always kept",
    )
    f.set_defaults(func=fetch)
    b = dsub.add_parser(
        "build",
        help="build a dataset from two folders of pictures",
        description=(
            "Build a dataset in the cat/non-cat schema from two folders of JPEG, PNG, GIF or "
            "WebP pictures, each prepared exactly as the prediction API prepares a picture "
            "(its pixel cap and checks, EXIF orientation, RGB, bicubic resize to SIZE x SIZE). "
            "Labels: exactly two classes; label 1 is the class named 'cat' (any case) if "
            "there is one, else the second --class; list_classes is [label 0, label 1]. "
            "Each class is split into train and test separately (--test-fraction of it, at "
            "least one picture each way), shuffled with --seed: the same folders and seed "
            "give the same file. The files directly in each DIR are read (not subfolders; "
            "hidden files are ignored); one that is not a usable picture is listed with the "
            f"reason and skipped (with --strict: nothing is written). A class needs at least "
            f"{dataset_build.MIN_PER_CLASS} usable pictures. OUT is replaced atomically."
        ),
    )
    b.add_argument("out", help="where to write the .h5 file")
    b.add_argument(
        "--class",
        dest="classes",
        action="append",
        required=True,
        type=_class_arg,
        metavar="NAME=DIR",
        help="a class's name and its folder of pictures; give exactly two",
    )
    b.add_argument(
        "--size",
        type=int,
        default=dataset_build.DEFAULT_SIZE,
        help=f"picture side in pixels (default {dataset_build.DEFAULT_SIZE}, as the cat data)",
    )
    b.add_argument(
        "--test-fraction",
        type=float,
        default=dataset_build.DEFAULT_TEST_FRACTION,
        metavar="F",
        help="share of each class held out for the test set, 0 <= F < 1 (default "
        f"{dataset_build.DEFAULT_TEST_FRACTION:g}; 0: no test set)",
    )
    b.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    b.add_argument(
        "--strict",
        action="store_true",
        help="refuse to build (write nothing) if any file is not a usable picture",
    )
    b.set_defaults(func=build)


def _class_arg(text: str) -> dataset_build.ClassSource:
    try:
        return dataset_build.parse_class(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


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


def fetch(args: argparse.Namespace) -> int:
    from embedded.stack import default_home

    url = dataset_fetch.resolve_url(args.url)
    cache = dataset_fetch.cache_dir(default_home())
    said: list[str] = []
    path = dataset_fetch.fetch(url, cache, say=said.append)
    if said:
        print(said[0])
    else:
        print(f"downloaded {url} to {path} (sha256 {dataset_fetch.SHA256[:12]}... checked)")
    if args.out:
        out = dataset_fetch.copy_to(path, Path(args.out))
        print(f"copied to {out}")
    return 0


def build(args: argparse.Namespace) -> int:
    def warn(path: Path, reason: str) -> None:
        what = "cannot use" if args.strict else "skipped"
        print(f"itsacat: warning: {what} {path}: {reason}", file=sys.stderr)

    result = dataset_build.build(
        Path(args.out),
        args.classes,
        size=args.size,
        test_fraction=args.test_fraction,
        seed=args.seed,
        strict=args.strict,
        warn=warn,
        progress=sys.stderr.isatty(),
    )
    for c in result.classes:
        print(
            f"class {c.label} {c.name!r} ({c.folder}): {c.found} found, {c.used} used, "
            f"{len(c.skipped)} skipped; {c.train} train, {c.test} test"
        )
    names = [c.name for c in result.classes]
    print(
        f"wrote {result.out}: {result.train} train + {result.test} test pictures, "
        f"{result.size}x{result.size} RGB, classes {names} (seed {result.seed})"
    )
    return 0
