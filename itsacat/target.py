"""Where commands send their AWS requests: the embedded stack (default) or AWS.

The target is the environment when it names a bucket (`ITSACAT_BUCKET`, as after
`eval "$(itsacat env)"` or for a deployed stack), and otherwise the embedded stack recorded
in `$ITSACAT_HOME`. Commands never branch on the target beyond this module: they take the
environment it returns (endpoints, region, resource names), apply it to this process, and
build their boto3 clients the normal way.
"""

import os
import sys

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
    "TRAINER_FUNCTION",
    "NEURON_FUNCTION",
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


def resolve(start: bool = False) -> dict[str, str]:
    """The current target's environment (see the module docstring for the rule)."""
    if os.environ.get("ITSACAT_BUCKET"):
        return {k: os.environ[k] for k in (*PASSTHROUGH, *ENV_NAMES) if os.environ.get(k)}
    return embedded_env(start=start)


def connect(start: bool = False) -> dict[str, str]:
    """Resolve the current target and point this process at it; its environment."""
    env = resolve(start=start)
    use(env)
    return env
