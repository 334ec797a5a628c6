"""Decoding hostile bytes, and preprocessing identical to training's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from api_support import RED, SAMPLE_PHOTOS, picture, png_declaring, truncated_jpeg
from chalicelib import images
from chalicelib.errors import NotAnImage, PayloadTooLarge
from PIL import Image

from tests.support import data as test_data
from trainer_lambdas.nn.preprocess import flatten_images

LIMIT = 40_000_000


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_the_four_formats_decode(fmt: str) -> None:
    image = images.open_image(picture(RED, fmt), LIMIT)
    assert image.size == (40, 30)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, I am text", truncated_jpeg(), b"\x89PNG\r\n\x1a\n" + b"\0" * 30],
    ids=["empty", "text", "truncated-jpeg", "broken-png"],
)
def test_non_pictures_are_422(data: bytes) -> None:
    with pytest.raises(NotAnImage) as e:
        images.open_image(data, LIMIT)
    assert e.value.status == 422


def test_other_formats_are_not_opened() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="BMP")
    with pytest.raises(NotAnImage):
        images.open_image(buf.getvalue(), LIMIT)


@pytest.mark.parametrize("size", [(8000, 8000), (100_000, 100_000)], ids=["over-ours", "huge"])
def test_decompression_bombs_are_refused_before_decoding(size: tuple[int, int]) -> None:
    bomb = png_declaring(*size)
    assert len(bomb) < 2000
    with pytest.raises(PayloadTooLarge) as e:
        images.open_image(bomb, LIMIT)
    assert e.value.code == "too_many_pixels"


def test_preprocessing_is_training_flatten_of_the_resized_rgb() -> None:
    rng = np.random.RandomState(3)
    pixels = rng.randint(0, 256, (30, 50, 3)).astype(np.uint8)
    source = Image.fromarray(pixels)
    x = images.to_input(images.oriented_rgb(source), (16, 16, 3))
    expected = np.asarray(source.resize((16, 16), Image.Resampling.BICUBIC), dtype=np.uint8)
    np.testing.assert_array_equal(x, flatten_images(expected[None]))
    assert x.shape == (16 * 16 * 3, 1) and x.dtype == np.float64 and x.max() <= 1.0


def test_an_image_of_the_input_size_is_not_resampled() -> None:
    pixels = np.random.RandomState(4).randint(0, 256, (16, 16, 3)).astype(np.uint8)
    x = images.to_input(Image.fromarray(pixels), (16, 16, 3))
    np.testing.assert_array_equal(x, flatten_images(pixels[None]))


def test_exif_orientation_is_applied() -> None:
    # A 2x1 picture (red, blue) stored with "rotate 90 CW" (orientation 6) shows 1x2.
    stored = Image.new("RGB", (2, 1))
    stored.putpixel((0, 0), (255, 0, 0))
    stored.putpixel((1, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif)
    shown = images.oriented_rgb(images.open_image(buf.getvalue(), LIMIT))
    assert shown.size == (1, 2)
    assert shown.getpixel((0, 0)) == (255, 0, 0) and shown.getpixel((0, 1)) == (0, 0, 255)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    image = Image.new("RGB", (8, 8), RED).convert(mode)
    if mode == "P":
        image.info["transparency"] = 0
    image.save(buf, format=fmt)
    rgb = images.oriented_rgb(images.open_image(buf.getvalue(), LIMIT))
    assert rgb.mode == "RGB"
    assert images.to_input(rgb, (4, 4, 3)).shape == (48, 1)


def test_sample_photos_decode() -> None:
    test_data.require()
    photo = SAMPLE_PHOTOS / "grumpy_cat.jpeg"
    rgb = images.oriented_rgb(images.open_image(photo.read_bytes(), LIMIT))
    assert images.thumbnail_data_uri(rgb).startswith("data:image/jpeg;base64,")
