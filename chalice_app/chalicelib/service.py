"""What the API does, without HTTP: ping, the model's metadata, and verdicts on pictures.

Settings, the S3 client, the model cache and the fetcher are built lazily on first use
and kept for the life of the warm function (`reset()` forgets them, for tests).
The S3 endpoint comes from the standard `AWS_ENDPOINT_URL`, as for any boto3 client.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image

from chalicelib import images
from chalicelib.config import Settings
from chalicelib.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from chalicelib.fetch import SafeFetcher
from chalicelib.model_cache import ModelCache
from state.models import LoadedModel, ModelStore
from trainer_lambdas.nn.network import predict_proba

# Content types accepted as a POSTed picture (octet-stream: sniffed like the others).
BODY_CONTENT_TYPES = (*images.CONTENT_TYPES, "application/octet-stream")

_lock = threading.RLock()
_settings: Settings | None = None
_s3: Any = None
_caches: dict[str, ModelCache] = {}
_fetcher: SafeFetcher | None = None


def settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def s3_client() -> Any:
    global _s3
    with _lock:
        if _s3 is None:
            import boto3
            from botocore.config import Config

            _s3 = boto3.client(
                "s3",
                config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}),
            )
        return _s3


def model_cache(stage: str | None = None) -> ModelCache:
    """The cache of one stage's model (default: the stage this API serves, ITSACAT_STAGE)."""
    with _lock:
        config = settings()
        stage = stage or config.stage
        if stage not in _caches:
            store = ModelStore(config.bucket, s3_client=s3_client()) if config.bucket else None
            _caches[stage] = ModelCache(store, config.model_check_seconds, stage=stage)
        return _caches[stage]


def fetcher() -> SafeFetcher:
    global _fetcher
    with _lock:
        if _fetcher is None:
            _fetcher = SafeFetcher(settings())
        return _fetcher


def configure(config: Settings) -> None:
    """Start afresh with these settings instead of the environment's (`itsacat predict`)."""
    global _settings
    reset()
    with _lock:
        _settings = config


def reset() -> None:
    """Forget settings, clients and the cached model (the next call re-reads everything)."""
    global _settings, _s3, _fetcher
    with _lock:
        _settings = _s3 = _fetcher = None
        _caches.clear()


@dataclass(frozen=True)
class Prediction:
    verdict: dict[str, Any]
    image: Image.Image  # oriented RGB, for the HTML page's thumbnail
    source: str


def ping(stage: str | None = None) -> dict[str, Any]:
    model = model_cache(stage).peek()
    return {"message": "Ping Successful!", "model": model.summary() if model else None}


# What `GET /model` tells: how the model was trained and how well it does, never where
# its data came from (model.json also names the dataset's bucket, key and version).
MODEL_FIELDS = (
    "run_id",
    "trained_at",
    "input_shape",
    "classes",
    "activations",
    "parameters",
    "final_cost",
    "train_accuracy",
    "test_accuracy",
    "epochs",
)


def model_info(stage: str | None = None) -> dict[str, Any]:
    model = model_cache(stage).get()
    info = {k: model.metadata[k] for k in MODEL_FIELDS if k in model.metadata}
    info["stage"] = model.stage
    return info


def classify_url(url: str | None, stage: str | None = None) -> Prediction:
    if url is None or not url.strip():
        raise BadRequest(
            "the 'image' query parameter is required: /image?image=<http(s) URL of a picture>",
            "missing_image",
        )
    model = model_cache(stage).get()  # 503 before any fetch when there is no model
    fetched = fetcher().fetch(url.strip())
    return _classify(model, fetched.body, fetched.url)


def classify_body(
    body: bytes | None, content_type: str | None, stage: str | None = None
) -> Prediction:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in BODY_CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"POST the picture as the body with Content-Type one of "
            f"{', '.join(images.CONTENT_TYPES)} (got {media_type or 'none'!r})",
            "unsupported_media_type",
        )
    if not body:
        raise BadRequest("the request body is empty: POST the picture itself", "missing_image")
    limit = settings().max_body_bytes
    if len(body) > limit:
        raise PayloadTooLarge(
            f"the picture is larger than {limit} bytes: upload a smaller one", "image_too_large"
        )
    return _classify(model_cache(stage).get(), body, "upload")


def verdict(model: LoadedModel, image: Image.Image) -> dict[str, Any]:
    """The model's answer for one oriented RGB picture."""
    x = images.to_input(image, model.input_shape)
    p = float(predict_proba(model.weights, model.activations, x)[0, 0])
    return {
        "label": model.classes[1] if p > 0.5 else model.classes[0],
        "probability": p,
        "model": model.summary(),
    }


def _classify(model: LoadedModel, data: bytes, source: str) -> Prediction:
    image = images.oriented_rgb(images.open_image(data, settings().max_pixels))
    return Prediction(verdict=verdict(model, image), image=image, source=source)
