"""The runs table: one item per training run, and the conditional writes that move it on.

`RunRecord` is the one definition of a run's shared state (what the launcher, the trainer,
the watchdog and the CLI read and write); `RunStore` exposes its transitions, each one
conditional UpdateItem: creation (`attribute_not_exists`), the start (PREPARING ->
TRAINING), the lease (free or expired -> ours), each commit (expected cursor and our lease
-> next cursor), the hand-over, and the end (TRAINING -> SUCCEEDED/FAILED/CANCELLED). There
is no read-then-write anywhere: the condition is the check. A write whose answer was lost
and that botocore sent again is resolved by reading the record back (`_applied`).
"""

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import Conflict, NotFound, translate

PREPARING, TRAINING, SUCCEEDED, FAILED, CANCELLED = (
    "PREPARING",
    "TRAINING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
ACTIVE = (PREPARING, TRAINING)
ENDED = (SUCCEEDED, FAILED, CANCELLED)
# Counters a run keeps of what it absorbed; the lease holder adds to them at each commit.
COUNTERS = (
    "invocations",
    "retries",
    "throttles",
    "duplicates",
    "redrives",
    "handovers",
    "unprocessed",  # BatchWriteItem items DynamoDB left unprocessed, sent again
)

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


def _to_dynamo(v: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value (floats, nested too, as Decimal)."""
    return _SERIALIZER.serialize(_as_decimals(v))


def _from_dynamo(attribute: dict[str, Any]) -> Any:
    """A DynamoDB attribute value as a Python value (its Decimals as int or float)."""
    return _as_numbers(_DESERIALIZER.deserialize(attribute))


def _as_numbers(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dict):
        return {k: _as_numbers(x) for k, x in v.items()}
    if isinstance(v, list | set):
        return [_as_numbers(x) for x in v]
    return v


def _as_decimals(v: Any) -> Any:
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, dict):
        return {k: _as_decimals(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_as_decimals(x) for x in v]
    return v


@dataclass(frozen=True)
class Prepared:
    """What the launcher learned of a run's inputs, written when the run starts."""

    params: dict[str, Any]
    params_source: str  # the parameters.json key, or "default"
    params_version: str | None  # the S3 version id of the parameters.json used
    warnings: list[str]
    data_key: str
    test_key: str | None
    n_x: int
    m: int
    m_test: int
    image_shape: list[int]
    classes: list[str]
    steps_per_epoch: int
    total_steps: int
    first_layer: str  # "primal" or "dual", decided once for the run


@dataclass(frozen=True)
class Progress:
    """The trainer state a commit moves the run to (the weights are `weights_version`
    written by `weights_writer`, in the weights table)."""

    cursor: int
    weights_version: int
    weights_writer: str
    epochs_done: int
    last_cost: float | None
    partial_sum: float  # the cost summed over the current epoch's batches so far
    partial_n: int
    idle_handovers: int = 0  # hand-overs in a row that did no step (see the coordinator)


@dataclass(frozen=True)
class Outcome:
    """What a finished run reports."""

    model_uri: str
    train_accuracy: float
    test_accuracy: float | None
    final_cost: float | None
    seconds: float


@dataclass(frozen=True)
class RunRecord:
    """A run as stored (one item of the runs table). Fields absent from an item take the
    defaults below; an item's attributes this class does not know are ignored."""

    run_id: str
    status: str
    created: str = ""
    updated: str = ""
    dataset: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    # -- written by the launcher when the run starts (`Prepared`)
    params: dict[str, Any] | None = None
    params_source: str | None = None
    params_version: str | None = None
    warnings: list[str] = field(default_factory=list)
    data_key: str | None = None
    test_key: str | None = None
    n_x: int = 0
    m: int = 0
    m_test: int = 0
    image_shape: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    steps_per_epoch: int = 0
    total_steps: int = 0
    first_layer: str = "primal"
    # -- the committed state (`Progress`); no cursor: the run never started training
    cursor: int | None = None
    weights_version: int = 0
    weights_writer: str = ""
    epochs_done: int = 0
    last_cost: float | None = None
    partial_sum: float = 0.0
    partial_n: int = 0
    idle_handovers: int = 0
    # -- the lease and the watchdog
    lease_owner: str | None = None
    lease_until: float = 0.0
    heartbeat: float = 0.0
    stall_cursor: int | None = None
    stalls: int = 0
    last_error: str | None = None
    # -- the end
    error: str | None = None
    notified: bool = False
    model_uri: str | None = None
    train_accuracy: float | None = None
    test_accuracy: float | None = None
    final_cost: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    # -- what the run absorbed (`COUNTERS`)
    invocations: int = 0
    retries: int = 0
    throttles: int = 0
    duplicates: int = 0
    redrives: int = 0
    handovers: int = 0
    unprocessed: int = 0

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "RunRecord":
        """From a DynamoDB item (attribute values in DynamoDB's JSON)."""
        plain = {k: _from_dynamo(v) for k, v in item.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in plain.items() if k in known}
        if isinstance(values.get("partial_sum"), str):  # stored exactly, as float.hex()
            values["partial_sum"] = float.fromhex(values["partial_sum"])
        return cls(**values)

    def to_item(self) -> dict[str, Any]:
        """As a DynamoDB item (fields that are None are left out)."""
        return {k: _to_dynamo(v) for k, v in _attributes(self).items()}


def _attributes(obj: Any) -> dict[str, Any]:
    """A record's fields as stored: None left out, the partial sum as float.hex()."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        out[f.name] = v.hex() if f.name == "partial_sum" else v
    return out


class RunStore(LazyClient):
    service = "dynamodb"

    def __init__(self, table: str, dynamodb: Any = None) -> None:
        super().__init__(dynamodb)
        self.table = table

    # -- reads ---------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord:
        try:
            out = self.client.get_item(
                TableName=self.table, Key={"run_id": {"S": run_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"read run {run_id}") from e
        if "Item" not in out:
            raise NotFound(f"no run {run_id!r}")
        return RunRecord.from_item(out["Item"])

    def all(self) -> list[RunRecord]:
        """All runs, newest first (a scan: for people, not for the training path)."""
        items = self._all_items("scan", "list runs", TableName=self.table)
        runs = [RunRecord.from_item(i) for i in items]
        return sorted(runs, key=lambda r: r.created, reverse=True)

    def active(self) -> list[RunRecord]:
        """Runs in PREPARING or TRAINING, through the `by-status` index."""
        items = []
        for status in ACTIVE:
            items += self._all_items(
                "query",
                "list active runs",
                TableName=self.table,
                IndexName="by-status",
                KeyConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":s": {"S": status}},
            )
        return [RunRecord.from_item(i) for i in items]

    # -- transitions ---------------------------------------------------------------------

    def create(self, run_id: str, dataset: dict[str, Any], started_at: float) -> RunRecord:
        """A new PREPARING run of an uploaded `dataset`; `Conflict` if it already exists."""
        now = _iso(time.time())
        record = RunRecord(
            run_id, PREPARING, created=now, updated=now, dataset=dataset, started_at=started_at
        )
        set_ = _attributes(record)
        del set_["run_id"]
        return self._update(
            run_id, "create run", set_=set_, condition="attribute_not_exists(run_id)"
        )

    def start(self, run_id: str, prepared: Prepared) -> RunRecord:
        """PREPARING -> TRAINING at cursor 0 (weights version 0, written by the launcher);
        `Conflict` if the run is not PREPARING."""
        now = time.time()
        start = Progress(0, 0, "", 0, None, 0.0, 0)
        return self._update(
            run_id,
            "start run",
            set_={
                **_attributes(prepared),
                **_attributes(start),
                "status": TRAINING,
                "heartbeat": now,
                "updated": _iso(now),
            },
            condition="#st = :prep",
            values={"#st": "status", ":prep": PREPARING},
        )

    def fail(self, run_id: str, error: str, from_statuses: tuple[str, ...] = ACTIVE) -> RunRecord:
        """An active run -> FAILED with the reason; `Conflict` if it already ended."""
        conds = " OR ".join(f"#st = :f{i}" for i in range(len(from_statuses)))
        values: dict[str, Any] = {"#st": "status"}
        values.update({f":f{i}": s for i, s in enumerate(from_statuses)})
        return self._update(
            run_id,
            "fail run",
            set_={"status": FAILED, "error": error, "updated": _iso(time.time())},
            remove=("lease_owner", "notified"),
            condition=conds,
            values=values,
        )

    def acquire(self, run_id: str, owner: str, lease_seconds: float) -> RunRecord:
        """Take the run's lease if it is free, expired or already ours; `Conflict` otherwise."""
        now = time.time()
        return self._update(
            run_id,
            "acquire lease",
            set_={"lease_owner": owner, "lease_until": now + lease_seconds},
            condition=(
                "#st = :training AND (attribute_not_exists(lease_owner) OR lease_until < :now "
                "OR lease_owner = :me)"
            ),
            values={"#st": "status", ":training": TRAINING, ":now": now, ":me": owner},
        )

    def commit(
        self,
        run_id: str,
        owner: str,
        expected_cursor: int,
        progress: Progress,
        counters: dict[str, int],
        lease_seconds: float,
        release: bool = False,
    ) -> RunRecord:
        """Move the run to `progress`, if its cursor is still `expected_cursor` and the lease
        is ours; with `release`, give the lease up in the same write (a hand-over)."""
        now = time.time()
        set_ = {**_attributes(progress), "heartbeat": now, "updated": _iso(now)}
        remove: tuple[str, ...] = ()
        if release:
            remove = ("lease_owner",)
            set_["lease_until"] = 0
        else:
            set_["lease_until"] = now + lease_seconds
        return self._update(
            run_id,
            "commit step",
            set_=set_,
            add={k: v for k, v in counters.items() if v} or None,
            remove=remove,
            **_ours_at(owner, expected_cursor),
        )

    def finish(self, run_id: str, owner: str, cursor: int, outcome: Outcome) -> RunRecord:
        """TRAINING -> SUCCEEDED at the final cursor, under our lease."""
        now = time.time()
        return self._update(
            run_id,
            "finish run",
            set_={
                **_attributes(outcome),
                "status": SUCCEEDED,
                "finished_at": now,
                "updated": _iso(now),
            },
            remove=("lease_owner", "notified"),
            **_ours_at(owner, cursor),
        )

    def heartbeat(self, run_id: str, owner: str, lease_seconds: float) -> None:
        """Extend our lease; `Conflict` if it is no longer ours (taken over or cancelled)."""
        now = time.time()
        self._update(
            run_id,
            "heartbeat",
            set_={"lease_until": now + lease_seconds, "heartbeat": now},
            condition="#st = :training AND lease_owner = :me",
            values={"#st": "status", ":training": TRAINING, ":me": owner},
        )

    def redrive(
        self, run_id: str, cursor: int, seen_stalls: int, stalls: int, now: float
    ) -> RunRecord:
        """Count a re-drive of a stalled run: `stalls` in a row at `cursor` (`stall_cursor`);
        `Conflict` unless the run is still TRAINING at `cursor` with an expired lease and the
        stall count the caller saw (so that two sweeps re-drive one stall once)."""
        return self._update(
            run_id,
            "re-drive run",
            set_={"stall_cursor": cursor, "stalls": stalls, "updated": _iso(now)},
            add={"redrives": 1},
            condition=(
                "#st = :training AND #cur = :cur AND (attribute_not_exists(lease_until) "
                "OR lease_until < :now) AND (attribute_not_exists(stalls) OR stalls = :seen)"
            ),
            values={
                "#st": "status",
                "#cur": "cursor",
                ":training": TRAINING,
                ":cur": cursor,
                ":now": now,
                ":seen": seen_stalls,
            },
        )

    def release(self, run_id: str, owner: str, error: str) -> None:
        """Give up our lease after an error, noting it; a no-op if the lease is not ours."""
        with contextlib.suppress(Conflict):
            self._update(
                run_id,
                "release lease",
                set_={"lease_until": 0, "last_error": error[:2000], "updated": _iso(time.time())},
                remove=("lease_owner",),
                condition="lease_owner = :me",
                values={":me": owner},
            )

    def mark_notified(self, run_id: str) -> None:
        """Note that the end of an ended run was announced (`Notifier`); a no-op otherwise."""
        with contextlib.suppress(Conflict):
            self._update(
                run_id,
                "mark notified",
                set_={"notified": True},
                condition="#st = :s OR #st = :f OR #st = :c",
                values={"#st": "status", ":s": SUCCEEDED, ":f": FAILED, ":c": CANCELLED},
            )

    def count(self, run_id: str, counters: dict[str, int]) -> None:
        """Add to a run's counters (e.g. a duplicate trainer that found the lease taken).
        Not exact: a write botocore sent twice may count twice; nothing depends on it."""
        with contextlib.suppress(Conflict):
            self._update(run_id, "count", add=counters, condition="attribute_exists(run_id)")

    def cancel(self, run_id: str) -> RunRecord:
        """An active run -> CANCELLED; its trainer stops at its next heartbeat or commit."""
        return self._update(
            run_id,
            "cancel run",
            set_={"status": CANCELLED, "updated": _iso(time.time()), "error": "cancelled"},
            remove=("lease_owner",),
            condition="#st = :a OR #st = :b",
            values={"#st": "status", ":a": PREPARING, ":b": TRAINING},
        )

    def resume(self, run_id: str) -> RunRecord:
        """A FAILED or CANCELLED run that has a committed cursor -> TRAINING again, its stall
        and hand-over counts reset and its heartbeat fresh (the watchdog gives the trainer
        started with it a lease's time before it re-drives)."""
        now = time.time()
        return self._update(
            run_id,
            "resume run",
            set_={
                "status": TRAINING,
                "updated": _iso(now),
                "lease_until": 0,
                "heartbeat": now,
                "stalls": 0,
                "idle_handovers": 0,
            },
            remove=("error", "lease_owner", "stall_cursor", "notified"),
            condition="(#st = :f OR #st = :c) AND attribute_exists(#cur)",
            values={"#st": "status", "#cur": "cursor", ":f": FAILED, ":c": CANCELLED},
        )

    # -- the one writer ------------------------------------------------------------------

    def _update(
        self,
        run_id: str,
        what: str,
        set_: dict[str, Any] | None = None,
        add: dict[str, int] | None = None,
        remove: tuple[str, ...] = (),
        condition: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> RunRecord:
        names: dict[str, str] = {}
        vals: dict[str, Any] = {}
        parts = []
        if set_:
            sets = []
            for i, (k, v) in enumerate(set_.items()):
                names[f"#s{i}"] = k
                vals[f":s{i}"] = _to_dynamo(v)
                sets.append(f"#s{i} = :s{i}")
            parts.append("SET " + ", ".join(sets))
        if add:
            adds = []
            for i, (k, n) in enumerate(add.items()):
                names[f"#a{i}"] = k
                vals[f":a{i}"] = {"N": str(n)}
                adds.append(f"#a{i} :a{i}")
            parts.append("ADD " + ", ".join(adds))
        if remove:
            for i, k in enumerate(remove):
                names[f"#r{i}"] = k
            parts.append("REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove))))
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"run_id": {"S": run_id}},
            "UpdateExpression": " ".join(parts),
            "ExpressionAttributeNames": names,
            "ReturnValues": "ALL_NEW",
        }
        if condition:
            kwargs["ConditionExpression"] = condition
            for k, v in (values or {}).items():
                if k.startswith("#"):
                    names[k] = v
                else:
                    vals[k] = _to_dynamo(v)
        if vals:
            kwargs["ExpressionAttributeValues"] = vals
        try:
            out = self.client.update_item(**kwargs)
        except (ClientError, BotoCoreError) as e:
            error = translate(e, f"{what} (run {run_id})")
            if isinstance(error, Conflict) and _retried(e):
                # An earlier attempt of this very request may have been applied and its
                # answer lost (a 5xx, a dropped connection): botocore sent it again, and
                # the copy failed its condition because the first one had succeeded.
                applied = self._applied(run_id, set_ or {}, remove)
                if applied is not None:
                    return applied
            raise error from e
        return RunRecord.from_item(out["Attributes"])

    def _applied(
        self, run_id: str, set_: dict[str, Any], remove: tuple[str, ...]
    ) -> RunRecord | None:
        """The run, if it holds exactly what an update of `set_`/`remove` wrote (read with a
        consistent read); None if it does not. Every transition sets `updated` (to the
        millisecond), so another writer's update is not mistaken for ours. (A heartbeat needs
        none of this: its condition holds again for its copy, whose answer is its own.)"""
        if "updated" not in set_:
            return None
        try:
            out = self.client.get_item(
                TableName=self.table, Key={"run_id": {"S": run_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError):
            return None
        item = out.get("Item")
        if item is None:
            return None
        for name, value in set_.items():
            if name not in item or _from_dynamo(item[name]) != _from_dynamo(_to_dynamo(value)):
                return None
        if any(name in item for name in remove):
            return None
        return RunRecord.from_item(item)


def _ours_at(owner: str, cursor: int) -> dict[str, Any]:
    """The condition (`_update`'s `condition` and `values`) of a write by the lease holder
    that moves the run on from `cursor`: TRAINING, under `owner`'s lease, at `cursor`."""
    return {
        "condition": "#st = :training AND lease_owner = :me AND #cur = :cur",
        "values": {
            "#st": "status",
            "#cur": "cursor",
            ":training": TRAINING,
            ":me": owner,
            ":cur": cursor,
        },
    }


def _retried(e: Exception) -> bool:
    """Did botocore send the request more than once before this answer?"""
    response = getattr(e, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) > 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
