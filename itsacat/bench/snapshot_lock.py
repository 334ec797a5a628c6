"""How long a snapshot of the emulator's data holds the request lock (`embedded.persistence`).

Fills moto's backends in this process (moto's in-memory mock: the same backends the
emulator serves) with a realistic few tens of MB: dataset uploads in several versions, the
weights of many commits (one 4 KiB item per neuron row) and log events. Then it times a
snapshot as the emulator takes it (`Saver.save`: a fork under the lock, the child pickles
and writes), the same snapshot pickled under the lock instead (for comparison), and a
restore into freshly created resources.

    python -m itsacat.bench.snapshot_lock [--objects-mb 40] [--items 3000] [--log-events 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from embedded import persistence
from embedded.deploy import REGION

BUCKET = "bench-data"
LOG_GROUP = "/aws/lambda/bench"


def create_resources() -> None:
    import boto3

    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    boto3.client("dynamodb", region_name=REGION).create_table(
        TableName="weights",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
        BillingMode="PAY_PER_REQUEST",
    )
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName=LOG_GROUP)


def fill(objects_mb: int, items: int, log_events: int) -> None:
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    blob = os.urandom(4 * 1024 * 1024)
    for i in range(objects_mb // 4):
        s3.put_object(Bucket=BUCKET, Key=f"training_input/run-{i // 2}/datasets.h5", Body=blob)
    ddb = boto3.client("dynamodb", region_name=REGION)
    row = os.urandom(4096)
    for i in range(items):
        item = {"pk": {"S": f"run#{i % 7}"}, "sk": {"S": f"{i:08d}"}, "w": {"B": row}}
        ddb.put_item(TableName="weights", Item=item)
    logs = boto3.client("logs", region_name=REGION)
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName="s")
    now = int(time.time() * 1000)
    for start in range(0, log_events, 1000):
        batch = [
            {"timestamp": now + j, "message": f"run x epoch {j} cost 0.693147 step {start + j}"}
            for j in range(start, min(start + 1000, log_events))
        ]
        logs.put_log_events(logGroupName=LOG_GROUP, logStreamName="s", logEvents=batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects-mb", type=int, default=40)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--log-events", type=int, default=20000)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    from moto import mock_aws

    with tempfile.TemporaryDirectory() as tmp:
        lock = threading.Lock()
        saver = persistence.Saver(Path(tmp), lock)
        with mock_aws():
            create_resources()
            fill(args.objects_mb, args.items, args.log_events)
            data = persistence.capture()
            print(f"data: {persistence.counts(data)}")
            for _ in range(3):
                began = time.perf_counter()
                held = saver.save()
                print(
                    f"snapshot of {saver.path.stat().st_size / 1e6:.1f} MB: lock held "
                    f"{held * 1000:.1f} ms (the fork); on disk after "
                    f"{(time.perf_counter() - began) * 1000:.0f} ms"
                )
            began = time.perf_counter()
            persistence.dump(persistence.capture(), time.time())
            pickled = time.perf_counter() - began
            print(f"(pickled under the lock instead: {pickled * 1000:.0f} ms)")
        with mock_aws():  # fresh, empty backends: the resources as `itsacat up` creates them
            create_resources()
            began = time.perf_counter()
            restored = persistence.restore(saver.path)
            assert restored is not None
            print(f"restore: {(time.perf_counter() - began) * 1000:.0f} ms, {restored.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
