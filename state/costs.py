"""The costs table: one row per run and epoch.

The trainer writes an epoch's row when it commits the step that ends the epoch, in
batches (`put_many`), just before the conditional commit: the costs of a run are a function
of its data and parameters, so a row written twice holds the same cost, and a row written
by a trainer whose commit was then refused is beyond the run's `epochs_done`, which
readers pass as `upto`.
"""

import time
from decimal import Decimal
from typing import Any

from state.clients import LazyClient, batch_write
from state.runs import RunRecord


def _item(run_id: str, epoch: int, cost: float, seconds: float, written: str) -> dict[str, Any]:
    """The cost is stored twice: as the exact float64 bit pattern (hex of `float.hex`),
    which is what the trainer compares, and as a number for people and queries."""
    return {
        "run_id": {"S": run_id},
        "epoch": {"N": str(epoch)},
        "cost": {"N": str(Decimal(repr(cost)))},
        "cost_hex": {"S": cost.hex()},
        "seconds": {"N": f"{seconds:.6f}"},
        "written": {"N": written},
    }


class CostStore(LazyClient):
    service = "dynamodb"

    def __init__(self, table: str, dynamodb: Any = None) -> None:
        super().__init__(dynamodb)
        self.table = table

    def put_many(self, run_id: str, rows: list[tuple[int, float, float]]) -> int:
        """Write rows of (epoch, cost, seconds) with BatchWriteItem; the number of requests."""
        now = f"{time.time():.3f}"
        requests = [
            {"PutRequest": {"Item": _item(run_id, epoch, cost, seconds, now)}}
            for epoch, cost, seconds in rows
        ]
        return batch_write(self.client, self.table, requests, f"write costs of run {run_id}")

    def written_times(self, run_id: str) -> list[float]:
        """When each of the run's rows was written (epoch time, in epoch order): an epoch's
        row is written at the commit that ends it, so these are the run's commit times."""
        rows = sorted((int(i["epoch"]["N"]), float(i["written"]["N"])) for i in self._rows(run_id))
        return [t for _, t in rows]

    def _rows(self, run_id: str) -> list[dict[str, Any]]:
        return self._all_items(
            "query",
            f"read costs of run {run_id}",
            TableName=self.table,
            KeyConditionExpression="run_id = :r",
            ExpressionAttributeValues={":r": {"S": run_id}},
            ConsistentRead=True,
        )

    def of_run(self, run: RunRecord) -> list[float]:
        """The costs of the run's committed epochs (below its `epochs_done`)."""
        return self.list(run.run_id, upto=run.epochs_done)

    def list(self, run_id: str, upto: int | None = None) -> list[float]:
        """The run's costs in epoch order, exactly as the trainer computed them; with `upto`
        (the run's committed `epochs_done`), only epochs below it: a trainer whose commit
        was refused (cancelled, taken over) may have written rows beyond it."""
        items = self._rows(run_id)
        costs = sorted((int(i["epoch"]["N"]), float.fromhex(i["cost_hex"]["S"])) for i in items)
        return [c for epoch, c in costs if upto is None or epoch < upto]
