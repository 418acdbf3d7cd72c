"""Synthetic variation of training digits: the handwriting styles load_digits never shows.

The robust model learns from load_digits' training half and from digits drawn in fonts, each
varied at 64x64 (twice the 32x32 bitmaps load_digits was counted from): bent by an elastic warp,
drawn with a finer or broader pen, turned, slanted, squeezed, drawn small or large, placed with a
margin anywhere on the page or cropped tight. Every varied digit is then read by the service's own
`read_digit`, so the model trains on the very features it is given when it serves. Pure functions
of their inputs and a seeded generator: the same seed gives the same digits, bit for bit.
"""

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from digitserve.errors import BlankImage
from digitserve.preprocessing import GRID, LEVELS, Features, read_digit

FloatImage = NDArray[np.float32]
"""Ink from 0 (paper) to 1 (full ink), (height, width)."""

Rng = np.random.Generator

SIDE = 64
"""Digits are varied at 64 pixels tall: twice the training bitmap, fine enough for a 1-pixel pen."""

FONT_DIR = Path("/usr/share/fonts")
"""Where Debian installs font packages."""


@dataclass(frozen=True, slots=True)
class Font:
    """A font file whose digits the robust model learns from, and the Debian package shipping it."""

    file: str
    """Path under `FONT_DIR`."""
    package: str
    style: Literal["handwriting", "printed"]

    @property
    def path(self) -> Path:
        """Where the file is installed."""
        return FONT_DIR / self.file

    def sha256(self) -> str:
        """The file's hash, for the model card: other font releases draw other digits."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _fonts(package: str, style: Literal["handwriting", "printed"], *files: str) -> list[Font]:
    return [Font(file, package, style) for file in files]


HANDWRITING_FONTS = tuple(
    _fonts(
        "fonts-bwht",
        "handwriting",
        *(
            f"opentype/bwht/BecauseWe{name}-Regular.otf"
            for name in ("Build", "Connect", "Create", "Learn", "Mentor", "Organize")
        ),
    )
    + _fonts(
        "fonts-dkg-handwriting",
        "handwriting",
        *(f"truetype/fifthhorseman/dkg{suffix}.ttf" for suffix in ("", "BI", "Bd", "It")),
    )
    + _fonts("fonts-humor-sans", "handwriting", "truetype/humor-sans/Humor-Sans.ttf")
    + _fonts("fonts-rufscript", "handwriting", "truetype/rufscript/Rufscript010.ttf")
    + _fonts("fonts-breip", "handwriting", "truetype/breip/Breip.ttf")
    + _fonts(
        "fonts-comic-neue",
        "handwriting",
        *(
            f"opentype/comic-neue/ComicNeue-{name}.otf"
            for name in ("Bold", "BoldItalic", "Italic", "Light", "LightItalic", "Regular")
        ),
    )
)
"""Fonts drawn after people's handwriting: open and closed 4s, 7s with a bar, 1s with a flag, 9s
with a straight or a curled tail, shapes load_digits rarely shows."""

PRINTED_FONTS = tuple(
    _fonts(
        "fonts-dejavu-core",
        "printed",
        *(
            f"truetype/dejavu/DejaVu{name}.ttf"
            for name in ("Sans", "Sans-Bold", "SansMono", "SansMono-Bold", "Serif", "Serif-Bold")
        ),
    )
    + _fonts(
        "fonts-liberation",
        "printed",
        *(
            f"truetype/liberation/Liberation{family}-{face}.ttf"
            for family in ("Mono", "Sans", "SansNarrow", "Serif")
            for face in ("Bold", "BoldItalic", "Italic", "Regular")
        ),
    )
)
"""Printed digits: serifed 1s and 7s, and the plain shapes people copy when they write neatly."""


@dataclass(frozen=True, slots=True)
class Variation:
    """One random way of writing a digit differently, drawn by `draw_variation`."""

    warp: float
    """Largest displacement of the elastic warp, in pixels at `SIDE`."""
    pen: int
    """Pixels added to (or, negative, taken from) each side of every stroke, at `SIDE`."""
    rotate: float
    """Degrees, anticlockwise."""
    shear: float
    """Horizontal shift per pixel of height: > 0 leans the top to the right."""
    squeeze: float
    """Width factor: < 1 narrower, > 1 wider."""
    height: int
    """The digit's height in the rendered image, in pixels: small ones lose detail."""
    tight: bool
    """Cropped to touch the top and bottom edges (read as framed), else placed with a margin."""
    place: tuple[float, float]
    """Where the digit sits in its margin, 0..1 across and down."""


