"""Folders of pictures -> a dataset in the cat/non-cat schema, prepared as the API prepares.

Each picture goes through the prediction API's own code (`chalice_app/chalicelib/images`):
`open_image` with the API's pixel cap (which refuses what is not a JPEG, PNG, GIF or WebP,
truncated data, decompression bombs and pictures too large or too thin before decoding),
`oriented_rgb` (EXIF orientation, RGB) and `to_input` (the bicubic resize to the model's
input). The uint8 pixels stored are the ones `to_input` hands the network, recovered
exactly, so a training picture is the input the API would compute for the same file.

Labels: exactly two classes; label 1 is the class named `cat` (in any case) if there is
one, else the second given. `list_classes` is [label 0, label 1], as in the cat data.
Split: each class separately, `test_fraction` of its pictures (at least one, and at least
one left to train on) go to the test set, chosen by a generator seeded with `seed`;
the same folders and seed give the same file, byte for byte.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from itsacat.errors import UserError
from itsacat.progress import Progress
from trainer_lambdas import datasets

DEFAULT_SIZE = 64
DEFAULT_TEST_FRACTION = 0.2
# Usable pictures a class needs: one for training and one for the test set.
MIN_PER_CLASS = 2
# A file larger than this is not read (the API's own cap on a picture is 4 MB; a camera's
# JPEG can be larger, and what bounds decoding is the pixel cap, checked before decoding).
MAX_FILE_BYTES = 32 * 1024 * 1024
POSITIVE_CLASS = "cat"


class PictureError(Exception):
    """A file that cannot be used as a picture; the message says why."""


@dataclass(frozen=True)
class ClassSource:
    name: str
    folder: Path


@dataclass
class ClassReport:
    name: str
    label: int
    folder: Path
    found: int = 0
    used: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    train: int = 0
    test: int = 0


@dataclass
class BuildResult:
    out: Path
    classes: list[ClassReport]  # in label order
    size: int
    seed: int

    @property
    def train(self) -> int:
        return sum(c.train for c in self.classes)

    @property
    def test(self) -> int:
        return sum(c.test for c in self.classes)


def parse_class(text: str) -> ClassSource:
    """`NAME=DIR` (for `--class`)."""
    name, sep, folder = text.partition("=")
    name = name.strip()
    if not sep or not name or not folder:
        raise ValueError(f"expected NAME=DIR, got {text!r}")
    if not name.isprintable() or len(name) > 64:
        raise ValueError(f"class name {name!r} must be printable and at most 64 characters")
    return ClassSource(name, Path(folder))


def labelled(sources: Sequence[ClassSource]) -> list[ClassSource]:
    """The two classes in label order: label 1 is `cat` if one is so named, else the second."""
    if len(sources) != 2:
        raise UserError(f"give exactly two classes (--class NAME=DIR twice), got {len(sources)}")
    first, second = sources
    if first.name.casefold() == second.name.casefold():
        raise UserError(f"the two classes have the same name {first.name!r}")
    if first.name.casefold() == POSITIVE_CLASS:
        return [second, first]
    return [first, second]


def candidates(source: ClassSource) -> list[Path]:
    """The files directly in a class's folder (not in subfolders; hidden files ignored)."""
    folder = source.folder
    if not folder.exists():
        raise UserError(f"class {source.name!r}: {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"class {source.name!r}: {folder} is not a directory")
    try:
        files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError as e:
        raise UserError(f"class {source.name!r}: cannot list {folder}: {e.strerror}") from e
    if not files:
        raise UserError(f"class {source.name!r}: {folder} holds no pictures")
    return files


def api_images() -> tuple[ModuleType, int]:
    """The API's picture module (chalicelib.images) and its default pixel cap."""
    from itsacat.commands.serve import chalicelib

    return chalicelib("images"), int(chalicelib("config").Settings().max_pixels)


def prepare(
    path: Path, size: int, images: ModuleType, max_pixels: int, max_bytes: int = MAX_FILE_BYTES
) -> np.ndarray:
    """One picture file -> (size, size, 3) uint8, as the API prepares it; `PictureError`."""
    try:
        if path.stat().st_size > max_bytes:
            raise PictureError(f"the file is larger than {max_bytes} bytes")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise PictureError(f"cannot read it: {e.strerror or e}") from e
    if len(data) > max_bytes:
        raise PictureError(f"the file is larger than {max_bytes} bytes")
    try:
        image = images.oriented_rgb(images.open_image(data, max_pixels))
        column = images.to_input(image, (size, size, 3))
    except Exception as e:  # the API's refusals (ApiError) and anything a decoder raises
        # The API's messages speak of a request's body: here it is a file.
        reason = (str(e) or type(e).__name__).replace("the body is", "the file is")
        raise PictureError(reason) from e
    # to_input gives pixels / 255 as float64: x * 255 is within an ulp of the integer.
    return np.rint(column[:, 0] * 255).astype(np.uint8).reshape(size, size, 3)


def held_out(n: int, fraction: float) -> int:
    """How many of a class's `n` pictures go to the test set."""
    if fraction <= 0:
        return 0
    return min(n - 1, max(1, math.floor(n * fraction + 0.5)))


def build(
    out: Path,
    sources: Sequence[ClassSource],
    size: int = DEFAULT_SIZE,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    strict: bool = False,
    warn: Callable[[Path, str], None] | None = None,
    progress: bool = False,
) -> BuildResult:
    """Build `out` from the two classes' folders; every problem is a one-line `UserError`.

    `warn(path, reason)` is told of each file that cannot be used. Without `strict` such
    files are skipped; with it the build is refused. Nothing is written unless the whole
    dataset is; `out` is replaced atomically.
    """
    if not 1 <= size <= datasets.MAX_SIDE:
        raise UserError(f"--size must be 1..{datasets.MAX_SIDE}, got {size}")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be at least 0 and below 1, got {test_fraction}")
    ordered = labelled(sources)
    if ordered[0].folder.resolve() == ordered[1].folder.resolve():
        raise UserError(f"both classes read the same folder {ordered[0].folder}")
    files = [candidates(s) for s in ordered]
    total = sum(len(f) for f in files)
    if total > datasets.MAX_EXAMPLES:
        raise UserError(f"{total} files; a dataset holds at most {datasets.MAX_EXAMPLES}")
    if total * size * size * 3 > datasets.MAX_BYTES:
        raise UserError(
            f"{total} pictures of {size}x{size} would exceed the {datasets.MAX_BYTES} bytes "
            "training reads: use fewer pictures or a smaller --size"
        )
    images, max_pixels = api_images()
    reports = [ClassReport(s.name, label, s.folder) for label, s in enumerate(ordered)]
    pixels: list[list[np.ndarray]] = [[], []]
    bar = Progress(total, "picture") if progress else None
    done = 0
    for label, paths in enumerate(files):
        report = reports[label]
        report.found = len(paths)
        for path in paths:
            try:
                pixels[label].append(prepare(path, size, images, max_pixels))
            except PictureError as e:
                report.skipped.append((path, str(e)))
                if warn is not None:
                    warn(path, str(e))
            done += 1
            if bar is not None:
                bar.update(done)
        report.used = len(pixels[label])
    if bar is not None:
        bar.close()
    bad = sum(len(r.skipped) for r in reports)
    if strict and bad:
        raise UserError(
            f"--strict: {bad} of {total} files cannot be used as pictures; nothing written"
        )
    for r in reports:
        if r.used < MIN_PER_CLASS:
            raise UserError(
                f"class {r.name!r} ({r.folder}): {r.used} usable picture(s) of {r.found} "
                f"file(s); at least {MIN_PER_CLASS} are needed (one to train on, one to test)"
            )
    ds = _split(pixels, reports, test_fraction, seed)
    _write(ds, out)
    return BuildResult(out=out, classes=reports, size=size, seed=seed)


def _split(
    pixels: list[list[np.ndarray]], reports: list[ClassReport], fraction: float, seed: int
) -> datasets.Dataset:
    """Each class split by `fraction` separately, then each split shuffled; all seeded."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for label, (class_pixels, report) in enumerate(zip(pixels, reports, strict=True)):
        x = np.stack(class_pixels)
        order = rng.permutation(len(x))
        n_test = held_out(len(x), fraction)
        report.test, report.train = n_test, len(x) - n_test
        for name, idx in (("test", order[:n_test]), ("train", order[n_test:])):
            if len(idx):
                parts[name].append((x[idx], np.full(len(idx), label, dtype=np.int64)))
    splits: dict[str, datasets.Split | None] = {}
    for name, chunks in parts.items():
        if not chunks:
            splits[name] = None
            continue
        x = np.concatenate([c[0] for c in chunks])
        y = np.concatenate([c[1] for c in chunks])
        shuffle = rng.permutation(len(x))
        splits[name] = datasets.Split(x=x[shuffle], y=y[shuffle])
    return datasets.Dataset(
        train=splits["train"], test=splits["test"], classes=tuple(r.name for r in reports)
    )


def _write(ds: datasets.Dataset, out: Path) -> None:
    """Write `ds` to a temporary file beside `out`, check it loads, rename it into place."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(name)
    try:
        datasets.save(ds, tmp)
        datasets.load(tmp)  # what training will read
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from e
    except datasets.DatasetError as e:
        raise UserError(f"the dataset written does not load: {e}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
