"""The model store: trained models in S3, and the pointer to the latest good one.

Layout in the bucket:

    models/<run_id>/params.h5     datasets W1..WL, b1..bL (float64)
    models/<run_id>/model.json    metadata: run_id, parameters, activations, input_shape, ...
    models/latest.json            {"run_id", "params_key", "model_key", "trained_at"}
    predict_input/params.h5       copy of the latest params (the original project's location)
    training_results/results.json summary of the latest run (the original project's location)

`publish` writes the model's own objects first and the pointer last, so a reader that
follows the pointer never finds a half-written model. Readers check the pointer's ETag
(`latest_etag`, one HEAD request) to learn cheaply whether a new model appeared.

The prediction API ships this module (with `state/errors.py`; `state/clients.py` only when
no client is injected), so it imports nothing else from the project.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from state.errors import NotFound, StateError

Weights = list[tuple[np.ndarray, np.ndarray]]

MODELS_PREFIX = "models/"
LATEST_KEY = "models/latest.json"
LEGACY_PARAMS_KEY = "predict_input/params.h5"
LEGACY_RESULTS_KEY = "training_results/results.json"
DEFAULT_CLASSES = ("non-cat", "cat")
# A pointer or model.json bigger than this is not ours.
MAX_JSON_BYTES = 1024 * 1024
MAX_PARAMS_BYTES = 256 * 1024 * 1024
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}


class ModelStoreError(StateError):
    """The model store could not be used; subclasses say why."""


class ModelNotFound(ModelStoreError, NotFound):
    """No model (or not the requested one) has been published."""


class ModelCorrupt(ModelStoreError):
    """A published model, or the pointer to it, cannot be read back."""


class ModelStoreUnavailable(ModelStoreError):
    """S3 refused or failed the request (missing bucket, access denied, no connection)."""


@dataclass(frozen=True)
class LoadedModel:
    """A model read back from the store, ready for `predict_proba`."""

    run_id: str
    metadata: dict[str, Any]
    weights: Weights
    activations: tuple[str, ...]
    input_shape: tuple[int, int, int]
    classes: tuple[str, str]
    etag: str
    uri: str

    def summary(self) -> dict[str, Any]:
        """The few fields an API answer names the model by."""
        return {
            "run_id": self.run_id,
            "trained_at": self.metadata.get("trained_at"),
            "test_accuracy": self.metadata.get("test_accuracy"),
        }


def params_key(run_id: str) -> str:
    return f"{MODELS_PREFIX}{run_id}/params.h5"


def model_key(run_id: str) -> str:
    return f"{MODELS_PREFIX}{run_id}/model.json"


def weights_to_h5(weights: Weights) -> bytes:
    """W1..WL and b1..bL as float64 datasets of one HDF5 file, in memory."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for i, (w, b) in enumerate(weights, start=1):
            f.create_dataset(f"W{i}", data=np.asarray(w, dtype=np.float64))
            f.create_dataset(f"b{i}", data=np.asarray(b, dtype=np.float64))
    return buf.getvalue()


def weights_from_h5(data: bytes) -> Weights:
    """The inverse of `weights_to_h5`; raises `ModelCorrupt` on anything else."""
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            layers = sum(1 for k in f if re.fullmatch(r"W\d+", k))
            if layers == 0:
                raise ModelCorrupt("params.h5 holds no W1 dataset")
            weights: Weights = []
            for i in range(1, layers + 1):
                if f"W{i}" not in f or f"b{i}" not in f:
                    raise ModelCorrupt(f"params.h5 lacks W{i} or b{i}")
                weights.append(
                    (np.asarray(f[f"W{i}"], dtype=np.float64), np.asarray(f[f"b{i}"], np.float64))
                )
    except ModelCorrupt:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelCorrupt(f"params.h5 is not a readable HDF5 file: {e}") from e
    return weights


def _check_shapes(weights: Weights, activations: Sequence[str], input_shape: Sequence[int]) -> None:
    """Raise ValueError unless the weights chain from the input size to one output."""
    if len(weights) != len(activations):
        raise ValueError(f"{len(weights)} weight layers but {len(activations)} activations")
    n_prev = int(np.prod(input_shape))
    for i, (w, b) in enumerate(weights, start=1):
        if w.ndim != 2 or w.shape[1] != n_prev or b.shape != (w.shape[0], 1):
            raise ValueError(
                f"layer {i}: W{i} {w.shape} and b{i} {b.shape} do not follow {n_prev} inputs"
            )
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ValueError(f"layer {i}: weights are not all finite")
        n_prev = w.shape[0]
    if n_prev != 1:
        raise ValueError(f"the output layer has {n_prev} neurons, expected 1")