@dataclass(frozen=True, slots=True)
class Ranges:
    """How far each kind of variation goes (see `Variation`); `draw_variation` draws within them.

    Wide enough to cover what framing leaves of real writing (it removes slant beyond 0.1 and
    evens out the pen) and no wider than people write: a varied digit still reads as its digit.
    """

    warp: tuple[float, float] = (0.0, 5.0)
    pen: tuple[int, int] = (-3, 5)
    rotate: tuple[float, float] = (-15.0, 15.0)
    shear: tuple[float, float] = (-0.45, 0.45)
    squeeze: tuple[float, float] = (0.7, 1.35)
    height: tuple[int, int] = (12, 96)
    tight_share: float = 0.15
    """Share of digits cropped tight, which the service reads as already framed."""


def draw_variation(rng: Rng, ranges: Ranges = Ranges()) -> Variation:
    """Draw one variation: each kind uniform in its range (width and size on a log scale)."""
    narrow, wide = ranges.squeeze
    small, large = ranges.height
    return Variation(
        warp=float(rng.uniform(*ranges.warp)),
        pen=int(rng.integers(ranges.pen[0], ranges.pen[1] + 1)),
        rotate=float(rng.uniform(*ranges.rotate)),
        shear=float(rng.uniform(*ranges.shear)),
        squeeze=math.exp(rng.uniform(math.log(narrow), math.log(wide))),
        height=round(math.exp(rng.uniform(math.log(small), math.log(large)))),
        tight=bool(rng.random() < ranges.tight_share),
        place=(float(rng.random()), float(rng.random())),
    )


def grid_ink(features: NDArray[np.integer], side: int = SIDE) -> FloatImage:
    """A load_digits 8x8 grid as a smooth pen stroke, side x side: the bitmap it was counted from.

    The grid is upscaled bicubically and cut where the stroke keeps the grid's own ink share,
    with a soft one-pixel edge, so strokes are smooth instead of 64 blocks.
    """
    grid = np.asarray(features, dtype=np.float32).reshape(GRID, GRID) / np.float32(LEVELS)
    cell = side // GRID
    padded = np.pad(grid, 1)
    field = np.asarray(
        Image.fromarray(padded, "F").resize((side + 2 * cell,) * 2, Image.Resampling.BICUBIC),
        dtype=np.float32,
    )[cell:-cell, cell:-cell]
    share = float(np.clip(grid.mean(), 0.02, 0.9))
    level = float(np.quantile(field, 1.0 - share))
    edge = max(float(field.max()) - level, 0.05) / cell
    ink: FloatImage = np.clip((field - level) / edge + 0.5, 0.0, 1.0).astype(np.float32)
    return ink


def font_ink(font: Path, digit: int, side: int = SIDE) -> FloatImage:
    """A digit's glyph in a font file, scaled so its ink box is `side` pixels tall."""
    size = 4 * side  # drawn large, then averaged down: smooth edges whatever the font's hinting
    face = ImageFont.truetype(str(font), size)
    sheet = Image.new("L", (3 * size, 3 * size), 0)
    ImageDraw.Draw(sheet).text((size, size), str(digit), fill=255, font=face)
    ink = np.asarray(sheet, dtype=np.float32) / np.float32(255.0)
    cropped = crop_to_ink(ink)
    height, width = cropped.shape
    new_width = max(round(width * side / height), 1)
    scaled = Image.fromarray(cropped, "F").resize((new_width, side), Image.Resampling.BOX)
    return np.clip(np.asarray(scaled, dtype=np.float32), 0.0, 1.0)


def crop_to_ink(ink: FloatImage, threshold: float = 0.05) -> FloatImage:
    """The smallest box holding every pixel with more ink than `threshold`."""
    rows = np.flatnonzero(ink.max(axis=1) > threshold)
    columns = np.flatnonzero(ink.max(axis=0) > threshold)
    if len(rows) == 0:
        return ink
    return ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def pad(ink: FloatImage, margin: int) -> FloatImage:
    """Surround ink with `margin` pixels of paper on every side."""
    return np.pad(ink, margin).astype(np.float32, copy=False)


def elastic(ink: FloatImage, amplitude: float, rng: Rng, smoothness: float = 8.0) -> FloatImage:
    """Bend the strokes by a smooth random displacement field (Simard et al., 2003).

    No pixel moves more than `amplitude` pixels across or down; the field varies over about
    `smoothness` pixels, so strokes bend like a wavering hand instead of breaking into noise.
    """
    # Drawn even when unused: the generator then advances the same way for every variation.
    fields = [
        ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, ink.shape), smoothness) for _ in range(2)
    ]
    if amplitude <= 0:
        return ink
    ys, xs = np.meshgrid(
        np.arange(ink.shape[0], dtype=np.float64),
        np.arange(ink.shape[1], dtype=np.float64),
        indexing="ij",
    )
    scale = amplitude / max(float(np.abs(fields[0]).max()), float(np.abs(fields[1]).max()), 1e-9)
    coordinates = np.stack([ys + scale * fields[0], xs + scale * fields[1]])
    moved = ndimage.map_coordinates(ink, coordinates, order=1, mode="constant")
    result: FloatImage = np.clip(moved, 0.0, 1.0).astype(np.float32)
    return result


