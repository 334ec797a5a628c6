"""Turns an uploaded dataset into a prepared, started run.

Validation failures end the run as FAILED with the reason and a notification, and return
normally: a bad upload must not be retried in a loop. Everything else is idempotent, so a
duplicated or retried S3 event finds the run already there and does nothing more.

Which parameters a run uses: the version of `parameters.json` (in the dataset's folder) that
was current when the dataset was uploaded, i.e. the newest version of exactly that key whose
LastModified is not after the dataset version's; a delete marker there, or no version,
means the defaults. Upload `parameters.json` before the dataset. A launch retried or run
late (SQS redelivery) picks the same version, and a `parameters.json` uploaded after the
dataset (a leftover, `aws s3 cp --recursive` in any order) is not used by it. The run records
the version (`params_version`; None for the defaults) with `params_source`. S3 keeps
LastModified to the second: a `parameters.json` written in the same second as the dataset
counts as before it. In a bucket without versioning (no version id in the event) nothing can
be pinned, and the current `parameters.json` is read.

Inputs that cannot work are refused here, before anything is written: a dataset that would
not fit the functions' memory (`datasets.Memory`), a first layer whose stored rows would not
fit a DynamoDB item (`first_layer_form`), a network whose requests would not fit Lambda's
payload limit (`invocation_plan.check_inputs`).
"""

import hashlib
import logging
import posixpath
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from state.errors import Conflict, NotFound, StateError
from state.objects import ObjectVersion, data_key
from state.runs import PREPARING, Prepared
from trainer_lambdas import datasets, invocation_plan
from trainer_lambdas.config import Config
from trainer_lambdas.coordinator import Stores
from trainer_lambdas.nn import dual, optimizers, schedule
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn.init import initial_weights
from trainer_lambdas.payloads import TrainerEvent, UploadedObject

log = logging.getLogger("itsacat.launch")

INPUT_PREFIX = "training_input/"
PARAMS_NAME = "parameters.json"
MAX_PARAMS_BYTES = 64 * 1024
# DynamoDB's item limit, "400 KB" with attribute names and key, read as 400,000 bytes (AWS
# takes 409,600, moto and so the embedded stack 405,000); the weights table holds one
# neuron row per item, as raw float64 bytes (state/weights.py).
MAX_ITEM_BYTES = 400_000
ITEM_MARGIN = 1024  # the item's key (run id, layer, version, neuron), bias and TTL
MAX_ROW_VALUES = (MAX_ITEM_BYTES - ITEM_MARGIN) // 8  # 49,872: pictures up to 128x128x3


def is_dataset(key: str) -> bool:
    return key.startswith(INPUT_PREFIX) and key.endswith(".h5")


def run_id_for(obj: UploadedObject) -> str:
    """Stable for one uploaded object version: a duplicate event maps to the same run."""
    version = obj.version_id or obj.sequencer or f"{obj.etag}@{obj.event_time}"
    return run_id(obj.bucket, obj.key, version)


def run_id(bucket: str, key: str, version: str) -> str:
    """The run of one version of s3://bucket/key (its VersionId in a versioned bucket, which
    put_object answers too, so an uploader can name the run its upload starts)."""
    digest = hashlib.sha256(f"{bucket}\n{key}\n{version}".encode()).hexdigest()
    stem = re.sub(r"[^a-z0-9]+", "-", posixpath.basename(key)[:-3].lower()).strip("-")
    return f"{stem[:40] or 'run'}-{digest[:12]}"


@dataclass(frozen=True)
class Rejected(Exception):
    """The upload cannot be trained on; `reason` says why."""

    reason: str


