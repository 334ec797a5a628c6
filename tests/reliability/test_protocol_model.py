"""The whole training protocol under random schedules of deliveries and faults.

Property: whatever Lambda, DynamoDB and the watchdog do within the fault model below, a run
ends SUCCEEDED at its last step, its committed cost rows (one per epoch) and its published
model equal the single-process reference's, and at every moment in between the run record
only moves forward and points to a weights version that exists, was written by the writer
it names and by nobody else, and holds exactly the numbers of a clean run at that step.

Fault model. Trainer deliveries (Lambda's own, a duplicate of one, a retry of a crashed one,
all with the same request id but each under its own `lease_token`; the watchdog's re-drives;
hand-overs) run the real `Coordinator.drive` in threads of their own, over moto in process,
the neurons computed in process. A deterministic scheduler lets one thread run at a time and
advances a delivery one neuron round at a time; between rounds Hypothesis may start a
delivery, crash one (its round raises: the coordinator gives its lease back) or kill one
(nothing more runs, not even the release), make one beat its heartbeat, let the leases
expire (a fake clock of the runs adapter: a trainer that did not beat is superseded while
it works), run a watchdog sweep, bring a delivery near its time limit (it hands over), or
make one of a delivery's next DynamoDB writes ambiguous: applied, its answer lost, and
botocore's retry sent at once or after other deliveries acted (the retry's own answer,
often a failed condition, comes back with RetryAttempts 1, as `state.runs._retried`
expects), or applied and answered with a 500 when botocore gave up, or the worker killed
just before or just after the write. Afterwards the undelivered starts are delivered, the
leases expire and the watchdog sweeps until the run ends.

Hypothesis runs derandomized (`derandomize=True`, no example database), so that CI runs
the same schedules every time; a failure prints the schedule, minimized.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends

import state.runs
from state.costs import CostStore
from state.errors import NotFound
from state.models import PRODUCTION, STAGING, ModelStore
from state.notifications import Notifier
from state.objects import ObjectStore
from state.runs import SUCCEEDED, TRAINING, Progress, RunRecord, RunStore
from state.weights import WeightStore
from tests.functional.conftest import InProcessInvoker
from tests.support.template import create_tables
from trainer_lambdas import coordinator, datasets, services, watchdog
from trainer_lambdas.config import Config
from trainer_lambdas.coordinator import Coordinator, Stores
from trainer_lambdas.launcher import Launcher
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn import reference
from trainer_lambdas.payloads import TrainerEvent, UploadedObject
from trainer_lambdas.trainer import lease_token

BUCKET = "itsacat-model"
DATA = datasets.synthesize(m_train=40, m_test=12, side=8, seed=5)
# 3 batches (16, 16, 8) per epoch, 4 epochs: 12 steps of 3 neuron rounds each (the first
# layer in the dual form), plus one round per commit (layer 2's deferred update).
PARAMS = {
    "epochs": 4,
    "layers": 3,
    "activations": {"layer1": "relu", "layer2": "tanh", "layer3": "sigmoid"},
    "neurons": {"layer1": 4, "layer2": 3, "layer3": 1},
    "learning_rate": 0.05,
    "batch_size": 16,
}
SIZES = (4, 3, 1)
LEASE = 30.0
FOREVER_MS = 10**9  # the remaining time of an invocation far from its limit
NEAR_LIMIT_MS = 100  # ... and of one that must hand over
WAIT_S = 15.0  # the longest a thread may take to reach its next stop (then: stuck)
EXAMPLE_BUDGET_S = 60.0  # the longest one example may take (then: fail loudly)
FINISH_ACTIONS = 400  # scheduler actions to let a run end after the schedule
LAUNCHER = "<launcher>"  # who wrote version 0


class Killed(BaseException):
    """The worker was killed (SIGKILL, a Lambda timeout): nothing of it runs after this,
    not even the coordinator's `except Exception` that gives the lease back."""


class Stuck(AssertionError):
    """A thread did not reach its next stop in time: the harness (or the code) hangs."""


# --- the world: moto in process, the stores over a DynamoDB client with faults ----------


