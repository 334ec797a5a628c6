"""The costs table: one row per run and epoch, written once with a conditional put."""

import time
from decimal import Decimal
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import Conflict, translate


class CostStore(LazyClient):
    service = "dynamodb"

    def __init__(self, table: str, dynamodb: Any = None) -> None:
        super().__init__(dynamodb)
        self.table = table

    def put(self, run_id: str, epoch: int, cost: float, seconds: float) -> bool:
        """Record an epoch's cost; False (and nothing written) if the row already exists.

        The cost is stored twice: as the exact float64 bit pattern (hex of `float.hex`),
        which is what the trainer compares, and as a number for people and queries.
        """
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    "run_id": {"S": run_id},
                    "epoch": {"N": str(epoch)},
                    "cost": {"N": str(Decimal(repr(cost)))},
                    "cost_hex": {"S": cost.hex()},
                    "seconds": {"N": f"{seconds:.6f}"},
                    "written": {"N": f"{time.time():.3f}"},
                },
                ConditionExpression="attribute_not_exists(run_id)",
            )
        except (ClientError, BotoCoreError) as e:
            err = translate(e, f"write cost of epoch {epoch}")
            if isinstance(err, Conflict):
                return False
            raise err from e
        return True

    def list(self, run_id: str) -> list[float]:
        """The run's costs in epoch order, exactly as the trainer computed them."""
        costs: list[tuple[int, float]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "run_id = :r",
            "ExpressionAttributeValues": {":r": {"S": run_id}},
            "ConsistentRead": True,
        }
        try:
            while True:
                out = self.client.query(**kwargs)
                costs += [
                    (int(i["epoch"]["N"]), float.fromhex(i["cost_hex"]["S"])) for i in out["Items"]
                ]
                if "LastEvaluatedKey" not in out:
                    break
                kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"read costs of run {run_id}") from e
        costs.sort()
        return [c for _, c in costs]
