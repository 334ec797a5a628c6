"""`itsacat dataset build`: folders of generated pictures -> a dataset in the cat schema."""

import hashlib
import io
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from itsacat import dataset_build
from itsacat.cli import main
from itsacat.errors import UserError
from trainer_lambdas import datasets
from trainer_lambdas.nn.preprocess import flatten_images

SIZE = 16


def smooth(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A random picture with some structure (so that different seeds differ visibly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 + (c1 - c0) * ((xx + yy) / 2)[..., None] + rng.normal(0, 10, (height, width, 3))
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return image.convert(mode) if mode != "RGB" else image


def encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def sideways_jpeg() -> bytes:
    """40x20 stored: left half red, right half blue; EXIF orientation 6 (rotate 90° CW to
    view), so upright it is 20x40, red on top and blue below."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring width x height RGB (a decompression bomb's front), no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def pictures(seed: int) -> dict[str, bytes]:
    """Ten pictures in every format the API reads, and several modes."""
    out = {
        "a.jpg": encoded(smooth(48, 32, seed), "JPEG"),
        "b.jpeg": encoded(smooth(20, 30, seed + 1), "JPEG", quality=60),
        "c.png": encoded(smooth(33, 33, seed + 2, "RGBA"), "PNG"),
        "d.gif": encoded(smooth(25, 40, seed + 3).convert("P"), "GIF"),
        "e.webp": encoded(smooth(40, 25, seed + 4), "WEBP"),
        "f.png": encoded(smooth(16, 16, seed + 5, "L"), "PNG"),
        "g.jpg": encoded(smooth(30, 30, seed + 6, "L"), "JPEG"),
        "h.PNG": encoded(smooth(64, 48, seed + 7), "PNG"),
        "i.webp": encoded(smooth(17, 23, seed + 8, "RGBA"), "WEBP", lossless=True),
    }
    out["j-sideways.jpg"] = sideways_jpeg()
    return out


def folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def as_the_api_prepares(data: bytes, size: int = SIZE) -> np.ndarray:
    """The network input the API computes for these bytes, (size*size*3,) float64."""
    images, max_pixels = dataset_build.api_images()
    image = images.oriented_rgb(images.open_image(data, max_pixels))
    return images.to_input(image, (size, size, 3))[:, 0]


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """cat: 10 pictures, non-cat: 5 (the first five of another set)."""
    root = tmp_path_factory.mktemp("pictures")
    cat = folder(root / "cats", pictures(0))
    other = folder(root / "others", dict(list(pictures(100).items())[:5]))
    (other / ".hidden.jpg").write_bytes(b"ignored: a hidden file")
    (other / "subfolder").mkdir()
    return cat, other


def build(out: Path, cat: Path, other: Path, *extra: str) -> int:
    classes = ["--class", f"cat={cat}", "--class", f"non-cat={other}"]
    return main(["dataset", "build", str(out), *classes, "--size", str(SIZE), *extra])


@pytest.fixture(scope="module")
def built(classes: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "built.h5"
    assert build(out, *classes) == 0
    return out


def arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_the_schema_is_the_cat_datas(built: Path) -> None:
    a = arrays(built)
    assert set(a) == {"train_set_x", "train_set_y", "test_set_x", "test_set_y", "list_classes"}
    for split in ("train", "test"):
        x, y = a[f"{split}_set_x"], a[f"{split}_set_y"]
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (SIZE, SIZE, 3)
        assert y.dtype == np.int64 and y.shape == (x.shape[0],)
    # [label 0, label 1] as bytes, cat = 1, as in the cat data
    assert list(a["list_classes"]) == [b"non-cat", b"cat"] and a["list_classes"].dtype.kind == "S"
    ds = datasets.load(built)
    assert ds.classes == ("non-cat", "cat") and ds.image_shape == (SIZE, SIZE, 3)


def test_each_class_is_split_by_the_fraction_separately(built: Path) -> None:
    a = arrays(built)
    # cat: 10 pictures, 20% -> 2 test; non-cat: 5 -> 1 test
    assert np.bincount(a["test_set_y"], minlength=2).tolist() == [1, 2]
    assert np.bincount(a["train_set_y"], minlength=2).tolist() == [4, 8]


def test_every_picture_is_the_input_the_api_computes_for_it(
    built: Path, classes: tuple[Path, Path]
) -> None:
    a = arrays(built)
    x = np.concatenate([a["train_set_x"], a["test_set_x"]])
    y = np.concatenate([a["train_set_y"], a["test_set_y"]])
    columns = flatten_images(x)  # what training feeds the network
    for label, where in ((1, classes[0]), (0, classes[1])):
        for path in sorted(p for p in where.iterdir() if p.is_file() and p.name[0] != "."):
            expected = as_the_api_prepares(path.read_bytes())
            hits = np.flatnonzero((columns == expected[:, None]).all(axis=0))
            assert len(hits) == 1, path.name  # there, exactly, once
            assert y[hits[0]] == label, path.name


def test_exif_orientation_is_applied_as_the_api_applies_it(
    built: Path, classes: tuple[Path, Path]
) -> None:
    a = arrays(built)
    x = np.concatenate([a["train_set_x"], a["test_set_x"]])
    expected = as_the_api_prepares((classes[0] / "j-sideways.jpg").read_bytes())
    (i,) = np.flatnonzero((flatten_images(x) == expected[:, None]).all(axis=0))
    picture = x[i].astype(int)
    top, bottom = picture[: SIZE // 2 - 2], picture[SIZE // 2 + 2 :]
    # upright: red above, blue below (stored, it was red left and blue right)
    assert top[..., 0].min() > 200 and top[..., 2].max() < 60
    assert bottom[..., 2].min() > 200 and bottom[..., 0].max() < 60


def test_it_passes_dataset_check(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "check", str(built)]) == 0
    out = capsys.readouterr().out
    assert "ok; train 12 examples (8 of class 1), test 3 examples (2 of class 1)" in out
    assert f"images {SIZE}x{SIZE}x3; classes ['non-cat', 'cat']" in out


def test_the_summary(
    classes: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.h5"
    assert build(out, *classes) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"class 0 'non-cat' ({classes[1]}): 5 found, 5 used, 0 skipped; 4 train, 1 test",
        f"class 1 'cat' ({classes[0]}): 10 found, 10 used, 0 skipped; 8 train, 2 test",
        f"wrote {out}: 12 train + 3 test pictures, {SIZE}x{SIZE} RGB, classes "
        "['non-cat', 'cat'] (seed 0)",
    ]
    assert leftovers(tmp_path) == ["d.h5"]


def test_the_same_seed_gives_the_same_file_and_another_seed_another_split(
    built: Path, classes: tuple[Path, Path], tmp_path: Path
) -> None:
    again, other = tmp_path / "again.h5", tmp_path / "other.h5"
    assert build(again, *classes) == 0
    assert build(other, *classes, "--seed", "1") == 0
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (built, again, other)]
    assert digest[0] == digest[1] != digest[2]
    a, b = arrays(built), arrays(other)
    # another split: a different test set (not just another order), the same counts
    assert {r.tobytes() for r in a["test_set_x"]} != {r.tobytes() for r in b["test_set_x"]}
    assert np.bincount(b["test_set_y"]).tolist() == np.bincount(a["test_set_y"]).tolist()


def test_label_one_is_cat_whatever_the_order_else_the_second(tmp_path: Path) -> None:
    src = [dataset_build.parse_class(t) for t in ("Cat=a", "dog=b")]
    assert [c.name for c in dataset_build.labelled(src)] == ["dog", "Cat"]
    src = [dataset_build.parse_class(t) for t in ("dog=a", "bird=b")]
    assert [c.name for c in dataset_build.labelled(src)] == ["dog", "bird"]
    dog = folder(tmp_path / "dog", dict(list(pictures(1).items())[:3]))
    bird = folder(tmp_path / "bird", dict(list(pictures(2).items())[:2]))
    out = tmp_path / "d.h5"
    given = [dataset_build.ClassSource("dog", dog), dataset_build.ClassSource("bird", bird)]
    result = dataset_build.build(out, given, size=SIZE, test_fraction=0)
    a = arrays(out)
    assert list(a["list_classes"]) == [b"dog", b"bird"]
    assert np.bincount(a["train_set_y"]).tolist() == [3, 2]
    assert "test_set_x" not in a and result.test == 0  # --test-fraction 0: no test set
    assert datasets.load(out).test is None


def broken_files() -> dict[str, bytes]:
    jpeg = encoded(smooth(64, 64, 7), "JPEG")
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "notes.txt": b"not a picture at all\n",
        "bomb.png": png_declaring(9000, 9000),  # 81 M pixels declared in 100 bytes
        "empty.gif": b"",
    }


def test_unusable_files_are_listed_with_the_reason_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = folder(tmp_path / "cat", {**dict(list(pictures(3).items())[:4]), **broken_files()})
    other = folder(tmp_path / "other", dict(list(pictures(4).items())[:3]))
    out = tmp_path / "out" / "d.h5"
    assert build(out, cat, other) == 0
    captured = capsys.readouterr()
    warnings = sorted(captured.err.splitlines())
    assert len(warnings) == 4 and all(w.startswith("itsacat: warning: skipped ") for w in warnings)
    reasons = {Path(w.split(" ")[3].rstrip(":")).name: w for w in warnings}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not a JPEG, PNG, GIF or WebP picture" in reasons["notes.txt"]
    assert "9000x9000, more than 24000000 pixels" in reasons["bomb.png"]
    assert "empty" in reasons["empty.gif"]
    assert f"({cat}): 8 found, 4 used, 4 skipped; 3 train, 1 test" in captured.out
    a = arrays(out)
    assert np.bincount(a["train_set_y"]).tolist() == [2, 3]


def test_strict_refuses_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = folder(
        tmp_path / "cat", {**pictures(5), "truncated.jpg": broken_files()["truncated.jpg"]}
    )
    other = folder(tmp_path / "other", dict(list(pictures(6).items())[:3]))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "d.h5"
    out.write_bytes(b"the previous file")
    assert build(out, cat, other, "--strict") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"itsacat: warning: cannot use {cat / 'truncated.jpg'}: ")
    assert (
        err[1]
        == "itsacat: error: --strict: 1 of 14 files cannot be used as pictures; nothing written"
    )
    assert out.read_bytes() == b"the previous file"  # untouched
    assert leftovers(out_dir) == ["d.h5"]


def test_a_class_with_too_few_pictures_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = folder(tmp_path / "cat", {"one.png": pictures(7)["c.png"], **broken_files()})
    other = folder(tmp_path / "other", dict(list(pictures(8).items())[:3]))
    out = tmp_path / "d.h5"
    assert build(out, cat, other) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (
        f"itsacat: error: class 'cat' ({cat}): 1 usable picture(s) of 5 file(s); at least 2 "
        "are needed (one to train on, one to test)"
    )
    assert leftovers(tmp_path) == ["cat", "other"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.mkdir(), p)[1], "holds no pictures"),
        (lambda p: (p.mkdir(), (p / ".x.jpg").write_bytes(b"x"), p)[2], "holds no pictures"),
        (lambda p: (p.write_bytes(b"x"), p)[1], "is not a directory"),
    ],
)
def test_a_missing_or_empty_folder_is_a_clear_error(
    tmp_path: Path, make: object, expected: str
) -> None:
    cat = folder(tmp_path / "cat", dict(list(pictures(9).items())[:3]))
    other = make(tmp_path / "other")  # type: ignore[operator]
    with pytest.raises(UserError) as e:
        dataset_build.build(
            tmp_path / "d.h5",
            [dataset_build.ClassSource("cat", cat), dataset_build.ClassSource("x", other)],
        )
    assert str(e.value) == f"class 'x': {other} {expected}"
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--class", "cat=a"], "give exactly two classes (--class NAME=DIR twice), got 1"),
        (["--class", "a=x", "--class", "b=y", "--class", "c=z"], "got 3"),
        (["--class", "cat=a", "--class", "CAT=b"], "the two classes have the same name 'cat'"),
        (["--class", "a=x", "--class", "b=y", "--size", "0"], "--size must be 1..512, got 0"),
        (["--class", "a=x", "--class", "b=y", "--test-fraction", "1"], "--test-fraction must"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dataset", "build", str(tmp_path / "d.h5"), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and expected in err


def test_a_class_not_name_equals_dir_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["dataset", "build", "d.h5", "--class", "cats", "--class", "b=y"])
    assert e.value.code == 2
    assert "expected NAME=DIR, got 'cats'" in capsys.readouterr().err
