"""`datasets.h5`: reading and validating the cat/non-cat schema, and a synthetic stand-in.

Schema (the deeplearning.ai cat/non-cat files): `train_set_x` (m, h, h, 3) uint8,
`train_set_y` (m,) labels 0/1, optionally `test_set_x`/`test_set_y` and `list_classes`.
A file may hold only the train or only the test keys; training needs the train keys.
Every problem is a `DatasetError` whose message names the key and what is wrong.
"""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trainer_lambdas.nn.preprocess import flatten_images

# Limits (bounded everything): the file, the examples and the image side.
MAX_BYTES = 512 * 1024 * 1024
MAX_EXAMPLES = 100_000
MAX_SIDE = 512
DEFAULT_CLASSES = ("non-cat", "cat")
# What a function needs besides the data it holds: the interpreter, numpy, h5py, boto3.
HEADROOM_MB = 256
# Bytes per pixel (uint8) in the launch function: the file's bytes (about one per pixel for
# an uncompressed file; counted as they are), the pixels as read, and the .npz it writes of
# them (the buffer, and the copy `put` sends).
LAUNCH_BYTES_PER_PIXEL = 3
# In the trainer and neuron functions: the .npz's bytes, the uint8 pixels, and float64
# pixels twice while `flatten_images` converts them (astype, then / 255).
WORKER_BYTES_PER_PIXEL = 1 + 1 + 8 + 8


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says why."""


@dataclass(frozen=True)
class Memory:
    """The memory (MB) of the functions that hold a dataset, and what a dataset may need.

    The rule: the launch function (`launch_mb`) holds the file's bytes and
    LAUNCH_BYTES_PER_PIXEL per pixel; the trainer and neuron functions (`workers_mb`: the
    smaller of the two) hold WORKER_BYTES_PER_PIXEL per pixel of the training data, and
    the trainer as many per test pixel at the end (train and test are counted together),
    and a neuron in the dual form the m x m float64 Gram matrix too. Each must fit its
    function's memory less HEADROOM_MB. Pixels are counted from the arrays' shapes before
    any is read: a compressed file can hold far more pixels than it has bytes.
    """

    launch_mb: int
    workers_mb: int

    def problem(
        self, file_bytes: int, m: int, image_shape: tuple[int, ...], gram_bytes: int = 0
    ) -> str | None:
        """Why `m` images of `image_shape` (train and test) in a file of `file_bytes`
        cannot be trained on with this memory (plus a Gram matrix of `gram_bytes`), or None."""
        per_image = int(np.prod(image_shape))
        pixels = m * per_image
        shape = "x".join(str(n) for n in image_shape)
        launch_room = (self.launch_mb - HEADROOM_MB) * 2**20
        launch = file_bytes + LAUNCH_BYTES_PER_PIXEL * pixels
        if launch > launch_room:
            return (
                f"dataset: {m} images of {shape} in a {file_bytes / 2**20:.0f} MB file need "
                f"about {launch / 2**20:.0f} MB in the launch function (the file, the pixels "
                f"and the .npz written of them), over its {self.launch_mb} MB less "
                f"{HEADROOM_MB} MB headroom: use fewer or smaller pictures"
            )
        workers_room = (self.workers_mb - HEADROOM_MB) * 2**20
        workers = WORKER_BYTES_PER_PIXEL * pixels + gram_bytes
        if workers > workers_room:
            fit = max(0, workers_room - gram_bytes) // (WORKER_BYTES_PER_PIXEL * per_image)
            gram = f" and a {gram_bytes / 2**20:.0f} MB Gram matrix" if gram_bytes else ""
            return (
                f"dataset: {m} images of {shape}{gram} need about {workers / 2**20:.0f} MB in "
                f"the trainer and neuron functions ({WORKER_BYTES_PER_PIXEL} bytes per "
                f"pixel: the .npz, uint8 and two float64 copies), over the {self.workers_mb} "
                f"MB they have less {HEADROOM_MB} MB headroom: use at most {fit} images of "
                f"{shape} (train and test together) or smaller pictures"
                + (", or first_layer 'primal'" if gram_bytes else "")
            )
        return None


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (m, h, w, 3) uint8
    y: np.ndarray  # (m,) int64 in {0, 1}

    @property
    def m(self) -> int:
        return int(self.x.shape[0])

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """Network inputs (h*w*3, m) float64 in [0, 1] and labels (1, m) float64."""
        return flatten_images(self.x), self.y.reshape(1, -1).astype(np.float64)


@dataclass(frozen=True)
class Dataset:
    train: Split | None
    test: Split | None
    classes: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        split = self.train or self.test
        assert split is not None  # load() guarantees one of them
        h, w, c = split.x.shape[1:]
        return (int(h), int(w), int(c))

    def require_train(self) -> Split:
        if self.train is None:
            raise DatasetError("dataset: training needs 'train_set_x' and 'train_set_y'")
        return self.train


def _arrays(
    f: h5py.File, prefix: str, limits: dict[str, int]
) -> tuple[h5py.Dataset, h5py.Dataset] | None:
    """A split's x and y arrays, their shapes and types checked; no pixel is read."""
    kx, ky = f"{prefix}_set_x", f"{prefix}_set_y"
    if kx not in f and ky not in f:
        return None
    for k in (kx, ky):
        if k not in f:
            other = ky if k == kx else kx
            raise DatasetError(f"dataset: '{other}' is present but '{k}' is missing")
        if not isinstance(f[k], h5py.Dataset):
            raise DatasetError(f"dataset: '{k}' is a group, expected an array")
    dx, dy = f[kx], f[ky]
    if dx.ndim != 4 or dx.shape[3] != 3:
        raise DatasetError(
            f"dataset: '{kx}' must have shape (m, h, w, 3) (RGB images), got {dx.shape}"
        )
    m, h, w, _ = dx.shape
    if h != w:
        raise DatasetError(f"dataset: '{kx}' images must be square, got {h}x{w}")
    if not 1 <= h <= limits["side"]:
        raise DatasetError(f"dataset: '{kx}' image side {h} is outside 1..{limits['side']}")
    if m == 0:
        raise DatasetError(f"dataset: '{kx}' has zero examples")
    if m > limits["examples"]:
        raise DatasetError(f"dataset: '{kx}' has {m} examples; the limit is {limits['examples']}")
    return dx, dy


