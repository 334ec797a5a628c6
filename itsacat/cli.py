"""The `itsacat` command: one subcommand per module in `itsacat.commands`.

Each command module exposes `register(subparsers)`, which adds its subparser and sets
`func` to a callable taking the parsed arguments and returning an exit code.
"""

import argparse
import importlib
import os
import signal
import sys

from itsacat.errors import UserError

# Order here is the order in `itsacat --help`.
COMMAND_MODULES = (
    "itsacat.commands.demo",
    "itsacat.commands.stack",
    "itsacat.commands.reference",
    "itsacat.commands.dataset",
    "itsacat.commands.train",
    "itsacat.commands.runs",
    "itsacat.commands.watch",
    "itsacat.commands.logs",
    "itsacat.commands.control",
    "itsacat.commands.report",
    "itsacat.commands.models",
    "itsacat.commands.serve",
    "itsacat.commands.deploy",
    "itsacat.commands.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itsacat",
        description=(
            "Serverless neural-network training on AWS Lambda (or the embedded local stack), "
            "and the cat/non-cat prediction API."
        ),
    )
    parser.add_argument(
        "--target",
        choices=("embedded", "aws"),
        help="where commands send their requests: the embedded stack, or the AWS stack that "
        "`itsacat deploy` recorded (default: $ITSACAT_TARGET, else the environment's "
        "ITSACAT_BUCKET, else the embedded stack)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# What the `stack` extra installs (pyproject.toml): the command needs them, the functions not.
STACK_EXTRA_MODULES = frozenset({"moto", "chalice", "samtranslator", "awscli", "cfnlint"})


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.target:
            os.environ["ITSACAT_TARGET"] = args.target
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"itsacat: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in STACK_EXTRA_MODULES:
            raise
        print(
            f"itsacat: error: {e.name} is not installed: the itsacat command needs the "
            "'stack' extra: pip install 'itsacat[stack]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("itsacat: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The `itsacat` executable: `main` plus the signal handling of a command-line tool."""
    # `itsacat ... | head` should end quietly, as other command-line tools do. Only here:
    # `main` also runs inside other processes (tests), which must keep Python's default.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())


if __name__ == "__main__":
    console()
