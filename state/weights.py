"""The weights table: one item per neuron row and version.

Key: `pk` = "<run_id>#<layer>", `sk` = "v<version:010d>@<writer>#<neuron:05d>" (the
launcher's version 0 has no writer: "v0000000000#<neuron>"). An item holds the neuron's
weight row and bias as raw little-endian float64 bytes (a row of layer 1 is 12,288 values,
96 KiB: it fits one item; a whole layer does not).

Beside a row, an item holds the optimiser's state for it, the same version as the row
(`extras`: named arrays with one row per neuron, e.g. momentum's `vw`, `vb`), so that the
state moves with the weights in every commit and is recomputed with them.

A version is written once, by one writer: its key names the writer (the trainer's lease
token, unique to one delivery of one invocation), and a commit names the writer of the
version it points to (`weights_writer` in the run record). A stale, duplicated or
superseded trainer on another host (whose BLAS may round differently) writes its own keys,
so it can never change a row of a version a cursor points to. Superseded versions are
deleted after the commit that supersedes them, a loser's after its commit is refused, and
all of a run's when it succeeds (the model is in S3 by then). There is no TTL: the version
a cursor points to must outlive any pause (a FAILED run can be resumed months later); what
a crashed writer leaves behind goes when its run succeeds.
"""

from typing import Any

import numpy as np

from state.clients import LazyClient, batch_write
from state.errors import NotFound, StateError
from trainer_lambdas.nn.network import Weights

# Per layer: name -> an array with one row per neuron, stored with that neuron's row.
Extras = list[dict[str, np.ndarray]]
# An item's own attributes; every other attribute is an extra.
_ITEM_FIELDS = ("pk", "sk", "w", "b")


def _pk(run_id: str, layer: int) -> str:
    return f"{run_id}#{layer}"


def _prefix(version: int, writer: str) -> str:
    """The start of every sort key of one version by one writer."""
    if "#" in writer:
        raise ValueError(f"a weights writer has no '#': {writer!r}")
    return f"v{version:010d}@{writer}#" if writer else f"v{version:010d}#"


def _sk(version: int, writer: str, neuron: int) -> str:
    return f"{_prefix(version, writer)}{neuron:05d}"


def _f64(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


class WeightStore(LazyClient):
    service = "dynamodb"

    def __init__(self, table: str, dynamodb: Any = None) -> None:
        super().__init__(dynamodb)
        self.table = table

    def write(
        self,
        run_id: str,
        version: int,
        weights: Weights,
        writer: str = "",
        extras: Extras | None = None,
    ) -> int:
        """Write every row of every layer of `version` by `writer`, each with its rows of
        `extras` (per layer, name -> one row per neuron); returns the number of requests
        made."""
        items = []
        for layer, (w, b) in enumerate(weights, start=1):
            more = {} if extras is None else extras[layer - 1]
            for name, rows in more.items():
                if name in _ITEM_FIELDS or rows.shape[0] != w.shape[0]:
                    raise ValueError(f"layer {layer}: extra {name!r} {rows.shape} does not fit")
            for neuron in range(w.shape[0]):
                item = {
                    "pk": {"S": _pk(run_id, layer)},
                    "sk": {"S": _sk(version, writer, neuron)},
                    "w": {"B": _f64(w[neuron])},
                    "b": {"B": _f64(b[neuron])},
                }
                item.update({k: {"B": _f64(v[neuron])} for k, v in more.items()})
                items.append(item)
        return self._batch(
            [{"PutRequest": {"Item": i}} for i in items], f"write weights v{version}"
        )

    def delete(self, run_id: str, version: int, sizes: tuple[int, ...], writer: str = "") -> int:
        """Delete the rows of `version` by `writer` (superseded, or a refused commit's);
        returns the number of requests made."""
        reqs = [
            {
                "DeleteRequest": {
                    "Key": {"pk": {"S": _pk(run_id, layer)}, "sk": {"S": _sk(version, writer, n)}}
                }
            }
            for layer, size in enumerate(sizes, start=1)
            for n in range(size)
        ]
        return self._batch(reqs, f"delete weights v{version}")

    def delete_run(self, run_id: str, layers: int) -> int:
        """Delete every version of a run (it succeeded); returns the number of rows deleted."""
        keys = []
        for layer in range(1, layers + 1):
            keys += self._all_items(
                "query",
                f"list the weights of run {run_id}",
                TableName=self.table,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": _pk(run_id, layer)}},
                ProjectionExpression="pk, sk",
            )
        self._batch([{"DeleteRequest": {"Key": k}} for k in keys], f"delete run {run_id}'s weights")
        return len(keys)

    def _batch(self, requests: list[dict], what: str) -> int:
        return batch_write(self.client, self.table, requests, what)

    def read(
        self, run_id: str, version: int, width: int, sizes: tuple[int, ...], writer: str = ""
    ) -> Weights:
        """All layers of `version` by `writer` (first-layer rows `width` long); `NotFound` if a
        row is missing.

        The first layer's rows are its weights (width n_x) or, in the dual form, its
        coefficients (width m, one per training example).
        """
        return self.read_with_extras(run_id, version, width, sizes, writer)[0]

    def read_with_extras(
        self, run_id: str, version: int, width: int, sizes: tuple[int, ...], writer: str = ""
    ) -> tuple[Weights, Extras]:
        """`read`, and per layer the extras every row of it holds (name -> one row per
        neuron; an extra that only some rows hold is a `StateError`)."""
        weights: Weights = []
        extras: Extras = []
        n_prev = width
        for layer, size in enumerate(sizes, start=1):
            rows: dict[int, tuple[bytes, bytes]] = {}
            more: dict[int, dict[str, bytes]] = {}
            items = self._all_items(
                "query",
                f"read weights v{version} layer {layer}",
                TableName=self.table,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :v)",
                ExpressionAttributeValues={
                    ":pk": {"S": _pk(run_id, layer)},
                    ":v": {"S": _prefix(version, writer)},
                },
                ConsistentRead=True,
            )
            for item in items:
                neuron = int(item["sk"]["S"].rsplit("#", 1)[1])
                rows[neuron] = (item["w"]["B"], item["b"]["B"])
                more[neuron] = {k: v["B"] for k, v in item.items() if k not in _ITEM_FIELDS}
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
            names = set(more[0])
            if any(set(more[n]) != names for n in range(size)):
                raise StateError(f"weights of run {run_id} layer {layer}: rows differ in extras")
            extras.append(
                {
                    k: np.stack([np.frombuffer(more[n][k], dtype="<f8") for n in range(size)])
                    for k in sorted(names)
                }
            )
            n_prev = size
        return weights, extras