def _split(dx: h5py.Dataset, dy: h5py.Dataset) -> Split:
    """Read and check a split's pixels and labels (`_arrays` checked their shapes)."""
    kx, ky = dx.name.lstrip("/"), dy.name.lstrip("/")
    m = dx.shape[0]
    if dx.dtype.kind == "f" and not np.isfinite(dx[()]).all():
        raise DatasetError(f"dataset: '{kx}' contains NaN or infinite values")
    if dx.dtype != np.uint8:
        raise DatasetError(f"dataset: '{kx}' must be uint8 pixels (0..255), got {dx.dtype}")
    # (m,) or the (1, m) of some copies of the data
    shape_y = (int(np.prod(dy.shape)),) if dy.ndim == 2 and 1 in dy.shape else dy.shape
    if len(shape_y) != 1:
        raise DatasetError(f"dataset: '{ky}' must be a vector of labels, got shape {dy.shape}")
    if shape_y[0] != m:
        raise DatasetError(f"dataset: '{kx}' has {m} examples but '{ky}' has {shape_y[0]} labels")
    if dy.dtype.kind not in "iufb":
        raise DatasetError(f"dataset: '{ky}' must be numeric labels 0/1, got {dy.dtype}")
    x = np.asarray(dx[()])
    y_raw = np.asarray(dy[()]).reshape(-1)
    if dy.dtype.kind == "f" and not np.isfinite(y_raw).all():
        raise DatasetError(f"dataset: '{ky}' contains NaN or infinite labels")
    bad = ~np.isin(y_raw, (0, 1))
    if bad.any():
        raise DatasetError(
            f"dataset: '{ky}' must contain only 0 and 1; found {y_raw[bad][0].item()!r} "
            f"({int(bad.sum())} bad labels)"
        )
    return Split(x=x, y=y_raw.astype(np.int64))


def _classes(f: h5py.File) -> tuple[str, ...]:
    if "list_classes" not in f:
        return DEFAULT_CLASSES
    raw: Any = f["list_classes"][()]
    try:
        names = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in raw)
    except (TypeError, UnicodeDecodeError) as e:
        raise DatasetError(f"dataset: 'list_classes' is not a list of names: {e}") from e
    if len(names) != 2:
        raise DatasetError(f"dataset: 'list_classes' must name 2 classes, got {len(names)}")
    return names


