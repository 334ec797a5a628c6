"""The SNS topic that announces each run's outcome."""

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import translate


class Notifier(LazyClient):
    service = "sns"

    def __init__(self, topic_arn: str, sns: Any = None) -> None:
        super().__init__(sns)
        self.topic_arn = topic_arn

    def publish(self, subject: str, text: str, details: dict[str, Any]) -> None:
        """Send a readable message (e-mail) with the details as JSON below it."""
        body = f"{text}\n\n{json.dumps(details, indent=2, sort_keys=True, default=str)}"
        try:
            self.client.publish(
                TopicArn=self.topic_arn,
                Subject=subject[:100],
                Message=body,
                MessageAttributes={
                    "status": {"DataType": "String", "StringValue": str(details.get("status"))},
                    "run_id": {"DataType": "String", "StringValue": str(details.get("run_id"))},
                },
            )
        except (ClientError, BotoCoreError) as e:
            raise translate(e, "publish notification") from e
