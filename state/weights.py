"""The weights table: one item per neuron row and version.

Key: `pk` = "<run_id>#<layer>", `sk` = "v<version:010d>#<neuron:05d>". An item holds the
neuron's weight row and bias as raw little-endian float64 bytes (a row of layer 1 is 12,288
values, 96 KiB: it fits one item; a whole layer does not). A version is immutable: training
is deterministic, so whoever writes version v writes the same bytes, and a version becomes
the run's state only when the run record's commit points at it. Old versions are deleted
after the commit that supersedes them; `expires` (TTL) sweeps any a late writer re-creates.
"""

import time
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient, batch_write
from state.errors import NotFound, StateError, translate

Weights = list[tuple[np.ndarray, np.ndarray]]
TTL_SECONDS = 7 * 24 * 3600


def _pk(run_id: str, layer: int) -> str:
    return f"{run_id}#{layer}"


def _sk(version: int, neuron: int) -> str:
    return f"v{version:010d}#{neuron:05d}"


def _key(run_id: str, layer: int, version: int, neuron: int) -> dict[str, dict[str, str]]:
    return {"pk": {"S": _pk(run_id, layer)}, "sk": {"S": _sk(version, neuron)}}


def _f64(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


class WeightStore(LazyClient):
    service = "dynamodb"

    def __init__(self, table: str, dynamodb: Any = None) -> None:
        super().__init__(dynamodb)
        self.table = table

    def write(self, run_id: str, version: int, weights: Weights) -> int:
        """Write every row of every layer at `version`; returns the number of requests made."""
        expires = str(int(time.time()) + TTL_SECONDS)
        items = [
            {
                "pk": {"S": _pk(run_id, layer)},
                "sk": {"S": _sk(version, neuron)},
                "w": {"B": _f64(w[neuron])},
                "b": {"B": _f64(b[neuron])},
                "expires": {"N": expires},
            }
            for layer, (w, b) in enumerate(weights, start=1)
            for neuron in range(w.shape[0])
        ]
        return self._batch(
            [{"PutRequest": {"Item": i}} for i in items], f"write weights v{version}"
        )

    def delete(self, run_id: str, version: int, sizes: tuple[int, ...]) -> int:
        """Delete the rows of `version` (superseded); returns the number of requests made."""
        reqs = [
            {
                "DeleteRequest": {
                    "Key": {"pk": {"S": _pk(run_id, layer)}, "sk": {"S": _sk(version, n)}}
                }
            }
            for layer, size in enumerate(sizes, start=1)
            for n in range(size)
        ]
        return self._batch(reqs, f"delete weights v{version}")

    def _batch(self, requests: list[dict], what: str) -> int:
        return batch_write(self.client, self.table, requests, what)

    def read(self, run_id: str, version: int, width: int, sizes: tuple[int, ...]) -> Weights:
        """All layers at `version` (first-layer rows `width` long); `NotFound` if a row is missing.

        The first layer's rows are its weights (width n_x) or, in the dual form, its
        coefficients (width m, one per training example).
        """
        weights: Weights = []
        n_prev = width
        for layer, size in enumerate(sizes, start=1):
            rows: dict[int, tuple[bytes, bytes]] = {}
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :v)",
                "ExpressionAttributeValues": {
                    ":pk": {"S": _pk(run_id, layer)},
                    ":v": {"S": f"v{version:010d}#"},
                },
                "ConsistentRead": True,
            }
            try:
                while True:
                    out = self.client.query(**kwargs)
                    for item in out["Items"]:
                        neuron = int(item["sk"]["S"].rsplit("#", 1)[1])
                        rows[neuron] = (item["w"]["B"], item["b"]["B"])
                    if "LastEvaluatedKey" not in out:
                        break
                    kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
            except (ClientError, BotoCoreError) as e:
                raise translate(e, f"read weights v{version} layer {layer}") from e
            if sorted(rows) != list(range(size)):
                raise NotFound(
                    f"weights of run {run_id} v{version} layer {layer}: "
                    f"{len(rows)} of {size} rows found"
                )
            w = np.stack([np.frombuffer(rows[n][0], dtype="<f8") for n in range(size)])
            b = np.array([np.frombuffer(rows[n][1], dtype="<f8") for n in range(size)])
            if w.shape != (size, n_prev) or b.shape != (size, 1):
                raise StateError(f"weights of run {run_id} layer {layer} have shape {w.shape}")
            weights.append((w.astype(np.float64), b.astype(np.float64)))
            n_prev = size
        return weights