def _input_shape(value: Any) -> tuple[int, int, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        or value[2] != 3
    ):
        raise ValueError(f"input_shape must be [height, width, 3], got {value!r}")
    return int(value[0]), int(value[1]), int(value[2])


def _activations(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    acts = metadata.get("activations")
    if acts is None:
        by_layer = (metadata.get("parameters") or {}).get("activations") or {}
        acts = [by_layer[f"layer{i + 1}"] for i in range(len(by_layer))]
    if not isinstance(acts, list | tuple) or not all(isinstance(a, str) for a in acts):
        raise ValueError(f"activations must be a list of names, got {acts!r}")
    return tuple(acts)


class ModelStore:
    """Publish and read trained models in one bucket (see the module docstring)."""

    def __init__(self, bucket: str, s3_client: Any = None) -> None:
        if not bucket:
            raise ValueError("ModelStore needs a bucket name")
        self.bucket = bucket
        self._client = s3_client

    @property
    def client(self) -> Any:
        if self._client is None:
            from state.clients import client

            self._client = client("s3")
        return self._client

    def uri(self, run_id: str) -> str:
        return f"s3://{self.bucket}/{MODELS_PREFIX}{run_id}/"

    # -- writing ---------------------------------------------------------------------------

    def publish(self, run_id: str, weights: Weights, metadata: Mapping[str, Any]) -> str:
        """Store a trained model and make it the latest (`store`, then `promote`); returns
        its URI."""
        h5, doc = self._store(run_id, weights, metadata)
        self._promote(run_id, h5, doc)
        return self.uri(run_id)

    def store(self, run_id: str, weights: Weights, metadata: Mapping[str, Any]) -> str:
        """Store a trained model under its run, without making it the latest; returns its URI.

        `metadata` carries at least `parameters` (the parameters JSON) and `input_shape`
        ([h, w, 3]); also, where known: `final_cost`, `train_accuracy`, `test_accuracy`,
        `epochs`, `seconds`, `trained_at` (default: now), `classes` (default non-cat/cat).
        """
        self._store(run_id, weights, metadata)
        return self.uri(run_id)

    def promote(self, run_id: str) -> None:
        """Make the stored model of `run_id` the latest (the pointer, and the original
        project's locations). The trainer calls it only once its run has SUCCEEDED."""
        doc = _json_doc(self._get(model_key(run_id), MAX_JSON_BYTES)[0], model_key(run_id))
        h5, _ = self._get(params_key(run_id), MAX_PARAMS_BYTES)
        self._promote(run_id, h5, doc)

    def _store(
        self, run_id: str, weights: Weights, metadata: Mapping[str, Any]
    ) -> tuple[bytes, dict[str, Any]]:
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run id {run_id!r} must be 1-128 of [A-Za-z0-9._-]")
        if not isinstance(metadata.get("parameters"), Mapping):
            raise ValueError("metadata['parameters'] must be the parameters JSON object")
        input_shape = _input_shape(metadata.get("input_shape"))
        activations = _activations(metadata)
        weights = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in weights]
        _check_shapes(weights, activations, input_shape)
        trained_at = metadata.get("trained_at") or datetime.now(UTC).isoformat(timespec="seconds")
        doc: dict[str, Any] = {
            **metadata,
            "run_id": run_id,
            "activations": list(activations),
            "input_shape": list(input_shape),
            "classes": list(metadata.get("classes") or DEFAULT_CLASSES),
            "trained_at": trained_at,
            "params_key": params_key(run_id),
        }
        for key in ("final_cost", "train_accuracy", "test_accuracy", "epochs", "seconds"):
            doc.setdefault(key, None)
        h5 = weights_to_h5(weights)
        self._put(params_key(run_id), h5, "application/x-hdf5")
        self._put(model_key(run_id), _json_bytes(doc), "application/json")
        return h5, doc

    def _promote(self, run_id: str, h5: bytes, doc: Mapping[str, Any]) -> None:
        # The original project's locations, before the pointer like the rest.
        self._put(LEGACY_PARAMS_KEY, h5, "application/x-hdf5")
        results: dict[str, Any] = {
            k: doc.get(k)
            for k in (
                "run_id",
                "final_cost",
                "train_accuracy",
                "test_accuracy",
                "epochs",
                "seconds",
                "trained_at",
                "costs",
            )
            if k in doc
        }
        self._put(LEGACY_RESULTS_KEY, _json_bytes(results), "application/json")
        pointer = {
            "run_id": run_id,
            "params_key": params_key(run_id),
            "model_key": model_key(run_id),
            "trained_at": doc.get("trained_at"),
        }
        self._put(LATEST_KEY, _json_bytes(pointer), "application/json")

    # -- reading ---------------------------------------------------------------------------

    def latest_etag(self) -> str | None:
        """The pointer's ETag (one HEAD request), or None when no model was published."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=LATEST_KEY)
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                return None
            raise _translate(e, LATEST_KEY) from e
        except BotoCoreError as e:
            raise ModelStoreUnavailable(f"S3 request failed: {e}") from e
        return str(head["ETag"])

    def latest(self) -> LoadedModel | None:
        """The model the pointer names, or None when no model was published."""
        try:
            body, etag = self._get(LATEST_KEY, MAX_JSON_BYTES)
        except ModelNotFound:
            return None
        pointer = _json_doc(body, LATEST_KEY)
        run_id = pointer.get("run_id")
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ModelCorrupt(f"{LATEST_KEY} names no valid run_id: {run_id!r}")
        try:
            return self._load(run_id, etag)
        except ModelNotFound as e:
            raise ModelCorrupt(f"{LATEST_KEY} points to a missing model: {e}") from e

    def load(self, run_id: str) -> LoadedModel:
        """A model by its run id (raises `ModelNotFound` when there is none)."""
        if not _RUN_ID.match(run_id):
            raise ModelNotFound(f"no model {run_id!r}")
        return self._load(run_id, etag="")

    def _load(self, run_id: str, etag: str) -> LoadedModel:
        meta_body, meta_etag = self._get(model_key(run_id), MAX_JSON_BYTES)
        metadata = _json_doc(meta_body, model_key(run_id))
        params_body, _ = self._get(params_key(run_id), MAX_PARAMS_BYTES)
        weights = weights_from_h5(params_body)
        try:
            input_shape = _input_shape(metadata.get("input_shape"))
            activations = _activations(metadata)
            _check_shapes(weights, activations, input_shape)
            classes = tuple(metadata.get("classes") or DEFAULT_CLASSES)
            if len(classes) != 2 or not all(isinstance(c, str) for c in classes):
                raise ValueError(f"classes must be two names, got {classes!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelCorrupt(f"model {run_id}: {e}") from e
        return LoadedModel(
            run_id=run_id,
            metadata=metadata,
            weights=weights,
            activations=activations,
            input_shape=input_shape,
            classes=(str(classes[0]), str(classes[1])),
            etag=etag or meta_etag,
            uri=self.uri(run_id),
        )

    # -- S3 --------------------------------------------------------------------------------

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        except ClientError as e:
            raise _translate(e, key) from e
        except BotoCoreError as e:
            raise ModelStoreUnavailable(f"S3 request failed: {e}") from e

    def _get(self, key: str, limit: int) -> tuple[bytes, str]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            if int(obj.get("ContentLength") or 0) > limit:
                raise ModelCorrupt(f"s3://{self.bucket}/{key} is larger than {limit} bytes")
            return obj["Body"].read(), str(obj.get("ETag", ""))
        except ClientError as e:
            raise _translate(e, key) from e
        except BotoCoreError as e:
            raise ModelStoreUnavailable(f"S3 request failed: {e}") from e


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _translate(e: ClientError, key: str) -> ModelStoreError:
    code = _code(e)
    if code in _NOT_FOUND:
        return ModelNotFound(f"no object {key}")
    if code == "NoSuchBucket":
        return ModelStoreUnavailable(f"the bucket does not exist ({code})")
    if code in _DENIED:
        return ModelStoreUnavailable(f"access to {key} denied ({code})")
    return ModelStoreUnavailable(f"S3 error on {key}: {code or e}")


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True, default=_jsonable).encode()


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def _json_doc(body: bytes, key: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelCorrupt(f"{key} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ModelCorrupt(f"{key} is not a JSON object")
    return doc
