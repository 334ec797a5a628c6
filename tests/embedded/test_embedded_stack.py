"""The embedded stack, end to end: the template's resources, the Invoke API, S3 delivery, logs.

All against the real stack of the session (`embedded_stack`): a moto server and the local
Lambda runtime in their own processes, reached over loopback with plain boto3 clients and
the real AWS CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from embedded.deploy import load_template
from embedded.stack import TEMPLATE, StackInfo
from tests.support.stack import TEST_CONFIG, wait_for
from tests.support.stack_clients import client

FIXTURES = "itsacat-fixtures"
AWS_CLI = Path(sys.executable).parent / "aws"


def invoke(info: StackInfo, function: str, event: Any, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    response = client(info, "lambda").invoke(
        FunctionName=function, Payload=json.dumps(event).encode(), **kwargs
    )
    return response, json.loads(response["Payload"].read() or b"null")


def function_stats(info: StackInfo, name: str) -> dict[str, Any]:
    return info.stats()["functions"][name]


# ---------------------------------------------------------------------- the template


def test_every_resource_of_the_template_exists(embedded_stack: StackInfo) -> None:
    template = load_template(TEMPLATE)
    cfn = client(embedded_stack, "cloudformation")
    created = {
        r["LogicalResourceId"]
        for r in cfn.describe_stack_resources(StackName="itsacat")["StackResources"]
        if "LogicalResourceId" in r
    }
    resources = template["Resources"]
    # Resources moto's CloudFormation skips are applied from the template (embedded.cfn_backfill).
    applied = {"TrainingInputQueuePolicy"}
    conditional = {k for k, v in resources.items() if "Condition" in v}
    for logical_id, resource in resources.items():
        if logical_id in applied | conditional:
            continue
        # SAM names a layer version <logical id><content hash>.
        assert any(c == logical_id or c.startswith(logical_id) for c in created), (
            f"{logical_id} ({resource['Type']}) was not created"
        )
    assert embedded_stack.stacks[0]["not_emulated"] == []

    outputs = embedded_stack.outputs
    assert client(embedded_stack, "s3").head_bucket(Bucket=outputs["BucketName"])
    tables = set(client(embedded_stack, "dynamodb").list_tables()["TableNames"])
    for key in ("RunsTableName", "WeightsTableName", "CostsTableName", "IdempotencyTableName"):
        assert outputs[key] in tables
    ttl = client(embedded_stack, "dynamodb").describe_time_to_live(
        TableName=outputs["IdempotencyTableName"]
    )
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expiration"
    lam = client(embedded_stack, "lambda")
    for role in ("launch", "trainer", "neuron", "watchdog"):
        config = lam.get_function_configuration(FunctionName=f"itsacat-{role}")
        assert config["Handler"] == f"trainer_lambdas.{role}.handler"
        assert config["Environment"]["Variables"]["ITSACAT_BUCKET"] == outputs["BucketName"]
        assert config["Environment"]["Variables"]["TRAINER_FUNCTION"] == "itsacat-trainer"
        assert str(config["Environment"]["Variables"]["NEURON_CONCURRENCY"]) == "32"
    logs = client(embedded_stack, "logs")
    groups = {
        g["logGroupName"]: g
        for g in logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/itsacat-")["logGroups"]
    }
    assert groups["/aws/lambda/itsacat-neuron"]["retentionInDays"] == 14

    # The parts moto's CloudFormation leaves out are there too.
    s3 = client(embedded_stack, "s3")
    notification = s3.get_bucket_notification_configuration(Bucket=outputs["BucketName"])
    (queue_config,) = notification["QueueConfigurations"]
    assert queue_config["QueueArn"].endswith(":itsacat-training-input")
    sqs = client(embedded_stack, "sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=outputs["TrainingInputQueueUrl"], AttributeNames=["Policy", "RedrivePolicy"]
    )["Attributes"]
    assert json.loads(attributes["Policy"])["Statement"][0]["Principal"] == {
        "Service": "s3.amazonaws.com"
    }
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 3
    invoke_config = lam.get_function_event_invoke_config(FunctionName="itsacat-trainer")
    assert invoke_config["DestinationConfig"]["OnFailure"]["Destination"].endswith(
        ":itsacat-failed-invocations"
    )


# ---------------------------------------------------------------------- the Invoke API


def test_a_function_runs_its_handler_and_returns_its_result(embedded_stack: StackInfo) -> None:
    response, result = invoke(embedded_stack, f"{FIXTURES}-echo", {"hello": "world"})
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert result["event"] == {"hello": "world"}
    assert result["function_name"] == f"{FIXTURES}-echo"
    assert result["function_version"] == "$LATEST"
    assert result["invoked_function_arn"].endswith(f":function:{FIXTURES}-echo")
    assert result["memory_limit_in_mb"] == "256"
    assert result["log_group_name"] == f"/aws/lambda/{FIXTURES}-echo"
    assert 0 < result["remaining_ms"] <= 10_000
    env = result["env"]
    assert env["AWS_ENDPOINT_URL"] == embedded_stack.emulator_url
    assert env["AWS_ENDPOINT_URL_LAMBDA"] == embedded_stack.lambda_url
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == f"{FIXTURES}-echo"
    assert env["FIXTURE_TABLE"] == f"{FIXTURES}-table"  # resolved from the template's !Ref
    # The worker stays warm: a second call lands in the same process, module state kept.
    _, again = invoke(embedded_stack, f"{FIXTURES}-echo", {})
    assert again["pid"] == result["pid"]
    assert again["warm_invocations"] == result["warm_invocations"] + 1
    # By ARN too, as boto3 users often do.
    _, by_arn = invoke(embedded_stack, result["invoked_function_arn"], {"x": 1})
    assert by_arn["event"] == {"x": 1}


def test_large_payloads_go_through_whole(embedded_stack: StackInfo) -> None:
    """Events and answers travel through the worker's Runtime API connection in several
    reads: a 4 MB event (and the echo of it) arrives byte for byte."""
    blob = "".join(f"{i:07d}" for i in range(4 * 1024 * 1024 // 7))
    _, result = invoke(embedded_stack, f"{FIXTURES}-echo", {"blob": blob})
    assert result["event"] == {"blob": blob}


def test_errors_are_reported_as_lambda_reports_them(embedded_stack: StackInfo) -> None:
    response, error = invoke(embedded_stack, f"{FIXTURES}-fail", {"tag": "sync"})
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "broken on purpose: sync"
    assert any("itsacat_fixture_handlers.py" in line for line in error["stackTrace"])

    response, error = invoke(embedded_stack, f"{FIXTURES}-missing", {})
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ImportModuleError"

    with pytest.raises(ClientError) as excinfo:
        invoke(embedded_stack, "no-such-function", {})
    assert excinfo.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_the_timeout_is_enforced(embedded_stack: StackInfo) -> None:
    before = function_stats(embedded_stack, f"{FIXTURES}-sleep")
    response, error = invoke(embedded_stack, f"{FIXTURES}-sleep", {"seconds": 30})
    assert response["FunctionError"] == "Unhandled"
    assert "Task timed out after 1.00 seconds" in error["errorMessage"]
    after = function_stats(embedded_stack, f"{FIXTURES}-sleep")
    assert after["timeouts"] == before["timeouts"] + 1
    # The killed worker is replaced: the function still works.
    response, result = invoke(embedded_stack, f"{FIXTURES}-sleep", {"seconds": 0})
    assert result == {"slept": 0}


def test_a_crashing_worker_is_reported_and_replaced(embedded_stack: StackInfo) -> None:
    response, error = invoke(embedded_stack, f"{FIXTURES}-crash", {})
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in error["errorMessage"]


def test_an_event_invocation_that_fails_is_retried_twice_then_sent_to_its_destination(
    embedded_stack: StackInfo,
) -> None:
    tag = uuid.uuid4().hex
    name = f"{FIXTURES}-fail"
    before = function_stats(embedded_stack, name)
    sent = time.monotonic()
    response = client(embedded_stack, "lambda").invoke(
        FunctionName=name, InvocationType="Event", Payload=json.dumps({"tag": tag}).encode()
    )
    assert response["StatusCode"] == 202
    sqs = client(embedded_stack, "sqs")
    queue = sqs.get_queue_url(QueueName=f"{FIXTURES}-failures")["QueueUrl"]

    def record() -> dict[str, Any] | None:
        for message in sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", []):
            body = json.loads(message["Body"])
            if body["requestPayload"] == {"tag": tag}:
                return body  # type: ignore[no-any-return]
        return None

    body = wait_for(record, timeout_s=60)
    # The retries came after AWS's waits (1 and 2 minutes), on the stack's clock.
    assert time.monotonic() - sent >= sum(TEST_CONFIG.retry_delays_s)
    assert body["requestContext"]["condition"] == "RetriesExhausted"
    assert body["requestContext"]["approximateInvokeCount"] == 3
    assert body["responseContext"]["functionError"] == "Unhandled"
    assert body["responsePayload"]["errorMessage"] == f"broken on purpose: {tag}"
    after = function_stats(embedded_stack, name)
    assert after["executions"] - before["executions"] == 3
    assert after["retries"] - before["retries"] == 2
    assert after["destination_failures"] - before["destination_failures"] == 1


def test_parallel_invocations_run_in_several_warm_workers(embedded_stack: StackInfo) -> None:
    lam = client(embedded_stack, "lambda", max_pool_connections=8)

    def call(i: int) -> int:
        payload = json.dumps({"seconds": 0.3}).encode()
        response = lam.invoke(FunctionName=f"{FIXTURES}-sleep", Payload=payload)
        assert "FunctionError" not in response
        return i

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(call, range(4))) == [0, 1, 2, 3]
    assert function_stats(embedded_stack, f"{FIXTURES}-sleep")["workers"] >= 2


# ---------------------------------------------------------------------- S3 -> launch


def _aws(info: StackInfo, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(info.env())
    return subprocess.run(
        [str(AWS_CLI), *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )


def test_an_upload_under_training_input_reaches_the_launch_function(
    embedded_stack: StackInfo, tmp_path: Path
) -> None:
    dataset = tmp_path / "x.h5"
    dataset.write_bytes(b"not really hdf5")
    tag = uuid.uuid4().hex
    bucket = embedded_stack.bucket
    _aws(embedded_stack, "s3", "cp", str(dataset), f"s3://{bucket}/training_input/{tag}/x.h5")
    _aws(embedded_stack, "s3", "cp", str(dataset), f"s3://{bucket}/elsewhere/{tag}/x.h5")
    _aws(embedded_stack, "s3", "cp", str(dataset), f"s3://{bucket}/training_input/{tag}/notes.txt")

    wait_for(lambda: f"training_input/{tag}/x.h5" in embedded_stack.stats()["relay"]["recent_keys"])
    relay = embedded_stack.stats()["relay"]
    assert relay["sources"][0]["function"] == "itsacat-launch"
    assert f"elsewhere/{tag}/x.h5" not in relay["recent_keys"]
    assert f"training_input/{tag}/notes.txt" not in relay["recent_keys"]
    assert function_stats(embedded_stack, "itsacat-launch")["sync"] >= 1


def test_the_aws_cli_works_against_the_stack(embedded_stack: StackInfo) -> None:
    tables = json.loads(_aws(embedded_stack, "dynamodb", "list-tables").stdout)["TableNames"]
    assert embedded_stack.outputs["RunsTableName"] in tables
    functions = json.loads(_aws(embedded_stack, "lambda", "list-functions").stdout)["Functions"]
    assert "itsacat-neuron" in {f["FunctionName"] for f in functions}
    _aws(embedded_stack, "s3", "ls", f"s3://{embedded_stack.bucket}")


# ---------------------------------------------------------------------- logs


def test_a_functions_log_lines_can_be_read_back_from_cloudwatch(embedded_stack: StackInfo) -> None:
    marker = uuid.uuid4().hex
    response, _ = invoke(
        embedded_stack, f"{FIXTURES}-log", {"lines": [f"one {marker}", f"two {marker}"]}
    )
    request_id = response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    logs = client(embedded_stack, "logs")

    def lines() -> list[str]:
        try:
            events = logs.filter_log_events(logGroupName=f"/aws/lambda/{FIXTURES}-log")["events"]
        except logs.exceptions.ResourceNotFoundException:
            return []  # the log group appears with the first batch of lines
        found = [
            e["message"] for e in events if request_id in e["message"] or marker in e["message"]
        ]
        return found if any(line.startswith("REPORT") for line in found) else []

    found = wait_for(lines)
    assert found[0] == f"START RequestId: {request_id} Version: $LATEST"
    assert found[1:3] == [f"one {marker}", f"two {marker}"]
    assert found[3] == f"END RequestId: {request_id}"
    assert found[4].startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    streams = logs.describe_log_streams(logGroupName=f"/aws/lambda/{FIXTURES}-log")["logStreams"]
    assert all("/[$LATEST]" in s["logStreamName"] for s in streams)


def test_system_log_level_warn_leaves_out_lambdas_own_lines(embedded_stack: StackInfo) -> None:
    """LoggingConfig (moto drops it; the runtime applies it from the template)."""
    marker = uuid.uuid4().hex
    invoke(embedded_stack, f"{FIXTURES}-quiet-log", {"lines": [f"a {marker}", f"b {marker}"]})
    invoke(embedded_stack, f"{FIXTURES}-quiet-log", {"lines": [f"c {marker}"]})
    logs = client(embedded_stack, "logs")
    group = f"/aws/lambda/{FIXTURES}-quiet-log"

    def lines() -> list[str]:
        try:
            events = logs.filter_log_events(logGroupName=group)["events"]
        except logs.exceptions.ResourceNotFoundException:
            return []
        found = [e["message"] for e in events]
        return found if sum(marker in line for line in found) == 3 else []

    found = wait_for(lines)
    assert found == [f"a {marker}", f"b {marker}", f"c {marker}"]


# ---------------------------------------------------------------------- consistency


def test_concurrent_conditional_writes_have_exactly_one_winner(embedded_stack: StackInfo) -> None:
    table = embedded_stack.outputs["RunsTableName"]
    dynamodb = client(embedded_stack, "dynamodb", max_pool_connections=32)
    run_id = f"race-{uuid.uuid4().hex}"

    def claim(i: int) -> bool:
        try:
            dynamodb.put_item(
                TableName=table,
                Item={"run_id": {"S": run_id}, "owner": {"N": str(i)}},
                ConditionExpression="attribute_not_exists(run_id)",
            )
            return True
        except dynamodb.exceptions.ConditionalCheckFailedException:
            return False

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(claim, range(64)))
    assert results.count(True) == 1
    item = dynamodb.get_item(TableName=table, Key={"run_id": {"S": run_id}}, ConsistentRead=True)
    assert int(item["Item"]["owner"]["N"]) == results.index(True)


def test_concurrent_counter_updates_lose_nothing(embedded_stack: StackInfo) -> None:
    table = embedded_stack.outputs["RunsTableName"]
    dynamodb = client(embedded_stack, "dynamodb", max_pool_connections=32)
    run_id = f"counter-{uuid.uuid4().hex}"

    def add(_: int) -> None:
        dynamodb.update_item(
            TableName=table,
            Key={"run_id": {"S": run_id}},
            UpdateExpression="ADD hits :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(add, range(200)))
    item = dynamodb.get_item(TableName=table, Key={"run_id": {"S": run_id}}, ConsistentRead=True)
    assert item["Item"]["hits"]["N"] == "200"
