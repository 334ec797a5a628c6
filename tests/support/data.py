"""The project's shared data, the one place the tests find it.

The folder is `$ITSACAT_TEST_DATA` when set, else `../shared/data` beside the checkout. It
holds the cat data (datasets.h5, train_catvnoncat.h5, test_catvnoncat.h5) and six sample
photos (images/*.jpeg). CI has it, so a test that needs it calls `require()`, which fails
(never skips) with the folder it looked in when any of it is missing: a skipped test must not
stand in for a check that did not run. The tests read these files; they never write them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "ITSACAT_TEST_DATA"
CHECKOUT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ[ENV]) if os.environ.get(ENV) else CHECKOUT.parent / "shared" / "data"

DATASET = DATA_DIR / "datasets.h5"  # train and test sets in one file
TRAIN_DATASET = DATA_DIR / "train_catvnoncat.h5"
TEST_DATASET = DATA_DIR / "test_catvnoncat.h5"
SAMPLE_PHOTOS = DATA_DIR / "images"
SAMPLE_PHOTO_COUNT = 6


def problems(folder: Path | None = None) -> list[str]:
    """What is missing from `folder` (default: DATA_DIR); empty when all of it is there."""
    folder = DATA_DIR if folder is None else folder
    missing = [
        f"{name} is missing"
        for name in (DATASET.name, TRAIN_DATASET.name, TEST_DATASET.name)
        if not (folder / name).is_file()
    ]
    photos = sorted((folder / SAMPLE_PHOTOS.name).glob("*.jpeg"))
    if len(photos) != SAMPLE_PHOTO_COUNT:
        missing.append(f"{SAMPLE_PHOTOS.name}/ has {len(photos)} *.jpeg, not {SAMPLE_PHOTO_COUNT}")
    return missing


def require() -> Path:
    """The shared data folder, checked; fails the calling test when any of it is missing."""
    found = problems()
    if found:
        pytest.fail(
            f"the tests need the project's shared data at {DATA_DIR} ({'; '.join(found)}); "
            f"put it there or set {ENV} to the folder that holds datasets.h5, "
            f"train_catvnoncat.h5, test_catvnoncat.h5 and images/",
            pytrace=False,
        )
    return DATA_DIR
