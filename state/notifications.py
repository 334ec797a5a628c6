"""The SNS topic that announces each run's outcome: one message per way a run ends."""

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import translate
from state.runs import FAILED, RunRecord


class Notifier(LazyClient):
    service = "sns"

    def __init__(self, topic_arn: str, sns: Any = None) -> None:
        super().__init__(sns)
        self.topic_arn = topic_arn

    def run_succeeded(self, run: RunRecord) -> None:
        """A SUCCEEDED run: its cost, accuracies and model."""
        test = "n/a" if run.test_accuracy is None else f"{run.test_accuracy:.3f}"
        cost = "n/a" if run.final_cost is None else f"{run.final_cost:.6f}"
        train = "n/a" if run.train_accuracy is None else f"{run.train_accuracy:.3f}"
        self.publish(
            f"itsacat: run {run.run_id} succeeded",
            f"Training finished after {run.epochs_done} epochs in {run.seconds or 0:.0f} s: "
            f"final cost {cost}, train accuracy {train}, test accuracy {test}. "
            f"Model: {run.model_uri}",
            {
                "status": run.status,
                "run_id": run.run_id,
                "final_cost": run.final_cost,
                "train_accuracy": run.train_accuracy,
                "test_accuracy": run.test_accuracy,
                "epochs": run.epochs_done,
                "seconds": run.seconds,
                "model_uri": run.model_uri,
            },
        )

    def run_failed(self, run_id: str, reason: str, dataset: str | None = None) -> None:
        """A FAILED run, and why (`dataset`: the upload, when it never started training)."""
        details: dict[str, Any] = {"status": FAILED, "run_id": run_id, "error": reason}
        text = reason
        if dataset is not None:
            details["dataset"] = dataset
            text = f"Training of {dataset} did not start: {reason}"
        self.publish(f"itsacat: run {run_id} failed", text, details)

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
