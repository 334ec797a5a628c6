"""A run's prepared training data, loaded from S3 once per warm worker and kept hot."""

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from state.objects import ObjectStore
from trainer_lambdas.nn.preprocess import flatten_images


@dataclass(frozen=True)
class TrainingData:
    x: np.ndarray  # (n_x, m) float64 in [0, 1]
    y: np.ndarray  # (1, m) float64 labels


_CACHE: "OrderedDict[tuple[str, str], TrainingData]" = OrderedDict()
_LOCK = threading.Lock()
_KEEP = 2  # runs whose data a warm worker keeps


def load(objects: ObjectStore, key: str) -> TrainingData:
    """The arrays at `key` (x uint8 images, y labels) as network inputs, cached."""
    ck = (objects.bucket, key)
    with _LOCK:
        if ck in _CACHE:
            _CACHE.move_to_end(ck)
            return _CACHE[ck]
    arrays = objects.get_arrays(key)
    data = TrainingData(
        x=flatten_images(arrays["x"]), y=arrays["y"].reshape(1, -1).astype(np.float64)
    )
    with _LOCK:
        _CACHE[ck] = data
        while len(_CACHE) > _KEEP:
            _CACHE.popitem(last=False)
    return data


def columns(data: TrainingData, indices: list[int] | None) -> np.ndarray:
    """The batch's inputs: all columns, or the listed ones (the last slice is reused)."""
    if indices is None:
        return data.x
    key = (id(data), tuple(indices))
    cached = _LAST.get("key")
    if cached == key:
        return _LAST["x"]
    x = data.x[:, indices]
    _LAST.update(key=key, x=x)
    return x


_LAST: dict = {}
