"""Image bytes -> the (64,) vector of integers 0..16 the digits model was trained on.

Pure functions: no HTTP, no model. `read_digit` is the service's reading of an image: levels,
polarity, marks and framing (`framing.py`), then the same area averaging and quantising as the
plain reduction `plain_features`, which is kept for input already framed like the training data.
"""

import functools
import io
import math
import re
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import simplejpeg
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from digitserve import framing
from digitserve.diagnostics import Diagnostic
from digitserve.errors import (
    BlankImage,
    DigitserveError,
    ImageTooComplex,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    UnsupportedMediaType,
)

GRID = 8
"""The model sees an 8x8 grid: load_digits reduced 32x32 bitmaps by 4x4 blocks."""

LEVELS = 16
"""Each training value counts the inked pixels of a 4x4 block, so it runs 0..16."""

N_FEATURES = GRID * GRID
"""The model's input width: the grid read row by row."""

ACCEPTED_MEDIA_TYPES = ("image/jpeg", "image/png")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""The file names of those formats, for commands that read a folder of images."""
"""JPEG is the product's format; PNG is what web canvases produce."""

DRAFT_SIDE = 64
"""Large JPEGs are decoded at a reduced DCT scale, never below this side: 8 source pixels per cell
keep the area average faithful while a 12-megapixel photo decodes in a fraction of the time."""

INLINE_PIXELS = 256 * 256
"""An image up to this many pixels (by its header) is decoded on the event loop, by /v1 and /v2
alike: a thread hop would cost more than the work. Cost follows pixels, not bytes: a 100 KB PNG
can declare 40 megapixels, and decoding it inline would stall every other request for seconds."""

TOGETHER_PIXELS = 1 << 16
"""`read_digits` measures at most this many pixels in one pass (256 KB a float array), so that a
crowd of small images never needs more than a few megabytes at once."""

BAND_PIXELS = 1 << 20
"""Preprocessing works on bands of about a megapixel: a 40-megapixel PNG of a few hundred
kilobytes would otherwise need gigabytes of float arrays at once."""

MAX_JPEG_SCANS = 256
"""Most scans a JPEG may hold. Each scan of a progressive JPEG is another pass over the whole
image, however few bytes it takes: a 1.2 MB file repeating one 12-byte scan 100,000 times kept
libjpeg-turbo busy for 11 s, and Pillow as long again. Encoders write one scan per component
(baseline) or about ten (progressive); nvImageCodec refuses more than 256 by default. At this
limit a 40-megapixel JPEG decodes in under a second."""

MAX_JPEG_HEADER_SEGMENTS = 1024
"""Most marker segments before a JPEG's first scan, where tables and metadata take a few dozen.
Pillow reads them in Python: two million empty comments (8 MB) held it for 2.7 s."""

MAX_JPEG_STRAY_BYTES = 4096
"""Most fill bytes, and most junk bytes, between a JPEG's header segments: Pillow steps over them
one at a time in Python (10 MB of fill bytes held it for 5 s). More fill is refused as too complex;
more junk as corrupt."""

MAX_PNG_CHUNKS = 4096
"""Most chunks a PNG may hold. libpng writes pixel data in 8 KiB chunks, some 1,300 in the
largest body allowed; Pillow handles each chunk in Python: 800,000 empty ones held it for 3-5 s."""

_MAGIC = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
    b"BM": "image/bmp",
    b"II*\x00": "image/tiff",
    b"MM\x00*": "image/tiff",
    b"\x00\x00\x01\x00": "image/x-icon",
}
_PILLOW_FORMAT = {"image/jpeg": "JPEG", "image/png": "PNG"}
TURBO_COLOURSPACES = {"YCbCr": "RGB", "Gray": "GRAY"}
"""JPEG colour spaces libjpeg-turbo decodes for the service, and to what: exactly the pixels
Pillow gives (the same library). CMYK, YCCK and RGB-coded JPEGs are left to Pillow."""
_START_OF_SCAN = 0xDA
_APP1 = 0xE1
_END_OF_IMAGE = 0xD9
_PARAMETERLESS = frozenset({0x01, *range(0xD0, 0xD9)})
"""Markers without a length: TEM, the restart markers and a stray start of image."""
_SCAN_MARKER = b"\xff\xda"
_NOT_FILL = re.compile(rb"[^\xff]")
_PNG_SIGNATURE_BYTES = 8
_SQRT3 = math.sqrt(3.0)

