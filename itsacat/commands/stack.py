"""`itsacat up`, `down`, `status` and `env`: the embedded stack from the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

from itsacat.errors import UserError

_HOME_HELP = "state directory of the stack (default: $ITSACAT_HOME or ~/.itsacat)"


def register(sub: Any) -> None:
    up = sub.add_parser(
        "up",
        help="start the embedded AWS stack in the background",
        description=(
            "Start the embedded stack: an AWS emulator (moto) on 127.0.0.1 holding the resources "
            "of templates/template.yaml, deployed as `itsacat deploy` deploys them (the same "
            "code packages, uploaded by `aws cloudformation package`), and a local Lambda "
            "runtime that runs each function's deployed package in warm worker processes "
            "(AWS's runtime interface client, under the function's own IAM role, enforced), "
            "feeds S3 uploads under training_input/ to the "
            "launch function, fires the watchdog schedule and ships function logs to CloudWatch "
            "Logs. The data of the previous `itsacat up` (objects, table items, logs, queued "
            "messages, saved in <home>/state) is put back before the functions start, so runs "
            "and models are still there. "
            'Returns once everything answers. Then: eval "$(itsacat env)".'
        ),
    )
    up.add_argument("--port", type=int, help="emulator port (default: a free one)")
    up.add_argument(
        "--lambda-port", type=int, help="local Lambda Invoke API port (default: a free one)"
    )
    up.add_argument(
        "--workers",
        type=int,
        default=4,
        help="warm worker processes per function, at most (default: 4)",
    )
    up.add_argument(
        "--time-scale",
        type=fraction,
        default=None,
        metavar="F",
        help="AWS's clocks run F times as long: the waits before asynchronous retries (1 and "
        "2 minutes on AWS), the watchdog's rate (1 minute), the trainer's lease (60 s), "
        "the SQS visibility timeout, the throttle back-off; 1 is AWS's own "
        "pace (default: 1/15, a minute lasts 4 s). A fraction such as 1/60 is accepted",
    )
    up.add_argument(
        "--account-concurrency",
        type=int,
        default=1000,
        metavar="N",
        help="the account's Lambda concurrency limit: invocations beyond N in flight are "
        "throttled (429), as on AWS (default: 1000, AWS's default; new accounts often get "
        "far less)",
    )
    up.add_argument(
        "--no-schedules",
        action="store_true",
        help="never fire the template's scheduled rules (the watchdog), e.g. for benchmarks",
    )
    up.add_argument("--email", default="", help="e-mail subscription for the notification topic")
    up.add_argument(
        "--faults",
        metavar="SPEC",
        default="",
        help="inject faults, e.g. "
        "duplicate=0.1,crash_before=0.1,crash_after=0.1,timeout=0.05,throttle=0.1,"
        "redeliver=0.1,ambiguous=0.1,unprocessed=0.1,hosts=mixed,delay_ms=0-200,"
        "s3_duplicate=0.5,seed=7 (probabilities per invocation or per request; "
        "see docs/reliability.md, Fault injection)",
    )
    up.add_argument(
        "--parameter",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a template parameter, e.g. TrainerTimeout=30, NeuronTimeout=2, LeaseSeconds=10 "
        "(repeatable)",
    )
    up.add_argument(
        "--template",
        type=Path,
        metavar="PATH",
        help="run the stack from this template instead of templates/template.yaml (to try a "
        "change locally: its functions get the project's code and layer, as `itsacat deploy` "
        "would give them)",
    )
    up.add_argument("--home", type=Path, help=_HOME_HELP)
    up.set_defaults(func=cmd_up)

    down = sub.add_parser(
        "down",
        help="stop the embedded stack (its data is kept for the next `itsacat up`)",
        description="Stop the processes `itsacat up` started (by their recorded ids). "
        "The emulator's data (objects, table items, logs, queued messages) is kept in "
        "<home>/state and the next `itsacat up` puts it back; it is saved every 5 s, so even "
        "after a crash only the last seconds are lost. Logs of the processes stay in "
        "<home>/logs.",
    )
    down.add_argument(
        "--wipe",
        action="store_true",
        help="also delete the saved data (all runs, models and logs): the next `itsacat up` "
        "starts empty",
    )
    down.add_argument("--home", type=Path, help=_HOME_HELP)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser(
        "status",
        help="show the embedded stack (exit status 1 if it is not running)",
        description="Show the embedded stack's endpoints, processes, resources and invocation "
        "counters. Exits 1 when it is not running.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--home", type=Path, help=_HOME_HELP)
    status.set_defaults(func=cmd_status)

    env = sub.add_parser(
        "env",
        help="print shell exports that point the AWS CLI and boto3 at the stack",
        description='Print `export` lines for the running stack; use as: eval "$(itsacat env)". '
        "Sets AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_LAMBDA, the region, dummy credentials, "
        "ITSACAT_BUCKET, the table names, the topic ARN and the prediction API's role "
        "(ITSACAT_API_ROLE_ARN, which `itsacat serve` takes).",
    )
    env.add_argument("--home", type=Path, help=_HOME_HELP)
    env.set_defaults(func=cmd_env)


def cmd_up(args: argparse.Namespace) -> int:
    from embedded.invocations import RuntimeConfig
    from embedded.stack import AlreadyRunning, StackError, start

    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.account_concurrency < 1:
        raise UserError("--account-concurrency must be at least 1")
    from embedded.faults import FaultPlan
    from embedded.stack import info as recorded
    from embedded.stack import restart_runtime

    try:
        FaultPlan.parse(args.faults)
    except ValueError as e:
        raise UserError(f"--faults: {e}") from e
    config = RuntimeConfig(
        workers=args.workers,
        faults=args.faults,
        schedules=not args.no_schedules,
        account_concurrency=args.account_concurrency,
        **({"time_scale": args.time_scale} if args.time_scale is not None else {}),
    )
    parameters = _parameters(args.parameter)
    if args.email:
        parameters["NotificationEmail"] = args.email
    began = time.monotonic()
    try:
        existing = recorded(args.home)
        if existing is not None and existing.processes() == {"emulator": True, "runtime": False}:
            # Only the runtime died: start it again and keep the emulator's data.
            info = restart_runtime(args.home)
            print(
                f"restarted the local runtime of `{info.stack_name}` "
                f"({time.monotonic() - began:.1f} s); the emulator's state is kept, "
                "and the watchdog re-drives runs whose trainer died"
            )
            _describe(info)
            return 0
    except StackError as e:
        raise UserError(str(e)) from e
    template = {"template": args.template.resolve()} if args.template else {}
    if args.template and not args.template.is_file():
        raise UserError(f"--template {args.template}: no such file")
    try:
        info = start(
            args.home,
            port=args.port,
            lambda_port=args.lambda_port,
            config=config,
            parameters=parameters or None,
            **template,
        )
    except AlreadyRunning as e:
        print(f"itsacat: {e}; `itsacat status` shows it, `itsacat down` stops it")
        return 0
    except StackError as e:
        raise UserError(str(e)) from e
    print(f"embedded stack `{info.stack_name}` is up ({time.monotonic() - began:.1f} s)")
    if info.restored:
        from embedded.persistence import Restored

        print(Restored(**info.restored).summary())
    _describe(info)
    print('\nNext: eval "$(itsacat env)"   then e.g.  aws s3 ls s3://$ITSACAT_BUCKET')
    return 0


def fraction(text: str) -> float:
    """A positive number, written as a decimal or a fraction (`1/60`)."""
    top, sep, bottom = text.partition("/")
    try:
        value = float(top) / float(bottom) if sep else float(top)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _parameters(items: list[str]) -> dict[str, str]:
    """`--parameter Key=Value` options as template parameter overrides."""
    out: dict[str, str] = {}
    if not items:
        return out
    from embedded.deploy import load_template
    from embedded.stack import TEMPLATE

    known = sorted(load_template(TEMPLATE).get("Parameters", {}))
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--parameter {item!r}: expected KEY=VALUE, e.g. TrainerTimeout=30")
        if key not in known:
            raise UserError(
                f"--parameter {key!r}: the template has no such parameter "
                f"(known: {', '.join(known)})"
            )
        out[key] = value.strip()
    return out


def cmd_down(args: argparse.Namespace) -> int:
    from embedded.stack import DATA_DIR, StackError, default_home, stop, wipe_data
    from itsacat import background

    for name in background.stop_all(args.home):
        print(f"stopped the demo's {name} server")
    try:
        stopped = stop(args.home)
        wiped = wipe_data(args.home) if args.wipe else None
    except StackError as e:
        raise UserError(str(e)) from e
    if stopped is None:
        print("itsacat: nothing is running")
    else:
        print(
            f"stopped the embedded stack (runtime pid {stopped.runtime_pid}, "
            f"emulator pid {stopped.emulator_pid})"
        )
    data = (args.home or default_home()).resolve() / DATA_DIR
    if wiped is not None:
        print(f"deleted the saved data in {wiped}; the next `itsacat up` starts empty")
    elif args.wipe:
        print(f"no saved data in {data}")
    elif stopped is not None:
        print(f"its data is kept in {data} for the next `itsacat up` (`--wipe` deletes it)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from embedded.stack import StackError, info

    try:
        stack = info(args.home)
    except StackError as e:
        raise UserError(str(e)) from e
    if stack is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("itsacat: the embedded stack is not running (start it with `itsacat up`)")
        return 1
    processes = stack.processes()
    running = all(processes.values())
    stats: dict[str, Any] | None = None
    if processes["runtime"]:
        try:
            stats = stack.stats()
        except OSError:
            stats = None
    faults = _storage_faults(stack.emulator_url) if processes["emulator"] else None
    if args.json:
        print(
            json.dumps(
                {
                    "running": running,
                    "processes": processes,
                    "env": stack.env(),
                    "stats": stats,
                    "storage_faults": faults,
                }
            )
        )
        return 0 if running else 1
    state = "running" if running else "NOT running properly"
    print(f"embedded stack `{stack.stack_name}`: {state}")
    _describe(stack, processes)
    if stats:
        print("\ninvocations (requests / handler runs / errors / retries, warm workers):")
        for name, counters in stats["functions"].items():
            print(
                f"  {name:<32} {counters['requests']:>6} {counters['executions']:>6} "
                f"{counters['errors']:>6} {counters['retries']:>6}   {counters['workers']} warm"
            )
        _print_faults(stats)
        relay = stats.get("relay", {})
        delivered, failed = relay.get("delivered", 0), relay.get("failed", 0)
        print(f"\nS3 notifications delivered: {delivered}, failed: {failed}")
    if faults and (faults.get("ambiguous") or faults.get("unprocessed")):
        ambiguous = sum(faults.get("ambiguous", {}).values())
        unprocessed = sum(faults.get("unprocessed", {}).values())
        print(
            f"storage faults injected: ambiguous {ambiguous}, unprocessed {unprocessed} "
            f"(items {faults.get('unprocessed_items', 0)})"
        )
    if not running:
        print(
            "\nA process died; `itsacat down` clears it away, `itsacat up` starts it again "
            "with the saved data."
        )
    return 0 if running else 1


# Runtime counters of what AWS does to invocations (injected or from the limits), by name.
_RUNTIME_EVENTS = (
    ("throttles", "throttled"),
    ("duplicates", "duplicated"),
    ("redeliveries", "redelivered"),
    ("crashes", "crashed"),
    ("timeouts", "timed out"),
    ("out_of_memory", "out of memory"),
    ("response_too_large", "response too large"),
    ("expired", "expired"),
)


def _print_faults(stats: dict[str, Any]) -> None:
    """What happened to invocations, beyond running: throttles, duplicates, crashes..."""
    totals = {key: 0 for key, _ in _RUNTIME_EVENTS}
    for counters in stats.get("functions", {}).values():
        for key in totals:
            totals[key] += int(counters.get(key, 0))
    happened = [f"{label} {totals[key]}" for key, label in _RUNTIME_EVENTS if totals[key]]
    if happened:
        print(f"\ninvocations {', '.join(happened)}")
    concurrency = stats.get("concurrency")
    if concurrency:
        print(
            f"concurrency: peak {concurrency['peak']} of the account's "
            f"{concurrency['account_limit']}"
        )
    hosts = stats.get("hosts")
    if hosts:
        print("worker hosts: " + ", ".join(f"{h} ({n})" for h, n in sorted(hosts.items())))


def _storage_faults(emulator_url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The storage faults the emulator injected (`GET /_itsacat/faults`), None if it
    does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{emulator_url}/_itsacat/faults", timeout=timeout_s) as r:
            answer: dict[str, Any] = json.load(r)
            return answer
    except (OSError, ValueError):
        return None


def cmd_env(args: argparse.Namespace) -> int:
    from embedded.stack import StackError, info

    try:
        stack = info(args.home)
    except StackError as e:
        raise UserError(str(e)) from e
    if stack is None or not stack.running:
        raise UserError("the embedded stack is not running; start it with `itsacat up`")
    print("unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN")
    for name, value in stack.env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _clocks(config: dict[str, Any]) -> str:
    """The stack's clocks and concurrency limit, in a line."""
    scale = float(config.get("time_scale", 1.0))
    minute = f"a minute lasts {60 * scale:g} s" if scale != 1 else "AWS's own pace"
    schedules = "" if config.get("schedules", True) else ", schedules off"
    concurrency = config.get("account_concurrency", 1000)
    return f"time scale {scale:.4g} ({minute}{schedules}); account concurrency {concurrency}"


