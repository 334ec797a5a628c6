"""The few domain errors the adapters raise instead of botocore's `ClientError`."""

from botocore.exceptions import BotoCoreError, ClientError


class StateError(Exception):
    """A storage request failed; the message says which and why."""


class Conflict(StateError):
    """A conditional write lost: someone else already moved the state on."""


class NotFound(StateError):
    """The item or object does not exist."""


class Throttled(StateError):
    """The service asked us to slow down."""


_CONFLICT = {
    "ConditionalCheckFailedException",
    "TransactionCanceledException",
    # S3's conditional PUT refused: the ETag moved (412), or a concurrent conditional write
    "PreconditionFailed",
    "412",
    "ConditionalRequestConflict",
    "409",
}
# The object (not its bucket) is missing; HEAD answers with the bare status code.
MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})
_NOT_FOUND = {"ResourceNotFoundException", "NoSuchBucket", *MISSING_OBJECT}
_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
}


def code_of(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def translate(e: Exception, what: str) -> StateError:
    """Map a botocore error to a domain error whose message names the failed operation."""
    if isinstance(e, ClientError):
        code = code_of(e)
        msg = f"{what}: {code}: {e.response.get('Error', {}).get('Message', '')}"
        if code in _CONFLICT:
            return Conflict(msg)
        if code in _NOT_FOUND:
            return NotFound(msg)
        if code in _THROTTLED:
            return Throttled(msg)
        return StateError(msg)
    if isinstance(e, BotoCoreError):
        return StateError(f"{what}: {e}")
    return StateError(f"{what}: {e!r}")
