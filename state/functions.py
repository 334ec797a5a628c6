"""Lambda functions: invoking the neuron and trainer functions.

Synchronous calls (the fan-out) go through `state.invoke`, a lean signed HTTP client for
the one Invoke request; asynchronous starts go through boto3. Errors come back as domain
errors: `Throttled` for TooManyRequestsException, `NotFound` for an unknown function,
and `FunctionFailed` when the function ran and raised (or timed out).
"""

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import NotFound, StateError, Throttled, translate
from state.invoke import USER_AGENT, Body, InvokeClient


class FunctionFailed(StateError):
    """The function ran and reported an error (including a timeout)."""


class Functions(LazyClient):
    service = "lambda"

    def __init__(self, injected: Any = None) -> None:
        super().__init__(injected)
        self._invoke: InvokeClient | None = None
        self._lock = threading.Lock()

    def _invoker(self) -> InvokeClient:
        with self._lock:
            if self._invoke is None:
                meta = self.client.meta
                creds = self.client._request_signer._credentials  # boto3's own credentials
                if creds is None:
                    raise StateError("invoke: no AWS credentials were found")
                env = os.environ.get("AWS_EXECUTION_ENV")
                self._invoke = InvokeClient(
                    meta.endpoint_url,
                    meta.region_name,
                    creds,
                    timeout_s=meta.config.read_timeout,
                    user_agent=USER_AGENT + (f" exec-env/{env}" if env else ""),
                )
            return self._invoke

    def call_many(
        self, function: str, payloads: Sequence[Body], window: int = 32
    ) -> list[bytes | StateError]:
        """Invoke once per payload (bytes, or a shared and an own part: `state.invoke.Body`),
        `window` at a time in parallel; for each, the response bytes or the domain error
        (see the module docstring) in its place."""
        what = f"invoke {function}"
        results: list[bytes | StateError] = []
        for out in self._invoker().invoke_many(function, payloads, window):
            if isinstance(out, Exception):  # network, protocol or signing (credentials)
                results.append(StateError(f"{what}: {out!r}"))
            elif out.status != 200:
                results.append(_error(out.status, out.headers, out.body, what))
            elif out.headers.get("x-amz-function-error"):
                results.append(FunctionFailed(f"{function} failed: {_function_error(out.body)}"))
            else:
                results.append(out.body)
        return results

    def start(self, function: str, payload: dict[str, Any]) -> None:
        """Invoke asynchronously (Event): Lambda queues it and retries it on error."""
        try:
            self.client.invoke(
                FunctionName=function, InvocationType="Event", Payload=json.dumps(payload)
            )
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"start {function}") from e


def _error(status: int, headers: dict[str, str], body: bytes, what: str) -> StateError:
    """The domain error of a refused Invoke request (the API's error type and message)."""
    try:
        d = json.loads(body)
    except ValueError:
        d = {}
    if not isinstance(d, dict):
        d = {}
    code = headers.get("x-amzn-errortype", "").split(":")[0] or str(d.get("__type", status))
    code = code.rsplit("#", 1)[-1]
    message = d.get("message") or d.get("Message") or body[:300].decode(errors="replace")
    msg = f"{what}: {code}: {message}"
    if status == 429 or code == "TooManyRequestsException":
        return Throttled(msg)
    if status == 404 or code == "ResourceNotFoundException":
        return NotFound(msg)
    return StateError(msg)


def _function_error(body: bytes) -> str:
    """`errorType: errorMessage` of a function's error payload."""
    try:
        err = json.loads(body)
        return f"{err.get('errorType', 'Error')}: {err.get('errorMessage', '')}"
    except (ValueError, AttributeError):
        return body[:500].decode(errors="replace")