def _describe(info: Any, processes: dict[str, bool] | None = None) -> None:
    from embedded.stack import DATA_DIR

    processes = processes or {"emulator": True, "runtime": True}

    def alive(name: str) -> str:
        return "" if processes[name] else "  DEAD"

    outputs = info.outputs
    functions = ", ".join(
        outputs[k]
        for k in (
            "LaunchFunctionName",
            "TrainerFunctionName",
            "NeuronFunctionName",
            "WatchdogFunctionName",
        )
        if k in outputs
    )
    tables = ", ".join(
        outputs[k]
        for k in ("RunsTableName", "WeightsTableName", "CostsTableName", "IdempotencyTableName")
        if k in outputs
    )
    rows = [
        ("emulator", f"{info.emulator_url}  (pid {info.emulator_pid}){alive('emulator')}"),
        (
            "lambda",
            f"{info.lambda_url}  (pid {info.runtime_pid}, up to {info.config.get('workers')} "
            f"warm workers per function){alive('runtime')}",
        ),
        ("clocks", _clocks(info.config)),
        ("bucket", outputs.get("BucketName", "?")),
        ("tables", tables),
        ("topic", outputs.get("TopicArn", "?")),
        ("functions", functions),
        *([("faults", info.config["faults"])] if info.config.get("faults") else []),
        ("state", f"{info.home}  (logs in {info.home}/logs, data in {info.home}/{DATA_DIR})"),
    ]
    for label, value in rows:
        print(f"  {label:<10} {value}")