def first_layer_form(form: str, n_x: int, m: int, optimizer: str = "gd") -> bool:
    """Whether layer 1 trains in the dual form (`dual.use_dual`), so that its stored rows
    fit a DynamoDB item: n_x values a row in the primal form, m in the dual form, times one
    more for each of the optimiser's states of W stored beside the row (momentum's v, Adam's
    v and s), at most MAX_ROW_VALUES. "auto" takes the other form when the one `use_dual`
    chose does not fit and the other does (the numbers are the same either way); otherwise
    ValueError. (The other layers' rows are at most params.MAX_NEURONS values, three times
    at most: they always fit.)"""
    copies = 1 + sum(name.endswith("w") for name in optimizers.slot_names(optimizer))
    limit_values = MAX_ROW_VALUES // copies
    # ParameterError: 'dual' with too big a Gram matrix, or with adam
    chosen = dual.use_dual(form, n_x, m, optimizer)
    if (m if chosen else n_x) <= limit_values:
        return chosen
    try:
        other_fits = dual.use_dual("primal" if chosen else "dual", n_x, m, optimizer) != chosen
    except params_mod.ParameterError:  # the dual form's Gram matrix would be too big
        other_fits = False
    other_fits = other_fits and (n_x if chosen else m) <= limit_values
    if form == "auto" and other_fits:
        return not chosen
    limit = "over DynamoDB's 400 KB item limit (one item per row)"
    if copies > 1:
        limit += f" with the {optimizer} optimizer's state beside it ({copies} copies)"
    if chosen:
        raise ValueError(
            f"layer 1's stored rows would hold {m} values in the dual form (one per example, "
            f"{8 * m / 1024:.0f} KB), {limit}: use first_layer 'primal' or at most "
            f"{limit_values} examples"
        )
    side = int((limit_values // 3) ** 0.5)
    advice = f"first_layer 'dual' (rows of {m} values) or " if other_fits else ""
    raise ValueError(
        f"layer 1's weight rows would hold {n_x} values in the primal form "
        f"({8 * n_x / 1024:.0f} KB), {limit}: use {advice}smaller pictures (at most "
        f"{limit_values} values, e.g. {side}x{side}x3)"
    )


def pinned_version(versions: list[ObjectVersion], when: datetime) -> ObjectVersion | None:
    """The entry of `versions` (`ObjectStore.versions`: of one key) current at `when`: the
    newest whose LastModified is not after it; None if there is none. ValueError if a
    version and a delete marker share that second and neither is the current one (S3 does
    not say which came first)."""
    older = [v for v in versions if v.last_modified <= when]
    if not older:
        return None
    newest = max(v.last_modified for v in older)
    top = [v for v in older if v.last_modified == newest]
    if len({v.deleted for v in top}) == 1:
        return top[0]  # each kind is in S3's order, newest first
    current = [v for v in top if v.latest]
    if current:
        return current[0]
    raise ValueError(
        f"it was both written and deleted at {newest.isoformat()}, so the version current "
        "at the dataset's upload is unknown: upload parameters.json, then the dataset, again"
    )


class Launcher:
    def __init__(self, cfg: Config, stores: Stores) -> None:
        self.cfg = cfg
        self.stores = stores

    def launch(self, obj: UploadedObject) -> dict[str, Any]:
        if not is_dataset(obj.key):
            return {"key": obj.key, "outcome": "ignored"}
        run_id = run_id_for(obj)
        dataset = {
            "bucket": obj.bucket,
            "key": obj.key,
            "version_id": obj.version_id,
            "etag": obj.etag,
            "size": obj.size,
        }
        try:
            self.stores.runs.create(run_id, dataset, started_at=time.time())
        except Conflict:
            existing = self.stores.runs.get(run_id)
            if existing.status != PREPARING:
                self.stores.runs.count(run_id, {"duplicates": 1})
                log.info("duplicate upload event; the run exists", extra={"run_id": run_id})
                return {"run_id": run_id, "outcome": "duplicate", "status": existing.status}
            log.info("resuming an interrupted preparation", extra={"run_id": run_id})
        try:
            prepared = self._prepare(run_id, obj)
        except Rejected as r:
            return self._reject(run_id, obj, r.reason)
        try:
            self.stores.runs.start(run_id, prepared)
        except Conflict:
            return {"run_id": run_id, "outcome": "duplicate"}
        self.stores.functions.start(self.cfg.trainer_function, TrainerEvent(run_id).to_dict())
        log.info("run prepared; trainer started", extra={"run_id": run_id})
        return {"run_id": run_id, "outcome": "started"}

    def _prepare(self, run_id: str, obj: UploadedObject) -> Prepared:
        """Validate, write the prepared data and the initial weights (version 0, written by
        no trainer); what the run starts with."""
        params_key = posixpath.join(posixpath.dirname(obj.key), PARAMS_NAME)
        text, params_version = self._parameters(params_key, obj)
        try:
            p = params_mod.default() if text is None else params_mod.loads(text)
        except params_mod.ParameterError as e:
            raise Rejected(f"{params_key}: {e}") from e
        try:
            body = self.stores.objects.get(obj.key, self.cfg.max_dataset_bytes, obj.version_id)
        except NotFound as e:
            raise Rejected(f"{obj.key}: the uploaded object is gone ({e})") from e
        except StateError as e:
            if "larger than" in str(e):
                raise Rejected(f"dataset: {e}") from e
            raise
        memory = datasets.Memory(
            launch_mb=self.cfg.memory_mb,
            workers_mb=min(self.cfg.trainer_memory_mb, self.cfg.neuron_memory_mb),
        )
        try:
            ds = datasets.load(body, max_bytes=self.cfg.max_dataset_bytes, memory=memory)
            train = ds.require_train()
        except datasets.DatasetError as e:
            raise Rejected(f"{obj.key}: {e}") from e
        n_x = int(train.x[0].size)
        m = train.m
        try:
            in_dual = first_layer_form(p.first_layer, n_x, m, p.optimizer)
            m_b = m if p.full_batch(m) or p.batch_size is None else p.batch_size
            invocation_plan.check_inputs(p.neurons, m_b, p.distribution, m if in_dual else n_x)
        except (params_mod.ParameterError, ValueError) as e:
            raise Rejected(f"{params_key}: {e}") from e
        m_all = m + (0 if ds.test is None else ds.test.m)
        gram = memory.problem(len(body), m_all, ds.image_shape, 8 * m * m) if in_dual else None
        if gram is not None:
            raise Rejected(f"{obj.key}: {gram}")
        train_key = data_key(run_id, "train")
        self.stores.objects.put_arrays(train_key, x=train.x, y=train.y)
        test_key = None
        if ds.test is not None:
            test_key = data_key(run_id, "test")
            self.stores.objects.put_arrays(test_key, x=ds.test.x, y=ds.test.y)
        start = initial_weights(p, n_x)
        self.stores.weights.write(run_id, 0, dual.initial_state(start, m) if in_dual else start)
        steps_per_epoch = schedule.batches_per_epoch(p, m)
        return Prepared(
            params=p.to_json(),
            params_source=params_key if text is not None else "default",
            params_version=params_version,  # None: the defaults, or no versioning
            warnings=list(p.warnings),
            data_key=train_key,
            test_key=test_key,
            n_x=n_x,
            m=m,
            m_test=0 if ds.test is None else ds.test.m,
            image_shape=list(ds.image_shape),
            classes=list(ds.classes),
            steps_per_epoch=steps_per_epoch,
            total_steps=p.epochs * steps_per_epoch,
            # decided once: the stored weights' layout must not change under a running run
            first_layer="dual" if in_dual else "primal",
        )

    def _parameters(self, params_key: str, obj: UploadedObject) -> tuple[bytes | None, str | None]:
        """The text of the `parameters.json` version current when the dataset was uploaded
        (None: the defaults), and its version id (the module docstring says which)."""
        if obj.version_id is None:  # a bucket without versioning: nothing to pin
            try:
                return self.stores.objects.get_optional(params_key, MAX_PARAMS_BYTES), None
            except StateError as e:
                raise Rejected(f"{params_key}: {e}") from e
        try:
            when = self.stores.objects.head(obj.key, obj.version_id)["LastModified"]
        except StateError as e:
            gone = "the uploaded object is gone: " if isinstance(e, NotFound) else ""
            raise Rejected(f"{obj.key}: {gone}{e}") from e
        try:
            pinned = pinned_version(self.stores.objects.versions(params_key), when)
            if pinned is None or pinned.deleted:
                return None, None
            text = self.stores.objects.get(params_key, MAX_PARAMS_BYTES, pinned.version_id)
        except NotFound as e:
            raise Rejected(
                f"{params_key}: the version current when the dataset was uploaded is gone "
                f"({e}): upload parameters.json, then the dataset, again"
            ) from e
        except (StateError, ValueError) as e:
            raise Rejected(f"{params_key}: {e}") from e
        return text, pinned.version_id

    def _reject(self, run_id: str, obj: UploadedObject, reason: str) -> dict[str, Any]:
        log.warning("upload rejected", extra={"run_id": run_id, "reason": reason})
        try:
            self.stores.runs.fail(run_id, reason, from_statuses=(PREPARING,))
        except Conflict:
            return {"run_id": run_id, "outcome": "duplicate"}
        self.stores.notifier.run_failed(run_id, reason, dataset=f"s3://{obj.bucket}/{obj.key}")
        self.stores.runs.mark_notified(run_id)
        return {"run_id": run_id, "outcome": "failed", "error": reason}
