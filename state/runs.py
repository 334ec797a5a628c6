"""The runs table: one item per training run, and the conditional writes that move it on.

Every transition is one conditional UpdateItem: creation (`attribute_not_exists`), the
launch (PREPARING -> TRAINING), the lease (free or expired -> ours), each commit (expected
cursor and our lease -> next cursor), and the end (TRAINING -> SUCCEEDED/FAILED/CANCELLED).
There is no read-then-write anywhere: the condition is the check.
"""

import contextlib
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import Conflict, NotFound, StateError, translate

PREPARING, TRAINING, SUCCEEDED, FAILED, CANCELLED = (
    "PREPARING",
    "TRAINING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
ACTIVE = (PREPARING, TRAINING)
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

_ser = TypeSerializer()
_de = TypeDeserializer()


def _plain(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | set):
        return [_plain(x) for x in v]
    return v


def _dyn(v: Any) -> Any:
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, dict):
        return {k: _dyn(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_dyn(x) for x in v]
    return v


@dataclass(frozen=True)
class Run:
    """A run record as read back (plain Python types)."""

    item: dict[str, Any] = field(repr=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.item[name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return self.item.get(name, default)


class RunStore(LazyClient):
    service = "dynamodb"

    def __init__(self, table: str, dynamodb: Any = None) -> None:
        super().__init__(dynamodb)
        self.table = table

    # -- reads ---------------------------------------------------------------------------

    def get(self, run_id: str) -> Run:
        try:
            out = self.client.get_item(
                TableName=self.table, Key={"run_id": {"S": run_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as e:
            raise translate(e, f"read run {run_id}") from e
        if "Item" not in out:
            raise NotFound(f"no run {run_id!r}")
        return Run({k: _plain(_de.deserialize(v)) for k, v in out["Item"].items()})

    def all(self) -> "list[Run]":
        """All runs, newest first (a scan: for people, not for the training path)."""
        runs, kwargs = [], {"TableName": self.table}
        try:
            while True:
                out = self.client.scan(**kwargs)
                runs += [
                    Run({k: _plain(_de.deserialize(v)) for k, v in i.items()}) for i in out["Items"]
                ]
                if "LastEvaluatedKey" not in out:
                    break
                kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as e:
            raise translate(e, "list runs") from e
        return sorted(runs, key=lambda r: r.get("created", ""), reverse=True)

    def active(self) -> "list[Run]":
        """Runs in PREPARING or TRAINING, through the `by-status` index."""
        runs = []
        try:
            for status in ACTIVE:
                kwargs: dict[str, Any] = {
                    "TableName": self.table,
                    "IndexName": "by-status",
                    "KeyConditionExpression": "#s = :s",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {":s": {"S": status}},
                }
                while True:
                    out = self.client.query(**kwargs)
                    runs += [
                        Run({k: _plain(_de.deserialize(v)) for k, v in i.items()})
                        for i in out["Items"]
                    ]
                    if "LastEvaluatedKey" not in out:
                        break
                    kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as e:
            raise translate(e, "list active runs") from e
        return runs

    # -- writes --------------------------------------------------------------------------

    def _update(
        self,
        run_id: str,
        what: str,
        set_: dict[str, Any] | None = None,
        add: dict[str, int] | None = None,
        remove: tuple[str, ...] = (),
        condition: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> Run:
        names: dict[str, str] = {}
        vals: dict[str, Any] = {}
        parts = []
        if set_:
            sets = []
            for i, (k, v) in enumerate(set_.items()):
                names[f"#s{i}"] = k
                vals[f":s{i}"] = _ser.serialize(_dyn(v))
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
                    vals[k] = _ser.serialize(_dyn(v))
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
        return Run({k: _plain(_de.deserialize(v)) for k, v in out["Attributes"].items()})

    def _applied(self, run_id: str, set_: dict[str, Any], remove: tuple[str, ...]) -> Run | None:
        """The run, if it holds exactly what an update of `set_`/`remove` wrote (read with a
        consistent read); None if it does not. Every update here sets `updated` (to the
        millisecond), and commits and heartbeats set times to the microsecond besides, so
        another writer's update is not mistaken for ours."""
        if "updated" not in set_:
            return None
        try:
            run = self.get(run_id)
        except StateError:
            return None
        for name, value in set_.items():
            if run.get(name) != _plain(_de.deserialize(_ser.serialize(_dyn(value)))):
                return None
        if any(name in run.item for name in remove):
            return None
        return run

    def create(self, run_id: str, fields: dict[str, Any]) -> Run:
        """A new PREPARING run; `Conflict` if the run already exists."""
        now = time.time()
        return self._update(
            run_id,
            "create run",
            set_={**fields, "status": PREPARING, "created": _iso(now), "updated": _iso(now)},
            condition="attribute_not_exists(run_id)",
        )

    def start(self, run_id: str, fields: dict[str, Any]) -> Run:
        """PREPARING -> TRAINING with the prepared run's fields; `Conflict` if not PREPARING."""
        return self._update(
            run_id,
            "start run",
            set_={**fields, "status": TRAINING, "updated": _iso(time.time()), "cursor": 0},
            condition="#st = :prep",
            values={"#st": "status", ":prep": PREPARING},
        )

    def fail(self, run_id: str, error: str, from_statuses: tuple[str, ...] = ACTIVE) -> Run:
        """An active run -> FAILED with the reason; `Conflict` if it already ended."""
        conds = " OR ".join(f"#st = :f{i}" for i in range(len(from_statuses)))
        values: dict[str, Any] = {"#st": "status"}
        values.update({f":f{i}": s for i, s in enumerate(from_statuses)})
        return self._update(
            run_id,
            "fail run",
            set_={"status": FAILED, "error": error, "updated": _iso(time.time())},
            remove=("lease_owner",),
            condition=conds,
            values=values,
        )

    def acquire(self, run_id: str, owner: str, lease_seconds: float) -> Run:
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
        fields: dict[str, Any],
        counters: dict[str, int],
        lease_seconds: float,
        release: bool = False,
    ) -> Run:
        """Move the cursor on, if it is still `expected_cursor` and the lease is ours."""
        now = time.time()
        set_ = {**fields, "updated": _iso(now)}
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
            condition="#st = :training AND lease_owner = :me AND #cur = :cur",
            values={
                "#st": "status",
                "#cur": "cursor",
                ":training": TRAINING,
                ":me": owner,
                ":cur": expected_cursor,
            },
        )

    def finish(self, run_id: str, owner: str, cursor: int, fields: dict[str, Any]) -> Run:
        """TRAINING -> SUCCEEDED at the final cursor, under our lease."""
        return self._update(
            run_id,
            "finish run",
            set_={**fields, "status": SUCCEEDED, "updated": _iso(time.time())},
            remove=("lease_owner",),
            condition="#st = :training AND lease_owner = :me AND #cur = :cur",
            values={
                "#st": "status",
                "#cur": "cursor",
                ":training": TRAINING,
                ":me": owner,
                ":cur": cursor,
            },
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

    def redrive(self, run_id: str, cursor: int, seen_stalls: int, stalls: int, now: float) -> Run:
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

    def count(self, run_id: str, counters: dict[str, int]) -> None:
        """Add to a run's counters (e.g. a duplicate trainer that found the lease taken)."""
        with contextlib.suppress(Conflict):
            self._update(run_id, "count", add=counters, condition="attribute_exists(run_id)")

    def cancel(self, run_id: str) -> Run:
        """An active run -> CANCELLED; its trainer stops at its next commit."""
        return self._update(
            run_id,
            "cancel run",
            set_={"status": CANCELLED, "updated": _iso(time.time()), "error": "cancelled"},
            remove=("lease_owner",),
            condition="#st = :a OR #st = :b",
            values={"#st": "status", ":a": PREPARING, ":b": TRAINING},
        )

    def resume(self, run_id: str) -> Run:
        """A FAILED or CANCELLED run that has a committed cursor -> TRAINING again."""
        return self._update(
            run_id,
            "resume run",
            set_={"status": TRAINING, "updated": _iso(time.time()), "lease_until": 0},
            remove=("error", "lease_owner"),
            condition="(#st = :f OR #st = :c) AND attribute_exists(#cur)",
            values={"#st": "status", "#cur": "cursor", ":f": FAILED, ":c": CANCELLED},
        )


def _retried(e: Exception) -> bool:
    """Did botocore send the request more than once before this answer?"""
    response = getattr(e, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) > 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
