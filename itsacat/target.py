"""Where commands send their AWS requests: the embedded stack (default) or AWS.

The target is the environment when it names a bucket (`ITSACAT_BUCKET`, as after
`eval "$(itsacat env)"` or for a deployed stack), and otherwise the embedded stack recorded
in `$ITSACAT_HOME`; with `ITSACAT_TARGET=aws`, the AWS stack `itsacat deploy` recorded
there (`aws-<stack>.json`, from the stack's outputs); with `ITSACAT_TARGET=embedded`, always
the embedded stack. `itsacat --target aws|embedded COMMAND` sets `ITSACAT_TARGET`.
Commands never branch on the target beyond this module: they take the environment it
returns (endpoints, region, resource names), apply it to this process, and build their
boto3 clients the normal way.
"""

import json
import os
import sys
from pathlib import Path

from embedded import stack as embedded_stack
from itsacat.errors import UserError

PASSTHROUGH = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_LAMBDA",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
ENV_NAMES = (
    "ITSACAT_BUCKET",
    "RUNS_TABLE",
    "WEIGHTS_TABLE",
    "COSTS_TABLE",
    "IDEMPOTENCY_TABLE",
    "TOPIC_ARN",
    "LAUNCH_FUNCTION",
    "TRAINER_FUNCTION",
    "NEURON_FUNCTION",
    "WATCHDOG_FUNCTION",
    "API_LOG_GROUP",
    "ITSACAT_API_ROLE_ARN",  # the embedded stack's API role, which `itsacat serve` takes
)


def embedded_env(start: bool = False) -> dict[str, str]:
    """The running embedded stack's environment; start it first if asked and needed."""
    try:
        info = embedded_stack.info()
        if info is None or not info.running:
            if not start:
                raise UserError("the embedded stack is not running; start it with `itsacat up`")
            print("itsacat: starting the embedded stack (itsacat up) ...", file=sys.stderr)
            info = embedded_stack.start()
    except embedded_stack.StackError as e:
        raise UserError(str(e)) from e
    return info.env()


def use(env: dict[str, str]) -> None:
    """Point this process's boto3 clients at the target."""
    os.environ.update(env)
    # clients built before this call would keep the old endpoints
    from state.clients import client

    client.cache_clear()


def aws_target_path(stack: str, home: Path | None = None) -> Path:
    """Where `itsacat deploy` records a deployed stack (its outputs) for `--target aws`."""
    return (home or embedded_stack.default_home()) / f"aws-{stack}.json"


def aws_env(stack: str | None = None) -> dict[str, str]:
    """A deployed stack's environment: `ITSACAT_TARGET=aws` (stack: `ITSACAT_STACK`, default
    the only one deployed from here, else `itsacat`). AWS credentials come from the usual
    places (AWS_PROFILE, ~/.aws); an emulator endpoint left in the environment is dropped."""
    stack = stack or os.environ.get("ITSACAT_STACK")
    if not stack:
        found = sorted(embedded_stack.default_home().glob("aws-*.json"))
        stack = found[0].stem[len("aws-") :] if len(found) == 1 else "itsacat"
    path = aws_target_path(stack)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"no deployed stack {stack!r} recorded in {path}: run `itsacat deploy` "
            "(or set ITSACAT_STACK)"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA"):
        os.environ.pop(name, None)
    passthrough = {k: os.environ[k] for k in PASSTHROUGH if os.environ.get(k)}
    return {**passthrough, **{str(k): str(v) for k, v in record.get("env", {}).items()}}


def resolve(start: bool = False) -> dict[str, str]:
    """The current target's environment (see the module docstring for the rule)."""
    chosen = os.environ.get("ITSACAT_TARGET", "").lower()
    if chosen == "aws":
        return aws_env()
    if chosen != "embedded" and os.environ.get("ITSACAT_BUCKET"):
        return {k: os.environ[k] for k in (*PASSTHROUGH, *ENV_NAMES) if os.environ.get(k)}
    return embedded_env(start=start)


def connect(start: bool = False) -> dict[str, str]:
    """Resolve the current target and point this process at it; its environment."""
    env = resolve(start=start)
    use(env)
    return env
