"""The code inside one warm worker process: Lambda's runtime bootstrap, locally.

A worker imports its handler once and then serves invocations one at a time from a pipe
until the pipe closes (the runtime exited or retired it). Everything the handler prints
goes to stdout, which the runtime forwards to CloudWatch Logs, framed by Lambda's
START/END/REPORT lines; the worker writes those itself so that they stay in order with
the handler's output.

A function whose LoggingConfig sets SystemLogLevel WARN or ERROR gets no START/END/REPORT
lines, as on Lambda (with INFO they are written as text whatever its LogFormat).

Run as `python -m embedded.bootstrap REQUEST_FD RESPONSE_FD`; the handler and the function's
settings come from the environment, as in Lambda (`_HANDLER`, `PYTHONPATH`, ...).
"""

from __future__ import annotations

import decimal
import importlib
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

Handler = Callable[[Any, Any], Any]


class LambdaContext:
    """The context object Lambda passes to a Python handler."""

    def __init__(self, request_id: str, invoked_arn: str, deadline_ms: int) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_arn
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _decimal(obj: Any) -> Any:
    if isinstance(obj, decimal.Decimal):
        return int(obj) if obj == obj.to_integral_value() else float(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_DECIMAL_ENCODER = json.JSONEncoder(default=_decimal)


def _to_json(value: Any) -> bytes:
    """The handler's result as JSON (DynamoDB's Decimals as numbers), as Lambda does.
    One encoder built once: `json.dumps(value, default=...)` builds one per call."""
    return _DECIMAL_ENCODER.encode(value).encode()


def _error(error_type: str, message: str, request_id: str, stack: list[str]) -> dict[str, Any]:
    return {
        "errorMessage": message,
        "errorType": error_type,
        "requestId": request_id,
        "stackTrace": stack,
    }


_SYSTEM_LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}


def platform_lines() -> bool:
    """Whether Lambda's START/END/REPORT lines (INFO-level system logs) are written."""
    level = os.environ.get("_ITSACAT_SYSTEM_LOG_LEVEL", "INFO")
    return _SYSTEM_LEVELS.get(level, 20) <= 20


def _line(text: str) -> None:
    """Print `text` and a newline in one write (a print is two)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def load_handler(spec: str) -> tuple[Handler | None, dict[str, Any] | None]:
    """Import `module.function`; on failure the error Lambda reports (Runtime.ImportModuleError)."""
    module_name, _, function_name = spec.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        message = f"Unable to import module '{module_name}': {e}"
        return None, _error("Runtime.ImportModuleError", message, "", [])
    handler = getattr(module, function_name, None)
    if not callable(handler):
        message = f"Handler '{function_name}' missing on module '{module_name}'"
        return None, _error("Runtime.HandlerNotFound", message, "", [])
    return handler, None


def serve(requests: Connection, responses: Connection) -> None:
    handler, init_error = load_handler(os.environ["_HANDLER"])
    memory_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
    platform = platform_lines()
    # Init done: as on Lambda, the import is not part of the first invocation's timeout.
    responses.send({"ready": True})
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return
        request_id = request["request_id"]
        fault = request.get("fault")
        if platform:
            _line(f"START RequestId: {request_id} Version: $LATEST")
        started = time.monotonic()
        if fault == "crash_before":
            os._exit(1)
        if fault == "timeout":
            time.sleep(max(0.0, request["deadline_ms"] / 1000 - time.time()) + 60)
        ok = False
        if init_error is not None:
            error = {**init_error, "requestId": request_id}
            print(f"[ERROR] {error['errorType']}: {error['errorMessage']}", flush=True)
            body = _to_json(error)
        else:
            assert handler is not None
            try:
                event = json.loads(request["payload"] or b"null")
                context = LambdaContext(request_id, request["invoked_arn"], request["deadline_ms"])
                body = _to_json(handler(event, context))
                ok = True
            except Exception as e:
                stack = traceback.format_list(traceback.extract_tb(e.__traceback__)[1:])
                error = _error(type(e).__name__, str(e), request_id, stack)
                print(f"[ERROR] {error['errorType']}: {error['errorMessage']}", flush=True)
                traceback.print_exc(file=sys.stdout)
                body = _to_json(error)
        if fault == "crash_after":
            os._exit(1)
        duration_ms = (time.monotonic() - started) * 1000
        if platform:
            used_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            _line(  # END and REPORT in one write
                f"END RequestId: {request_id}\n"
                f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
                f"Billed Duration: {int(duration_ms) + 1} ms\tMemory Size: {memory_mb} MB\t"
                f"Max Memory Used: {used_mb} MB"
            )
        responses.send({"ok": ok, "payload": body, "duration_ms": duration_ms})
        if init_error is not None:
            return  # as Lambda does, the next invocation starts a fresh environment


def main(argv: list[str]) -> int:
    requests = Connection(int(argv[0]), writable=False)
    responses = Connection(int(argv[1]), readable=False)
    serve(requests, responses)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
