"""The model of one stage held by a warm function, replaced when its pointer changes
(a promotion, a rollback, or a new staging candidate).

The stage pointer's ETag is re-checked (one HEAD request) at most every `check_seconds`; the
full model is read only when the ETag changed. If S3 fails while a model is cached, the
cached model keeps answering and the check is retried on a later request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from chalicelib.errors import PUBLIC_MESSAGES, ServiceUnavailable
from state.models import (
    POINTER_KEYS,
    PRODUCTION,
    LoadedModel,
    ModelCorrupt,
    ModelStore,
    ModelStoreError,
)

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(
        self,
        store: ModelStore | None,
        check_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        stage: str = PRODUCTION,
    ) -> None:
        self.store = store
        self.stage = stage
        self.check_seconds = check_seconds
        self.clock = clock
        self._model: LoadedModel | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()

    def get(self) -> LoadedModel:
        """The current model; ServiceUnavailable (503) when there is none to use."""
        if self.store is None:
            raise ServiceUnavailable(
                "no model store is configured (set ITSACAT_BUCKET)", "no_model_store"
            )
        with self._lock:
            now = self.clock()
            fresh = self._checked_at is not None and now - self._checked_at < self.check_seconds
            if self._model is not None and fresh:
                return self._model
            try:
                self._refresh(self.store)
            except ModelStoreError as e:
                if self._model is not None:
                    log.warning("model check failed, keeping %s: %s", self._model.run_id, e)
                    return self._model
                code = "model_corrupt" if isinstance(e, ModelCorrupt) else "model_store_unavailable"
                raise ServiceUnavailable(f"the model cannot be loaded: {e}", code) from e
            finally:
                self._checked_at = now
            if self._model is None:
                code = "no_model" if self.stage == PRODUCTION else "no_candidate"
                raise ServiceUnavailable(
                    f"{PUBLIC_MESSAGES[code]}: the {self.stage} pointer "
                    f"s3://{self.store.bucket}/{POINTER_KEYS[self.stage]} does not exist",
                    code,
                )
            return self._model

    def peek(self) -> LoadedModel | None:
        """The current model, or None instead of an error (for the ping)."""
        try:
            return self.get()
        except ServiceUnavailable:
            return None

    def _refresh(self, store: ModelStore) -> None:
        etag = store.pointer_etag(self.stage)
        if etag is None:
            self._model = None
        elif self._model is None or etag != self._model.etag:
            model = store.current(self.stage)
            if model is not None:
                log.info("serving %s model %s (%s)", self.stage, model.run_id, model.uri)
            self._model = model
