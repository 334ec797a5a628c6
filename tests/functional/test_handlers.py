"""The launch, trainer and watchdog handlers, driven by sample AWS events (tests/events/).

Each handler is called as Lambda calls it, `handler(event, context)`, with `services.config`,
`services.stores` and `services.invoker` replaced by in-memory fakes. The launch tests record
what reaches the `Launcher` (Powertools idempotency is passed through, so that no DynamoDB is
needed), except one that runs the idempotency layer for real over moto's DynamoDB; the trainer
tests record what reaches `Coordinator.drive`; the watchdog tests run the real `sweep` over a
fake runs table.
"""

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from state.errors import Conflict
from state.runs import ACTIVE, FAILED, PREPARING, SUCCEEDED, TRAINING, RunRecord
from tests.support.template import create_tables
from trainer_lambdas import launch, services, trainer, watchdog
from trainer_lambdas.config import Config
from trainer_lambdas.coordinator import Stores
from trainer_lambdas.payloads import PayloadError, TrainerEvent, UploadedObject

EVENTS = Path(__file__).resolve().parents[1] / "events"
BUCKET = "itsacat-123456789012-us-east-1"

CFG = Config(
    bucket=BUCKET,
    runs_table="itsacat-runs",
    weights_table="itsacat-weights",
    costs_table="itsacat-costs",
    idempotency_table="itsacat-idempotency",
    topic_arn="arn:aws:sns:us-east-1:123456789012:itsacat-notifications",
    trainer_function="itsacat-trainer",
    neuron_function="itsacat-neuron",
    lease_seconds=60.0,
)

# What tests/events/s3_put_dataset.json says was uploaded.
DATASET = UploadedObject(
    bucket=BUCKET,
    key="training_input/datasets.h5",
    size=2572389,
    etag="9b2cf535f27731c974343645a3985328",
    version_id="3sL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
    sequencer="0065F3A1C2D8E4B7A1",
    event_time="2026-03-14T09:26:53.123Z",
)


def event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


@dataclass
class LambdaContext:
    """The attributes and method of the context object Lambda passes to a Python handler."""

    aws_request_id: str = "0f5e2a4c-8b1d-4c7e-9a36-5d2b8e1f4a70"
    function_name: str = "itsacat-launch"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:itsacat-launch"
    memory_limit_in_mb: int = 1024
    log_group_name: str = "/aws/lambda/itsacat-launch"
    log_stream_name: str = "2026/03/14/[$LATEST]4d1e7b0c9a2f46e8b3c5a7d9e1f0b2c4"
    remaining_ms: int = 54_321

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


# -- in-memory fakes of the ports ---------------------------------------------------------


class Unused:
    """A port the handler under test must not touch."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        raise AssertionError(f"{self._name}.{attr} used")


@dataclass
class FakeFunctions:
    started: list[tuple[str, dict]] = field(default_factory=list)

    def start(self, function: str, payload: dict[str, Any]) -> None:
        self.started.append((function, payload))


@dataclass
class FakeNotifier:
    failed: list[tuple[str, str]] = field(default_factory=list)

    def run_failed(self, run_id: str, reason: str, dataset: str | None = None) -> None:
        self.failed.append((run_id, reason))


class FakeRunStore:
    """The runs table as the watchdog uses it, with `RunStore`'s conditions."""

    def __init__(self, *runs: RunRecord) -> None:
        self.runs = {r.run_id: r for r in runs}
        self.redrives: list[tuple[str, int, int, int]] = []
        self.conflict_on_redrive = False  # another sweep re-drove the run first

    def active(self) -> list[RunRecord]:
        return [r for r in self.runs.values() if r.status in ACTIVE]

    def redrive(
        self, run_id: str, cursor: int, seen_stalls: int, stalls: int, now: float
    ) -> RunRecord:
        run = self.runs[run_id]
        if (
            self.conflict_on_redrive
            or run.status != TRAINING
            or run.cursor != cursor
            or run.lease_until >= now
            or run.stalls != seen_stalls
        ):
            raise Conflict(f"re-drive run {run_id}: condition failed")
        self.redrives.append((run_id, cursor, seen_stalls, stalls))
        run = dataclasses.replace(
            run, stall_cursor=cursor, stalls=stalls, redrives=run.redrives + 1
        )
        self.runs[run_id] = run
        return run

    def fail(self, run_id: str, error: str, from_statuses: tuple[str, ...] = ACTIVE) -> RunRecord:
        run = self.runs[run_id]
        if run.status not in from_statuses:
            raise Conflict(f"fail run {run_id}: it is {run.status}")
        run = self.runs[run_id] = dataclasses.replace(run, status=FAILED, error=error)
        return run

    def mark_notified(self, run_id: str) -> None:
        self.runs[run_id] = dataclasses.replace(self.runs[run_id], notified=True)


