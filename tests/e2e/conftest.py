"""End-to-end tier: training through the real embedded stack (emulator + local Lambda runtime).

What these tests may use: the session's stack (`embedded_stack`, tests/conftest.py) or a
stack of their own (`tests.support.stack.running_stack`), reached over loopback with plain
boto3 clients, the `itsacat` command and the API served by `itsacat serve`; killing the
stack's processes; files in a temporary ITSACAT_HOME. Not the internet nor AWS.

Runs go in through the bucket as a user's upload does; results are compared with the
single-process reference trainer on the same data and parameters.
"""

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from embedded.stack import StackInfo
from state import clients
from state.costs import CostStore
from state.models import ModelStore
from state.objects import ObjectStore
from state.runs import ACTIVE, SUCCEEDED, RunRecord, RunStore
from trainer_lambdas import datasets
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn import reference

DATA = datasets.synthesize(m_train=40, m_test=12, side=8, seed=11)
SMALL = {
    "epochs": 4,
    "layers": 3,
    "activations": {"layer1": "relu", "layer2": "tanh", "layer3": "sigmoid"},
    "neurons": {"layer1": 4, "layer2": 3, "layer3": 1},
    "learning_rate": 0.05,
}


@dataclass
class Stack:
    info: StackInfo
    env: dict[str, str]

    @property
    def bucket(self) -> str:
        return self.env["ITSACAT_BUCKET"]

    def runs(self) -> RunStore:
        return RunStore(self.env["RUNS_TABLE"])

    def costs(self, run_id: str) -> list[float]:
        return CostStore(self.env["COSTS_TABLE"]).list(run_id)

    def models(self) -> ModelStore:
        return ModelStore(self.bucket)

    def objects(self) -> ObjectStore:
        return ObjectStore(self.bucket)

    def folder(self) -> str:
        return f"training_input/t-{uuid.uuid4().hex[:10]}"

    def upload(
        self, params: dict | str | None, body: bytes | None = None, folder: str | None = None
    ) -> str:
        """Put parameters.json (if any) and then the dataset in a fresh folder; the key."""
        folder = folder or self.folder()
        s3 = boto3.client("s3")
        if params is not None:
            text = params if isinstance(params, str) else json.dumps(params)
            s3.put_object(Bucket=self.bucket, Key=f"{folder}/parameters.json", Body=text)
        key = f"{folder}/datasets.h5"
        data = datasets.to_bytes(DATA) if body is None else body
        s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    def run_for(self, key: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for r in self.runs().all():
                if (r.dataset or {}).get("key") == key:
                    return str(r.run_id)
            time.sleep(0.1)
        raise AssertionError(f"no run appeared for {key}")

    def wait(self, run_id: str, timeout_s: float = 120) -> RunRecord:
        """The run once it ended (and, SUCCEEDED, once its model was offered and announced)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.runs().get(run_id)
            if run.status not in ACTIVE and (run.status != SUCCEEDED or run.notified):
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} still {run.status} after {timeout_s} s")

    def stats(self) -> dict[str, Any]:
        return self.info.stats()


def use_stack(info: StackInfo, monkeypatch: pytest.MonkeyPatch) -> Stack:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    env = info.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ITSACAT_HOME", info.home)
    clients.client.cache_clear()
    return Stack(info, env)


@pytest.fixture
def stack(embedded_stack: StackInfo, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    yield use_stack(embedded_stack, monkeypatch)
    clients.client.cache_clear()


@pytest.fixture
def notifications(stack: Stack) -> Iterator[Any]:
    """An SQS queue subscribed to the run notifications topic; yields a reader."""
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    url = sqs.create_queue(QueueName=f"notes-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    sub = sns.subscribe(TopicArn=stack.env["TOPIC_ARN"], Protocol="sqs", Endpoint=arn["QueueArn"])[
        "SubscriptionArn"
    ]

    def read() -> list[dict]:
        out = []
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            text = json.loads(m["Body"])["Message"]
            out.append(json.loads(text.rsplit("\n\n", 1)[1]))
        return out

    yield read
    sns.unsubscribe(SubscriptionArn=sub)
    sqs.delete_queue(QueueUrl=url)


def reference_result(params: dict) -> reference.Result:
    x, y = DATA.require_train().columns()
    return reference.train(params_mod.parse(params), x, y)


def assert_equals_reference(stack: Stack, run_id: str, params: dict) -> None:
    ref = reference_result(params)
    costs = stack.costs(run_id)
    assert len(costs) == len(ref.costs)
    np.testing.assert_allclose(costs, ref.costs, rtol=1e-9, atol=0)
    model = stack.models().load(run_id)
    for (w, b), (rw, rb) in zip(model.weights, ref.weights, strict=True):
        np.testing.assert_allclose(w, rw, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(b, rb, rtol=1e-9, atol=1e-14)


def worker_pids(info: StackInfo, function: str) -> list[int]:
    """The warm worker processes of `function` in this stack (read from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"AWS_LAMBDA_FUNCTION_NAME={function}".encode() in environ
            and f"AWS_ENDPOINT_URL={info.emulator_url}".encode() in environ
        ):
            pids.append(int(entry))
    return pids
