"""The model store: trained models in S3, and the pointers naming which one serves.

Layout in the bucket:

    models/<run_id>/params.h5     datasets W1..WL, b1..bL (float64)
    models/<run_id>/model.json    metadata: run_id, parameters, activations, input_shape, ...
    models/production.json        "blue": the model `/image` serves, and the ones before it
    models/staging.json           "green": the newest candidate, served at `/staging/image`
    predict_input/params.h5       copy of the production params (the original project's place)
    training_results/results.json summary of the production model (the same)

A successful run's model is stored, then *offered*: it becomes the staging candidate, and
production too only when there is no production model yet. Production changes otherwise
only by `promote` (refused when the candidate's test accuracy is below production's,
unless forced) or `rollback` (to the model production held before). Each pointer change is
one conditional PUT (If-Match the ETag read, or If-None-Match for a first one), so a
promotion racing another is refused rather than lost, and each pointer is one object
written whole, so a reader never sees half of it. A model's own objects are written before
any pointer names them. Readers check a pointer's ETag (`pointer_etag`, one HEAD request)
to learn cheaply whether the stage changed.

The prediction API ships this module with `state/clients.py`, `state/errors.py` and
`trainer_lambdas/nn` (`itsacat.deploy.package.API_VENDOR`), so it imports nothing else from
the project. S3's errors are translated as every adapter's are (`errors.translate`), then
told apart as this store's: a missing object is `ModelNotFound`, a refused condition
`PromotionConflict`, any other failure `ModelStoreUnavailable`.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from state.clients import LazyClient
from state.errors import MISSING_OBJECT, Conflict, NotFound, StateError, code_of, translate
from trainer_lambdas.nn.network import Weights

MODELS_PREFIX = "models/"
PRODUCTION = "production"
STAGING = "staging"
STAGES = (PRODUCTION, STAGING)
POINTER_KEYS = {PRODUCTION: "models/production.json", STAGING: "models/staging.json"}
# How many earlier production models the pointer remembers for `rollback`.
HISTORY_LIMIT = 20
LEGACY_PARAMS_KEY = "predict_input/params.h5"
LEGACY_RESULTS_KEY = "training_results/results.json"
DEFAULT_CLASSES = ("non-cat", "cat")
# A pointer or model.json bigger than this is not ours.
MAX_JSON_BYTES = 1024 * 1024
MAX_PARAMS_BYTES = 256 * 1024 * 1024
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESULT_FIELDS = (
    "run_id",
    "final_cost",
    "train_accuracy",
    "test_accuracy",
    "epochs",
    "seconds",
    "trained_at",
    "costs",
)


class ModelStoreError(StateError):
    """The model store could not be used; subclasses say why."""


class ModelNotFound(ModelStoreError, NotFound):
    """No model (or not the requested one) has been published."""


class ModelCorrupt(ModelStoreError):
    """A published model, or the pointer to it, cannot be read back."""


class ModelStoreUnavailable(ModelStoreError):
    """S3 refused or failed the request (missing bucket, access denied, no connection)."""


class PromotionRefused(ModelStoreError):
    """A promotion or rollback that would make things worse, or has nothing to act on."""


class PromotionConflict(ModelStoreError):
    """A stage's pointer changed between reading it and writing it; nothing was written."""


@dataclass(frozen=True)
class Pointer:
    """What a stage's pointer object says, and its ETag (the condition of the next write)."""

    stage: str
    run_id: str
    trained_at: str | None
    set_at: str | None
    token: str
    previous: tuple[str, ...]  # earlier production models, oldest first
    etag: str


@dataclass(frozen=True)
class Offer:
    """What offering a run's model did: `promoted` when it went straight to production
    (there was none); else `production` is the production model's metadata (or None)."""

    run_id: str
    promoted: bool
    production: dict[str, Any] | None


