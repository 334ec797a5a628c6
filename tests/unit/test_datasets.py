"""datasets.h5: the schema is read and preprocessed; every bad file gets a specific error."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from trainer_lambdas import datasets
from trainer_lambdas.datasets import DatasetError


def write(path: Path, **arrays: object) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


def good(m: int = 4, side: int = 8) -> dict:
    rng = np.random.default_rng(0)
    return {
        "train_set_x": rng.integers(0, 256, (m, side, side, 3), dtype=np.uint8),
        "train_set_y": np.array([0, 1] * (m // 2)),
    }


def test_reads_schema_and_preprocesses_in_c_order(tmp_path: Path) -> None:
    arrays = good()
    ds = datasets.load(write(tmp_path / "d.h5", **arrays, list_classes=np.array([b"no", b"yes"])))
    assert ds.test is None and ds.classes == ("no", "yes")
    x, y = ds.require_train().columns()
    assert x.shape == (8 * 8 * 3, 4) and y.shape == (1, 4)
    assert x.dtype == np.float64 and x.min() >= 0.0 and x.max() <= 1.0
    # column j is image j flattened row by row, then column, then channel
    np.testing.assert_array_equal(x[:, 1], arrays["train_set_x"][1].reshape(-1) / 255.0)
    assert x[5, 2] == arrays["train_set_x"][2, 0, 1, 2] / 255.0


def test_real_cat_data(shared_data: Path) -> None:
    ds = datasets.load(shared_data / "datasets.h5")
    assert ds.require_train().m == 209 and ds.test is not None and ds.test.m == 50
    assert ds.image_shape == (64, 64, 3) and ds.classes == ("non-cat", "cat")
    only_test = datasets.load(shared_data / "test_catvnoncat.h5")
    assert only_test.train is None and only_test.test is not None
    with pytest.raises(DatasetError, match="training needs"):
        only_test.require_train()


def test_other_square_sizes_and_bytes(tmp_path: Path) -> None:
    ds = datasets.synthesize(m_train=6, m_test=2, side=16)
    again = datasets.load(datasets.to_bytes(ds))
    assert again.image_shape == (16, 16, 3)
    assert again.test is not None and np.array_equal(again.test.x, ds.test.x)  # type: ignore[union-attr]


def truncated(tmp_path: Path) -> Path:
    p = write(tmp_path / "t.h5", **good(m=40, side=32))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def text_file(tmp_path: Path) -> Path:
    (tmp_path / "x.h5").write_text("hello")
    return tmp_path / "x.h5"


CASES = {
    "not hdf5": (text_file, "not a readable HDF5"),
    "truncated": (truncated, "not a readable HDF5"),
    "no arrays": (lambda p: write(p / "x.h5", other=np.zeros(3)), "no 'train_set_x'"),
    "missing y": (
        lambda p: write(p / "x.h5", train_set_x=good()["train_set_x"]),
        "'train_set_y' is missing",
    ),
    "count mismatch": (
        lambda p: write(p / "x.h5", train_set_x=good()["train_set_x"], train_set_y=[0, 1, 0]),
        "has 4 examples but 'train_set_y' has 3 labels",
    ),
    "labels not 0/1": (
        lambda p: write(p / "x.h5", train_set_x=good()["train_set_x"], train_set_y=[0, 1, 2, 1]),
        "must contain only 0 and 1; found 2",
    ),
    "nan labels": (
        lambda p: write(
            p / "x.h5", train_set_x=good()["train_set_x"], train_set_y=[0.0, np.nan, 1.0, 0.0]
        ),
        "NaN or infinite labels",
    ),
    "nan pixels": (
        lambda p: write(
            p / "x.h5",
            train_set_x=np.full((4, 8, 8, 3), np.nan),
            train_set_y=[0, 1, 0, 1],
        ),
        "NaN or infinite values",
    ),
    "float pixels": (
        lambda p: write(p / "x.h5", train_set_x=np.zeros((4, 8, 8, 3)), train_set_y=[0, 1, 0, 1]),
        "must be uint8 pixels",
    ),
    "wrong rank": (
        lambda p: write(
            p / "x.h5", train_set_x=np.zeros((4, 192), np.uint8), train_set_y=[0, 1, 0, 1]
        ),
        "must have shape (m, h, w, 3)",
    ),
    "not square": (
        lambda p: write(
            p / "x.h5", train_set_x=np.zeros((4, 8, 6, 3), np.uint8), train_set_y=[0, 1, 0, 1]
        ),
        "must be square",
    ),
    "zero examples": (
        lambda p: write(
            p / "x.h5", train_set_x=np.zeros((0, 8, 8, 3), np.uint8), train_set_y=np.zeros(0)
        ),
        "zero examples",
    ),
    "string labels": (
        lambda p: write(
            p / "x.h5", train_set_x=good()["train_set_x"], train_set_y=[b"a", b"b", b"c", b"d"]
        ),
        "must be numeric labels",
    ),
    "train/test shapes differ": (
        lambda p: write(
            p / "x.h5",
            **good(),
            test_set_x=np.zeros((2, 4, 4, 3), np.uint8),
            test_set_y=[0, 1],
        ),
        "train images are (8, 8, 3) but test images are (4, 4, 3)",
    ),
    "bad classes": (
        lambda p: write(p / "x.h5", **good(), list_classes=np.array([b"a", b"b", b"c"])),
        "must name 2 classes",
    ),
    "missing file": (lambda p: p / "nope.h5", "cannot read"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_dataset_names_the_problem(tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    with pytest.raises(DatasetError) as e:
        datasets.load(make(tmp_path))
    assert message in str(e.value)


def test_limits(tmp_path: Path) -> None:
    p = write(tmp_path / "x.h5", **good(m=4, side=16))
    with pytest.raises(DatasetError, match="larger than the limit"):
        datasets.load(p, max_bytes=100)
    with pytest.raises(DatasetError, match="the limit is 2"):
        datasets.load(p, max_examples=2)
    with pytest.raises(DatasetError, match=r"outside 1\.\.8"):
        datasets.load(p, max_side=8)


def test_synthetic_dataset_is_deterministic_and_balanced() -> None:
    a, b = datasets.synthesize(seed=4), datasets.synthesize(seed=4)
    assert a.train is not None and b.train is not None
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.train.y, b.train.y)
    assert a.train.x.shape == (209, 64, 64, 3) and a.test is not None and a.test.m == 50
    assert 0.3 < a.train.y.mean() < 0.7
