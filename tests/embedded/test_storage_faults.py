"""Storage faults and DynamoDB's limits in the emulator (`embedded.storage_faults`).

Real emulator processes (`python -m embedded.emulator --faults SPEC`), one per spec, and
real boto3 clients. A "function" client carries `exec-env/AWS_Lambda_python3.12` in its
user agent, as botocore's does inside Lambda; only its requests are faulted. Tables and
keys are unique per test, so tests sharing an emulator do not see each other's data.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from embedded.storage_faults import FAULTS_PATH, item_size
from state import clients
from state.clients import batch_write
from state.errors import Conflict, StateError
from state.runs import RunStore
from tests.support.runs import progress, started_run
from tests.support.template import create_tables

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ADMIN = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
FUNCTION_AGENT = "exec-env/AWS_Lambda_python3.12"
# DynamoDB's legacy retry policy waits 50 ms before its first retry: one retry, quickly.
ONE_RETRY = {"max_attempts": 1, "mode": "legacy"}
NO_RETRY = {"total_max_attempts": 1}


# The specs the tests use; their emulators start together (each takes a second or two
# to start and to create its first table).
SPECS = ("", "ambiguous=1,seed=1", "unprocessed=1,seed=1", "unprocessed=0.5,seed=2")


@pytest.fixture(autouse=True)
def not_in_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing a Chalice app sets AWS_EXECUTION_ENV=AWS_Lambda... in the process (so that
    botocore's user agent says Lambda): the "command line" clients here must not carry it."""
    monkeypatch.delenv("AWS_EXECUTION_ENV", raising=False)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """`emulator(spec)`: the URL of the emulator started with `--faults spec`."""
    tmp = tmp_path_factory.mktemp("storage-faults")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(ROOT)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        for i, spec in enumerate(SPECS):
            with open(tmp / f"emulator-{i}.log", "wb") as log:
                processes[spec] = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "embedded.emulator", "--port", "0"),
                        *("--ready-file", str(tmp / f"emulator-{i}.ready"), "--faults", spec),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(ROOT),
                    env=env,
                )
        deadline = time.monotonic() + 60
        for i, (spec, process) in enumerate(processes.items()):
            ready = tmp / f"emulator-{i}.ready"
            while not ready.exists():
                assert process.poll() is None, (tmp / f"emulator-{i}.log").read_text()
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.05)
            urls[spec] = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
        with ThreadPoolExecutor(len(urls)) as pool:
            list(pool.map(new_table, urls.values()))
        yield urls.__getitem__
    finally:
        for process in processes.values():
            process.kill()
            process.wait()


def client(url: str, service: str, function: bool = True, retries: Any = None) -> Any:
    config = Config(
        user_agent_extra=FUNCTION_AGENT if function else None, retries=retries or ONE_RETRY
    )
    # a session of its own: the default one may have been made while AWS_EXECUTION_ENV was set
    session = boto3.session.Session()
    return session.client(service, endpoint_url=url, region_name=REGION, config=config, **ADMIN)


def new_table(url: str, range_key: bool = False) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    keys = [("pk", "HASH")] + ([("sk", "RANGE")] if range_key else [])
    client(url, "dynamodb", function=False).create_table(
        TableName=name,
        KeySchema=[{"AttributeName": a, "KeyType": t} for a, t in keys],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a, _ in keys],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def stored(url: str, table: str, pk: str) -> dict[str, Any] | None:
    out = client(url, "dynamodb", function=False).get_item(
        TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True
    )
    item: dict[str, Any] | None = out.get("Item")
    return item


def injected(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + FAULTS_PATH, timeout=5) as r:
        counts: dict[str, Any] = json.load(r)
        return counts


