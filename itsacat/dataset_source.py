"""Which dataset the demo trains on, and where it came from.

In this order: the file given (DATASET=, `--dataset`; a missing file is an error), the
shared cat data beside the checkout (`../shared/data/datasets.h5`), the checked copy in
the cache (`$ITSACAT_HOME/datasets/`), a download of the published file (checked against
its SHA-256, then cached), and only when all of these fail a generated stand-in, with one
line saying why.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from itsacat import dataset_fetch
from itsacat.errors import UserError
from trainer_lambdas import datasets

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
STAND_IN = "a generated stand-in"


class Source(NamedTuple):
    """A dataset's path and a short description of where it came from."""

    path: Path
    description: str

    @property
    def synthetic(self) -> bool:
        """Whether it is the generated stand-in (not cat photos)."""
        return self.description.startswith(STAND_IN)


def choose(
    given: str | None,
    home: Path,
    url: str | None,
    say: Callable[[str], None],
    shared: Path | None = SHARED_DATA,
) -> Source:
    """The dataset to train on (see the module's docstring), saying in one line which.

    `url`: where to download from (None: $ITSACAT_DATASET_URL, else the published file).
    `shared`: the folder holding the shared `datasets.h5`; None skips it (a fresh clone).
    """
    if given:
        path = Path(given)
        if not path.is_file():
            raise UserError(f"DATASET={given}: no such file")
        say(f"dataset: {path} (the file you gave)")
        return Source(path, "the file you gave")
    if shared is not None and (shared / dataset_fetch.FILE_NAME).is_file():
        path = shared / dataset_fetch.FILE_NAME
        say(f"dataset: {path} (the shared cat data beside the checkout)")
        return Source(path, f"the shared data in {shared}")
    found = dataset_fetch.cached(home)
    if found is not None:
        say(f"dataset: {found} (the cat data, cached by an earlier download)")
        return Source(found, "the cache")
    source = dataset_fetch.resolve_url(url)
    where = (
        "no shared cat data"
        if shared is None
        else f"{shared / dataset_fetch.FILE_NAME} is not here"
    )
    say(f"dataset: {where} and none is cached: downloading {source}")
    try:
        path = dataset_fetch.fetch(source, dataset_fetch.cache_dir(home))
    except dataset_fetch.FetchError as e:
        reason = str(e)
    else:
        say(f"dataset: {path} (downloaded, sha256 checked)")
        return Source(path, f"downloaded from {source}")
    path = stand_in(home)
    say(
        f"WARNING: could not get the cat data ({reason}); training on a GENERATED stand-in "
        "dataset (coloured blobs, not cat photos): its accuracy says nothing about real cats. "
        "Run `make demo DATASET=/path/to/datasets.h5` with the real data."
    )
    return Source(path, f"{STAND_IN} ({reason})")


def stand_in(home: Path) -> Path:
    """The generated stand-in dataset, written (atomically) to home/demo-data/synthetic.h5."""
    path = home / "demo-data" / "synthetic.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".synthetic.h5.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        datasets.save(datasets.synthesize(), tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
