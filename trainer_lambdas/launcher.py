"""Turns an uploaded dataset into a prepared, started run.

Validation failures end the run as FAILED with the reason and a notification, and return
normally: a bad upload must not be retried in a loop. Everything else is idempotent, so a
duplicated or retried S3 event finds the run already there and does nothing more.
"""

import hashlib
import logging
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any

from state.errors import Conflict, NotFound, StateError
from state.objects import data_key
from state.runs import PREPARING
from trainer_lambdas import datasets, plan
from trainer_lambdas.config import Config
from trainer_lambdas.coordinator import Stores
from trainer_lambdas.nn import dual, schedule
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn.init import initial_weights
from trainer_lambdas.payloads import TrainerEvent, UploadedObject

log = logging.getLogger("itsacat.launch")

INPUT_PREFIX = "training_input/"
PARAMS_NAME = "parameters.json"
MAX_PARAMS_BYTES = 64 * 1024


def is_dataset(key: str) -> bool:
    return key.startswith(INPUT_PREFIX) and key.endswith(".h5")


def run_id_for(obj: UploadedObject) -> str:
    """Stable for one uploaded object version: a duplicate event maps to the same run."""
    version = obj.version_id or obj.sequencer or f"{obj.etag}@{obj.event_time}"
    digest = hashlib.sha256(f"{obj.bucket}\n{obj.key}\n{version}".encode()).hexdigest()
    stem = re.sub(r"[^a-z0-9]+", "-", posixpath.basename(obj.key)[:-3].lower()).strip("-")
    return f"{stem[:40] or 'run'}-{digest[:12]}"


@dataclass(frozen=True)
class Rejected(Exception):
    """The upload cannot be trained on; `reason` says why."""

    reason: str


class Launcher:
    def __init__(self, cfg: Config, stores: Stores) -> None:
        self.cfg = cfg
        self.s = stores

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
            self.s.runs.create(run_id, {"dataset": dataset, "started_at": time.time()})
        except Conflict:
            existing = self.s.runs.get(run_id)
            if existing.status != PREPARING:
                self.s.runs.count(run_id, {"duplicates": 1})
                log.info("duplicate upload event; the run exists", extra={"run_id": run_id})
                return {"run_id": run_id, "outcome": "duplicate", "status": existing.status}
            log.info("resuming an interrupted preparation", extra={"run_id": run_id})
        try:
            fields = self._prepare(run_id, obj)
        except Rejected as r:
            return self._reject(run_id, obj, r.reason)
        try:
            self.s.runs.start(run_id, fields)
        except Conflict:
            return {"run_id": run_id, "outcome": "duplicate"}
        self.s.functions.start(self.cfg.trainer_function, TrainerEvent(run_id).to_dict())
        log.info("run prepared; trainer started", extra={"run_id": run_id})
        return {"run_id": run_id, "outcome": "started"}

    def _prepare(self, run_id: str, obj: UploadedObject) -> dict[str, Any]:
        """Validate, write the prepared data and the initial weights; the run's fields."""
        params_key = posixpath.join(posixpath.dirname(obj.key), PARAMS_NAME)
        try:
            text = self.s.objects.get_optional(params_key, MAX_PARAMS_BYTES)
        except StateError as e:
            raise Rejected(f"{params_key}: {e}") from e
        try:
            p = params_mod.default() if text is None else params_mod.loads(text)
        except params_mod.ParameterError as e:
            raise Rejected(f"{params_key}: {e}") from e
        try:
            body = self.s.objects.get(obj.key, self.cfg.max_dataset_bytes, obj.version_id)
        except NotFound as e:
            raise Rejected(f"{obj.key}: the uploaded object is gone ({e})") from e
        except StateError as e:
            if "larger than" in str(e):
                raise Rejected(f"dataset: {e}") from e
            raise
        try:
            ds = datasets.load(body, max_bytes=self.cfg.max_dataset_bytes)
            train = ds.require_train()
        except datasets.DatasetError as e:
            raise Rejected(f"{obj.key}: {e}") from e
        n_x = int(train.x[0].size)
        m = train.m
        try:
            in_dual = dual.use_dual(p.first_layer, n_x, m)
            m_b = m if p.full_batch(m) or p.batch_size is None else p.batch_size
            plan.check_inputs(p.neurons, m_b, p.plan)
        except (params_mod.ParameterError, ValueError) as e:
            raise Rejected(f"{params_key}: {e}") from e
        train_key = data_key(run_id, "train")
        self.s.objects.put_arrays(train_key, x=train.x, y=train.y)
        test_key = None
        if ds.test is not None:
            test_key = data_key(run_id, "test")
            self.s.objects.put_arrays(test_key, x=ds.test.x, y=ds.test.y)
        start = initial_weights(p, n_x)
        self.s.weights.write(run_id, 0, dual.initial_state(start, m) if in_dual else start)
        spe = schedule.batches_per_epoch(p, m)
        return {
            "params": p.to_json(),
            "params_source": params_key if text is not None else "default",
            "warnings": list(p.warnings),
            "data_key": train_key,
            "test_key": test_key,
            "n_x": n_x,
            "m": m,
            "m_test": 0 if ds.test is None else ds.test.m,
            "image_shape": list(ds.image_shape),
            "classes": list(ds.classes),
            "steps_per_epoch": spe,
            "total_steps": p.epochs * spe,
            # decided once: the stored weights' layout must not change under a running run
            "first_layer": "dual" if in_dual else "primal",
            "weights_version": 0,
            "epochs_done": 0,
            "partial_sum": (0.0).hex(),
            "partial_n": 0,
            "heartbeat": time.time(),
        }

    def _reject(self, run_id: str, obj: UploadedObject, reason: str) -> dict[str, Any]:
        log.warning("upload rejected", extra={"run_id": run_id, "reason": reason})
        try:
            self.s.runs.fail(run_id, reason, from_statuses=(PREPARING,))
        except Conflict:
            return {"run_id": run_id, "outcome": "duplicate"}
        self.s.notifier.publish(
            f"itsacat: run {run_id} failed",
            f"Training of s3://{obj.bucket}/{obj.key} did not start: {reason}",
            {"status": "FAILED", "run_id": run_id, "error": reason, "dataset": obj.key},
        )
        return {"run_id": run_id, "outcome": "failed", "error": reason}
