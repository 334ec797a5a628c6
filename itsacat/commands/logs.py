"""`itsacat logs`: the functions' CloudWatch Logs, merged, readable, filtered by run."""

import argparse
import sys
import time

from itsacat import target
from itsacat.errors import UserError
from itsacat.logview import FUNCTIONS, Line, fetch, follow, parse_since


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "logs",
        help="show the functions' logs (CloudWatch Logs), merged in time order",
        description=(
            "Show the log lines of the template's functions from CloudWatch Logs on the "
            "current target (the embedded stack or AWS), merged in time order. Structured "
            "lines are shown as: time, function, level, run and epoch, message."
        ),
    )
    p.add_argument(
        "function",
        nargs="?",
        choices=(*FUNCTIONS, "api"),
        help="one function (default: all of launch, trainer, neuron, watchdog)",
    )
    p.add_argument("--run", metavar="RUN", help="only lines about this run")
    p.add_argument(
        "--since", default="10m", help="how far back to start, e.g. 30s, 10m, 2h, 1d (10m)"
    )
    p.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C"
    )
    p.set_defaults(func=run)


def groups(env: dict[str, str], function: str | None) -> dict[str, str]:
    names = {f: env.get(f"{f.upper()}_FUNCTION") for f in FUNCTIONS}
    if function == "api":
        group = env.get("API_LOG_GROUP")
        if not group:
            raise UserError(
                "the API's logs are not in CloudWatch on the embedded stack: `itsacat serve` "
                "prints them, and the demo's server writes them to $ITSACAT_HOME/logs/api.log"
            )
        return {"api": group}
    chosen = [function] if function else list(FUNCTIONS)
    missing = [f for f in chosen if not names.get(f)]
    if missing:
        raise UserError(f"the target does not name the function(s): {', '.join(missing)}")
    return {f: f"/aws/lambda/{names[f]}" for f in chosen}


def run(args: argparse.Namespace) -> int:
    env = target.connect()
    selected = groups(env, args.function)
    start_ms = int((time.time() - parse_since(args.since)) * 1000)

    def wanted(line: Line) -> bool:
        return args.run is None or line.run_id() == args.run

    if not args.follow:
        for line in fetch(selected, start_ms):
            if wanted(line):
                print(line.format())
        return 0
    try:
        for line in follow(selected, start_ms):
            if wanted(line):
                print(line.format(), flush=True)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
