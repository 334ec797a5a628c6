"""The model store (`state/models.py`) against a moto S3 server."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from api_support import INPUT_SHAPE, TinyModel, train_tiny_model

from state.models import (
    POINTER_KEYS,
    PRODUCTION,
    STAGING,
    ModelCorrupt,
    ModelNotFound,
    ModelStore,
    ModelStoreUnavailable,
)

PRODUCTION_KEY = POINTER_KEYS[PRODUCTION]


def _json(s3: Any, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_publish_then_production_round_trips_weights_and_metadata(
    store: ModelStore, s3: Any, tiny_model: TinyModel
) -> None:
    uri = store.publish("run-1", tiny_model.weights, tiny_model.metadata)
    assert uri == f"s3://{store.bucket}/models/run-1/"

    model = store.production()
    assert model is not None
    assert model.run_id == "run-1"
    assert model.input_shape == INPUT_SHAPE
    assert model.activations == ("relu", "relu", "sigmoid")
    assert model.classes == ("non-cat", "cat")
    for (w, b), (w2, b2) in zip(tiny_model.weights, model.weights, strict=True):
        assert w2.dtype == np.float64
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)
    meta = model.metadata
    assert meta["parameters"] == tiny_model.parameters.to_json()
    for key in ("final_cost", "train_accuracy", "test_accuracy", "epochs", "seconds"):
        assert meta[key] == tiny_model.metadata[key]
    assert meta["trained_at"].endswith("+00:00")

    pointer = _json(s3, store.bucket, PRODUCTION_KEY)
    assert {k: pointer[k] for k in ("stage", "run_id", "params_key", "model_key")} == {
        "stage": "production",
        "run_id": "run-1",
        "params_key": "models/run-1/params.h5",
        "model_key": "models/run-1/model.json",
    }
    assert pointer["trained_at"] == meta["trained_at"] and pointer["previous"] == []
    assert model.stage == "production" and model.summary()["stage"] == "production"
    assert model.etag == s3.head_object(Bucket=store.bucket, Key=PRODUCTION_KEY)["ETag"]
    # The original project's locations.
    legacy = s3.get_object(Bucket=store.bucket, Key="predict_input/params.h5")["Body"].read()
    assert legacy == s3.get_object(Bucket=store.bucket, Key="models/run-1/params.h5")["Body"].read()
    results = _json(s3, store.bucket, "training_results/results.json")
    assert results["run_id"] == "run-1"
    assert results["test_accuracy"] == tiny_model.metadata["test_accuracy"]


def test_no_model_yet(store: ModelStore) -> None:
    assert store.production() is None
    assert store.pointer_etag() is None
    with pytest.raises(ModelNotFound):
        store.load("run-1")


def test_pointer_is_written_last(store: ModelStore, s3: Any, tiny_model: TinyModel) -> None:
    keys: list[str] = []

    class Recording:
        def put_object(self, **kwargs: Any) -> Any:
            keys.append(kwargs["Key"])
            return s3.put_object(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(s3, name)

    ModelStore(store.bucket, s3_client=Recording()).publish(
        "run-9", tiny_model.weights, tiny_model.metadata
    )
    # The model's own objects, then the pointers; the original project's copies follow
    # the production pointer (they are a copy of what it names).
    assert keys[:2] == ["models/run-9/params.h5", "models/run-9/model.json"]
    assert keys[2:4] == [POINTER_KEYS[STAGING], PRODUCTION_KEY]
    assert set(keys[4:]) == {"predict_input/params.h5", "training_results/results.json"}


def test_etag_changes_with_a_new_model(published: ModelStore) -> None:
    first = published.pointer_etag()
    other = train_tiny_model(seed=2, epochs=20)
    published.publish("run-2", other.weights, other.metadata)
    second = published.pointer_etag()
    assert first and second and first != second
    latest = published.production()
    assert latest is not None and latest.run_id == "run-2"
    np.testing.assert_array_equal(latest.weights[0][0], other.weights[0][0])
    assert published.load("run-1").run_id == "run-1"


def test_client_is_built_only_when_needed() -> None:
    store = ModelStore("itsacat-lazy")
    assert store._client is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w, m: (w[:-1], m), "activations"),
        (lambda w, m: (w, {**m, "input_shape": [8, 8, 3]}), "inputs"),
        (lambda w, m: (w, {**m, "input_shape": [16, 16]}), "input_shape"),
        (lambda w, m: (w, {k: v for k, v in m.items() if k != "parameters"}), "parameters"),
    ],
)
def test_publish_rejects_inconsistent_models(
    store: ModelStore, tiny_model: TinyModel, change: Any, message: str
) -> None:
    weights, metadata = change(tiny_model.weights, tiny_model.metadata)
    with pytest.raises(ValueError, match=message):
        store.publish("run-1", weights, metadata)
    assert store.pointer_etag() is None


def test_publish_rejects_unsafe_run_ids(store: ModelStore, tiny_model: TinyModel) -> None:
    with pytest.raises(ValueError, match="run id"):
        store.publish("../latest", tiny_model.weights, tiny_model.metadata)


def test_corrupt_pointer(published: ModelStore, s3: Any) -> None:
    s3.put_object(Bucket=published.bucket, Key=PRODUCTION_KEY, Body=b"{not json")
    with pytest.raises(ModelCorrupt, match="not valid JSON"):
        published.production()


def test_pointer_to_a_missing_model(published: ModelStore, s3: Any) -> None:
    s3.put_object(Bucket=published.bucket, Key=PRODUCTION_KEY, Body=json.dumps({"run_id": "gone"}))
    with pytest.raises(ModelCorrupt, match="missing model"):
        published.production()


def test_corrupt_params(published: ModelStore, s3: Any) -> None:
    s3.put_object(Bucket=published.bucket, Key="models/run-1/params.h5", Body=b"not hdf5")
    with pytest.raises(ModelCorrupt, match="HDF5"):
        published.production()


def test_missing_bucket_is_unavailable(s3: Any) -> None:
    store = ModelStore("itsacat-no-such-bucket", s3_client=s3)
    with pytest.raises(ModelStoreUnavailable):
        store.production()
