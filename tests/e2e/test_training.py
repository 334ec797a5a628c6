"""End to end: upload -> launch -> trainer -> neurons -> model, on the embedded stack."""

import json
import os
import subprocess
import sys

import boto3
import numpy as np
import pytest

from state.runs import FAILED, SUCCEEDED
from tests.e2e.conftest import DATA, SMALL, Stack, assert_equals_reference, reference_result
from tests.support.stack import wait_for
from trainer_lambdas import datasets
from trainer_lambdas.payloads import NeuronRequest, unpack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWS = os.path.join(os.path.dirname(sys.executable), "aws")


def test_itsacat_train_json_equals_the_reference(stack: Stack, tmp_path) -> None:
    data, params = tmp_path / "d.h5", tmp_path / "p.json"
    datasets.save(DATA, data)
    params.write_text(json.dumps(SMALL))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "itsacat.cli",
            "train",
            str(data),
            "--params",
            str(params),
            "--wait",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    expected_keys = {
        "run_id",
        "status",
        "error",
        "epochs",
        "costs",
        "final_cost",
        "train_accuracy",
        "test_accuracy",
        "model_uri",
        "seconds",
    }
    assert set(result) == expected_keys
    assert result["status"] == SUCCEEDED and result["error"] is None
    ref = reference_result(SMALL)
    np.testing.assert_allclose(result["costs"], ref.costs, rtol=1e-9)
    assert result["final_cost"] == result["costs"][-1]
    assert_equals_reference(stack, result["run_id"], SMALL)
    assert "epoch 4/4" in out.stderr  # the live progress bar


def test_aws_cli_upload_trains_minibatch_blocks_with_adam_equal_to_the_reference(
    stack: Stack, tmp_path
) -> None:
    # Adam with L2: its state travels beside each weight row and in the deferred updates.
    params = {
        **SMALL,
        "batch_size": 16,
        "fanout": 3,
        "commit_every": 2,
        "optimizer": "adam",
        "lambda": 0.5,
        "learning_rate": 0.01,
    }
    folder = stack.folder()
    (tmp_path / "parameters.json").write_text(json.dumps(params))
    datasets.save(DATA, tmp_path / "datasets.h5")
    env = {**os.environ, **stack.env}
    for name in ("parameters.json", "datasets.h5"):
        subprocess.run(
            [AWS, "s3", "cp", str(tmp_path / name), f"s3://{stack.bucket}/{folder}/{name}"],
            check=True,
            capture_output=True,
            env=env,
            timeout=60,
        )
    run_id = stack.run_for(f"{folder}/datasets.h5")
    run = stack.wait(run_id)
    assert run.status == SUCCEEDED, run.error
    assert_equals_reference(stack, run_id, params)
    # 3 batches x 4 epochs x (2 + 1 + 1 blocks forward and layer 1's 2 blocks backward:
    # Adam keeps the first layer in the primal form; the output block does its backward pass
    # in its forward invocation, layer 2's block in its next one), and layer 2's block once
    # more before each of the 6 commits (every 2 steps)
    assert run.first_layer == "primal"
    assert run.invocations == 3 * 4 * (4 + 2) + 6


def s3_event(bucket: str, key: str, version: str, size: int) -> dict:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-23T00:00:00.000Z",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {
                        "key": key,
                        "size": size,
                        "eTag": "e",
                        "versionId": version,
                        "sequencer": "00",
                    },
                },
            }
        ]
    }


def test_the_same_s3_event_twice_makes_one_run(stack: Stack) -> None:
    key = stack.upload(SMALL)
    first_run = stack.run_for(key)  # the bucket's own notification already launched it
    head = boto3.client("s3").head_object(Bucket=stack.bucket, Key=key)
    event = s3_event(stack.bucket, key, head["VersionId"], head["ContentLength"])
    lam = boto3.client("lambda")
    replies = [
        json.loads(
            lam.invoke(FunctionName=stack.env["LAUNCH_FUNCTION"], Payload=json.dumps(event))[
                "Payload"
            ].read()
        )
        for _ in range(2)
    ]
    assert [r["results"][0]["run_id"] for r in replies] == [first_run, first_run]
    assert len([r for r in stack.runs().all() if r.dataset["key"] == key]) == 1
    assert stack.wait(first_run).status == SUCCEEDED
    assert len(stack.costs(first_run)) == SMALL["epochs"]


