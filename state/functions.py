"""Lambda functions: invoking the neuron and trainer functions.

Errors come back as domain errors: `Throttled` for TooManyRequestsException, and
`FunctionFailed` when the function ran and raised (or timed out).
"""

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import StateError, translate


class FunctionFailed(StateError):
    """The function ran and reported an error (including a timeout)."""


class Functions(LazyClient):
    service = "lambda"

    def call(self, function: str, payload: bytes) -> bytes:
        """Invoke and wait (RequestResponse); the function's response bytes."""
        try:
            out = self.client.invoke(
                FunctionName=function, InvocationType="RequestResponse", Payload=payload
            )
            body = out["Payload"].read()
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"invoke {function}") from e
        if out.get("FunctionError"):
            try:
                err = json.loads(body)
                msg = f"{err.get('errorType', 'Error')}: {err.get('errorMessage', '')}"
            except ValueError:
                msg = body[:500].decode(errors="replace")
            raise FunctionFailed(f"{function} failed: {msg}")
        return bytes(body)

    def start(self, function: str, payload: dict[str, Any]) -> None:
        """Invoke asynchronously (Event): Lambda queues it and retries it on error."""
        try:
            self.client.invoke(
                FunctionName=function, InvocationType="Event", Payload=json.dumps(payload)
            )
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"start {function}") from e