@dataclass
class Wired:
    stores: Stores
    runs: FakeRunStore
    functions: FakeFunctions
    notifier: FakeNotifier
    invoker: Unused


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> Wired:
    """`services` returning the fakes: no AWS client is ever built."""
    runs, functions, notifier = FakeRunStore(), FakeFunctions(), FakeNotifier()
    stores = Stores(
        runs=runs,  # type: ignore[arg-type]
        weights=Unused("weights"),  # type: ignore[arg-type]
        costs=Unused("costs"),  # type: ignore[arg-type]
        objects=Unused("objects"),  # type: ignore[arg-type]
        models=Unused("models"),  # type: ignore[arg-type]
        notifier=notifier,  # type: ignore[arg-type]
        functions=functions,  # type: ignore[arg-type]
    )
    invoker = Unused("invoker")
    monkeypatch.setattr(services, "config", lambda: CFG)
    monkeypatch.setattr(services, "stores", lambda: stores)
    monkeypatch.setattr(services, "invoker", lambda: invoker)
    return Wired(stores, runs, functions, notifier, invoker)


# -- launch -------------------------------------------------------------------------------


@dataclass
class Launch:
    cfg: Config
    stores: Stores
    obj: UploadedObject


def _record_launches(monkeypatch: pytest.MonkeyPatch) -> list[Launch]:
    """Replace the Launcher with one that records what it is asked to launch."""
    calls: list[Launch] = []

    class RecordingLauncher:
        def __init__(self, cfg: Config, stores: Stores) -> None:
            self.cfg, self.stores = cfg, stores

        def launch(self, obj: UploadedObject) -> dict[str, Any]:
            calls.append(Launch(self.cfg, self.stores, obj))
            return {"run_id": f"run-{len(calls)}", "outcome": "started"}

    monkeypatch.setattr(launch, "Launcher", RecordingLauncher)
    return calls


@pytest.fixture
def no_idempotency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Powertools' idempotency passed through: `_launch_once` calls the launcher directly."""

    def passthrough(**_: Any) -> Callable[[Callable], Callable]:
        return lambda fn: fn

    monkeypatch.setattr(launch, "idempotent_function", passthrough)
    monkeypatch.setattr(launch, "_persistence", Unused("idempotency persistence"))


@pytest.fixture
def launches(wired: Wired, no_idempotency: None, monkeypatch: pytest.MonkeyPatch) -> list[Launch]:
    return _record_launches(monkeypatch)


def test_an_s3_put_of_a_dataset_launches_that_object_version(
    wired: Wired, launches: list[Launch]
) -> None:
    out = launch.handler(event("s3_put_dataset.json"), LambdaContext())
    assert out == {"results": [{"run_id": "run-1", "outcome": "started"}]}
    assert [c.obj for c in launches] == [DATASET]
    assert launches[0].cfg is CFG and launches[0].stores is wired.stores