def test_a_trainer_delivered_twice_does_not_repeat_a_step(stack: Stack) -> None:
    params = {**SMALL, "epochs": 8}
    run_id = stack.run_for(stack.upload(params))
    lam = boto3.client("lambda")
    for _ in range(2):  # two more deliveries of the trainer's event
        lam.invoke(
            FunctionName=stack.env["TRAINER_FUNCTION"],
            InvocationType="Event",
            Payload=json.dumps({"kind": "trainer", "run_id": run_id, "reason": "launch"}),
        )
    run = stack.wait(run_id)
    assert run.status == SUCCEEDED
    assert_equals_reference(stack, run_id, params)
    wait_for(lambda: stack.runs().get(run_id).duplicates >= 2)
    # and once more after the end: nothing moves
    reply = lam.invoke(
        FunctionName=stack.env["TRAINER_FUNCTION"],
        Payload=json.dumps({"kind": "trainer", "run_id": run_id, "reason": "launch"}),
    )
    assert json.loads(reply["Payload"].read())["outcome"] == "not-ours"
    assert stack.runs().get(run_id).cursor == run.cursor
    assert len(stack.costs(run_id)) == 8


def test_a_neuron_delivered_twice_changes_nothing(stack: Stack) -> None:
    run_id = stack.run_for(stack.upload(SMALL))
    run = stack.wait(run_id)
    wait_for(lambda: stack.runs().get(run_id).notified)  # the last write of a run's end
    before = stack.runs().get(run_id)
    w = np.random.default_rng(0).normal(size=(2, 192))
    req = NeuronRequest(run_id, run.data_key, "forward", 1, 0, 2, "relu", w, np.zeros((2, 1)))
    lam = boto3.client("lambda")
    replies = [
        lam.invoke(FunctionName=stack.env["NEURON_FUNCTION"], Payload=req.to_json())[
            "Payload"
        ].read()
        for _ in range(2)
    ]
    assert replies[0] == replies[1]
    x, _ = DATA.require_train().columns()
    a = unpack(json.loads(replies[0])["a"], "a")
    np.testing.assert_allclose(a, np.maximum(w @ x, 0), rtol=1e-12)
    assert stack.runs().get(run_id) == before


@pytest.mark.parametrize(
    "params, body, reason",
    [
        (SMALL, b"\x89HDF\r\n\x1a\n truncated", "not a readable HDF5 file"),
        ('{"epochs": 3, "layers": 2}', None, "'activations' must be an object"),
        ({**SMALL, "learning_rate": -1}, None, "'learning_rate' must be a positive number"),
    ],
    ids=["broken-dataset", "broken-parameters", "negative-learning-rate"],
)
def test_bad_input_ends_failed_with_reason_notification_no_retry_no_model(
    stack: Stack, notifications, params, body, reason: str
) -> None:
    launch = stack.env["LAUNCH_FUNCTION"]
    errors_before = stack.stats()["functions"][launch]["errors"]
    run_id = stack.run_for(stack.upload(params, body))
    run = stack.wait(run_id)
    assert run.status == FAILED and reason in run.error
    notes = wait_for(lambda: [n for n in notifications() if n["run_id"] == run_id])
    assert notes[0]["status"] == FAILED and reason in notes[0]["error"]
    assert stack.stats()["functions"][launch]["errors"] == errors_before  # nothing retried
    s3 = boto3.client("s3")
    for prefix in (f"models/{run_id}/", f"runs/{run_id}/"):
        assert s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("KeyCount", 0) == 0
