"""Picture bytes to the network's input, exactly as training prepared its images.

Decoding is the risky part (the bytes come from anyone), so only JPEG, PNG, GIF and WebP
are opened, the declared dimensions are checked against a pixel limit before any pixel
is decoded (decompression bombs), and every decoder failure becomes a 422.
Then: EXIF orientation applied, RGB, resized to the model's input size, and
`trainer_lambdas.nn.preprocess.flatten_images` (the training code) does the rest.
"""

from __future__ import annotations

import base64
import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chalicelib.errors import NotAnImage, PayloadTooLarge
from trainer_lambdas.nn.preprocess import flatten_images

FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
CONTENT_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
THUMBNAIL = (256, 256)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data` into a loaded image; 422 if it is not one, 413 if it has too many pixels."""
    if not data:
        raise NotAnImage("the picture is empty", "not_an_image")
    with warnings.catch_warnings():
        # We enforce our own (lower) pixel limit below, before decoding.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as e:
            raise PayloadTooLarge(
                f"the picture has more than {max_pixels} pixels", "too_many_pixels"
            ) from e
        except UnidentifiedImageError as e:
            raise NotAnImage(
                "the body is not a JPEG, PNG, GIF or WebP picture", "not_an_image"
            ) from e
        except Exception as e:  # Pillow's parsers raise many kinds on hostile headers
            raise NotAnImage(f"the picture cannot be read: {e}", "not_an_image") from e
        width, height = image.size
        if width <= 0 or height <= 0:
            raise NotAnImage("the picture has no pixels", "not_an_image")
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"the picture is {width}x{height}, more than {max_pixels} pixels",
                "too_many_pixels",
            )
        try:
            image.load()
        except Exception as e:  # truncated or corrupt data: OSError, SyntaxError, struct.error...
            raise NotAnImage(
                f"the picture cannot be decoded (truncated or corrupt): {e}", "not_an_image"
            ) from e
    return image


def oriented_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, converted to 8-bit RGB (transparency over black)."""
    with contextlib.suppress(Exception):  # a broken EXIF block: use the pixels as stored
        image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def to_input(image: Image.Image, input_shape: tuple[int, int, int]) -> np.ndarray:
    """An oriented RGB image -> the (h*w*3, 1) float64 column the network takes."""
    height, width, _ = input_shape
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8).reshape(1, height, width, 3)
    return flatten_images(pixels)


def thumbnail_data_uri(image: Image.Image) -> str:
    """A small JPEG of the picture as a data: URI, for the HTML verdict page."""
    small = image.copy()
    small.thumbnail(THUMBNAIL)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