def refusal(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as e:
        call()
    error = e.value.response["Error"]
    return error["Code"], error["Message"]


# --- ambiguous ---------------------------------------------------------------------------


def test_an_ambiguous_put_is_applied_though_every_answer_is_an_error(
    emulator: Callable[[str], str],
) -> None:
    url = emulator("ambiguous=1,seed=1")
    table = new_table(url)
    before = injected(url)["ambiguous"].get("dynamodb:PutItem", 0)
    with pytest.raises((ClientError, ConnectionClosedError)) as e:
        client(url, "dynamodb").put_item(TableName=table, Item={"pk": {"S": "a"}})
    if isinstance(e.value, ClientError):
        assert e.value.response["Error"]["Code"] == "InternalServerError"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert stored(url, table, "a") == {"pk": {"S": "a"}}
    # The first try and botocore's retry were both applied, and both faulted.
    assert injected(url)["ambiguous"]["dynamodb:PutItem"] == before + 2


def test_a_retried_conditional_put_fails_its_condition_after_the_first_try_applied(
    emulator: Callable[[str], str],
) -> None:
    url = emulator("ambiguous=1,seed=1")
    table = new_table(url)
    code, message = refusal(
        lambda: client(url, "dynamodb").put_item(
            TableName=table,
            Item={"pk": {"S": "lease"}, "owner": {"S": "me"}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    )
    # As on AWS: the caller's own first write makes its retry fail.
    assert (code, message) == ("ConditionalCheckFailedException", "The conditional request failed")
    assert stored(url, table, "lease") == {"pk": {"S": "lease"}, "owner": {"S": "me"}}


def test_some_ambiguous_writes_drop_the_connection_instead(
    emulator: Callable[[str], str],
) -> None:
    url = emulator("ambiguous=1,seed=1")
    table = new_table(url)
    ddb = client(url, "dynamodb", retries=NO_RETRY)
    outcomes: dict[str, int] = {}
    for i in range(40):
        try:
            ddb.update_item(
                TableName=table,
                Key={"pk": {"S": f"k{i}"}},
                UpdateExpression="SET n = :n",
                ExpressionAttributeValues={":n": {"N": str(i)}},
            )
            outcome = "ok"
        except ConnectionClosedError:
            outcome = "dropped"
        except ClientError as e:
            outcome = e.response["Error"]["Code"]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert stored(url, table, f"k{i}") == {"pk": {"S": f"k{i}"}, "n": {"N": str(i)}}
    assert set(outcomes) == {"dropped", "InternalServerError"}, outcomes
    assert injected(url)["ambiguous_dropped"] >= outcomes["dropped"]


def test_an_ambiguous_s3_put_is_applied(emulator: Callable[[str], str]) -> None:
    url = emulator("ambiguous=1,seed=1")
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client(url, "s3", function=False).create_bucket(Bucket=bucket)
    s3 = client(url, "s3", retries=NO_RETRY)
    errors = []
    for i in range(6):
        try:
            s3.put_object(Bucket=bucket, Key=f"training_input/{i}.json", Body=b"{}")
        except ConnectionClosedError:
            errors.append("dropped")
        except ClientError as e:
            errors.append(e.response["Error"]["Code"])
            assert e.response["Error"]["Message"] == (
                "We encountered an internal error. Please try again."
            )
    assert len(errors) == 6 and "InternalError" in errors
    admin = client(url, "s3", function=False)
    for i in range(6):
        assert admin.get_object(Bucket=bucket, Key=f"training_input/{i}.json")["Body"].read() == (
            b"{}"
        )
    assert injected(url)["ambiguous"]["s3:PutObject"] >= 6


def test_requests_not_made_by_functions_are_never_faulted(
    emulator: Callable[[str], str],
) -> None:
    for spec in ("ambiguous=1,seed=1", "unprocessed=1,seed=1"):
        url = emulator(spec)
        table = new_table(url)
        before = injected(url)
        admin = client(url, "dynamodb", function=False)
        admin.put_item(TableName=table, Item={"pk": {"S": "cli"}})
        out = admin.batch_write_item(
            RequestItems={
                table: [{"PutRequest": {"Item": {"pk": {"S": f"b{i}"}}}} for i in range(5)]
            }
        )
        assert out["UnprocessedItems"] == {}
        assert injected(url) == before


# --- unprocessed -------------------------------------------------------------------------


def test_batch_write_leaves_part_unprocessed_and_writes_the_rest(
    emulator: Callable[[str], str],
) -> None:
    url = emulator("unprocessed=1,seed=1")
    table = new_table(url, range_key=True)
    before = injected(url)["unprocessed_items"]
    requests = [
        {
            "PutRequest": {
                "Item": {"pk": {"S": "p"}, "sk": {"S": f"{i:02d}"}, "w": {"B": bytes([i])}}
            }
        }
        for i in range(20)
    ]
    out = client(url, "dynamodb").batch_write_item(RequestItems={table: requests})
    left = out["UnprocessedItems"][table]
    assert 1 <= len(left) <= 20
    assert all(r in requests for r in left)  # as they were sent, binary values included
    admin = client(url, "dynamodb", function=False)
    written = {
        item["sk"]["S"]
        for item in admin.query(
            TableName=table,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "p"}},
        )["Items"]
    }
    unprocessed = {r["PutRequest"]["Item"]["sk"]["S"] for r in left}
    assert written == {f"{i:02d}" for i in range(20)} - unprocessed
    assert injected(url)["unprocessed_items"] == before + len(left)


def test_the_adapter_sends_unprocessed_items_again_until_all_are_written(
    emulator: Callable[[str], str],
) -> None:
    url = emulator("unprocessed=0.5,seed=2")
    table = new_table(url)
    requests = [{"PutRequest": {"Item": {"pk": {"S": f"c{i}"}}}} for i in range(60)]
    resent = clients.UNPROCESSED.items
    calls = batch_write(
        client(url, "dynamodb"), table, requests, "write costs", sleep=lambda s: None
    )
    assert calls > 3  # 3 batches of at most 25, and the unprocessed ones again
    assert clients.UNPROCESSED.items > resent
    items = client(url, "dynamodb", function=False).scan(TableName=table)["Items"]
    assert sorted(item["pk"]["S"] for item in items) == sorted(f"c{i}" for i in range(60))


def test_the_adapter_gives_up_after_a_bounded_number_of_calls(
    emulator: Callable[[str], str],
) -> None:
    url = emulator("unprocessed=1,seed=1")  # every call leaves something unprocessed
    table = new_table(url)
    requests = [{"PutRequest": {"Item": {"pk": {"S": f"d{i}"}}}} for i in range(5)]
    waits: list[float] = []
    with pytest.raises(StateError, match=r"write weights v3: \d of 5 items still unprocessed"):
        batch_write(client(url, "dynamodb"), table, requests, "write weights v3", waits.append)
    assert len(waits) == clients.BATCH_WRITE_ROUNDS - 1
    assert all(0 <= w <= 2.0 for w in waits)


def test_status_shows_the_storage_faults(
    emulator: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import embedded.stack
    from itsacat.commands.stack import cmd_status

    url = emulator("unprocessed=1,seed=1")
    table = new_table(url)
    client(url, "dynamodb").batch_write_item(
        RequestItems={table: [{"PutRequest": {"Item": {"pk": {"S": "s"}}}}]}
    )
    stack = SimpleNamespace(
        stack_name="itsacat",
        emulator_url=url,
        emulator_pid=1,
        lambda_url="http://127.0.0.1:9",
        runtime_pid=2,
        outputs={},
        config={},
        home="/tmp/home",
        processes=lambda: {"emulator": True, "runtime": False},
        env=lambda: {},
    )
    monkeypatch.setattr(embedded.stack, "info", lambda home: stack)
    cmd_status(argparse.Namespace(home=None, json=False))
    counts = injected(url)
    line = (
        f"storage faults injected: ambiguous 0, unprocessed "
        f"{counts['unprocessed']['dynamodb:BatchWriteItem']} (items {counts['unprocessed_items']})"
    )
    assert line in capsys.readouterr().out
    cmd_status(argparse.Namespace(home=None, json=True))
    assert json.loads(capsys.readouterr().out)["storage_faults"] == counts


# --- limits ------------------------------------------------------------------------------


def test_item_size_is_counted_as_dynamodb_counts_it() -> None:
    # CapacityUnitCalculations.html: names and values; numbers 1 byte per 2 significant
    # digits + 1; binary raw bytes; lists and maps 3 bytes + 1 per element.
    assert item_size({"pk": {"S": "ab"}}) == 4
    assert item_size({"n": {"N": "-0012345.6700"}}) == 1 + 4 + 1
    assert item_size({"b": {"B": b"\x00" * 10}}) == 11
    assert item_size({"l": {"L": [{"NULL": True}, {"BOOL": False}]}}) == 1 + 3 + 2 * 2
    assert item_size({"m": {"M": {"k": {"S": "v"}}}}) == 1 + 3 + 1 + 1 + 1


def test_an_item_over_400_kb_is_refused(emulator: Callable[[str], str]) -> None:
    url = emulator("")
    table = new_table(url)
    ddb = client(url, "dynamodb", function=False)
    too_big = {"pk": {"S": "big"}, "data": {"S": "x" * (401 * 1024)}}
    message = "Item size has exceeded the maximum allowed size"
    assert refusal(lambda: ddb.put_item(TableName=table, Item=too_big)) == (
        "ValidationException",
        message,
    )
    put = {"PutRequest": {"Item": too_big}}
    assert refusal(lambda: ddb.batch_write_item(RequestItems={table: [put]})) == (
        "ValidationException",
        message,
    )
    # 41,000 strings of 9 bytes: 410,003 bytes as DynamoDB counts (the list's 3 bytes and 1
    # per element); moto alone counted 369,000 and took it.
    strings = {"pk": {"S": "list"}, "l": {"L": [{"S": "x" * 9}] * 41_000}}
    assert refusal(lambda: ddb.put_item(TableName=table, Item=strings))[1] == message
    ddb.put_item(TableName=table, Item={"pk": {"S": "ok"}, "data": {"S": "x" * 400_000}})
    assert stored(url, table, "big") is None and stored(url, table, "list") is None


def test_key_sizes_are_limited(emulator: Callable[[str], str]) -> None:
    url = emulator("")
    table = new_table(url, range_key=True)
    ddb = client(url, "dynamodb", function=False)
    code, message = refusal(
        lambda: ddb.put_item(TableName=table, Item={"pk": {"S": "p" * 2049}, "sk": {"S": "s"}})
    )
    assert (code, message) == (
        "ValidationException",
        "One or more parameter values were invalid: Size of hashkey has exceeded the maximum "
        "size limit of2048 bytes",
    )
    code, message = refusal(
        lambda: ddb.put_item(TableName=table, Item={"pk": {"S": "p"}, "sk": {"S": "s" * 1025}})
    )
    assert message == (
        "One or more parameter values were invalid: Aggregated size of all range keys has "
        "exceeded the size limit of 1024 bytes"
    )
    ddb.put_item(TableName=table, Item={"pk": {"S": "p" * 2048}, "sk": {"S": "s" * 1024}})


def test_batch_write_takes_at_most_25_requests(emulator: Callable[[str], str]) -> None:
    url = emulator("")
    table, other = new_table(url), new_table(url)
    ddb = client(url, "dynamodb", function=False)

    def puts(n: int, prefix: str = "") -> list[dict[str, Any]]:
        return [{"PutRequest": {"Item": {"pk": {"S": f"{prefix}{i}"}}}} for i in range(n)]

    code, message = refusal(lambda: ddb.batch_write_item(RequestItems={table: puts(26)}))
    assert code == "ValidationException"
    assert message.startswith(
        f"1 validation error detected: Value '{{{table}=[com.amazonaws.dynamodb.v20120810."
        "WriteRequest@"
    )
    assert message.endswith(
        "]}' at 'requestItems' failed to satisfy constraint: Map value must satisfy "
        "constraint: [Member must have length less than or equal to 25, Member must have "
        "length greater than or equal to 1]"
    )
    assert refusal(
        lambda: ddb.batch_write_item(RequestItems={table: puts(13), other: puts(13)})
    ) == ("ValidationException", "Too many items requested for the BatchWriteItem call")
    assert client(url, "dynamodb", function=False).scan(TableName=table)["Count"] == 0
    ddb.batch_write_item(RequestItems={table: puts(25)})
    ddb.batch_write_item(RequestItems={table: puts(12, "x"), other: puts(13, "x")})


def test_batch_write_refuses_two_requests_on_one_item(emulator: Callable[[str], str]) -> None:
    url = emulator("")
    table, other = new_table(url), new_table(url)
    ddb = client(url, "dynamodb", function=False)
    duplicates = "Provided list of item keys contains duplicates"
    put_and_delete = [
        {"PutRequest": {"Item": {"pk": {"S": "a"}}}},
        {"DeleteRequest": {"Key": {"pk": {"S": "a"}}}},
    ]
    two_puts = [
        {"PutRequest": {"Item": {"pk": {"S": "b"}, "v": {"N": "1"}}}},
        {"PutRequest": {"Item": {"pk": {"S": "b"}, "v": {"N": "2"}}}},
    ]
    for requests in (put_and_delete, two_puts):
        call = functools.partial(ddb.batch_write_item, RequestItems={table: requests})
        assert refusal(call) == ("ValidationException", duplicates)
    # One key in two tables is two items.
    ddb.batch_write_item(
        RequestItems={
            table: [{"PutRequest": {"Item": {"pk": {"S": "c"}, "t": {"S": "1"}}}}],
            other: [{"PutRequest": {"Item": {"pk": {"S": "c"}, "t": {"S": "2"}}}}],
        }
    )


def test_transactions_are_limited_to_100_actions_and_4_mb(emulator: Callable[[str], str]) -> None:
    url = emulator("")
    table = new_table(url)
    ddb = client(url, "dynamodb", function=False)

    def puts(n: int, size: int = 0) -> list[dict[str, Any]]:
        return [
            {"Put": {"TableName": table, "Item": {"pk": {"S": f"t{i}"}, "d": {"S": "x" * size}}}}
            for i in range(n)
        ]

    code, message = refusal(lambda: ddb.transact_write_items(TransactItems=puts(101)))
    assert code == "ValidationException"
    assert message.startswith(
        "1 validation error detected: Value '[com.amazonaws.dynamodb.v20120810.TransactWriteItem@"
    )
    assert message.endswith(
        "]' at 'transactItems' failed to satisfy constraint: Member must have length less "
        "than or equal to 100"
    )
    ddb.transact_write_items(TransactItems=puts(100))
    # 11 items of 390,000 bytes: over 4 MB (4,194,304 bytes); 10 are not.
    assert refusal(lambda: ddb.transact_write_items(TransactItems=puts(11, 390_000))) == (
        "ValidationException",
        "Transaction request cannot be larger than 4 MB",
    )
    ddb.transact_write_items(TransactItems=puts(10, 390_000))
    gets = [{"Get": {"TableName": table, "Key": {"pk": {"S": f"t{i}"}}}} for i in range(101)]
    assert len(ddb.transact_get_items(TransactItems=gets[:100])["Responses"]) == 100
    code, message = refusal(lambda: ddb.transact_get_items(TransactItems=gets))
    assert message.endswith("Member must have length less than or equal to 100")
    keys = [{"pk": {"S": f"t{i}"}} for i in range(101)]
    code, message = refusal(lambda: ddb.batch_get_item(RequestItems={table: {"Keys": keys}}))
    assert message.endswith("Member must have length less than or equal to 100")


def test_a_transaction_repeated_with_its_client_token_is_not_run_again(
    emulator: Callable[[str], str],
) -> None:
    url = emulator("")
    table = new_table(url)
    ddb = client(url, "dynamodb", function=False)
    token = uuid.uuid4().hex
    add = [
        {
            "Update": {
                "TableName": table,
                "Key": {"pk": {"S": "counter"}},
                "UpdateExpression": "ADD n :one",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
        }
    ]
    for _ in range(3):
        ddb.transact_write_items(TransactItems=add, ClientRequestToken=token)
    assert stored(url, table, "counter") == {"pk": {"S": "counter"}, "n": {"N": "1"}}
    add[0]["Update"]["ExpressionAttributeValues"] = {":one": {"N": "2"}}
    code, _ = refusal(lambda: ddb.transact_write_items(TransactItems=add, ClientRequestToken=token))
    assert code == "IdempotentParameterMismatchException"
    ddb.transact_write_items(TransactItems=add)  # botocore makes a new token
    assert stored(url, table, "counter") == {"pk": {"S": "counter"}, "n": {"N": "3"}}


def test_query_pages_at_about_1_mb(emulator: Callable[[str], str]) -> None:
    url = emulator("")
    table = new_table(url, range_key=True)
    ddb = client(url, "dynamodb", function=False)
    for i in range(5):
        ddb.put_item(
            TableName=table, Item={"pk": {"S": "p"}, "sk": {"S": str(i)}, "d": {"S": "x" * 300_000}}
        )
    page = ddb.query(
        TableName=table,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "p"}},
    )
    assert page["Count"] == 3 and "LastEvaluatedKey" in page


# --- what the run record makes of them ----------------------------


def test_an_ambiguous_run_transition_is_resolved_by_reading_the_record_back(
    emulator: Callable[[str], str],
) -> None:
    """Each transition is applied, answered with an error, sent again by botocore, and the
    copy fails its condition: the store reads the record back and finds its own write."""
    url = emulator("ambiguous=1,seed=1")
    names = create_tables(client(url, "dynamodb", function=False), f"amb-{uuid.uuid4().hex[:6]}")
    runs = RunStore(names["RunsTable"], client(url, "dynamodb"))
    before = sum(injected(url)["ambiguous"].values())
    started_run(runs, "r1", stale=False)
    # (Taking a lease one holds already is idempotent: its copy succeeds, and is answered
    # with an error again, every time: a store without faults takes it.)
    RunStore(names["RunsTable"], client(url, "dynamodb", function=False)).acquire(
        "r1", "trainer-a", 30
    )
    run = runs.commit(
        "r1",
        "trainer-a",
        expected_cursor=0,
        progress=progress(1),
        counters={"invocations": 3},
        lease_seconds=30,
    )
    assert run.cursor == 1 and run.lease_owner == "trainer-a"
    assert int(run.invocations) == 3  # added once: the copy was refused
    assert sum(injected(url)["ambiguous"].values()) >= before + 3
    # A write that was not ours is still a conflict: another trainer's commit at the old
    # cursor, and ours again at a cursor that has moved on.
    with pytest.raises(Conflict):
        runs.commit("r1", "trainer-b", 1, progress(2), {}, lease_seconds=30)
    with pytest.raises(Conflict):
        runs.commit("r1", "trainer-a", 0, progress(1), {}, lease_seconds=30)