@dataclass(frozen=True)
class Promotion:
    run_id: str
    previous: str | None  # what production held before
    changed: bool = True


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
    stage: str = ""  # the stage whose pointer named it, "" when loaded by run id

    def summary(self) -> dict[str, Any]:
        """The few fields an API answer names the model by."""
        return {
            "run_id": self.run_id,
            "stage": self.stage or None,
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


class ModelStore(LazyClient):
    """Publish and read trained models in one bucket (see the module docstring)."""

    service = "s3"

    def __init__(self, bucket: str, s3_client: Any = None) -> None:
        if not bucket:
            raise ValueError("ModelStore needs a bucket name")
        super().__init__(s3_client)
        self.bucket = bucket

    def uri(self, run_id: str) -> str:
        return f"s3://{self.bucket}/{MODELS_PREFIX}{run_id}/"

    # -- writing ---------------------------------------------------------------------------

    def store(self, run_id: str, weights: Weights, metadata: Mapping[str, Any]) -> str:
        """Store a trained model under its run, in no stage yet; returns its URI.

        `metadata` carries at least `parameters` (the parameters JSON) and `input_shape`
        ([h, w, 3]); also, where known: `final_cost`, `train_accuracy`, `test_accuracy`,
        `epochs`, `seconds`, `trained_at` (default: now), `classes` (default non-cat/cat).
        """
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run id {run_id!r} must be 1-128 of [A-Za-z0-9._-]")
        if not isinstance(metadata.get("parameters"), Mapping):
            raise ValueError("metadata['parameters'] must be the parameters JSON object")
        input_shape = _input_shape(metadata.get("input_shape"))
        activations = _activations(metadata)
        weights = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in weights]
        _check_shapes(weights, activations, input_shape)
        trained_at = metadata.get("trained_at") or _now()
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
        self._put(params_key(run_id), weights_to_h5(weights), "application/x-hdf5")
        self._put(model_key(run_id), _json_bytes(doc), "application/json")
        return self.uri(run_id)

    def publish(self, run_id: str, weights: Weights, metadata: Mapping[str, Any]) -> str:
        """Store a model and put it in both stages at once, whatever production held (for
        tools and tests that install a model; training goes through `offer`)."""
        self.store(run_id, weights, metadata)
        self._stage_candidate(run_id, self._doc(run_id))
        self.promote(run_id, force=True)
        return self.uri(run_id)

    def offer(self, run_id: str) -> Offer:
        """A stored model of a SUCCEEDED run becomes the staging candidate (unless a newer
        one is there already), and production too when there is no production model yet.
        Idempotent: a repeated offer of the same run changes nothing more."""
        doc = self._doc(run_id)
        self._stage_candidate(run_id, doc)
        production = self.pointer(PRODUCTION)
        if production is None:
            try:
                self._swap(PRODUCTION, run_id, doc, None, ())
                production = self.pointer(PRODUCTION)
            except PromotionConflict:  # another run's offer came first
                production = self.pointer(PRODUCTION)
        if production is not None and production.run_id == run_id:
            self._write_legacy(run_id, doc)  # again, if an earlier offer stopped before it
            return Offer(run_id, promoted=True, production=None)
        current = None if production is None else self._doc_or_none(production.run_id)
        return Offer(run_id, promoted=False, production=current)

    def promote(self, run_id: str, force: bool = False) -> Promotion:
        """Make a stored model production: one conditional write of the production pointer
        (If-Match its ETag, or If-None-Match when there is none), so a promotion racing
        another is refused (`PromotionConflict`), never lost. Refused (`PromotionRefused`)
        when the model's test accuracy is below production's, unless `force`."""
        doc = self._doc(run_id)
        production = self.pointer(PRODUCTION)
        if production is not None and production.run_id == run_id:
            return Promotion(run_id, previous=None, changed=False)
        if production is not None and not force:
            _check_not_worse(doc, self._doc_or_none(production.run_id), production.run_id)
        history = () if production is None else (*production.previous, production.run_id)
        self._swap(PRODUCTION, run_id, doc, production, history)
        self._write_legacy(run_id, doc)
        return Promotion(run_id, previous=None if production is None else production.run_id)

    def rollback(self) -> Promotion:
        """Production goes back to the model it held before (one conditional write)."""
        production = self.pointer(PRODUCTION)
        if production is None:
            raise PromotionRefused("there is no production model to roll back")
        if not production.previous:
            raise PromotionRefused(
                f"production ({production.run_id}) has no earlier model to go back to"
            )
        back = production.previous[-1]
        doc = self._doc(back)
        self._swap(PRODUCTION, back, doc, production, production.previous[:-1])
        self._write_legacy(back, doc)
        return Promotion(back, previous=production.run_id)

    def _stage_candidate(self, run_id: str, doc: Mapping[str, Any]) -> None:
        """The staging pointer names the newest candidate: a late or repeated offer of an
        older run leaves a newer one in place. Conditional, retried on a race."""
        for _ in range(10):
            staging = self.pointer(STAGING)
            if staging is not None and (
                staging.run_id == run_id
                or (staging.trained_at or "", staging.run_id)
                > (str(doc.get("trained_at") or ""), run_id)
            ):
                return
            try:
                self._swap(STAGING, run_id, doc, staging, ())
                return
            except PromotionConflict:
                continue
        raise PromotionConflict("the staging pointer kept changing: try again")

    def _swap(
        self,
        stage: str,
        run_id: str,
        doc: Mapping[str, Any],
        expected: Pointer | None,
        previous: Sequence[str],
    ) -> None:
        """Write a stage's pointer if it is still `expected` (its ETag; None: absent).

        A write that S3 applied but whose answer was lost is retried by the SDK and then
        refused (the ETag moved): the pointer read back carries this write's token, so it
        counts as done."""
        key = POINTER_KEYS[stage]
        token = uuid.uuid4().hex
        pointer = {
            "stage": stage,
            "run_id": run_id,
            "params_key": params_key(run_id),
            "model_key": model_key(run_id),
            "trained_at": doc.get("trained_at"),
            "test_accuracy": doc.get("test_accuracy"),
            "set_at": _now(),
            "token": token,
            "previous": list(previous)[-HISTORY_LIMIT:],
        }
        condition = {"IfMatch": expected.etag} if expected else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=_json_bytes(pointer),
                ContentType="application/json",
                **condition,
            )
        except (ClientError, BotoCoreError) as e:
            error = self._error(e, key)
            # refused by its condition, or (If-Match) the pointer was deleted meanwhile
            refused = isinstance(error, PromotionConflict) or (
                expected is not None and isinstance(error, ModelNotFound)
            )
            if not refused:
                raise error from e
            now = self.pointer(stage)
            if now is not None and now.token == token:
                return
            held = "nothing" if expected is None else expected.run_id
            raise PromotionConflict(
                f"{stage} changed while this write was made (it held {held}, now "
                f"{now.run_id if now else 'nothing'}): nothing was changed; check and retry"
            ) from e

    def _write_legacy(self, run_id: str, doc: Mapping[str, Any]) -> None:
        """The original project's locations of the production model, after its pointer."""
        h5, _ = self._get(params_key(run_id), MAX_PARAMS_BYTES)
        self._put(LEGACY_PARAMS_KEY, h5, "application/x-hdf5")
        results = {k: doc.get(k) for k in _RESULT_FIELDS if k in doc}
        self._put(LEGACY_RESULTS_KEY, _json_bytes(results), "application/json")

    # -- reading ---------------------------------------------------------------------------

    def pointer_etag(self, stage: str = PRODUCTION) -> str | None:
        """The stage pointer's ETag (one HEAD request), or None when the stage is empty."""
        key = POINTER_KEYS[stage]
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            error = self._error(e, key)
            if isinstance(error, ModelNotFound):
                return None
            raise error from e
        return str(head["ETag"])

    def pointer(self, stage: str) -> Pointer | None:
        """What a stage's pointer says, with its ETag; None when the stage is empty."""
        key = POINTER_KEYS[stage]
        try:
            body, etag = self._get(key, MAX_JSON_BYTES)
        except ModelNotFound:
            return None
        doc = _json_doc(body, key)
        run_id = doc.get("run_id")
        previous = doc.get("previous") or []
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ModelCorrupt(f"{key} names no valid run_id: {run_id!r}")
        if not isinstance(previous, list) or not all(
            isinstance(p, str) and _RUN_ID.match(p) for p in previous
        ):
            raise ModelCorrupt(f"{key}: 'previous' is not a list of run ids")
        return Pointer(
            stage=stage,
            run_id=run_id,
            trained_at=doc.get("trained_at"),
            set_at=doc.get("set_at"),
            token=str(doc.get("token") or ""),
            previous=tuple(previous),
            etag=etag,
        )

    def current(self, stage: str = PRODUCTION) -> LoadedModel | None:
        """The model a stage's pointer names, or None when the stage is empty."""
        pointer = self.pointer(stage)
        if pointer is None:
            return None
        try:
            return self._load(pointer.run_id, pointer.etag, stage)
        except ModelNotFound as e:
            raise ModelCorrupt(f"{POINTER_KEYS[stage]} points to a missing model: {e}") from e

    def production(self) -> LoadedModel | None:
        return self.current(PRODUCTION)

    def staging(self) -> LoadedModel | None:
        return self.current(STAGING)

    def load(self, run_id: str) -> LoadedModel:
        """A model by its run id (raises `ModelNotFound` when there is none)."""
        if not _RUN_ID.match(run_id):
            raise ModelNotFound(f"no model {run_id!r}")
        return self._load(run_id, etag="", stage="")

    def models(self) -> list[dict[str, Any]]:
        """Every stored model's metadata, oldest first, each with `stages`: the stages
        whose pointer names it (needs s3:ListBucket, which the CLI has and the API not)."""
        stages = {s: self.pointer(s) for s in STAGES}
        out = []
        for run_id in self._stored_runs():
            doc = self._doc_or_none(run_id)
            if doc is None:
                continue
            doc["stages"] = [s for s, p in stages.items() if p is not None and p.run_id == run_id]
            out.append(doc)
        return sorted(out, key=lambda d: (str(d.get("trained_at") or ""), d["run_id"]))

    def _stored_runs(self) -> list[str]:
        runs = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=MODELS_PREFIX
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    parts = obj["Key"][len(MODELS_PREFIX) :].split("/")
                    if len(parts) == 2 and parts[1] == "model.json":
                        runs.append(parts[0])
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, MODELS_PREFIX) from e
        return runs

    def _doc(self, run_id: str) -> dict[str, Any]:
        """A stored model's model.json (`ModelNotFound` when there is none)."""
        if not _RUN_ID.match(run_id):
            raise ModelNotFound(f"no model {run_id!r}")
        try:
            body, _ = self._get(model_key(run_id), MAX_JSON_BYTES)
        except ModelNotFound:
            raise ModelNotFound(f"no model {run_id!r} in s3://{self.bucket}/models/") from None
        return _json_doc(body, model_key(run_id))

    def _doc_or_none(self, run_id: str) -> dict[str, Any] | None:
        try:
            return self._doc(run_id)
        except (ModelNotFound, ModelCorrupt):
            return None

    def _load(self, run_id: str, etag: str, stage: str) -> LoadedModel:
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
            stage=stage,
        )

    # -- S3 --------------------------------------------------------------------------------

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e

    def _get(self, key: str, limit: int) -> tuple[bytes, str]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            if int(obj.get("ContentLength") or 0) > limit:
                raise ModelCorrupt(f"s3://{self.bucket}/{key} is larger than {limit} bytes")
            return obj["Body"].read(), str(obj.get("ETag", ""))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e

    def _error(self, e: Exception, key: str) -> ModelStoreError:
        """A botocore error on `key` (`errors.translate`) as this store's error: a missing
        object `ModelNotFound`, a refused condition `PromotionConflict`, anything else (a
        missing bucket, access denied, throttling, no connection) `ModelStoreUnavailable`."""
        error = translate(e, f"s3://{self.bucket}/{key}")
        if isinstance(e, ClientError) and code_of(e) in MISSING_OBJECT:  # not the bucket
            return ModelNotFound(str(error))
        if isinstance(error, Conflict):
            return PromotionConflict(str(error))
        return ModelStoreUnavailable(str(error))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _check_not_worse(
    candidate: Mapping[str, Any], production: Mapping[str, Any] | None, production_id: str
) -> None:
    """Refuse a candidate whose test accuracy is below production's (or unknown)."""
    if production is None:
        return  # production's model is gone or unreadable: anything is better
    theirs, ours = production.get("test_accuracy"), candidate.get("test_accuracy")
    if not isinstance(theirs, int | float):
        return
    if not isinstance(ours, int | float):
        raise PromotionRefused(
            f"{candidate.get('run_id')} has no test accuracy (its dataset had no test set) "
            f"to compare with production's {theirs:.1%} ({production_id}): use --force"
        )
    if ours < theirs:
        raise PromotionRefused(
            f"{candidate.get('run_id')}'s test accuracy {ours:.1%} is below production's "
            f"{theirs:.1%} ({production_id}): production is unchanged (use --force to "
            "promote it anyway)"
        )


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
