"""Writes the malformed training inputs of `manifest.json` into datasets/ and parameters/.

Each file is small (the "giant" datasets declare huge shapes in chunked arrays that are never
written, so they take a few KB on disk). The outputs are checked in beside this script;
`tests/reliability/test_corpora.py` checks that they are what this script writes.

    python tests/corpora/make_corpora.py          # (re)write the corpus
    python tests/corpora/make_corpora.py --check  # exit 1 if a file differs from the script
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
SIDE = 8


def _images(m: int, side: int = SIDE, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (m, side, side, 3)).astype(np.uint8)


def _labels(m: int) -> np.ndarray:
    return (np.arange(m) % 2).astype(np.int64)


def _h5(build: Callable[[h5py.File], None]) -> bytes:
    buf = io.BytesIO()
    # libver and track_order fixed so that the bytes are the same on every run
    with h5py.File(buf, "w", libver="latest", track_order=False) as f:
        build(f)
    return buf.getvalue()


def valid(f: h5py.File) -> None:
    f.create_dataset("train_set_x", data=_images(12))
    f.create_dataset("train_set_y", data=_labels(12))


def _train(x: np.ndarray, y: np.ndarray) -> Callable[[h5py.File], None]:
    def build(f: h5py.File) -> None:
        f.create_dataset("train_set_x", data=x)
        f.create_dataset("train_set_y", data=y)

    return build


def _declared(shape: tuple[int, ...]) -> Callable[[h5py.File], None]:
    """A huge declared shape, chunked and never written: a few KB on disk."""

    def build(f: h5py.File) -> None:
        f.create_dataset("train_set_x", shape=shape, dtype="u1", chunks=(1, 8, 8, 3))
        f.create_dataset(
            "train_set_y", shape=(shape[0],), dtype="i8", chunks=(min(shape[0], 1024),)
        )

    return build


def _nan_pixels(f: h5py.File) -> None:
    x = _images(12).astype(np.float64)
    x[3, 2, 1, 0] = np.nan
    _train(x, _labels(12))(f)


def _nan_labels(f: h5py.File) -> None:
    y = _labels(12).astype(np.float64)
    y[5] = np.nan
    _train(_images(12), y)(f)


def _group(f: h5py.File) -> None:
    f.create_group("train_set_x").create_dataset("pixels", data=_images(4))
    f.create_dataset("train_set_y", data=_labels(4))


def _only_x(f: h5py.File) -> None:
    f.create_dataset("train_set_x", data=_images(4))


def _only_test(f: h5py.File) -> None:
    f.create_dataset("test_set_x", data=_images(4))
    f.create_dataset("test_set_y", data=_labels(4))


def _other_keys(f: h5py.File) -> None:
    f.create_dataset("images", data=_images(4))
    f.create_dataset("labels", data=_labels(4))


def _test_shape(f: h5py.File) -> None:
    valid(f)
    f.create_dataset("test_set_x", data=_images(4, side=6))
    f.create_dataset("test_set_y", data=_labels(4))


def _three_classes(f: h5py.File) -> None:
    valid(f)
    f.create_dataset("list_classes", data=np.array([b"non-cat", b"cat", b"dog"]))


def _truncated() -> bytes:
    whole = _h5(valid)
    return whole[: len(whole) // 2]


DATASETS: dict[str, Callable[[], bytes]] = {
    "truncated.h5": _truncated,
    "not_hdf5.h5": lambda: b"this is a text file, not HDF5\n",
    "empty.h5": lambda: b"",
    "float_pixels.h5": lambda: _h5(_train(_images(12).astype(np.float64), _labels(12))),
    "nan_pixels.h5": lambda: _h5(_nan_pixels),
    "nan_labels.h5": lambda: _h5(_nan_labels),
    "mismatched_counts.h5": lambda: _h5(_train(_images(10), _labels(9))),
    "zero_examples.h5": lambda: _h5(_train(_images(0), _labels(0))),
    "label_two.h5": lambda: _h5(_train(_images(6), np.array([0, 1, 2, 0, 1, 0]))),
    "label_negative.h5": lambda: _h5(_train(_images(6), np.array([0, 1, -1, 0, 1, 0]))),
    "string_labels.h5": lambda: _h5(_train(_images(2), np.array([b"cat", b"dog"]))),
    "label_matrix.h5": lambda: _h5(_train(_images(4), np.zeros((4, 2), dtype=np.int64))),
    "giant_count.h5": lambda: _h5(_declared((100_001, 8, 8, 3))),
    "giant_side.h5": lambda: _h5(_declared((2, 4096, 4096, 3))),
    "grayscale.h5": lambda: _h5(_train(_images(4)[..., 0], _labels(4))),
    "not_square.h5": lambda: _h5(_train(_images(4)[:, :, :6, :], _labels(4))),
    "group_not_array.h5": lambda: _h5(_group),
    "missing_labels.h5": lambda: _h5(_only_x),
    "only_test.h5": lambda: _h5(_only_test),
    "no_arrays.h5": lambda: _h5(_other_keys),
    "test_shape_mismatch.h5": lambda: _h5(_test_shape),
    "three_classes.h5": lambda: _h5(_three_classes),
}

_GOOD = {
    "epochs": 2,
    "layers": 2,
    "activations": {"layer1": "relu", "layer2": "sigmoid"},
    "neurons": {"layer1": 3, "layer2": 1},
    "learning_rate": 0.01,
}


def _json(d: object) -> bytes:
    return json.dumps(d, indent=1).encode()


PARAMETERS: dict[str, Callable[[], bytes]] = {
    "not_json.json": lambda: b"{epochs: 10, layers: 2",
    "not_utf8.json": lambda: b'{"epochs": "\xff\xfe"}',
    "array.json": lambda: _json([_GOOD]),
    "zero_layers.json": lambda: _json({**_GOOD, "layers": 0, "activations": {}, "neurons": {}}),
    "negative_learning_rate.json": lambda: _json({**_GOOD, "learning_rate": -0.01}),
    "nan_learning_rate.json": lambda: (
        b'{"epochs": 2, "layers": 2, '
        b'"activations": {"layer1": "relu", "layer2": "sigmoid"}, '
        b'"neurons": {"layer1": 3, "layer2": 1}, "learning_rate": NaN}'
    ),
    "string_epochs.json": lambda: _json({**_GOOD, "epochs": "10"}),
    "boolean_epochs.json": lambda: _json({**_GOOD, "epochs": True}),
    "zero_epochs.json": lambda: _json({**_GOOD, "epochs": 0}),
    "unknown_key.json": lambda: _json({**_GOOD, "learning_rte": 0.1}),
    "two_output_neurons.json": lambda: _json({**_GOOD, "neurons": {"layer1": 3, "layer2": 2}}),
    "relu_output.json": lambda: _json(
        {**_GOOD, "activations": {"layer1": "relu", "layer2": "relu"}}
    ),
    "unknown_activation.json": lambda: _json(
        {**_GOOD, "activations": {"layer1": "softmax", "layer2": "sigmoid"}}
    ),
    "layers_mismatch.json": lambda: _json({**_GOOD, "layers": 3}),
    "giant_layer.json": lambda: _json({**_GOOD, "neurons": {"layer1": 100_000, "layer2": 1}}),
    "negative_batch_size.json": lambda: _json({**_GOOD, "batch_size": -5}),
    "oversized.json": lambda: _json({**_GOOD, "comment": "x" * 70_000}),
}


# Larger than 50 KB: made when a test needs it, not checked in.
AT_TEST_TIME = ("oversized.json",)


def outputs() -> dict[Path, bytes]:
    files = {HERE / "datasets" / name: make() for name, make in DATASETS.items()}
    files.update(
        {
            HERE / "parameters" / name: make()
            for name, make in PARAMETERS.items()
            if name not in AT_TEST_TIME
        }
    )
    return files


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, body in outputs().items():
        if check:
            if not path.exists() or path.read_bytes() != body:
                stale.append(path.name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    if stale:
        print(f"out of date: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