class Clock:
    """The runs adapter's clock (`state.runs.time`), moved on by the test to expire leases;
    it ticks a millisecond per reading, as time does, so that two writes are never stamped
    alike (`RunStore._applied` tells writes apart by their `updated`)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            self.now += 0.001
            return self.now

    def module(self) -> Any:
        return types.SimpleNamespace(time=self.time, strftime=time.strftime, gmtime=time.gmtime)


@dataclass
class Start:
    """One asynchronous start of the trainer function (Lambda gives it a request id)."""

    request_id: str
    payload: dict[str, Any]
    deliveries: int = 0


class Starts:
    """The `Functions` port: asynchronous starts are recorded; the test delivers them."""

    def __init__(self) -> None:
        self.started: list[Start] = []
        self._lock = threading.Lock()

    def start(self, function: str, payload: dict[str, Any]) -> None:
        assert function == "trainer", function
        with self._lock:
            self.started.append(Start(f"req-{len(self.started)}", payload))

    def call(self, function: str, payload: bytes) -> bytes:
        raise AssertionError("neurons are computed in process")


class FaultyDynamoDB:
    """The boto3 DynamoDB client every store uses, with the faults of the delivery whose
    trainer thread makes the write (`Delivery.arm`), and a log of who put which weight row.

    An ambiguous write is sent (moto applies it, or refuses it), its answer is lost, and
    botocore sends it again (at once, or after the scheduler let others act): the caller
    gets the second answer with `RetryAttempts` 1, a `ConditionalCheckFailedException` if
    the first attempt made the copy fail its condition. "fail": the attempts all came back
    as 500s (InternalServerError, RetryAttempts 2) though the first was applied."""

    def __init__(self, real: Any, weights_table: str) -> None:
        self.real = real
        self.weights_table = weights_table
        self.harness: Harness | None = None
        # run id -> (pk, sk) of a weight row -> every writer that put it (a lease token)
        self.puts: dict[str, dict[tuple[str, str], list[str]]] = {}
        self.writes: dict[str, int] = {}  # table -> write calls made to it

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def update_item(self, **kwargs: Any) -> Any:
        return self._write("update_item", kwargs)

    def put_item(self, **kwargs: Any) -> Any:
        return self._write("put_item", kwargs)

    def delete_item(self, **kwargs: Any) -> Any:
        return self._write("delete_item", kwargs)

    def batch_write_item(self, **kwargs: Any) -> Any:
        h = self.harness
        d = h.delivery_of_thread() if h else None
        writer = d.owner if d else LAUNCHER
        for r in kwargs["RequestItems"].get(self.weights_table, []):
            if "PutRequest" in r:
                pk, sk = r["PutRequest"]["Item"]["pk"]["S"], r["PutRequest"]["Item"]["sk"]["S"]
                rows = self.puts.setdefault(pk.rsplit("#", 1)[0], {})
                rows.setdefault((pk, sk), []).append(writer)
        return self._write("batch_write_item", kwargs)

    def _write(self, op: str, kwargs: dict[str, Any]) -> Any:
        call: Callable[..., Any] = getattr(self.real, op)
        for table in [kwargs["TableName"]] if "TableName" in kwargs else kwargs["RequestItems"]:
            self.writes[table] = self.writes.get(table, 0) + 1
        h = self.harness
        d = h.delivery_of_thread() if h else None
        kind = d.take_arm(op) if d else None
        if kind is None:
            return call(**kwargs)
        if kind == "kill-before":
            raise Killed(f"killed before {op}")
        with contextlib.suppress(ClientError):  # applied (or refused); its answer is lost
            call(**kwargs)
        if kind == "kill-after":
            raise Killed(f"killed after {op}")
        if kind == "fail":
            raise ClientError(
                {
                    "Error": {"Code": "InternalServerError", "Message": "Internal server error"},
                    "ResponseMetadata": {"HTTPStatusCode": 500, "RetryAttempts": 2},
                },
                _operation(op),
            )
        assert d is not None
        if kind == "retry-later":
            d.park(f"{op} (retry pending)")
        try:
            out = call(**kwargs)
        except ClientError as e:
            e.response.setdefault("ResponseMetadata", {})["RetryAttempts"] = 1
            raise
        out.setdefault("ResponseMetadata", {})["RetryAttempts"] = 1
        return out


def _operation(op: str) -> str:
    return "".join(part.title() for part in op.split("_"))


@dataclass
class Golden:
    """A clean run, one trainer, a commit at every step: the committed state after each
    step (settled weights, progress) and its costs; its end equals the reference."""

    weights: dict[int, list[tuple[np.ndarray, np.ndarray]]]
    progress: dict[int, Progress]
    costs: list[float]
    reference: reference.Result


class Env:
    """The module's world (not a dataclass: Hypothesis prints it in a failing example)."""

    golden: Golden

    def __init__(
        self,
        cfg: Config,
        stores: Stores,
        starts: Starts,
        ddb: FaultyDynamoDB,
        s3: Any,
        clock: Clock,
    ) -> None:
        self.cfg, self.stores, self.starts, self.ddb, self.s3 = cfg, stores, starts, ddb, s3
        self.clock = clock
        self.launches = 0
        # commit_every -> (a launched run's item, its weights version 0's rows)
        self.templates: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    def launch(self, params: dict[str, Any]) -> str:
        """A new run of DATA with `params` (a folder of its own: its own parameters.json)."""
        self.launches += 1
        folder = f"training_input/p{self.launches}"
        self.s3.put_object(Bucket=BUCKET, Key=f"{folder}/parameters.json", Body=json.dumps(params))
        body = datasets.to_bytes(DATA)
        out = self.s3.put_object(Bucket=BUCKET, Key=f"{folder}/datasets.h5", Body=body)
        obj = UploadedObject(
            bucket=BUCKET,
            key=f"{folder}/datasets.h5",
            size=len(body),
            etag=out["ETag"].strip('"'),
            version_id=out.get("VersionId"),
            sequencer="",
            event_time="2026-11-23T00:00:00.000Z",
        )
        result = Launcher(self.cfg, self.stores).launch(obj)
        assert result["outcome"] == "started", result
        return str(result["run_id"])

    def __repr__(self) -> str:
        return "Env(moto in process)"

    def peek(self, run_id: str) -> RunRecord:
        """The run as stored, read from moto's backend: what `RunStore.get` returns, but
        without botocore and moto's serializer (10 ms a read; the invariants read it after
        every event)."""
        backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][os.environ["AWS_DEFAULT_REGION"]]
        item = backend.get_item(self.cfg.runs_table, {"run_id": {"S": run_id}})
        return RunRecord.from_item(item.to_json()["Attributes"])

    def new_run(self, commit_every: int) -> str:
        """A run just as the launcher leaves it (TRAINING at cursor 0, weights version 0, a
        trainer started), copied from one launched once per `commit_every` (launching
        takes a third of a second in moto; the launcher is not what is tested here)."""
        if commit_every not in self.templates:
            run_id = self.launch({**PARAMS, "commit_every": commit_every})
            self.starts.started.pop()  # its trainer is never delivered
            item = self.ddb.real.get_item(
                TableName=self.cfg.runs_table, Key={"run_id": {"S": run_id}}, ConsistentRead=True
            )["Item"]
            rows = [
                r
                for layer in range(1, len(SIZES) + 1)
                for r in self.ddb.real.query(
                    TableName=self.cfg.weights_table,
                    KeyConditionExpression="pk = :pk",
                    ExpressionAttributeValues={":pk": {"S": f"{run_id}#{layer}"}},
                )["Items"]
            ]
            self.templates[commit_every] = (item, rows)
            self.stores.runs.cancel(run_id)  # (or the watchdog would re-drive it)
        item, rows = self.templates[commit_every]
        self.launches += 1
        run_id = f"model-{self.launches:05d}"
        self.ddb.batch_write_item(
            RequestItems={
                self.cfg.weights_table: [
                    {"PutRequest": {"Item": {**r, "pk": {"S": f"{run_id}#{r['pk']['S'][-1]}"}}}}
                    for r in rows
                ]
            }
        )
        now = self.clock.time()  # as `RunStore.start`: a fresh heartbeat
        self.ddb.put_item(
            TableName=self.cfg.runs_table,
            Item={
                **item,
                "run_id": {"S": run_id},
                "heartbeat": {"N": repr(now)},
                "updated": {"S": state.runs._iso(now)},
            },
            ConditionExpression="attribute_not_exists(run_id)",
        )
        self.starts.start(self.cfg.trainer_function, TrainerEvent(run_id).to_dict())
        return run_id