Features = NDArray[np.int64]

Pixels = NDArray[np.uint8]
"""Decoded pixels, upright: (height, width) grey or (height, width, 3) RGB."""

Decoded = Image.Image | Pixels
"""What decoding gives: a Pillow image, or a JPEG's pixels as libjpeg-turbo left them (which
`read_digit` reads without a round trip through Pillow, costlier than decoding a small JPEG)."""


def sniff_media_type(data: bytes) -> str | None:
    """Tell an image's media type from its first bytes; the client's label is not trusted."""
    for magic, media_type in _MAGIC.items():
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "image/svg+xml"
    return None


def declared_pixels(data: bytes) -> int | None:
    """Width x height read from a JPEG or PNG header alone; None when decoding would fail at once.

    It says what decoding will cost before paying for it: a 100 KB PNG can declare 40 megapixels.
    """
    media_type = sniff_media_type(data)
    if media_type not in _PILLOW_FORMAT:
        return None
    if media_type == "image/jpeg" and (header := _jpeg_header(data)) is not None:
        return header[0] * header[1]
    try:
        _check_layout(data, media_type)  # before Pillow walks the header in Python
    except ImageTooComplex:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[media_type]]) as image:
                width, height = image.size
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return width * height


@dataclass(frozen=True, slots=True)
class OpenedImage:
    """An image whose header has been read and checked against the limits; no pixel decoded yet."""

    data: bytes
    media_type: str
    width: int
    height: int
    turbo_colourspace: str | None
    """What libjpeg-turbo is asked to decode a JPEG to ("RGB" or "GRAY"); None: Pillow decodes."""
    pillow: Image.Image | None
    """Pillow's reading of the header: for Pillow to decode, or for a JPEG's orientation metadata;
    None for a JPEG that libjpeg-turbo decodes alone."""
    max_pixels: int
    """The limit it was checked against, for Pillow's check if Pillow decodes it after all."""


def open_image(data: bytes, *, max_pixels: int) -> OpenedImage:
    """Read a JPEG or PNG header: its format, its size and the limits, before any pixel is decoded.

    The service opens each image once: the size says whether decoding is cheap enough for the
    event loop, then `load_pixels` decodes it. A JPEG's header is read by libjpeg-turbo in C; Pillow
    reads it too (in Python, about 60 µs) only when the file carries Exif or XMP metadata, which
    may turn the image, or when Pillow is to decode it (PNG, CMYK JPEG, anything libjpeg-turbo
    cannot read).
    """
    media_type = sniff_media_type(data)
    if media_type not in _PILLOW_FORMAT:
        if media_type is None:
            raise InvalidImage("not a JPEG or PNG image (unrecognised or corrupt data)")
        raise UnsupportedMediaType(
            f"{media_type} images are not accepted; send one of: {', '.join(ACCEPTED_MEDIA_TYPES)}",
            accepted=list(ACCEPTED_MEDIA_TYPES),
        )
    plain = _check_layout(data, media_type)
    header = _jpeg_header(data) if media_type == "image/jpeg" else None
    pillow = None
    if header is None:
        pillow = _pillow_open(data, media_type, max_pixels)
        (width, height), colourspace = pillow.size, None
    else:
        width, height, colourspace = header
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            limit=max_pixels,
        )
    if width < GRID or height < GRID:
        raise ImageTooSmall(f"image is {width}x{height}; a digit needs at least {GRID}x{GRID}")
    if pillow is None and (colourspace is None or not plain):
        pillow = _pillow_open(data, media_type, max_pixels)
    return OpenedImage(data, media_type, width, height, colourspace, pillow, max_pixels)


