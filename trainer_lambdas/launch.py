"""Lambda handler: an upload under training_input/ (an S3 event, or SQS messages of them)."""

from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from trainer_lambdas import services
from trainer_lambdas.launcher import Launcher
from trainer_lambdas.payloads import PayloadError, UploadedObject, uploaded_objects

_idem_config = IdempotencyConfig(expires_after_seconds=24 * 3600)
_persistence: DynamoDBPersistenceLayer | None = None


def _launch_once(obj: dict[str, Any]) -> dict[str, Any]:
    """Prepare and start one upload, at most once per object version (Powertools)."""
    global _persistence
    if _persistence is None:
        _persistence = DynamoDBPersistenceLayer(table_name=services.config().idempotency_table)

    @idempotent_function(
        data_keyword_argument="upload", persistence_store=_persistence, config=_idem_config
    )
    def launch(upload: dict[str, Any]) -> dict[str, Any]:
        return Launcher(services.config(), services.stores()).launch(UploadedObject(**upload))

    return launch(upload=obj)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger = services.setup_logging(context)
    _idem_config.register_lambda_context(context)
    try:
        objects = uploaded_objects(event)
    except PayloadError as e:
        # Not an upload event: nothing can be done with it, and retrying will not help.
        logger.error("unusable event", extra={"error": str(e)})
        return {"results": [], "error": str(e)}
    results = []
    for obj in objects:
        upload = {
            "bucket": obj.bucket,
            "key": obj.key,
            "size": obj.size,
            "etag": obj.etag,
            "version_id": obj.version_id,
            "sequencer": obj.sequencer,
            "event_time": obj.event_time,
        }
        results.append(_launch_once(upload))
    return {"results": results}