def load(
    source: str | Path | bytes,
    max_bytes: int = MAX_BYTES,
    max_examples: int = MAX_EXAMPLES,
    max_side: int = MAX_SIDE,
    memory: Memory | None = None,
) -> Dataset:
    """Read and validate a dataset from a path or from the bytes of an HDF5 file; with
    `memory`, refuse (before reading any pixel) one that would not fit it (`Memory`)."""
    if isinstance(source, bytes):
        size = len(source)
    else:
        try:
            size = Path(source).stat().st_size
        except OSError as e:
            raise DatasetError(f"dataset: cannot read {source}: {e.strerror}") from e
    if size > max_bytes:
        raise DatasetError(f"dataset: {size} bytes is larger than the limit of {max_bytes} bytes")
    limits = {"examples": max_examples, "side": max_side}
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        with h5py.File(handle, "r") as f:
            splits = [_arrays(f, prefix, limits) for prefix in ("train", "test")]
            found = [s for s in splits if s is not None]
            if not found:
                raise DatasetError(
                    "dataset: no 'train_set_x'/'train_set_y' or 'test_set_x'/'test_set_y' "
                    "arrays found"
                )
            shapes = {tuple(dx.shape[1:]) for dx, _ in found}
            if len(shapes) > 1:
                raise DatasetError(
                    f"dataset: train images are {found[0][0].shape[1:]} but test images are "
                    f"{found[1][0].shape[1:]}"
                )
            if memory is not None:
                m = sum(dx.shape[0] for dx, _ in found)
                problem = memory.problem(size, m, found[0][0].shape[1:])
                if problem is not None:
                    raise DatasetError(problem)
            train, test = (None if s is None else _split(*s) for s in splits)
            classes = _classes(f)
    except DatasetError:
        raise
    except OSError as e:
        raise DatasetError(f"dataset: not a readable HDF5 file ({e})") from e
    return Dataset(train=train, test=test, classes=classes)


def synthesize(m_train: int = 209, m_test: int = 50, side: int = 64, seed: int = 0) -> Dataset:
    """A generated stand-in in the same schema: NOT cat photos.

    Backgrounds are smooth random colour gradients with noise; the "cat" class (label 1)
    also carries a warm-coloured blob with two ear-like triangles at a random place. It is
    learnable, so the demo shows training converge, but says nothing about real cats.
    """
    rng = np.random.default_rng(seed)
    m = m_train + m_test
    yy, xx = np.mgrid[0:side, 0:side] / side
    x = np.empty((m, side, side, 3), dtype=np.uint8)
    y = rng.integers(0, 2, size=m)
    for i in range(m):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
        img = c0 + (c1 - c0) * (t - t.min()) / (np.ptp(t) + 1e-9)
        img += rng.normal(0, 20, img.shape)
        if y[i]:
            cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.7), rng.uniform(0.15, 0.25)
            body = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
            ears = (np.abs(xx - (cx - r / 2)) < (yy - (cy - 1.6 * r)) / 2) | (
                np.abs(xx - (cx + r / 2)) < (yy - (cy - 1.6 * r)) / 2
            )
            ears &= yy < cy - 0.6 * r
            img[body | ears] = rng.normal((220, 140, 60), 15, 3)
        x[i] = np.clip(img, 0, 255).astype(np.uint8)
    return Dataset(
        train=Split(x[:m_train], y[:m_train]),
        test=Split(x[m_train:], y[m_train:]) if m_test else None,
        classes=DEFAULT_CLASSES,
    )


def _write(f: h5py.File, dataset: Dataset) -> None:
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        if split is not None:
            f.create_dataset(f"{name}_set_x", data=split.x)
            f.create_dataset(f"{name}_set_y", data=split.y)
    f.create_dataset("list_classes", data=np.array([c.encode() for c in dataset.classes]))


def save(dataset: Dataset, path: str | Path) -> None:
    """Write a dataset in the cat/non-cat schema."""
    with h5py.File(str(path), "w") as f:
        _write(f, dataset)


def to_bytes(dataset: Dataset) -> bytes:
    """The HDF5 file of a dataset, in memory."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        _write(f, dataset)
    return buf.getvalue()