class GatedHeartbeat(coordinator.Heartbeat):
    """The real heartbeat (`Heartbeat._beat`), but it beats when the test says so: its
    wait between beats is the delivery's `Gate`. Outside a delivery, the real one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        h = CURRENT["harness"]
        d = h.delivery_of_thread() if h else None
        if d is not None:
            d.gate = Gate(h, self._thread)
            self._stop = d.gate  # type: ignore[assignment]


CURRENT: dict[str, Harness | None] = {"harness": None}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    clock = Clock()
    with (
        mock.patch.dict(
            os.environ,
            {
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            },
        ),
        mock_aws(),
    ):
        os.environ.pop("AWS_ENDPOINT_URL", None)
        real = boto3.client("dynamodb")
        s3 = boto3.client("s3")
        sns = boto3.client("sns")
        names = create_tables(real, "model")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        topic = sns.create_topic(Name="itsacat")["TopicArn"]
        cfg = Config(
            bucket=BUCKET,
            runs_table=names["RunsTable"],
            weights_table=names["WeightsTable"],
            costs_table=names["CostsTable"],
            idempotency_table=names["IdempotencyTable"],
            topic_arn=topic,
            trainer_function="trainer",
            neuron_function="neuron",
            lease_seconds=LEASE,
            commit_seconds=1e9,  # commits by `commit_every` and hand-overs only
        )
        ddb = FaultyDynamoDB(real, cfg.weights_table)
        starts = Starts()
        stores = Stores(
            runs=RunStore(cfg.runs_table, ddb),
            weights=WeightStore(cfg.weights_table, ddb),
            costs=CostStore(cfg.costs_table, ddb),
            objects=ObjectStore(BUCKET, s3),
            models=ModelStore(BUCKET, s3),
            notifier=Notifier(topic, sns),
            functions=starts,  # type: ignore[arg-type]
        )
        world = Env(cfg, stores, starts, ddb, s3, clock)
        with (
            mock.patch.object(state.runs, "time", clock.module()),
            mock.patch.object(coordinator, "Heartbeat", GatedHeartbeat),
            mock.patch.object(services, "stores", lambda: stores),
            mock.patch.object(services, "config", lambda: cfg),
        ):
            world.golden = _golden(world)
            yield world


def _golden(world: Env) -> Golden:
    """Train once with a commit at every step, no faults, recording each committed state."""
    params = {**PARAMS, "commit_every": 1}
    run_id = world.launch(params)
    s = world.stores
    weights = {0: s.weights.read(run_id, 0, DATA.require_train().m, SIZES)}  # dual form
    progress = {0: Progress(0, 0, "", 0, None, 0.0, 0)}
    write, commit = s.weights.write, s.runs.commit

    def recording_write(
        run: str, version: int, w: Any, writer: str = "", extras: Any = None
    ) -> int:
        weights[version] = [(a.copy(), b.copy()) for a, b in w]
        return write(run, version, w, writer, extras)

    def recording_commit(*args: Any, **kwargs: Any) -> RunRecord:
        p: Progress = kwargs["progress"]
        progress[p.cursor] = p
        return commit(*args, **kwargs)

    with (
        mock.patch.object(s.weights, "write", recording_write),
        mock.patch.object(s.runs, "commit", recording_commit),
    ):
        c = Coordinator(world.cfg, s, InProcessInvoker(s.objects))  # type: ignore[arg-type]
        assert c.drive(TrainerEvent(run_id), "golden", lambda: FOREVER_MS)["outcome"] == (
            "succeeded"
        )
    run = s.runs.get(run_id)
    assert sorted(weights) == sorted(progress) == list(range(run.total_steps + 1))
    x, y = DATA.require_train().columns()
    ref = reference.train(params_mod.parse(params), x, y)
    costs = s.costs.list(run_id)
    np.testing.assert_allclose(costs, ref.costs, rtol=1e-9, atol=0)
    return Golden(weights, progress, costs, ref)


# --- the scheduler ----------------------------------------------------------------------


class Gate:
    """What a delivery's heartbeat thread waits on between beats (in place of its stop
    event): it beats when the test asks, and stops when the trainer ends."""

    def __init__(self, h: Harness, thread: threading.Thread) -> None:
        self.h, self.thread = h, thread
        self.requested = self.stopped = self.idle = False

    def wait(self, timeout: float | None = None) -> bool:
        with self.h.cv:
            self.idle = True
            self.h.cv.notify_all()
            while not (self.requested or self.stopped):
                self.h.cv.wait(0.5)
            self.idle = False
            if self.stopped:
                return True
            self.requested = False
            return False

    def set(self) -> None:
        with self.h.cv:
            self.stopped = True
            self.h.cv.notify_all()


@dataclass(eq=False)
class Delivery:
    """One delivery of a start: a trainer invocation in a thread of its own. It runs only
    when the scheduler lets it, and stops ("parks") at each neuron round and at a pending
    retry of an ambiguous write; drive() returning or raising ends it ("done")."""

    h: Harness
    start: Start
    number: int
    owner: str = ""
    state: str = "running"  # running | parked | done
    where: str = ""
    permit: bool = False
    fault: str | None = None  # the next round: "crash" (raises) or "kill"
    # the fault of one of its next writes: (operation, how many of them go through first,
    # fault kind)
    arm: tuple[str, int, str] | None = None
    near_limit: bool = False
    gate: Gate | None = None
    thread: threading.Thread | None = None
    outcome: dict[str, Any] | None = None
    error: BaseException | None = None
    retried: bool = False

    def __post_init__(self) -> None:
        self.owner = lease_token(self.start.request_id)

    @property
    def name(self) -> str:
        return f"#{self.number} ({self.start.request_id}, {self.start.payload['reason']})"

    def remaining_ms(self) -> int:
        return NEAR_LIMIT_MS if self.near_limit else FOREVER_MS

    def run(self) -> None:
        invoker = ScheduledInvoker(self.h.env.stores.objects, self)
        c = Coordinator(self.h.env.cfg, self.h.env.stores, invoker)  # type: ignore[arg-type]
        try:
            event = TrainerEvent.from_event(self.start.payload)
            self.outcome = c.drive(event, self.owner, self.remaining_ms)
        except BaseException as e:  # a crash, a kill, or a failure of the code under test
            self.error = e
        finally:
            with self.h.cv:
                self.state = "done"
                self.h.cv.notify_all()

    def park(self, where: str) -> None:
        """Wait (in the delivery's thread) until the scheduler lets this delivery go on."""
        with self.h.cv:
            self.state, self.where = "parked", where
            self.h.cv.notify_all()
            while not (self.permit or self.h.closing):
                self.h.cv.wait(0.5)
            self.permit = False
            self.state = "running"
            if self.h.closing:
                raise Killed("the example is over")
            fault, self.fault = self.fault, None
        if fault == "crash":
            raise RuntimeError("worker crashed (test)")
        if fault == "kill":
            raise Killed("worker killed (test)")

    def take_arm(self, op: str) -> str | None:
        """The fault of this write, if it is the armed one."""
        with self.h.cv:
            if self.arm is None or self.arm[0] != op:
                return None
            _, skip, kind = self.arm
            if skip > 0:
                self.arm = (op, skip - 1, kind)
                return None
            self.arm = None
            self.h.log.append(f"  {self.name}: {kind} {op}")
            return kind


class ScheduledInvoker(InProcessInvoker):
    """The neurons in process; each round waits for the scheduler first."""

    def __init__(self, objects: ObjectStore, delivery: Delivery) -> None:
        super().__init__(objects)
        self.delivery = delivery

    def __call__(self, requests: Any) -> Any:
        self.delivery.park("neuron round")
        return super().__call__(requests)


class Harness:
    """One example: a run, its deliveries, the scheduler, and the invariants."""

    def __init__(self, env: Env, run_id: str) -> None:
        self.env, self.run_id = env, run_id
        self.cv = threading.Condition()
        self.closing = False
        self.deliveries: list[Delivery] = []
        self.by_thread: dict[threading.Thread, Delivery] = {}
        self.first_start = len(env.starts.started) - 1  # the launch's
        self.last_cursor = 0
        # what the last check saw: writes per table, the record, the committed epochs and
        # weights version it checked
        self.seen: dict[str, int] = {}
        self.run: RunRecord | None = None
        self.costs_checked = -1
        self.weights_checked: tuple[int, str] | None = None
        self.log: list[str] = []
        self.began = time.monotonic()
        run = env.stores.runs.get(run_id)
        self.total, self.width = run.total_steps, (run.m if run.first_layer == "dual" else run.n_x)

    # -- threads ---------------------------------------------------------------------

    def delivery_of_thread(self) -> Delivery | None:
        return self.by_thread.get(threading.current_thread())

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """(Holding `cv`.) Wait for `ready`; fail loudly if it takes more than WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                raise Stuck(f"stuck: {what}\n" + "\n".join(self.log[-30:]))
            self.cv.wait(min(left, 0.05))

    def starts(self) -> list[Start]:
        return [
            s
            for s in self.env.starts.started[self.first_start :]
            if s.payload["run_id"] == self.run_id
        ]

    def parked(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.state == "parked"]

    def deliver(self, start: Start) -> Delivery:
        """Lambda delivers `start` (again: a duplicate, or a retry of a failed delivery)."""
        start.deliveries += 1
        d = Delivery(self, start, len(self.deliveries))
        self.deliveries.append(d)
        d.thread = threading.Thread(target=d.run, name=f"delivery-{d.number}", daemon=True)
        self.by_thread[d.thread] = d
        with self.cv:
            d.thread.start()
            self.wait_until(lambda: d.state != "running", f"{d.name} starting")
        self._report(d, "delivered")
        return d

    def go(self, d: Delivery) -> None:
        """Let a parked delivery run to its next stop (or to its end)."""
        with self.cv:
            assert d.state == "parked", d
            d.permit, d.state = True, "running"
            self.cv.notify_all()
            self.wait_until(lambda: d.state != "running", f"{d.name} after {d.where}")
        self._report(d, "went on")

    def beat(self, d: Delivery) -> None:
        """One beat of the delivery's heartbeat thread, run to its end."""
        g = d.gate
        if g is None:
            return
        with self.cv:
            self.wait_until(
                lambda: g.idle or g.stopped or not g.thread.is_alive(), f"{d.name}'s heartbeat"
            )
            if g.stopped or not g.thread.is_alive():
                return
            g.requested, g.idle = True, False
            self.cv.notify_all()
            self.wait_until(
                lambda: g.idle or g.stopped or not g.thread.is_alive(), f"{d.name}'s beat"
            )
        self.log.append(f"  {d.name} beat: {'lost the lease' if not g.thread.is_alive() else 'ok'}")

    def _report(self, d: Delivery, what: str) -> None:
        if d.state == "done":
            self.log.append(f"  {d.name} {what}: ended {d.outcome or repr(d.error)}")
        else:
            self.log.append(f"  {d.name} {what}: parked at {d.where}")

    def close(self) -> None:
        """End every thread: parked deliveries are killed; fail loudly if one hangs."""
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        hung = []
        for d in self.deliveries:
            assert d.thread is not None
            d.thread.join(WAIT_S)
            if d.thread.is_alive():
                hung.append(d.name)
            if d.gate is not None:
                d.gate.thread.join(WAIT_S)
                if d.gate.thread.is_alive():
                    hung.append(f"{d.name}'s heartbeat")
        run = self.env.stores.runs.get(self.run_id)
        if not run.ended:  # (a failed example) later examples' sweeps leave it alone
            self.env.stores.runs.cancel(self.run_id)
        if hung:
            raise Stuck(f"threads that did not end: {hung}")

    # -- the environment's moves ---------------------------------------------------------

    def expire(self) -> None:
        self.env.clock.now += LEASE + 1

    def sweep(self, finishing: bool = False) -> None:
        run = self.env.stores.runs.get(self.run_id)
        # Not so many stalls at one step that the watchdog gives the run up (that is the
        # watchdog's job, tested elsewhere): leave room for the sweeps of the end.
        if (
            not finishing
            and run.stall_cursor == run.cursor
            and run.stalls >= watchdog.MAX_STALLS - 3
        ):
            self.log.append("  sweep skipped (stalls)")
            return
        out = watchdog.sweep(now=self.env.clock.now)
        self.log.append(f"  sweep: {out}")

    # -- the invariants ------------------------------------------------------------------

    def check(self) -> RunRecord:
        """What must hold after every event. (Each table is read again only if something
        was written to it since the last check: every write goes through `FaultyDynamoDB`.)"""
        if time.monotonic() - self.began > EXAMPLE_BUDGET_S:
            raise Stuck(f"the example took over {EXAMPLE_BUDGET_S} s")
        s, g, cfg = self.env.stores, self.env.golden, self.env.cfg
        writes = dict(self.env.ddb.writes)
        changed = {t for t in writes if writes[t] != self.seen.get(t)} | {
            t for t in self.seen if t not in writes
        }
        self.seen = writes
        if self.run is None or cfg.runs_table in changed:
            self.run = self.env.peek(self.run_id)
        run = self.run
        where = f"run record: {_record(run)}\n" + "\n".join(self.log[-40:])
        assert run.status in (TRAINING, SUCCEEDED), where
        assert run.cursor is not None and self.last_cursor <= run.cursor <= self.total, where
        self.last_cursor = run.cursor
        p = g.progress[run.cursor]
        assert (run.epochs_done, run.last_cost, run.partial_sum, run.partial_n) == (
            p.epochs_done,
            p.last_cost,
            p.partial_sum,
            p.partial_n,
        ), where
        if cfg.costs_table in changed or run.epochs_done != self.costs_checked:
            costs = s.costs.list(self.run_id, upto=run.epochs_done)
            assert costs == g.costs[: run.epochs_done], f"committed costs {costs}\n{where}"
            self.costs_checked = run.epochs_done
        if run.status == SUCCEEDED:
            assert run.cursor == self.total, where
            return run
        committed = (run.weights_version, run.weights_writer)
        if cfg.weights_table not in changed and committed == self.weights_checked:
            return run
        # The committed version exists, by its writer, and equals the clean run's ...
        assert run.weights_version == run.cursor, where
        try:
            weights = s.weights.read(
                self.run_id, run.weights_version, self.width, SIZES, run.weights_writer
            )
        except NotFound as e:
            raise AssertionError(f"the committed weights are gone: {e}\n{where}") from e
        for (w, b), (gw, gb) in zip(weights, g.weights[run.cursor], strict=True):
            assert np.array_equal(w, gw) and np.array_equal(b, gb), where
        # ... and its rows were put by one writer only: the one the record names.
        prefix = f"v{run.weights_version:010d}" + (
            f"@{run.weights_writer}#" if run.weights_writer else "#"
        )
        writers = {
            w
            for (_, sk), ws in self.env.ddb.puts.get(self.run_id, {}).items()
            if sk.startswith(prefix)
            for w in ws
        }
        assert len(writers) == 1, f"rows of {prefix} put by {writers}\n{where}"
        if run.weights_writer or run.weights_version == 0:
            assert writers == {run.weights_writer or LAUNCHER}, f"{writers}\n{where}"
        self.weights_checked = committed
        return run


def _record(run: RunRecord) -> dict[str, Any]:
    keys = [
        *("status", "cursor", "weights_version", "weights_writer", "epochs_done"),
        *("lease_owner", "lease_until", "heartbeat", "stall_cursor", "stalls"),
        *("last_error", "notified"),
    ]
    return {k: getattr(run, k) for k in keys}


# --- the schedule -----------------------------------------------------------------------

# An event is drawn as one flat tuple (kind, which, rounds, fault, operation, skip), which
# shrinks well field by field, then written as what it means (only the fields its kind
# uses): ("advance", which, rounds), ("ambiguous", which, fault, operation, skip), ...
# `which` picks among the parked deliveries, or the starts (modulo their number). Kinds are
# drawn by weight; "wait" (nothing happens) is what the shrinker replaces events with.
WEIGHTS = {
    "wait": 1,
    "advance": 8,
    "deliver": 2,
    "takeover": 2,
    "expire": 1,
    "sweep": 1,
    "beat": 2,
    "crash": 1,
    "kill": 1,
    "ambiguous": 3,
    "near-limit": 1,
}
# The retry sent later is the kind that lets other deliveries act in between: weighted up.
FAULTS = ("retry", "retry-later", "retry-later", "fail", "kill-before", "kill-after")
# After a neuron round, a trainer's next UpdateItem is its commit (or its finish), its next
# BatchWriteItems write cost rows (at the end of an epoch), the new weights version, and
# delete the old one.
OPERATIONS = ("update_item", "batch_write_item")
FIELDS = {
    "wait": (),
    "advance": (1, 2),
    "deliver": (1,),
    "takeover": (1,),
    "expire": (),
    "sweep": (),
    "beat": (1,),
    "crash": (1,),
    "kill": (1,),
    "ambiguous": (1, 3, 4, 5),
    "near-limit": (1,),
}


def _event(raw: tuple[Any, ...]) -> tuple[Any, ...]:
    return (raw[0], *(raw[i] for i in FIELDS[raw[0]]))


EVENT = st.tuples(
    st.sampled_from([kind for kind, weight in WEIGHTS.items() for _ in range(weight)]),
    st.integers(0, 7),
    st.integers(1, 6),
    st.sampled_from(FAULTS),
    st.sampled_from(OPERATIONS),
    st.sampled_from([0, 0, 1, 2]),  # how many writes of that operation go through first
).map(_event)
SCHEDULE = st.lists(EVENT, min_size=15, max_size=40)


def apply(h: Harness, event: tuple[Any, ...]) -> None:
    kind = event[0]
    parked = h.parked()
    pick = parked[event[1] % len(parked)] if parked and len(event) > 1 else None
    if kind == "deliver":
        starts = h.starts()
        h.deliver(starts[event[1] % len(starts)])
    elif kind == "takeover":
        # The leases expire (the trainers stopped beating: paused, cut off, dead), the
        # watchdog re-drives the run, and Lambda delivers its start; or, if the watchdog
        # did not (a lease was not held, the stalls), a duplicate arrives instead.
        h.expire()
        before = len(h.starts())
        h.sweep()
        starts = h.starts()
        h.deliver(starts[-1] if len(starts) > before else starts[event[1] % len(starts)])
    elif kind == "wait":
        return
    elif kind == "expire":
        h.expire()
    elif kind == "sweep":
        h.sweep()
    elif pick is None:
        return  # no delivery to act on
    elif kind == "advance":
        # round after round; it stops early at the end, or at an ambiguous write's retry
        for _ in range(event[2]):
            h.go(pick)
            h.check()
            if pick.state != "parked" or pick.where != "neuron round":
                break
    elif kind == "beat":
        h.beat(pick)
    elif kind in ("crash", "kill"):
        pick.fault = kind
        h.go(pick)
    elif kind == "ambiguous":
        pick.arm = (event[3], event[4], event[2])
    elif kind == "near-limit":
        # Only mid-step (at a neuron round): the step ends, then the trainer hands over. (At
        # its start, a trainer hands over without a step, and after a few of those in a row
        # the run fails on purpose: `MAX_IDLE_HANDOVERS`, tested elsewhere.)
        if pick.where == "neuron round":
            pick.near_limit = True
    else:
        raise AssertionError(event)


def finish(h: Harness) -> RunRecord:
    """Let the run end: parked deliveries go on, undelivered starts are delivered, and when
    nothing is left the leases expire and the watchdog sweeps; a trainer that failed after
    the run ended is retried by Lambda (and announces the end)."""
    for _ in range(FINISH_ACTIONS):
        parked = h.parked()
        if parked:
            h.go(parked[0])
            run = h.check()
            continue
        run = h.check()
        if run.ended:
            if run.notified:
                return run
            failed = [d for d in h.deliveries if d.error is not None and not d.retried]
            assert failed, f"the run ended unannounced, and no trainer is left: {_record(run)}"
            failed[0].retried = True
            h.log.append(f"retry of {failed[0].name}")
            h.deliver(failed[0].start)
            continue
        waiting = [s for s in h.starts() if s.deliveries == 0]
        if waiting:
            h.log.append("deliver (finish)")
            h.deliver(waiting[0])
            continue
        h.log.append("expire + sweep (finish)")
        h.expire()
        h.sweep(finishing=True)
    raise AssertionError(f"the run did not end in {FINISH_ACTIONS} actions\n" + "\n".join(h.log))


# Found by this model (a schedule of 40 events, shrunk by hand to these): a commit whose
# answer was lost is applied; before botocore's retry arrives the lease expires (the trainer
# was cut off: no heartbeat either), the watchdog re-drives the run and the new trainer
# takes it at the committed step; the retry then fails its condition, `RunStore._applied`
# does not recognise the record (the new lease), and the first trainer, taking the commit
# as refused, deletes "its" version, which is the one the run points to.
RETRIED_COMMIT_TAKEN_OVER = [
    ("deliver", 0),
    ("ambiguous", 0, "retry-later", "update_item", 0),
    ("advance", 0, 4),  # 3 neuron rounds, the settling round, the commit: its retry waits
    ("takeover", 0),
    ("advance", 0, 1),  # the retry: refused; the version the run points to is deleted
]


# 12 schedules keep `make test` short (about 25 s); a longer search:
# ITSACAT_PROTOCOL_EXAMPLES=200 .venv/bin/pytest tests/reliability/test_protocol_model.py
EXAMPLES = int(os.environ.get("ITSACAT_PROTOCOL_EXAMPLES", "12"))


@example(commit_every=1, schedule=RETRIED_COMMIT_TAKEN_OVER)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(commit_every=st.sampled_from([1, 2]), schedule=SCHEDULE)
def test_any_schedule_of_deliveries_and_faults_trains_the_reference_exactly_once(
    env: Env, commit_every: int, schedule: list[tuple[Any, ...]]
) -> None:
    run_id = env.new_run(commit_every)
    h = Harness(env, run_id)
    CURRENT["harness"] = env.ddb.harness = h
    try:
        h.check()
        for event in schedule:
            h.log.append(f"{event}")
            apply(h, event)
            h.check()
        run = finish(h)
        # The end: every step once, the reference's numbers, the model published.
        s, ref = env.stores, env.golden.reference
        assert run.status == SUCCEEDED and run.cursor == h.total == run.total_steps
        assert run.epochs_done == PARAMS["epochs"]
        costs = s.costs.list(run_id)
        assert len(costs) == PARAMS["epochs"]  # one row per epoch
        np.testing.assert_allclose(costs, ref.costs, rtol=1e-9, atol=0)
        model = s.models.load(run_id)
        for (w, b), (rw, rb) in zip(model.weights, ref.weights, strict=True):
            np.testing.assert_allclose(w, rw, rtol=1e-9, atol=1e-15)
            np.testing.assert_allclose(b, rb, rtol=1e-9, atol=1e-15)
        # Offered: the newest candidate (earlier examples' runs share the bucket, so the
        # first of them holds production).
        candidate = s.models.current(STAGING)
        assert candidate is not None and candidate.run_id == run_id
        assert s.models.current(PRODUCTION) is not None
    finally:
        note("\n".join(h.log))
        try:
            h.close()
        finally:
            CURRENT["harness"] = env.ddb.harness = None
