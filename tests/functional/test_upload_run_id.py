"""The CLI names the run an upload starts as the launch function does: from the version S3
gave the dataset (`itsacat.uploads`, `launcher.run_id_for`), and then reads that run by its
id; nothing scans the runs table."""

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from itsacat.errors import UserError
from itsacat.runview import Runs
from itsacat.uploads import upload_dataset
from state import clients
from state.runs import TRAINING, RunStore
from tests.functional.conftest import BUCKET, World
from trainer_lambdas import datasets
from trainer_lambdas.launcher import Launcher
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.payloads import uploaded_objects

PARAMS = params_mod.parse(
    {
        "epochs": 3,
        "layers": 2,
        "activations": {"layer1": "relu", "layer2": "sigmoid"},
        "neurons": {"layer1": 3, "layer2": 1},
        "learning_rate": 0.05,
    }
)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The CLI's view of the world's stack (its shared clients, built under moto), with a
    runs table that refuses to be scanned."""

    def no_scan(self: RunStore) -> list:
        raise AssertionError("the runs table was scanned")

    monkeypatch.setattr(RunStore, "all", no_scan)
    clients.client.cache_clear()  # clients built for another target would outlive it
    yield {
        "ITSACAT_BUCKET": BUCKET,
        "RUNS_TABLE": world.cfg.runs_table,
        "COSTS_TABLE": world.cfg.costs_table,
    }
    clients.client.cache_clear()


def s3_event(world: World, key: str) -> dict:
    """The ObjectCreated event S3 sends for the newest version of `key`, as S3 stores it
    (a versioned bucket puts the object's version id in the event), the key form-encoded as
    S3 and the embedded stack send it: "my cats+dogs" arrives as "my+cats%2Bdogs"."""
    listing = world.s3.list_object_versions(Bucket=BUCKET, Prefix=key)
    latest = next(v for v in listing["Versions"] if v["Key"] == key and v["IsLatest"])
    obj = {
        "key": quote_plus(key, safe="/"),
        "size": latest["Size"],
        "eTag": latest["ETag"].strip('"'),
        "versionId": latest["VersionId"],
        "sequencer": "0065F3A1C2D8E4B7A1",
    }
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-11-23T00:00:00.000Z",
        "s3": {"bucket": {"name": BUCKET}, "object": obj},
    }
    return {"Records": [{"eventSource": "aws:sqs", "body": json.dumps({"Records": [record]})}]}


def test_the_cli_names_the_run_as_the_launch_function_does(
    world: World, cli: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "my cats+dogs.h5"  # a space and a plus: the event's key is encoded
    datasets.save(datasets.synthesize(m_train=12, m_test=0, side=4, seed=3), path)
    launched: list[dict] = []
    wait = Runs.wait_for_launch

    def launch_then_wait(self: Runs, run_id: str, key: str, **kw: float) -> None:
        # the bucket's notification, delivered through the queue to the launch function
        event = s3_event(world, key)
        assert "/my+cats%2Bdogs-" in event["Records"][0]["body"]
        for obj in uploaded_objects(event):
            launched.append(Launcher(world.cfg, world.stores).launch(obj))
        wait(self, run_id, key, **kw)

    monkeypatch.setattr(Runs, "wait_for_launch", launch_then_wait)
    # the launch is recorded before the wait starts: a wrong run id fails in 2 s, not 120
    monkeypatch.setattr("itsacat.uploads.LAUNCH_TIMEOUT_S", 2.0)
    first, key = upload_dataset(cli, path, PARAMS)
    assert [out["run_id"] for out in launched] == [first]
    assert launched[0]["outcome"] == "started"
    run = Runs(cli).get(first)
    assert run.status == TRAINING and run.dataset is not None and run.dataset["key"] == key
    assert first.startswith("my-cats-")
    again, _ = upload_dataset(cli, path, PARAMS)  # the same file again: a run of its own
    assert again != first and launched[1]["run_id"] == again


def test_an_upload_nobody_launches_fails_with_the_run_it_waited_for(
    world: World, cli: dict[str, str]
) -> None:
    with pytest.raises(UserError, match=r"run r-1 of s3 key k was not recorded within 0 s"):
        Runs(cli).wait_for_launch("r-1", "k", timeout_s=0.2, poll_s=0.05)


def test_a_bucket_without_versioning_cannot_name_the_run(
    world: World, cli: dict[str, str], tmp_path: Path
) -> None:
    world.s3.create_bucket(Bucket="unversioned")
    path = tmp_path / "d.h5"
    datasets.save(datasets.synthesize(m_train=4, m_test=0, side=4, seed=1), path)
    with pytest.raises(UserError, match="has no versioning"):
        upload_dataset({**cli, "ITSACAT_BUCKET": "unversioned"}, path, PARAMS)
