"""Helpers for the reliability tests: stacks with settings, runs submitted by upload, oracles.

A run is started the way a user starts one: `parameters.json` and `datasets.h5` uploaded
under `training_input/<folder>/`; the launch function (fed by S3 -> SQS -> the runtime's
relay) records it. Every check compares against `trainer_lambdas.nn.reference.train`, the
single-process oracle, or against what the stack's own tables and bucket hold.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np

from embedded.invocations import RuntimeConfig
from embedded.stack import StackInfo, start, stop
from itsacat.bench.processes import (  # noqa: F401 (re-exported)
    alive,
    descendants,
    kill9,
    workers_of,
)
from state.costs import CostStore
from state.models import ModelStore
from state.runs import ACTIVE, RunRecord, RunStore
from trainer_lambdas import datasets
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn import reference

# Small problems: 8x8x3 pictures, a 4-3-1 network, a few epochs.
DATA = datasets.synthesize(m_train=32, m_test=8, side=8, seed=11)
DATA_BYTES = datasets.to_bytes(DATA)
PARAMS: dict[str, Any] = {
    "epochs": 3,
    "layers": 3,
    "activations": {"layer1": "relu", "layer2": "tanh", "layer3": "sigmoid"},
    "neurons": {"layer1": 4, "layer2": 3, "layer3": 1},
    "learning_rate": 0.05,
    "seed": 3,
}


@contextlib.contextmanager
def stack(home: Path, parameters: dict[str, str], config: RuntimeConfig) -> Iterator[StackInfo]:
    """A stack with template parameters and runtime settings; all of it stopped on exit."""
    info = start(home, parameters=parameters, config=config)
    try:
        yield info
    finally:
        stop(home)


@dataclass
class Client:
    """The stack's runs, costs and models, through clients pointed at it."""

    info: StackInfo

    def __post_init__(self) -> None:
        env = self.info.env()
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        self.s3 = session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        self.ddb = session.client("dynamodb", endpoint_url=env["AWS_ENDPOINT_URL"])
        self.lambda_ = session.client("lambda", endpoint_url=env["AWS_ENDPOINT_URL_LAMBDA"])
        self.bucket = env["ITSACAT_BUCKET"]
        self.runs = RunStore(env["RUNS_TABLE"], self.ddb)
        self.costs = CostStore(env["COSTS_TABLE"], self.ddb)
        self.models = ModelStore(self.bucket, self.s3)

    def upload(self, body: bytes, params: str | bytes | dict | None, name: str = "") -> str:
        """Upload a dataset (and its parameters) into a fresh folder; the dataset's key."""
        folder = f"training_input/{name or 'run'}-{uuid.uuid4().hex[:8]}"
        if params is not None:
            text = json.dumps(params) if isinstance(params, dict) else params
            self.s3.put_object(Bucket=self.bucket, Key=f"{folder}/parameters.json", Body=text)
        key = f"{folder}/datasets.h5"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return key

    def run_for(self, key: str, timeout_s: float = 60) -> str:
        """The run the upload at `key` started (waits for the launch to record it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for run in self.runs.all():
                if (run.dataset or {}).get("key") == key:
                    return str(run.run_id)
            time.sleep(0.2)
        raise AssertionError(f"no run appeared for {key} within {timeout_s} s")

    def submit(self, params: dict, body: bytes = DATA_BYTES, name: str = "") -> str:
        return self.run_for(self.upload(body, params, name))

    def wait(self, run_id: str, timeout_s: float = 120, statuses: tuple = ()) -> RunRecord:
        """Poll until the run leaves PREPARING/TRAINING (or reaches one of `statuses`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.runs.get(run_id)
            if run.status not in ACTIVE or run.status in statuses:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run {run_id} still {run.status} at cursor {run.cursor} after {timeout_s} s"
                )
            time.sleep(0.2)

    def wait_cursor(self, run_id: str, cursor: int, timeout_s: float = 60) -> RunRecord:
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.runs.get(run_id)
            if (run.cursor or 0) >= cursor or run.status not in ACTIVE:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} did not reach cursor {cursor}")
            time.sleep(0.05)

    def model_objects(self, run_id: str) -> list[str]:
        out = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"models/{run_id}/")
        return [o["Key"] for o in out.get("Contents", [])]


def reference_result(params: dict, data: datasets.Dataset = DATA) -> reference.Result:
    x, y = data.require_train().columns()
    return reference.train(params_mod.parse(params), x, y)


def assert_equals_reference(
    client: Client, run_id: str, params: dict, data: datasets.Dataset = DATA
) -> reference.Result:
    """Per-epoch costs and final parameters equal the reference's (relative 1e-9)."""
    ref = reference_result(params, data)
    run = client.runs.get(run_id)
    assert run.status == "SUCCEEDED", (run.status, run.error, run.last_error)
    costs = client.costs.list(run_id)
    assert len(costs) == len(ref.costs)
    np.testing.assert_allclose(costs, ref.costs, rtol=1e-9, atol=0)
    model = client.models.load(run_id)
    assert len(model.weights) == len(ref.weights)
    for (w, b), (rw, rb) in zip(model.weights, ref.weights, strict=True):
        np.testing.assert_allclose(w, rw, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(b, rb, rtol=1e-9, atol=1e-15)
    return ref
