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
    return data.x if indices is None else _last_slice(data, "columns_last", data.x, indices)


def gram_columns(data: TrainingData, indices: list[int] | None) -> np.ndarray:
    """The batch's columns of the Gram matrix X^T X (computed once per warm worker)."""
    with _LOCK:
        g = data.derived.get("gram")
        if g is None:
            g = data.derived["gram"] = dual.gram(data.x)
    return g if indices is None else _last_slice(data, "gram_last", g, indices)


def _last_slice(data: TrainingData, slot: str, full: np.ndarray, indices: list[int]) -> np.ndarray:
    """`full[:, indices]`, kept in `data.derived[slot]` for the next request of the same
    batch (a step's blocks all ask for the same columns)."""
    key = tuple(indices)
    with _LOCK:
        last = data.derived.get(slot)
        if last is not None and last[0] == key:
            return last[1]
    cols = full[:, indices]
    with _LOCK:
        data.derived[slot] = (key, cols)
    return cols