def test_an_s3_put_delivered_through_sqs_launches_the_same_object(launches: list[Launch]) -> None:
    out = launch.handler(event("sqs_s3_put_dataset.json"), LambdaContext())
    assert out == {"results": [{"run_id": "run-1", "outcome": "started"}]}
    assert [c.obj for c in launches] == [DATASET]


def test_an_sqs_batch_launches_each_of_its_uploads_in_order(launches: list[Launch]) -> None:
    out = launch.handler(event("sqs_s3_put_batch.json"), LambdaContext())
    assert [r["run_id"] for r in out["results"]] == ["run-1", "run-2"]
    assert [c.obj for c in launches] == [
        DATASET,
        UploadedObject(
            bucket=BUCKET,
            key="training_input/kittens/datasets.h5",
            size=1048976,
            etag="e8c3c1c6c9f04b0a7e4f3d2b1a098765",
            version_id="Uq9cJ_2GmUOlWeQz.H6ofeKxbmM0Q5yV",
            sequencer="0065F3A1F07B12C9D3",
            event_time="2026-03-14T09:27:41.508Z",
        ),
    ]


def test_a_url_encoded_key_reaches_the_launcher_decoded(launches: list[Launch]) -> None:
    """S3 sends keys form-encoded: "my cats.h5" arrives as "my+cats.h5"."""
    launch.handler(event("s3_put_url_encoded_key.json"), LambdaContext())
    assert [c.obj.key for c in launches] == ["training_input/my cats.h5"]


def test_s3s_test_event_through_sqs_is_acknowledged_and_launches_nothing(
    launches: list[Launch],
) -> None:
    """The message S3 sends when the notification is configured: returned without an error
    (so that SQS deletes it rather than redelivering it), and nothing is launched."""
    out = launch.handler(event("sqs_s3_test_event.json"), LambdaContext())
    assert out == {"results": []}
    assert launches == []


def test_an_upload_that_is_not_a_dataset_is_ignored(wired: Wired, no_idempotency: None) -> None:
    """The real Launcher, over ports that fail if touched: parameters.json starts no run."""
    out = launch.handler(event("s3_put_parameters.json"), LambdaContext())
    assert out == {"results": [{"key": "training_input/parameters.json", "outcome": "ignored"}]}
    assert wired.functions.started == []
    assert wired.runs.runs == {}


def _sqs_body(body: str) -> dict[str, Any]:
    ev = event("sqs_not_json_body.json")
    ev["Records"][0]["body"] = body
    return ev


@pytest.mark.parametrize(
    "unusable",
    [
        pytest.param(event("sqs_not_json_body.json"), id="sqs-body-not-json"),
        pytest.param([event("s3_put_dataset.json")], id="event-not-an-object"),
    ],
)
def test_an_unusable_event_returns_an_error_without_raising(
    unusable: Any, launches: list[Launch]
) -> None:
    out = launch.handler(unusable, LambdaContext())
    assert out["results"] == []
    assert out["error"]
    assert launches == []


@pytest.mark.parametrize("body", ["[1, 2, 3]", '"hello"', "42", "null"])
def test_an_sqs_message_whose_body_is_json_but_not_an_object_returns_an_error(
    body: str, launches: list[Launch]
) -> None:
    """FAILS TODAY (a handler bug, reported, not fixed here): `uploaded_objects` calls
    `body.get` on whatever the body decodes to, so a message such as `aws sqs send-message
    --message-body 42` raises AttributeError instead of the "unusable event" result. SQS then
    redelivers it until maxReceiveCount (3) moves it to the dead-letter queue."""
    out = launch.handler(_sqs_body(body), LambdaContext())
    assert out["results"] == []
    assert out["error"]
    assert launches == []