def change_pen(ink: FloatImage, pixels: int) -> FloatImage:
    """Thicken (pixels > 0) or thin (< 0) every stroke by that many pixels on each side.

    A round pen: grey dilation or erosion by a disc. Thinning stops before it would take more
    than half the ink, so a fine stroke is never erased.
    """
    if pixels == 0:
        return ink
    radius = abs(pixels)
    if pixels > 0:
        thicker: FloatImage = ndimage.grey_dilation(ink, footprint=disc(radius))
        return thicker.astype(np.float32)
    mass = float(ink.sum())
    for reach in range(radius, 0, -1):
        thinner: FloatImage = ndimage.grey_erosion(ink, footprint=disc(reach)).astype(np.float32)
        if float(thinner.sum()) >= 0.5 * mass:
            return thinner
    return ink


def disc(radius: int) -> NDArray[np.bool_]:
    """A round pen nib of a radius in pixels."""
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(xs * xs + ys * ys <= radius * radius + radius)


def transform(ink: FloatImage, rotate: float, shear: float, squeeze: float) -> FloatImage:
    """Slant, squeeze and turn ink about its centre, on a canvas grown so nothing is cut."""
    angle = math.radians(rotate)
    cos, sin = math.cos(angle), math.sin(angle)
    # Forward map on (x, y) with y down: squeeze x, slant (the top leans right), then turn.
    forward = (
        np.array([[cos, sin], [-sin, cos]])
        @ np.array([[1.0, -shear], [0.0, 1.0]])
        @ np.array([[squeeze, 0.0], [0.0, 1.0]])
    )
    height, width = ink.shape
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    centre = np.array([width / 2, height / 2])
    moved = (corners - centre) @ forward.T
    new_width = max(math.ceil(float(np.ptp(moved[:, 0]))), 1)
    new_height = max(math.ceil(float(np.ptp(moved[:, 1]))), 1)
    inverse = np.linalg.inv(forward)
    shift = centre - inverse @ np.array([new_width / 2, new_height / 2])
    coefficients = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    layer = Image.fromarray(ink, "F").transform(
        (new_width, new_height), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(layer, dtype=np.float32), 0.0, 1.0)


def resize_height(ink: FloatImage, height: int) -> FloatImage:
    """Scale ink (proportions kept) so it is `height` pixels tall, averaging when it shrinks."""
    old_height, old_width = ink.shape
    width = max(round(old_width * height / old_height), 1)
    method = Image.Resampling.BOX if height < old_height else Image.Resampling.BILINEAR
    scaled = Image.fromarray(ink, "F").resize((width, height), method)
    return np.clip(np.asarray(scaled, dtype=np.float32), 0.0, 1.0)


def vary(ink: FloatImage, variation: Variation, rng: Rng) -> FloatImage:
    """Apply one variation to a digit's ink, as a page: warp, pen, turn and slant, size, place."""
    margin = 2 * SIDE // GRID
    warped = elastic(pad(ink, margin), variation.warp, rng)
    drawn = change_pen(warped, variation.pen)
    turned = crop_to_ink(transform(drawn, variation.rotate, variation.shear, variation.squeeze))
    small = resize_height(turned, variation.height)
    height, width = small.shape
    if variation.tight:
        # A tight crop touches the top and bottom, padded sideways to a square.
        spare = max(height - width, 2)
        left = round(variation.place[0] * spare)
        return np.pad(small, ((0, 0), (left, spare - left))).astype(np.float32, copy=False)
    spare = max(height, 8)
    left, top = (round(share * spare) for share in variation.place)
    return np.pad(small, ((top, spare - top), (left, spare - left))).astype(np.float32, copy=False)


def to_pixels(ink: FloatImage) -> NDArray[np.uint8]:
    """Ink as grey pixels, black on white: an image as the service decodes it."""
    grey = np.float32(255.0) * (np.float32(1.0) - ink)
    pixels: NDArray[np.uint8] = np.rint(grey).astype(np.uint8)
    return pixels


def service_features(ink: FloatImage) -> Features | None:
    """The features the service reads from a picture of this ink; None when it reads none."""
    try:
        return read_digit(to_pixels(ink)).features
    except BlankImage:
        return None
