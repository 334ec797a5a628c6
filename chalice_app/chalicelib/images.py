"""Picture bytes to the network's input, prepared as training prepared its images.

Decoding is the risky part (the bytes come from anyone, on a 1,536 MB function), so the
cost of every picture is bounded before a pixel is decoded, and what is decoded follows
the small size the model needs rather than the picture's:

* Only JPEG, PNG, GIF and WebP are opened; every decoder failure (truncated or corrupt
  data, a broken zlib stream) becomes a 422 `not_an_image`.
* The declared size is checked first: at most `max_pixels` (24 M by default: a 24 MP
  camera photo, 6000x4000, passes; `MAX_WEBP_PIXELS` = 12 M for WebP), each side at most
  `MAX_SIDE` = 10,000 px, and an aspect ratio of at most `MAX_ASPECT` = 20:1. Pillow keeps
  a pointer per row and 4 bytes per pixel, so a thin picture (1 x 40 M) costs far more
  than its pixel count says; with these caps no picture has more than 10,000 rows, a
  decoded PNG is at most 24 M x 4 bytes = 96 MB, a progressive JPEG's coefficients (kept
  whole whatever the scale, 2 bytes a pixel per component) 144 MB for YCbCr, and libwebp's
  ~16 bytes a pixel 190 MB at 12 M.
* JPEG: at most `MAX_SCANS` = 100 scans (SOS markers), and scans x pixels at most
  `MAX_SCAN_PIXELS` = 400 M. Each progressive scan walks every block of the picture, so
  600 refinement scans cost seconds of CPU; encoders write 1 (baseline) to 10 (YCbCr
  progressive) or 18 (CMYK progressive) scans, so a 24 MP photo may have 16 and a 4 MP
  one 100 (a 24 MP progressive CMYK JPEG is refused; 22 MP passes).
* JPEG is decoded at reduced scale (`draft`, 1/2 to 1/8 in the DCT) when both sides are at
  least twice `WORK_SIDE`; then every picture is reduced by whole factors (box average) to
  between `WORK_SIDE` and 2 x `WORK_SIDE` - 1 px a side, converted to RGB strip by strip,
  so no full-size copy is ever made besides the decoded picture itself.

Measured (tests/api/test_api_image_bombs.py): decoding any accepted or refused picture
peaks under 256 MB above the process's baseline (the worst: a 4000x3000 WebP, 188 MB; a
5000x4000 progressive CMYK JPEG, 160 MB) and takes under 2 s of CPU.

Then: EXIF orientation applied, RGB, resized to the model's input size (bicubic), and
`trainer_lambdas.nn.preprocess.flatten_images` (the training code) does the rest. A picture
under 2 x `WORK_SIDE` px a side (every training picture, 64x64) is prepared exactly as
before; a larger one differs from a full-size bicubic resize by at most a few levels in
some pixels (the reduction keeps at least 8 source pixels per input pixel).
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
import struct
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from chalicelib.errors import ApiError, NotAnImage, PayloadTooLarge
from trainer_lambdas.nn.preprocess import flatten_images

FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
CONTENT_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
THUMBNAIL = (256, 256)

MAX_SIDE = 10_000
MAX_ASPECT = 20
MAX_SCANS = 100
MAX_SCAN_PIXELS = 400_000_000
# libwebp's animation decoder (Pillow's only WebP path) holds ~16 bytes a pixel while it
# decodes: two canvases, a copy of the frame and the image; 12 M (4000x3000) is ~190 MB.
MAX_WEBP_PIXELS = 12_000_000
# Pictures are decoded/reduced to between WORK_SIDE and 2 * WORK_SIDE - 1 px a side: at
# least 8x the 64x64 model input, and 2x the 256 px thumbnail.
WORK_SIDE = 512
# Pixels converted to RGB at a time when reducing a picture of another mode.
STRIP_PIXELS = 1 << 20

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class UnreasonablePicture(ApiError):
    """A readable picture whose shape or structure would cost too much to decode."""

    status = 422
    code = "image_too_complex"


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data` into a loaded image, refusing what would cost too much first.

    422 `not_an_image` if it is not a picture we read; 413 `too_many_pixels` over
    `max_pixels` or `MAX_SIDE`; 422 `bad_aspect_ratio` over `MAX_ASPECT`; 422
    `image_too_complex` for a JPEG with too many scans. A large JPEG comes back decoded at
    1/2 to 1/8 scale (still at least `WORK_SIDE` px a side).
    """
    if not data:
        raise NotAnImage("the picture is empty", "not_an_image")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        # libwebp allocates its canvas as the file is opened: check the size first.
        max_pixels = min(max_pixels, MAX_WEBP_PIXELS)
        declared = webp_size(data)
        if declared is None:
            raise NotAnImage("the WebP header cannot be read", "not_an_image")
        check_size(declared, max_pixels)
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
        check_size(image.size, max_pixels)
        if image.format == "JPEG":
            check_scans(data, image.size)
            width, height = image.size
            if min(width, height) >= 2 * WORK_SIDE:
                image.draft("RGB", (WORK_SIDE, WORK_SIDE))
        try:
            image.load()
        except Exception as e:  # truncated or corrupt data: OSError, SyntaxError, zlib.error...
            raise NotAnImage(
                f"the picture cannot be decoded (truncated or corrupt): {e}", "not_an_image"
            ) from e
    return image


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse a declared size: no pixels (422), too many or a side too long (413), too thin."""
    width, height = size
    if width <= 0 or height <= 0:
        raise NotAnImage("the picture has no pixels", "not_an_image")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise PayloadTooLarge(
            f"the picture is {width}x{height}, a side is over {MAX_SIDE} pixels",
            "too_many_pixels",
        )
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the picture is {width}x{height}, more than {max_pixels} pixels",
            "too_many_pixels",
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UnreasonablePicture(
            f"the picture is {width}x{height}, longer than {MAX_ASPECT}:1",
            "bad_aspect_ratio",
        )


def check_scans(data: bytes, size: tuple[int, int]) -> None:
    """Refuse a JPEG with more than `MAX_SCANS` scans, or scans x pixels over the budget."""
    scans = count_jpeg_scans(data)
    pixels = size[0] * size[1]
    if scans > MAX_SCANS or scans * pixels > MAX_SCAN_PIXELS:
        limit = min(MAX_SCANS, MAX_SCAN_PIXELS // max(pixels, 1))
        raise UnreasonablePicture(
            f"the JPEG has {scans if scans <= MAX_SCANS else 'over ' + str(MAX_SCANS)} scans, "
            f"more than {limit} for a picture of {size[0]}x{size[1]} "
            "(each scan is a pass over every pixel)",
            "image_too_complex",
        )


def webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP file declares (VP8X, VP8L or VP8 header), None if unreadable."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    return None


# In entropy-coded data 0xFF is followed by 0x00 (stuffing) or a restart marker (0xD0-0xD7);
# any other byte after 0xFF (fill bytes 0xFF aside) starts the next marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def count_jpeg_scans(data: bytes, stop_after: int = MAX_SCANS + 1) -> int:
    """The number of SOS (0xFFDA) segments in a JPEG stream, walking its segments.

    Segments are skipped by their length (so an EXIF thumbnail inside APP1 is not
    counted), entropy-coded data up to the next marker. A malformed stream ends the
    count: the decoder reports it. Counting stops at `stop_after` (enough to refuse).
    """
    scans = 0
    pos = 2 if data[:2] == b"\xff\xd8" else len(data)
    end = len(data)
    while pos + 1 < end and scans < stop_after:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > end:
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            break
        pos += 2 + length
        if marker == 0xDA:
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            pos = found.start() if found else end
    return scans


def oriented_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, converted to 8-bit RGB, reduced to at most 2 x WORK_SIDE.

    A side of `WORK_SIDE` * 2 px or more is reduced by a whole factor (box average) to
    between `WORK_SIDE` and 2 x `WORK_SIDE` - 1 px; the conversion to RGB is the same as
    ever (palette transparency through RGBA), done before the reduction, strip by strip.
    """
    orientation = 1
    with contextlib.suppress(Exception):  # a broken EXIF block: use the pixels as stored
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    rgb = _reduced_rgb(image)
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


def reduction(size: tuple[int, int]) -> tuple[int, int]:
    """Whole factors that bring each side of `size` under 2 x `WORK_SIDE` (1 if already)."""
    return (max(1, size[0] // WORK_SIDE), max(1, size[1] // WORK_SIDE))


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _reduced_rgb(image: Image.Image) -> Image.Image:
    factor = reduction(image.size)
    if factor == (1, 1):
        return _rgb(image)
    if image.mode == "RGB":
        return image.reduce(factor)
    width, height = image.size
    fx, fy = factor
    out = Image.new("RGB", ((width + fx - 1) // fx, (height + fy - 1) // fy))
    # Strips of whole reduction blocks: the result equals converting, then reducing, whole.
    rows = fy * max(1, STRIP_PIXELS // (width * fy))
    for top in range(0, height, rows):
        strip = _rgb(image.crop((0, top, width, min(top + rows, height))))
        out.paste(strip.reduce(factor), (0, top // fy))
    return out


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
