"""A run's prepared training data, loaded from S3 once per warm worker and kept hot."""

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from state.objects import ObjectStore
from trainer_lambdas.nn import dual
from trainer_lambdas.nn.preprocess import flatten_images


@dataclass(frozen=True)
class TrainingData:
    x: np.ndarray  # (n_x, m) float64 in [0, 1]
    y: np.ndarray  # (1, m) float64 labels
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


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
    key = tuple(indices)
    with _LOCK:
        last = data.derived.get("columns_last")
        if last is not None and last[0] == key:
            return last[1]
    x = data.x[:, indices]
    with _LOCK:
        data.derived["columns_last"] = (key, x)
    return x


def gram_columns(data: TrainingData, indices: list[int] | None) -> np.ndarray:
    """The batch's columns of the Gram matrix X^T X (computed once per warm worker)."""
    with _LOCK:
        g = data.derived.get("gram")
        if g is None:
            g = data.derived["gram"] = dual.gram(data.x)
        if indices is None:
            return g
        key = tuple(indices)
        last = data.derived.get("gram_last")
        if last is not None and last[0] == key:
            return last[1]
        cols = g[:, indices]
        data.derived["gram_last"] = (key, cols)
        return cols
