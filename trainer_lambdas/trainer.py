"""Lambda handler: the coordinator of one run (started by launch, itself, or the watchdog).

The lease a trainer takes is held under a token of this one delivery, not under the
request id alone: Lambda keeps the request id when it retries an event and when it
delivers one twice, and two copies holding "the same" lease could each commit, hand over
or give it back in the other's name. The request id stays in the
token, for the logs.
"""

import secrets
from typing import Any

from trainer_lambdas import services
from trainer_lambdas.coordinator import Coordinator
from trainer_lambdas.payloads import TrainerEvent


def lease_token(request_id: str) -> str:
    """The owner under which this delivery of the event `request_id` holds a lease."""
    return f"{request_id}/{secrets.token_hex(6)}"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger = services.setup_logging(context)
    request = TrainerEvent.from_event(event)
    logger.append_keys(run_id=request.run_id)
    coordinator = Coordinator(services.config(), services.stores(), services.invoker())
    owner = lease_token(context.aws_request_id)
    return coordinator.drive(request, owner, context.get_remaining_time_in_millis)
