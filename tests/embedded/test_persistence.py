"""The emulator's saved data (`embedded.persistence`): what a snapshot keeps and gives back.

Most tests run moto in this process (its in-memory mock holds the same backends the emulator
serves): data is written through boto3, snapshotted, the backends are emptied and the
resources created again, as `itsacat up` creates them, and the snapshot restored. The last
ones check what `itsacat up` and `itsacat down --wipe` make of a damaged snapshot, which is
refused before anything starts. The whole cycle on real stacks (`itsacat down`/`up`, a
kill -9 of the emulator, `down --wipe`) is in tests/e2e/test_persistence.py.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from embedded import persistence
from embedded.stack import DATA_DIR, StackError, start
from itsacat.cli import main

REGION = "us-east-1"
BUCKET = "data"
TABLE = "weights"
GROUP = "/aws/lambda/trainer"
QUEUE = "training-input"


@pytest.fixture(scope="module", autouse=True)
def credentials() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", REGION)
        yield


def client(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


def create_resources(table: bool = True, group: bool = True) -> None:
    """The resources, empty, as CloudFormation creates them at each `itsacat up`."""
    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    if table:
        client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    if group:
        client("logs").create_log_group(logGroupName=GROUP)
    client("sqs").create_queue(QueueName=QUEUE)


def fill() -> dict[str, Any]:
    """Write some of everything; what was written, to compare with."""
    s3 = client("s3")
    versions = [
        s3.put_object(
            Bucket=BUCKET,
            Key="training_input/a/datasets.h5",
            Body=f"version {i}".encode(),
            ContentType="application/x-hdf5",
            Metadata={"attempt": str(i)},
        )
        for i in range(3)
    ]
    s3.put_object(Bucket=BUCKET, Key="models/gone.json", Body=b"{}")
    marker = s3.delete_object(Bucket=BUCKET, Key="models/gone.json")
    ddb = client("dynamodb")
    for sk in range(5):
        item = {"pk": {"S": "run-1#1"}, "sk": {"N": str(sk)}, "w": {"B": bytes([sk]) * 64}}
        ddb.put_item(TableName=TABLE, Item=item)
    logs = client("logs")
    logs.create_log_stream(logGroupName=GROUP, logStreamName="2024/01/01/[$LATEST]abc")
    now = int(time.time() * 1000)
    logs.put_log_events(
        logGroupName=GROUP,
        logStreamName="2024/01/01/[$LATEST]abc",
        logEvents=[{"timestamp": now + i, "message": f"epoch {i}"} for i in range(4)],
    )
    sqs = client("sqs")
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="in flight")
    in_flight = sqs.receive_message(QueueUrl=url, VisibilityTimeout=600)["Messages"][0]
    sqs.send_message(QueueUrl=url, MessageBody="waiting")
    return {"versions": versions, "marker": marker, "in_flight": in_flight, "now": now}


def save(path: Path) -> dict[str, int]:
    header, payload = persistence.dump(persistence.capture(), time.time())
    persistence.write(path, header, payload)
    counts: dict[str, int] = json.loads(header)["counts"]
    return counts


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    """A snapshot of some of everything (its bytes), and what was written."""
    path = tmp_path_factory.mktemp("saved") / persistence.SNAPSHOT_FILE
    with mock_aws():
        create_resources()
        written = fill()
        assert save(path) == {"objects": 5, "items": 5, "log_events": 4, "messages": 2}
    return path.read_bytes(), written


@pytest.fixture
def snapshot(saved: tuple[bytes, dict[str, Any]], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / persistence.SNAPSHOT_FILE
    path.write_bytes(saved[0])
    return path, saved[1]


def test_restore_gives_back_versions_items_log_events_and_messages(
    snapshot: tuple[Path, dict[str, Any]],
) -> None:
    path, written = snapshot
    with mock_aws():  # moto's state is gone: a new emulator
        create_resources()
        restored = persistence.restore(path)
        assert restored is not None
        assert (restored.objects, restored.items, restored.log_events, restored.messages) == (
            5,
            5,
            4,
            2,
        )
        assert restored.unplaced == []

        s3 = client("s3")
        listing = s3.list_object_versions(Bucket=BUCKET)
        ids = [v["VersionId"] for v in listing["Versions"] if v["Key"].endswith("datasets.h5")]
        assert ids == [v["VersionId"] for v in reversed(written["versions"])]  # newest first
        assert [m["VersionId"] for m in listing["DeleteMarkers"]] == [
            written["marker"]["VersionId"]
        ]
        for i, version in enumerate(written["versions"]):
            got = s3.get_object(
                Bucket=BUCKET, Key="training_input/a/datasets.h5", VersionId=version["VersionId"]
            )
            assert got["Body"].read() == f"version {i}".encode()
            assert got["ETag"] == version["ETag"]
            assert got["ContentType"] == "application/x-hdf5"
            assert got["Metadata"] == {"attempt": str(i)}
        with pytest.raises(s3.exceptions.NoSuchKey):
            s3.get_object(Bucket=BUCKET, Key="models/gone.json")  # still deleted
        # New uploads are new versions on top of the restored ones.
        s3.put_object(Bucket=BUCKET, Key="training_input/a/datasets.h5", Body=b"version 3")
        listing = s3.list_object_versions(Bucket=BUCKET, Prefix="training_input/")
        assert len(listing["Versions"]) == 4

        items = client("dynamodb").query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk AND sk >= :two",
            ExpressionAttributeValues={":pk": {"S": "run-1#1"}, ":two": {"N": "2"}},
        )["Items"]
        assert [(i["sk"]["N"], i["w"]["B"]) for i in items] == [
            (str(sk), bytes([sk]) * 64) for sk in (2, 3, 4)
        ]

        logs = client("logs")
        events = logs.filter_log_events(logGroupName=GROUP)["events"]
        assert [e["message"] for e in events] == [f"epoch {i}" for i in range(4)]
        logs.put_log_events(
            logGroupName=GROUP,
            logStreamName="2024/01/01/[$LATEST]abc",
            logEvents=[{"timestamp": written["now"] + 10, "message": "after the restart"}],
        )
        events = logs.filter_log_events(logGroupName=GROUP)["events"]
        assert len({e["eventId"] for e in events}) == 5  # the new event's id is a new one

        sqs = client("sqs")
        url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert [m["Body"] for m in got] == ["waiting"]  # the other is still in flight
        # The in-flight message's receipt handle still deletes it, as on AWS.
        sqs.delete_message(QueueUrl=url, ReceiptHandle=written["in_flight"]["ReceiptHandle"])


def test_data_with_nowhere_to_go_is_reported_and_its_snapshot_kept(
    snapshot: tuple[Path, dict[str, Any]],
) -> None:
    path, _ = snapshot
    with mock_aws():
        create_resources(table=False, group=False)  # the template dropped them
        restored = persistence.restore(path)
    assert restored is not None
    assert restored.objects == 5 and restored.messages == 2
    assert restored.items == 0 and restored.log_events == 0
    assert restored.unplaced[:2] == [
        f"table {TABLE} (5 items, no such table)",
        f"log group {GROUP} (1 stream)",
    ]
    kept = [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.")]
    assert len(kept) == 1 and kept[0].read_bytes() == path.read_bytes()
    assert str(kept[0]) in restored.unplaced[2]
    assert "not placed" in restored.summary()


def test_no_snapshot_restores_nothing(tmp_path: Path) -> None:
    with mock_aws():
        create_resources()
        assert persistence.restore(tmp_path / persistence.SNAPSHOT_FILE) is None


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: b"PK\x03\x04 not ours", "is not a snapshot"),
        (lambda raw: raw[:-100], "checksum differs"),
        (lambda raw: raw[:-100] + bytes(100), "checksum differs"),
        (lambda raw: raw.replace(b'"format": 1', b'"format": 7'), "has format 7"),
        (lambda raw: raw.replace(b'"moto": "', b'"moto": "0.'), "was written by moto 0."),
    ],
    ids=["foreign", "truncated", "zeroed", "format", "moto version"],
)
def test_a_damaged_snapshot_is_refused_naming_the_file(
    snapshot: tuple[Path, dict[str, Any]], damage: Any, reason: str
) -> None:
    path, _ = snapshot
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(persistence.SnapshotError, match=reason) as refused:
        persistence.check(path)
    assert str(path) in str(refused.value)
    with pytest.raises(persistence.SnapshotError, match=reason):
        persistence.restore(path)  # refused before it touches moto's state


def test_a_snapshot_that_does_not_unpickle_is_refused(
    snapshot: tuple[Path, dict[str, Any]],
) -> None:
    path, _ = snapshot
    header = json.loads(path.read_bytes().split(b"\n")[1])
    payload = b"\x80\x05not a pickle"
    header.update(bytes=len(payload), crc32=zlib.crc32(payload))
    persistence.write(path, json.dumps(header).encode() + b"\n", payload)
    with pytest.raises(persistence.SnapshotError, match="is damaged \\(UnpicklingError"):
        persistence.restore(path)


def test_saver_writes_in_a_forked_child_and_holds_the_lock_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", "")  # the Saver sets it
    lock = threading.Lock()
    with mock_aws():
        create_resources()
        saver = persistence.Saver(tmp_path, lock, period_s=60)
        assert saver.restore() is None  # nothing saved yet: now it saves
        fill()
        saver.changed()
        held = saver.save()
        assert held < 0.5
        assert not saver.dirty
        saver.close()  # nothing changed since: no second snapshot
    with mock_aws():
        create_resources()
        restored = persistence.restore(saver.path)
    assert restored is not None and restored.objects == 5 and restored.items == 5


def test_up_refuses_a_damaged_snapshot_in_one_line_and_down_wipe_clears_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    path = home / DATA_DIR / persistence.SNAPSHOT_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"itsacat emulator data\n{half a header")
    with pytest.raises(StackError, match="itsacat down --wipe") as refused:
        start(home)
    assert f"{path} is damaged" in str(refused.value)
    assert not (home / "stack.json").exists()  # nothing was started

    assert main(["up", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"itsacat: error: {path} is damaged")
    assert len(err.strip().splitlines()) == 1

    assert main(["down", "--wipe", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert f"deleted the saved data in {home / DATA_DIR}" in out
    assert not (home / DATA_DIR).exists()
