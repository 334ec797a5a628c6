"""Test-only Lambda handlers, served by the embedded runtime through the same code path."""

import os
import sys
import time

_COLD = {"invocations": 0, "pid": os.getpid()}


def echo(event, context):
    """Returns the event and what the handler sees of its context and environment."""
    _COLD["invocations"] += 1
    return {
        "event": event,
        "pid": _COLD["pid"],
        "warm_invocations": _COLD["invocations"],
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("AWS_", "FIXTURE_", "LAMBDA_", "OPENBLAS_"))
        },
        "sys_path": sys.path,
        "cwd": os.getcwd(),
    }


def fail(event, context):
    print(f"failing on purpose: {event.get('tag')}")
    raise ValueError(f"broken on purpose: {event.get('tag')}")


def sleep(event, context):
    time.sleep(float(event.get("seconds", 5)))
    return {"slept": event.get("seconds", 5)}


def log(event, context):
    for line in event.get("lines", []):
        print(line)
    return {"printed": len(event.get("lines", []))}


def crash(event, context):
    os._exit(3)


def allocate(event, context):
    """Holds `mb` MiB of touched memory for a moment (a bytearray's pages are written)."""
    block = bytearray(int(event["mb"]) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(float(event.get("hold_s", 0.2)))
    return {"allocated_mb": event["mb"]}


def big_response(event, context):
    """A response of `bytes` bytes (a JSON string of that length, quotes included)."""
    return "x" * (int(event["bytes"]) - 2)
