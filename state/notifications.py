"""The SNS topic that announces each run's outcome: one message per way a run ends."""

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import translate
from state.models import Offer
from state.runs import FAILED, RunRecord


class Notifier(LazyClient):
    service = "sns"

    def __init__(self, topic_arn: str, sns: Any = None) -> None:
        super().__init__(sns)
        self.topic_arn = topic_arn

    def run_succeeded(self, run: RunRecord, offer: Offer) -> None:
        """A SUCCEEDED run: its cost, accuracies and model, and where the model went: to
        production (the first model), or to staging, asking for approval with its metrics
        beside production's and the command that promotes it."""
        test = _share(run.test_accuracy)
        cost = "n/a" if run.final_cost is None else f"{run.final_cost:.6f}"
        text = (
            f"Training finished after {run.epochs_done} epochs in {run.seconds or 0:.0f} s: "
            f"final cost {cost}, train accuracy {_share(run.train_accuracy)}, test accuracy "
            f"{test}. Model: {run.model_uri}"
        )
        details: dict[str, Any] = {
            "status": run.status,
            "run_id": run.run_id,
            "final_cost": run.final_cost,
            "train_accuracy": run.train_accuracy,
            "test_accuracy": run.test_accuracy,
            "epochs": run.epochs_done,
            "seconds": run.seconds,
            "model_uri": run.model_uri,
        }
        if offer.promoted:
            subject = f"itsacat: run {run.run_id} succeeded; its model is in production"
            text += "\n\nThere was no production model yet, so this one serves /image now."
            details["stage"] = "production"
        else:
            production = offer.production or {}
            prod_id = production.get("run_id", "none")
            subject = f"itsacat: run {run.run_id} succeeded; approve its model?"
            text += (
                f"\n\nIts model is the staging candidate (served at /staging/image). "
                f"Production is {prod_id}: test accuracy "
                f"{_share(production.get('test_accuracy'))}, train accuracy "
                f"{_share(production.get('train_accuracy'))}, final cost "
                f"{production.get('final_cost')}.\n"
                f"To approve it:  itsacat promote {run.run_id}"
            )
            details.update(
                stage="staging",
                production_run_id=production.get("run_id"),
                production_test_accuracy=production.get("test_accuracy"),
                promote_command=f"itsacat promote {run.run_id}",
            )
        self.publish(subject, text, details)

    def run_failed(self, run_id: str, reason: str, dataset: str | None = None) -> None:
        """A FAILED run, and why (`dataset`: the upload, when it never started training)."""
        details: dict[str, Any] = {"status": FAILED, "run_id": run_id, "error": reason}
        text = reason
        if dataset is not None:
            details["dataset"] = dataset
            text = f"Training of {dataset} did not start: {reason}"
        self.publish(f"itsacat: run {run_id} failed", text, details)

    def publish(self, subject: str, text: str, details: dict[str, Any]) -> None:
        """Send a readable message (e-mail) with the details as JSON below it, after the
        last blank line."""
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


def _share(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "n/a"