def test_a_duplicate_sqs_delivery_of_one_s3_event_launches_once(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Powertools idempotency for real, over moto's DynamoDB: SQS delivers at least once,
    and a redelivery (same body, new receipt handle) finds the stored result."""
    for k, v in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    calls = _record_launches(monkeypatch)
    first = event("sqs_s3_put_dataset.json")
    again = copy.deepcopy(first)
    again["Records"][0]["receiptHandle"] = "AQEBredelivered" + "x" * 60
    again["Records"][0]["attributes"]["ApproximateReceiveCount"] = "2"
    newer = event("sqs_s3_put_dataset.json")  # the same key, uploaded again: a new version
    newer["Records"][0]["body"] = newer["Records"][0]["body"].replace(
        DATASET.version_id, "Zr0bQ7nY.newer.version.of.the.key"
    )
    with mock_aws():
        ddb = boto3.client("dynamodb")
        table = create_tables(ddb, "t")["IdempotencyTable"]
        monkeypatch.setattr(
            services, "config", lambda: dataclasses.replace(CFG, idempotency_table=table)
        )
        monkeypatch.setattr(launch, "_persistence", None)  # built on first use, over moto
        out1 = launch.handler(first, LambdaContext(aws_request_id="req-1"))
        out2 = launch.handler(again, LambdaContext(aws_request_id="req-2"))
        assert len(calls) == 1
        assert out1 == out2 == {"results": [{"run_id": "run-1", "outcome": "started"}]}
        out3 = launch.handler(newer, LambdaContext(aws_request_id="req-3"))
        assert out3 == {"results": [{"run_id": "run-2", "outcome": "started"}]}
        assert [c.obj.version_id for c in calls] == [
            DATASET.version_id,
            "Zr0bQ7nY.newer.version.of.the.key",
        ]
        items = ddb.scan(TableName=table)["Items"]
        assert sorted(i["status"]["S"] for i in items) == ["COMPLETED", "COMPLETED"]


# -- trainer ------------------------------------------------------------------------------


@dataclass
class Drive:
    parts: tuple[Any, Any, Any]
    event: TrainerEvent
    owner: str
    remaining_ms: Callable[[], int]


@pytest.fixture
def drives(wired: Wired, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Drive]]:
    calls: list[Drive] = []

    class RecordingCoordinator:
        def __init__(self, cfg: Config, stores: Stores, invoker: Any) -> None:
            self.parts = (cfg, stores, invoker)

        def drive(
            self, ev: TrainerEvent, owner: str, remaining_ms: Callable[[], int]
        ) -> dict[str, Any]:
            calls.append(Drive(self.parts, ev, owner, remaining_ms))
            return {"run_id": ev.run_id, "outcome": "recorded"}

    monkeypatch.setattr(trainer, "Coordinator", RecordingCoordinator)
    yield calls


@pytest.mark.parametrize("reason", ["launch", "handover", "watchdog", "resume"])
def test_the_trainer_drives_the_events_run_for_its_reason(
    reason: str, wired: Wired, drives: list[Drive]
) -> None:
    ev = event("trainer_start.json")
    ev["reason"] = reason
    ctx = LambdaContext(function_name="itsacat-trainer", remaining_ms=812_345)
    out = trainer.handler(ev, ctx)
    assert out == {"run_id": "datasets-5a0c3e9b71d2", "outcome": "recorded"}
    (call,) = drives
    assert call.event == TrainerEvent("datasets-5a0c3e9b71d2", reason)
    assert call.parts[0] is CFG and call.parts[1] is wired.stores and call.parts[2] is wired.invoker
    assert call.owner.startswith(f"{ctx.aws_request_id}/")
    assert len(call.owner) > len(ctx.aws_request_id) + 1
    assert call.remaining_ms() == 812_345


def test_two_deliveries_with_one_request_id_drive_under_different_tokens(
    drives: list[Drive],
) -> None:
    """Lambda keeps the request id when it retries or duplicates an event."""
    ctx = LambdaContext(aws_request_id="8a6f0d3e-2c1b-4e5a-9f7d-3b2a1c0e9d8f")
    trainer.handler(event("trainer_start.json"), ctx)
    trainer.handler(event("trainer_start.json"), ctx)
    first, twin = (d.owner for d in drives)
    assert first != twin
    assert first.startswith(f"{ctx.aws_request_id}/") and twin.startswith(f"{ctx.aws_request_id}/")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"kind": "trainer", "reason": "launch"}, id="no-run-id"),
        pytest.param({"kind": "trainer", "run_id": "r", "reason": "because"}, id="bad-reason"),
    ],
)
def test_an_unusable_trainer_event_raises_before_any_coordinator(
    bad: dict[str, Any], drives: list[Drive]
) -> None:
    """As it is today: a PayloadError (Lambda retries the async event, then sends it to the
    failed-invocations queue), and no run is touched."""
    with pytest.raises(PayloadError):
        trainer.handler(bad, LambdaContext())
    assert drives == []


# -- watchdog -----------------------------------------------------------------------------


def _training(run_id: str, **fields: Any) -> RunRecord:
    return RunRecord(run_id=run_id, status=TRAINING, **fields)


def test_the_watchdog_re_drives_a_stalled_run_and_only_it(wired: Wired) -> None:
    now = time.time()
    healthy = _training("healthy", cursor=5, lease_owner="r/1", lease_until=now + 60, heartbeat=now)
    wired.runs.runs.update(
        {
            r.run_id: r
            for r in (
                _training("stalled", cursor=3, lease_until=0.0, heartbeat=0.0),
                healthy,
                # its lease just expired, but it heartbeat within lease_seconds: not quiet
                _training("slow", cursor=2, lease_until=now - 1, heartbeat=now - 1),
                RunRecord(run_id="preparing", status=PREPARING),  # no cursor yet
                RunRecord(run_id="done", status=SUCCEEDED, cursor=9),
            )
        }
    )
    out = watchdog.handler(event("eventbridge_schedule.json"), LambdaContext())
    assert out == {"redriven": ["stalled"], "failed": []}
    assert wired.functions.started == [
        ("itsacat-trainer", {"kind": "trainer", "run_id": "stalled", "reason": "watchdog"})
    ]
    assert wired.runs.redrives == [("stalled", 3, 0, 1)]  # the first stall at step 3
    assert wired.runs.runs["healthy"] == healthy
    assert wired.notifier.failed == []


def test_the_watchdog_counts_a_repeated_stall_at_one_step(wired: Wired) -> None:
    wired.runs.runs["again"] = _training("again", cursor=4, stall_cursor=4, stalls=2)
    out = watchdog.handler(event("eventbridge_schedule.json"), LambdaContext())
    assert out == {"redriven": ["again"], "failed": []}
    assert wired.runs.redrives == [("again", 4, 2, 3)]


def test_the_watchdog_fails_a_run_stalled_too_often_at_one_step(wired: Wired) -> None:
    wired.runs.runs["stuck"] = _training(
        "stuck", cursor=7, stall_cursor=7, stalls=watchdog.MAX_STALLS, last_error="MemoryError"
    )
    out = watchdog.handler(event("eventbridge_schedule.json"), LambdaContext())
    assert out == {"redriven": [], "failed": ["stuck"]}
    assert wired.functions.started == []
    run = wired.runs.runs["stuck"]
    assert run.status == FAILED and run.notified
    assert wired.notifier.failed == [("stuck", run.error)]
    assert run.error is not None
    assert f"stopped {watchdog.MAX_STALLS} times in a row at step 7" in run.error
    assert "last error: MemoryError" in run.error


def test_the_watchdog_starts_no_trainer_when_another_sweep_re_drove_first(wired: Wired) -> None:
    wired.runs.runs["raced"] = _training("raced", cursor=1)
    wired.runs.conflict_on_redrive = True
    out = watchdog.handler(event("eventbridge_schedule.json"), LambdaContext())
    assert out == {"redriven": [], "failed": []}
    assert wired.functions.started == []
