"""Which dataset a command trains on, and where it came from: a file given, else only
$ITSACAT_HOME and a download are looked at (nothing beside the checkout).

`choose` (the demo): the file given (DATASET=, `--dataset`; a missing file is an error),
the checked copy in the cache (`$ITSACAT_HOME/datasets/`, what `itsacat dataset fetch`
fills), a download of the published file (checked against its SHA-256, then cached), and
only when all of these fail a generated stand-in, with one line saying why.
`required` (the benchmarks): the file given, else the cache, else a one-line error.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from embedded.stack import default_home
from itsacat import dataset_fetch
from itsacat.errors import UserError
from trainer_lambdas import datasets

STAND_IN = "a generated stand-in"


class Source(NamedTuple):
    """A dataset's path and a short description of where it came from."""

    path: Path
    description: str

    @property
    def synthetic(self) -> bool:
        """Whether it is the generated stand-in (not cat photos)."""
        return self.description.startswith(STAND_IN)


def choose(given: str | None, home: Path, url: str | None, say: Callable[[str], None]) -> Source:
    """The dataset to train on (see the module's docstring), saying in one line which.

    `url`: where to download from (None: $ITSACAT_DATASET_URL, else the published file).
    """
    if given:
        path = given_file(given)
        say(f"dataset: {path} (the file you gave)")
        return Source(path, "the file you gave")
    found = dataset_fetch.cached(home)
    if found is not None:
        say(f"dataset: {found} (the cat data, cached by an earlier download)")
        return Source(found, "the cache")
    source = dataset_fetch.resolve_url(url)
    say(f"dataset: none given and none cached in {home}: downloading {source}")
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


def given_file(given: str) -> Path:
    """The dataset file a user named; a one-line `UserError` when there is none."""
    path = Path(given)
    if not path.is_file():
        raise UserError(f"dataset {given}: no such file")
    return path


def required(given: str | None, home: Path | None = None) -> Path:
    """The file given, else the cat data cached under `home` ($ITSACAT_HOME by default);
    a one-line `UserError` saying what to do when there is neither."""
    if given:
        return given_file(given)
    home = home or default_home()
    found = dataset_fetch.cached(home)
    if found is None:
        raise UserError(
            f"no dataset: none given and no cat data cached in {dataset_fetch.cache_dir(home)}; "
            "run `itsacat dataset fetch` or pass --dataset PATH"
        )
    return found


def cached_or_stand_in(home: Path | None = None) -> Path:
    """The cat data cached under `home` ($ITSACAT_HOME by default), else the generated
    stand-in with a warning; nothing is downloaded."""
    home = home or default_home()
    found = dataset_fetch.cached(home)
    if found is not None:
        return found
    path = stand_in(home)
    print(
        f"WARNING: no cat data cached in {dataset_fetch.cache_dir(home)}, so {path} is used, "
        "a GENERATED stand-in (coloured blobs, not cat photos): its accuracy says nothing "
        "about real cats. Run `itsacat dataset fetch`, or give a dataset."
    )
    return path


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
