"""A run uses the parameters.json version that was current when its
dataset was uploaded, pinned by version id, whenever the launch runs."""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from state.objects import ObjectVersion
from state.runs import TRAINING
from tests.functional.conftest import BUCKET, World
from trainer_lambdas import datasets
from trainer_lambdas.launcher import Launcher, pinned_version
from trainer_lambdas.nn import params as params_mod

DATA = datasets.to_bytes(datasets.synthesize(m_train=12, m_test=0, side=4, seed=3))
FOLDER = "training_input/p"
KEY = f"{FOLDER}/parameters.json"


def params(epochs: int) -> dict:
    return {
        "epochs": epochs,
        "layers": 2,
        "activations": {"layer1": "relu", "layer2": "sigmoid"},
        "neurons": {"layer1": 3, "layer2": 1},
        "learning_rate": 0.05,
    }


def put_params(world: World, epochs: int, key: str = KEY) -> str:
    out = world.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(params(epochs)))
    return str(out["VersionId"])


def next_second() -> None:
    """S3 keeps LastModified to the second: what comes next is strictly later."""
    time.sleep(int(time.time()) + 1.05 - time.time())


def test_parameters_uploaded_after_the_dataset_are_not_used_by_its_run(world: World) -> None:
    a = put_params(world, 3)
    obj = world.upload(DATA, key=f"{FOLDER}/datasets.h5")
    next_second()
    b = put_params(world, 7)  # a leftover, or `aws s3 cp --recursive` in another order
    assert a != b
    out = Launcher(world.cfg, world.stores).launch(obj)  # launched late, or redelivered
    run = world.stores.runs.get(out["run_id"])
    assert run.status == TRAINING
    assert run.params is not None and run.params["epochs"] == 3
    assert (run.params_source, run.params_version) == (KEY, a)


def test_a_parameters_json_uploaded_after_the_dataset_alone_is_not_used(world: World) -> None:
    obj = world.upload(DATA, key=f"{FOLDER}/datasets.h5")
    next_second()
    put_params(world, 7)
    run = world.stores.runs.get(Launcher(world.cfg, world.stores).launch(obj)["run_id"])
    assert run.status == TRAINING
    assert run.params == params_mod.default().to_json()
    assert (run.params_source, run.params_version) == ("default", None)


def test_a_deleted_parameters_json_means_the_defaults_and_others_keys_do_not_count(
    world: World,
) -> None:
    put_params(world, 3)
    next_second()  # (a version and a marker of the same second could not be ordered)
    world.s3.delete_object(Bucket=BUCKET, Key=KEY)  # a delete marker, current at the upload
    put_params(world, 5, key=f"{KEY}.bak")  # the key is a prefix of this one
    put_params(world, 6, key=f"{FOLDER}x/parameters.json")  # and a prefix of this folder
    obj = world.upload(DATA, key=f"{FOLDER}/datasets.h5")
    next_second()
    put_params(world, 7)
    run = world.stores.runs.get(Launcher(world.cfg, world.stores).launch(obj)["run_id"])
    assert run.params == params_mod.default().to_json()
    assert (run.params_source, run.params_version) == ("default", None)


def test_the_same_second_counts_as_before_and_a_later_upload_gets_the_new_version(
    world: World,
) -> None:
    """`itsacat train` uploads parameters.json and then the dataset at once; a new upload
    of the dataset after parameters.json changed gets the new version."""
    first = put_params(world, 3)
    obj = world.upload(DATA, key=f"{FOLDER}/datasets.h5")
    run = world.stores.runs.get(Launcher(world.cfg, world.stores).launch(obj)["run_id"])
    assert run.params is not None and run.params["epochs"] == 3
    assert run.params_version == first
    next_second()
    second = put_params(world, 4)
    again = world.upload(DATA, key=f"{FOLDER}/datasets.h5")
    run = world.stores.runs.get(Launcher(world.cfg, world.stores).launch(again)["run_id"])
    assert run.params is not None and run.params["epochs"] == 4
    assert run.params_version == second


T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def v(vid: str, seconds: int, deleted: bool = False, latest: bool = False) -> ObjectVersion:
    return ObjectVersion(vid, T0 + timedelta(seconds=seconds), deleted, latest)


def test_the_version_current_at_the_upload() -> None:
    # versions newest first, then delete markers newest first (ObjectStore.versions)
    entries = [v("c", 30, latest=True), v("b", 20), v("a", 10), v("d1", 15, deleted=True)]
    assert pinned_version(entries, T0) is None
    assert pinned_version(entries, T0 + timedelta(seconds=10)) == entries[0:4][2]
    assert pinned_version(entries, T0 + timedelta(seconds=16)) == entries[3]  # deleted
    assert pinned_version(entries, T0 + timedelta(seconds=25)) == entries[1]
    # two versions in the same second: S3's order says which is newer
    same = [v("y", 10), v("x", 10)]
    assert pinned_version(same, T0 + timedelta(seconds=10)) == same[0]
    # a version and a delete marker in the same second: the current one, or refused
    assert pinned_version([v("x", 10), v("d", 10, True, True)], T0 + timedelta(seconds=10)) == v(
        "d", 10, True, True
    )
    with pytest.raises(ValueError, match="both written and deleted"):
        pinned_version(
            [v("y", 20, latest=True), v("x", 10), v("d", 10, True)], T0 + timedelta(seconds=10)
        )
