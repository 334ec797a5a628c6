"""Functional tier: the product's parts together, with AWS as moto in this process.

What these tests may use: the real adapters against moto's in-memory AWS (`mock_aws`; the
`world` fixture below holds the training stack's tables, bucket, topic and a queue), the
neuron function called directly through the same JSON payloads (`InProcessInvoker`) with
`start()` of functions recorded, servers of their own on loopback (a picture or dataset
server, a fake Lambda endpoint, in a thread), and the `itsacat` command as a subprocess.
Not the real local stack (`embedded`, `itsacat up`) nor any network beyond loopback: those
are the e2e, embedded, api and reliability tiers'.

Held to here: a test module may not import `embedded`; during a test, a socket may connect
or bind to loopback addresses only and names other than `localhost` are not looked up (so a
boto3 client that missed moto fails instead of reaching AWS), and an attempt fails the test
even if the code under test catches it. Subprocesses run outside these checks.
"""

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws

from state.costs import CostStore
from state.models import ModelStore
from state.notifications import Notifier
from state.objects import ObjectStore
from state.runs import RunStore
from state.weights import WeightStore
from tests.support.template import create_tables
from tests.support.tiers import Guard, is_loopback, refuse_imports
from trainer_lambdas import neuron
from trainer_lambdas.config import Config
from trainer_lambdas.coordinator import Stores
from trainer_lambdas.invoker import Counters, LeaseLost
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse, UploadedObject

BUCKET = "itsacat-test"
TIER = "functional"
RULE = "see tests/functional/conftest.py; the real stack's tiers may"


@pytest.fixture(scope="module", autouse=True)
def _functional_imports(request: pytest.FixtureRequest) -> None:
    refuse_imports(request.path, ["embedded"], TIER, RULE)


@pytest.fixture(autouse=True)
def _functional_isolation(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    guard = Guard(TIER, RULE, monkeypatch)
    guard.forbid_sockets(allow=is_loopback)
    yield guard
    guard.check()


@dataclass
class FakeFunctions:
    started: list[tuple[str, dict]] = field(default_factory=list)

    def start(self, function: str, payload: dict[str, Any]) -> None:
        self.started.append((function, payload))


class InProcessInvoker:
    """The neuron function called directly, through a JSON round trip of its payloads."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self.counters = Counters()
        self.requests: list[NeuronRequest] = []
        self.halt = threading.Event()  # as `LambdaInvoker.halt`

    def __call__(self, requests: Sequence[NeuronRequest]) -> list[NeuronResponse]:
        if self.halt.is_set():
            raise LeaseLost("the run's lease was lost; no more neuron invocations")
        out = []
        for r in requests:
            self.counters.add("invocations")
            self.requests.append(r)
            wire = NeuronRequest.from_event(json.loads(r.to_json()))
            resp = neuron.compute(wire, self.objects).to_dict()
            out.append(NeuronResponse.from_json(json.dumps(resp).encode()))
        return out


@dataclass
class World:
    cfg: Config
    stores: Stores
    functions: FakeFunctions
    s3: Any
    sns_topic: str
    sqs: Any
    queue_url: str

    def upload(self, body: bytes, key: str = "training_input/datasets.h5") -> UploadedObject:
        out = self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return UploadedObject(
            bucket=BUCKET,
            key=key,
            size=len(body),
            etag=out["ETag"].strip('"'),
            version_id=out.get("VersionId"),
            sequencer="",
            event_time="2026-11-23T00:00:00.000Z",
        )

    def notifications(self) -> list[dict]:
        msgs = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
        return [
            json.loads(json.loads(m["Body"])["Message"].rsplit("\n\n", 1)[1])
            for m in msgs.get("Messages", [])
        ]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for k, v in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        ddb = boto3.client("dynamodb")
        s3 = boto3.client("s3")
        sns = boto3.client("sns")
        sqs = boto3.client("sqs")
        names = create_tables(ddb, "t")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        topic = sns.create_topic(Name="itsacat")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="notes")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"])
        cfg = Config(
            bucket=BUCKET,
            runs_table=names["RunsTable"],
            weights_table=names["WeightsTable"],
            costs_table=names["CostsTable"],
            idempotency_table=names["IdempotencyTable"],
            topic_arn=topic,
            trainer_function="trainer",
            neuron_function="neuron",
            lease_seconds=30,
            commit_seconds=30,
        )
        functions = FakeFunctions()
        stores = Stores(
            runs=RunStore(cfg.runs_table, ddb),
            weights=WeightStore(cfg.weights_table, ddb),
            costs=CostStore(cfg.costs_table, ddb),
            objects=ObjectStore(BUCKET, s3),
            models=ModelStore(BUCKET, s3),
            notifier=Notifier(topic, sns),
            functions=functions,  # type: ignore[arg-type]
        )
        yield World(cfg, stores, functions, s3, topic, sqs, queue_url)
