"""Lambda handler: the coordinator of one run (started by launch, itself, or the watchdog)."""

from typing import Any

from trainer_lambdas import services
from trainer_lambdas.coordinator import Coordinator
from trainer_lambdas.payloads import TrainerEvent


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger = services.setup_logging(context)
    request = TrainerEvent.from_event(event)
    logger.append_keys(run_id=request.run_id)
    coordinator = Coordinator(services.config(), services.stores(), services.invoker())
    return coordinator.drive(request, context.aws_request_id, context.get_remaining_time_in_millis)