def _pillow_open(data: bytes, media_type: str, max_pixels: int) -> Image.Image:
    """Pillow's reading of an image header, its errors told in the service's terms."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[media_type]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"image header declares too many pixels; the limit is {max_pixels}", limit=max_pixels
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _undecodable(media_type) from exc


def _jpeg_header(data: bytes) -> tuple[int, int, str | None] | None:
    """A JPEG's width, height and what libjpeg-turbo should decode it to, read by libjpeg-turbo.

    The colour space is None when Pillow must decode it (CMYK, YCCK, RGB-coded); the whole is None
    when libjpeg-turbo cannot read the header.
    """
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return int(width), int(height), TURBO_COLOURSPACES.get(str(colourspace))


def _check_layout(data: bytes, media_type: str) -> bool:
    """Refuse a JPEG or PNG laid out to make its decoder work far beyond its size, undecoded.

    The cost of decoding follows pixels times passes, plus what Pillow walks in Python: JPEG scans
    (each a pass over the whole image), the segments, fill and junk before a JPEG's first scan,
    PNG chunks. Pixels are bounded by `max_image_pixels`; these by the limits above. Returns, for
    a JPEG, whether its header is plain: free of metadata (see `_jpeg_header_plain`).
    """
    if media_type == "image/jpeg":
        # Every scan starts with the bytes FF DA, which entropy-coded data never holds (a coded
        # FF byte is followed by 00), so counting them bounds the scans without decoding.
        if data.count(_SCAN_MARKER) > MAX_JPEG_SCANS:
            raise ImageTooComplex(
                f"the JPEG holds more than {MAX_JPEG_SCANS} scans; each scan is another pass over"
                " the whole image",
                limit=MAX_JPEG_SCANS,
            )
        return _jpeg_header_plain(data)
    _check_png_chunks(data)
    return False


def _jpeg_header_plain(data: bytes) -> bool:
    """Whether a JPEG's header holds no APP1 segment (Exif and XMP, where orientation is kept).

    Walks the marker segments up to the first scan, refusing more segments, fill bytes or junk
    than allowed; anything unexpected counts as metadata, so that Pillow reads the header as it
    always did. Runs of fill and junk bytes are skipped in C, so the walk costs at most a few
    thousand steps whatever the file holds.
    """
    position, segments, fill, junk, plain = 2, 0, 0, 0, True
    while position < len(data) and fill <= MAX_JPEG_STRAY_BYTES and junk <= MAX_JPEG_STRAY_BYTES:
        if data[position] != 0xFF:  # junk where a marker belongs
            following = data.find(b"\xff", position)
            end = len(data) if following < 0 else following
            junk, plain, position = junk + end - position, False, end
            continue
        if position + 1 < len(data) and data[position + 1] != 0xFF:
            marker_at = position + 1  # the usual case, a marker straight after its FF
        else:
            found = _NOT_FILL.search(data, position)
            marker_at = len(data) if found is None else found.start()
            fill += marker_at - position - 1
            if found is None:
                break
        marker, position = data[marker_at], marker_at + 1
        if marker == 0x00:  # an escaped FF: junk
            junk, plain = junk + 2, False
            continue
        segments += 1
        if segments > MAX_JPEG_HEADER_SEGMENTS or fill > MAX_JPEG_STRAY_BYTES:
            break
        if marker == _START_OF_SCAN:
            return plain
        if marker == _END_OF_IMAGE:
            return False
        if marker in _PARAMETERLESS:
            plain = False
            continue
        plain = plain and marker != _APP1
        position += int.from_bytes(data[position : position + 2], "big")
    if junk > MAX_JPEG_STRAY_BYTES:
        raise InvalidImage(
            f"could not decode the image/jpeg image: more than {MAX_JPEG_STRAY_BYTES} bytes of junk"
            " between the segments of its header"
        )
    if segments > MAX_JPEG_HEADER_SEGMENTS:
        raise ImageTooComplex(
            f"the JPEG has more than {MAX_JPEG_HEADER_SEGMENTS} segments before its first scan",
            limit=MAX_JPEG_HEADER_SEGMENTS,
        )
    if fill > MAX_JPEG_STRAY_BYTES:
        raise ImageTooComplex(
            f"the JPEG has more than {MAX_JPEG_STRAY_BYTES} fill bytes between the segments of"
            " its header",
            limit=MAX_JPEG_STRAY_BYTES,
        )
    return False


def _check_png_chunks(data: bytes) -> None:
    """Refuse a PNG of more than `MAX_PNG_CHUNKS` chunks, counted up to IEND from their lengths."""
    position, chunks = _PNG_SIGNATURE_BYTES, 0
    while position + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageTooComplex(
                f"the PNG has more than {MAX_PNG_CHUNKS} chunks", limit=MAX_PNG_CHUNKS
            )
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"IEND":
            return
        position += 12 + length  # length, type, data, CRC


def load_image(image: OpenedImage) -> Image.Image:
    """Decode the pixels of an image from `open_image`, upright, as a Pillow image."""
    return as_image(load_pixels(image))


def as_image(decoded: Decoded) -> Image.Image:
    """A Pillow image of decoded pixels (sharing a grey array's memory)."""
    if isinstance(decoded, Image.Image):
        return decoded
    mode = "L" if decoded.ndim == 2 else "RGB"
    height, width = decoded.shape[:2]
    return Image.frombuffer(mode, (width, height), decoded, "raw", mode, 0, 1)


def load_pixels(image: OpenedImage) -> Decoded:
    """Decode the pixels of an image from `open_image`, upright (EXIF orientation applied).

    A large JPEG is decoded at a reduced DCT scale (`DRAFT_SIDE`). libjpeg-turbo decodes JPEGs
    straight from the bytes (Pillow's decoder is the same library, behind ~70 µs of Python per
    image); a JPEG it refuses, even for a mere warning, is decoded by Pillow, which decides what
    is corrupt exactly as before. libjpeg-turbo's pixels come as they are (grey or RGB) when the
    file has no orientation metadata; otherwise the result is a Pillow image in whatever mode the
    file has, which `normalised` brings to "L" or "RGB" one band of rows at a time.
    """
    if image.turbo_colourspace is not None:
        pixels = _turbo_decode(image, image.turbo_colourspace)
        if pixels is not None:
            if image.pillow is None:
                return pixels
            decoded = as_image(pixels)
            decoded.info.update(image.pillow.info)  # the orientation, for exif_transpose
            return ImageOps.exif_transpose(decoded)
    pillow = image.pillow or _pillow_open(image.data, image.media_type, image.max_pixels)
    try:
        if pillow.format == "JPEG":
            pillow.draft(None, (DRAFT_SIDE, DRAFT_SIDE))
        pillow.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _undecodable(image.media_type) from exc
    return ImageOps.exif_transpose(pillow)


def _turbo_decode(image: OpenedImage, colourspace: str) -> Pixels | None:
    """A JPEG decoded by libjpeg-turbo at Pillow's draft scale; None if libjpeg-turbo objects."""
    scale = draft_scale(image.width, image.height)
    try:
        pixels = simplejpeg.decode_jpeg(
            image.data,
            colorspace=colourspace,
            min_width=-(-image.width // scale),
            min_height=-(-image.height // scale),
        )
    except ValueError:
        return None
    decoded: Pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    return decoded


def draft_scale(width: int, height: int) -> int:
    """The DCT scale (1, 2, 4 or 8) Pillow's `draft` picks to keep both sides >= `DRAFT_SIDE`."""
    fits = min(width // DRAFT_SIDE, height // DRAFT_SIDE)
    return next(scale for scale in (8, 4, 2, 1) if fits >= scale or scale == 1)


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode JPEG or PNG bytes into an upright image: `open_image`, then `load_image`."""
    return load_image(open_image(data, max_pixels=max_pixels))


def _undecodable(media_type: str) -> InvalidImage:
    return InvalidImage(f"could not decode the {media_type} image: it is truncated or corrupt")


def _peak(image: Image.Image) -> float:
    """The white level of a wide-integer image, decided once for the whole image, else 255."""
    if not image.mode.startswith("I"):
        return 255.0
    try:
        extrema = image.getextrema()
        highest = extrema[1] if isinstance(extrema[1], int | float) else 255
    except ValueError:  # Pillow has no extrema for big-endian 16-bit ("I;16B")
        highest = int(np.asarray(image).max())
    return 65535.0 if highest > 255 else 255.0


def _normalise_mode(image: Image.Image, peak: float = 255.0) -> Image.Image:
    """Bring any decoded mode to "L" or "RGB", compositing transparency onto white paper."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("1",):
        return image.convert("L")
    if image.mode.startswith("I"):
        wide = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(wide / peak * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "La":
        image = image.convert("LA")  # Pillow has no direct route from La to RGBA
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image.convert("RGB")


def ink_intensity(image: Image.Image) -> NDArray[np.float32]:
    """Per-pixel ink from 0 (white) to 1 (black): sqrt(sum(((255 - rgb) / 255) ** 2)) / sqrt(3)."""
    return pixel_ink(np.asarray(image))


def pixel_ink(pixels: NDArray[np.uint8], *, colour: bool | None = None) -> NDArray[np.float32]:
    """`ink_intensity` of grey (..., height, width) or RGB (..., height, width, 3) pixels.

    `colour` says which; by default an array of three dimensions is one RGB image.
    """
    # uint8 to float32 inside the subtraction: `asarray(image, dtype=float32)` costs more.
    ink: NDArray[np.float32] = np.subtract(np.float32(255.0), pixels, dtype=np.float32)
    ink /= np.float32(255.0)
    if not (pixels.ndim == 3 if colour is None else colour):
        return ink
    distance: NDArray[np.float32] = np.sqrt(np.einsum("...c,...c->...", ink, ink))
    return distance / np.float32(_SQRT3)


def area_average(ink: NDArray[np.float32], side: int = GRID) -> NDArray[np.float32]:
    """Reduce to side x side by exact area averaging, partial pixels weighted by their overlap."""
    height, width = ink.shape
    reduced = _overlap_matrix(height, side) @ ink @ _overlap_matrix(width, side).T
    return reduced.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=256)
def _overlap_matrix(source: int, side: int) -> NDArray[np.float32]:
    """Row i holds the share of each source pixel inside output cell i (each row sums to 1).

    Pillow's BOX filter is exact only for whole-number ratios; this is exact for any size.
    """
    edges = np.arange(side + 1, dtype=np.float64) * (source / side)
    starts = np.arange(source, dtype=np.float64)
    overlap = np.clip(
        np.minimum(edges[1:, None], starts[None, :] + 1)
        - np.maximum(edges[:-1, None], starts[None, :]),
        0.0,
        None,
    )
    matrix: NDArray[np.float32] = (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def quantise(grid: NDArray[np.float32]) -> Features:
    """Map ink fractions 0..1 to the model's integer levels 0..16, read row by row."""
    levels = np.rint(framing.clip_unit(grid) * LEVELS).astype(np.int64)
    return levels.reshape(N_FEATURES)


@dataclass(frozen=True, slots=True)
class Preprocessed:
    """What preprocessing made of one image: the model's features and warnings about the image."""

    features: Features
    warnings: tuple[Diagnostic, ...] = ()
    reframed: bool = False
    """True when the digit was located and framed; False when the image was read as framed."""


def normalised(image: Image.Image) -> Image.Image:
    """Bring any decoded mode to "L" or "RGB" (transparency on white), one band of rows at a time.

    Converting a 40-megapixel 16-bit or transparent image whole would need several float or
    RGBA copies of it; band by band, only the uint8 result is ever full size.
    """
    if image.mode in ("L", "RGB"):
        return image
    width, height = image.size
    band = max(1, BAND_PIXELS // width)
    if band >= height:
        return _normalise_mode(image, _peak(image))
    peak = _peak(image)
    first = _normalise_mode(image.crop((0, 0, width, band)), peak)
    result = Image.new(first.mode, (width, height))
    result.paste(first, (0, 0))
    for top in range(band, height, band):
        strip = image.crop((0, top, width, min(height, top + band)))
        result.paste(_normalise_mode(strip, peak), (0, top))
    return result


def plain_features(image: Decoded, pixels: Pixels | None = None) -> Features:
    """The plain reduction: the whole image, area-averaged to 8x8, no levels and no framing.

    Exact for input framed like the training data (8x8 grids, 32x32 bitmaps, their upscales).
    The image is read one band of rows at a time: area averaging is linear, so the sum over bands
    is the same grid, while the float working set stays bounded whatever the image size.
    `pixels`, the normalised image's own array when the caller has it, saves reading it again.
    """
    if isinstance(image, np.ndarray):
        pixels = image
    else:
        image = normalised(image)
    height, width = _shape(image)
    rows = _overlap_matrix(height, GRID)
    columns = _overlap_matrix(width, GRID)
    band = max(1, BAND_PIXELS // width)
    grid = np.zeros((GRID, GRID), dtype=np.float32)
    for top in range(0, height, band):
        bottom = min(height, top + band)
        if pixels is not None:
            ink = pixel_ink(pixels[top:bottom])
        elif band >= height:
            ink = ink_intensity(as_image(image))
        else:
            ink = ink_intensity(as_image(image).crop((0, top, width, bottom)))
        grid += rows[:, top:bottom] @ ink @ columns.T
    features = quantise(grid)
    if not framing.any_true(features):
        raise BlankImage("the image has no ink: every cell of the 8x8 grid is blank")
    return features


def read_digit(image: Decoded) -> Preprocessed:
    """Read a decoded image the way the model needs it: levels, polarity, marks, framing.

    Input already framed like the training data is read plainly (levels and polarity only).
    """
    if isinstance(image, Image.Image):
        image = normalised(image)
    height, width = _shape(image)
    grey, pixels = _working_pixels(image, max(height, width))
    return _read_levels(image, grey, pixels, framing.measure_levels(framing.to_array(grey)))


def read_digits(images: Sequence[Decoded]) -> list[Preprocessed | DigitserveError]:
    """`read_digit` of each image, or the error it raised: small images measured together.

    Small pixel arrays of one size (`reads_together`) have their levels measured in one pass
    (`framing.measure_grey_levels`), and those read plainly their features too: on an 8x8 image
    the work is the overhead of a few dozen numpy calls, paid here once for up to
    `TOGETHER_PIXELS` pixels' worth of images. The answers are `read_digit`'s, to the bit.
    """
    results: list[Preprocessed | DigitserveError | None] = [None] * len(images)
    together: dict[tuple[int, ...], list[tuple[int, Pixels]]] = {}
    for index, image in enumerate(images):
        if isinstance(image, np.ndarray) and reads_together(image):
            together.setdefault(image.shape, []).append((index, image))
    for shape, same_size in together.items():
        chunk = max(2, TOGETHER_PIXELS // (shape[0] * shape[1]))
        for start in range(0, len(same_size), chunk):
            _read_together(same_size[start : start + chunk], results)
    return [
        _attempt(functools.partial(read_digit, image)) if result is None else result
        for image, result in zip(images, results, strict=True)
    ]


def _read_together(
    images: Sequence[tuple[int, Pixels]], results: list[Preprocessed | DigitserveError | None]
) -> None:
    """Read (index, pixels) of one size (`reads_together`) together, into `results`."""
    if len(images) < 2:
        return  # left to `read_digit`
    indices = [index for index, _ in images]
    pixels = np.stack([image for _, image in images])
    grey = pixels if pixels.ndim == 3 else luma(pixels)
    levels = framing.measure_grey_levels(grey.astype(np.float32) / np.float32(255.0))
    height, width = grey.shape[1:]
    plainly = framing.read_plainly(levels, min(height, width))
    if plainly.any():
        features = plain_features_many(pixels[plainly])
        for position, row in zip(np.flatnonzero(plainly).tolist(), features, strict=True):
            results[indices[position]] = (
                Preprocessed(row, tuple(framing.level_warnings(levels[position])))
                if framing.any_true(row)
                else BlankImage("the image has no ink: every cell of the 8x8 grid is blank")
            )
    for position in np.flatnonzero(~plainly).tolist():
        image = pixels[position]
        results[indices[position]] = _attempt(
            functools.partial(_read_levels, image, grey[position], image, levels[position])
        )


def plain_features_many(pixels: Pixels) -> NDArray[np.int64]:
    """`plain_features` of many small images of one size, (n, height, width[, 3]): (n, 64)."""
    count, height, width = pixels.shape[:3]
    ink = pixel_ink(pixels, colour=pixels.ndim == 4)
    product = _overlap_matrix(height, GRID) @ ink @ _overlap_matrix(width, GRID).T
    grids = np.zeros((count, GRID, GRID), dtype=np.float32)
    grids += product  # as `plain_features` adds its bands
    levels = np.rint(framing.clip_unit(grids) * LEVELS).astype(np.int64)
    return levels.reshape(count, N_FEATURES)


def reads_together(image: NDArray[np.uint8]) -> bool:
    """Whether `read_digits` measures this image with others of its size.

    Decoded grey or RGB pixels, read whole (no reduction, see `_working_pixels`) and small.
    """
    shape = image.shape
    return (
        image.dtype == np.uint8
        and (image.ndim == 2 or (image.ndim == 3 and shape[2] == 3))
        and max(shape[:2]) <= framing.WORK_SIDE
        and framing.measures_together(shape[:2])
    )


def _attempt(read: Callable[[], Preprocessed]) -> Preprocessed | DigitserveError:
    """The reading, or the service error that refused it (a blank image)."""
    try:
        return read()
    except DigitserveError as error:
        return error


def _read_levels(
    image: Decoded, grey: Pixels, pixels: Pixels | None, levels: framing.Levels
) -> Preprocessed:
    """Read an image from its measured levels: plainly when already framed, else framed first."""
    height, width = _shape(image)
    if not framing.has_ink(levels):
        raise BlankImage("the image has no ink: nothing stands out from the paper")
    if framing.already_framed(levels.ink, min(height, width)):
        features = (
            plain_features(image, pixels) if levels.clean else quantise(area_average(levels.ink))
        )
        diagnostics = framing.level_warnings(levels)
        reframed = False
    else:
        # Marks are only told apart (the costly part) when the digit is to be framed.
        marks = framing.find_marks(levels.ink)
        assert marks is not None  # noqa: S101 - has_ink found ink above the marks' threshold
        canvas = framing.frame(levels.ink, marks)
        features = quantise(area_average(canvas))
        top, bottom, _, _ = marks.box
        source_height = (bottom - top + 1) * height / grey.shape[0]
        diagnostics = framing.level_warnings(levels) + framing.framing_warnings(
            marks, levels.ink.shape, source_height
        )
        reframed = True
    if not framing.any_true(features):
        raise BlankImage("the image has no ink: every cell of the 8x8 grid is blank")
    return Preprocessed(features, tuple(diagnostics), reframed)


def _shape(image: Decoded) -> tuple[int, int]:
    """Height and width of decoded pixels, array or Pillow image."""
    if isinstance(image, np.ndarray):
        return image.shape[0], image.shape[1]
    return image.height, image.width


def _working_pixels(image: Decoded, longest_side: int) -> tuple[Pixels, Pixels | None]:
    """The grey pixels to find the digit on, and the image's own pixels when read on the way.

    A large image is reduced by a whole factor (box average) to about `framing.WORK_SIDE` a side.
    Luminance tells any usual ink from its paper (blue, red, green, graphite on white, grey or
    kraft: measured on the evaluation set, no group lost an image) at a third of the work. A small
    image is read into numpy once, for this and for `plain_features`: on an 8x8 image, reading it
    from Pillow costs more than the arithmetic.
    """
    factor = -(-longest_side // framing.WORK_SIDE)
    if factor > 1:
        reduced = as_image(image).reduce(factor)
        return np.asarray(reduced.convert("L") if reduced.mode != "L" else reduced), None
    pixels: Pixels = np.asarray(image)
    return (pixels if pixels.ndim == 2 else luma(pixels)), pixels


_LUMA_WEIGHTS = np.array([19595, 38470, 7471], dtype=np.uint32)
"""ITU-R 601-2 luma weights in 16-bit fixed point (0.299, 0.587, 0.114), as Pillow's "L"."""


def luma(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Pillow's `convert("L")` of RGB pixels, bit for bit, without the round trip through Pillow."""
    weighted = rgb @ _LUMA_WEIGHTS + np.uint32(0x8000)
    grey: NDArray[np.uint8] = (weighted >> np.uint32(16)).astype(np.uint8)
    return grey


def to_features(image: Image.Image) -> Features:
    """Turn a decoded image into the model's 64 integers; a page with no ink is refused."""
    return read_digit(image).features


def preprocess_image(data: bytes, *, max_pixels: int) -> Preprocessed:
    """Decode and read one encoded image, with warnings (as the service reads an upload)."""
    return read_digit(load_pixels(open_image(data, max_pixels=max_pixels)))


def image_to_features(data: bytes, *, max_pixels: int) -> Features:
    """Decode and preprocess one encoded image."""
    return preprocess_image(data, max_pixels=max_pixels).features


def render_digit(features: Sequence[int] | NDArray[np.integer], size: int = GRID) -> Image.Image:
    """Draw features as black ink on white, `size` pixels square: preprocessing's inverse."""
    levels = np.asarray(features, dtype=np.float32).reshape(GRID, GRID)
    grey = np.rint(255.0 - levels * (255.0 / LEVELS)).astype(np.uint8)
    image = Image.fromarray(grey, "L")
    return image if size == GRID else image.resize((size, size), Image.Resampling.NEAREST)
