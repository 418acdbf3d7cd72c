"""The team's evaluation set: held-out load_digits digits rendered the ways real images arrive.

Each held-out 8x8 grid is turned back into a smooth pen stroke (bicubic upscale, thresholded at the
level that keeps the digit's own ink mass), then drawn on paper of some tone, in some ink, at some
size, place, slant and quality. The model never saw these digits: it was trained on the other half.
`write_evalset` writes the images and a `manifest.csv` (file,label,group) into a folder kept out of
git; `digitserve evaluate` reads it back.
"""

import csv
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from digitserve.preprocessing import GRID, LEVELS, render_digit
from digitserve.training import split_digits

MANIFEST = "manifest.csv"
"""The index of an evaluation folder: one row per image, `file,label,group`."""

MANIFEST_FIELDS = ("file", "label", "group", "source")
"""`source` names where the digit came from (`test:412` is row 412 of the held-out half)."""

FloatImage = NDArray[np.float32]
Rng = np.random.Generator


@dataclass(frozen=True)
class Rendering:
    """One rendered evaluation image: encoded bytes and the file suffix that fits them."""

    data: bytes
    suffix: str


def smooth_ink(features: NDArray[np.integer], side: int, pen: float = 0.0) -> FloatImage:
    """A digit's 8x8 grid as a smooth pen stroke, side x side, ink 0..1 with anti-aliased edges.

    The grid is upscaled bicubically and thresholded where the stroke keeps the digit's own ink
    mass, so the result is what a pen might have drawn, not 64 blocks. `pen` widens (> 0) or narrows
    (< 0) the stroke by that share of the side on each edge.
    """
    grid = np.asarray(features, dtype=np.float32).reshape(GRID, GRID) / LEVELS
    padded = np.pad(grid, 1)
    cell = side / GRID
    big = side + 2 * round(cell)
    field = np.asarray(
        Image.fromarray(padded, "F").resize((big, big), Image.Resampling.BICUBIC), np.float32
    )
    offset = round(cell)
    field = field[offset : offset + side, offset : offset + side]
    mass = float(np.clip(grid.mean(), 0.02, 0.9))
    level = float(np.quantile(field, 1.0 - mass))
    softness = max(1.5 / cell, 0.02) * max(float(field.max()) - level, 0.05)
    ink: FloatImage = np.clip((field - level) / softness + 0.5, 0.0, 1.0).astype(np.float32)
    reach = round(abs(pen) * side)
    if reach:
        footprint = _disc(reach)
        morph = ndimage.grey_dilation if pen > 0 else ndimage.grey_erosion
        ink = morph(ink, footprint=footprint).astype(np.float32)
    return ink


def _disc(radius: int) -> NDArray[np.bool_]:
    """A round pen nib of a radius in pixels."""
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(xs * xs + ys * ys <= radius * radius)


def transform_ink(ink: FloatImage, rotate_degrees: float, shear: float) -> FloatImage:
    """Rotate and slant an ink layer about its centre, growing the canvas so nothing is cut."""
    if rotate_degrees == 0 and shear == 0:
        return ink
    height, width = ink.shape
    angle = math.radians(rotate_degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # Forward map: slant (x += shear * (cy - y), so the top leans right), then rotate.
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, -shear], [0.0, 1.0]])
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    centre = np.array([width / 2, height / 2])
    moved = (corners - centre) @ forward.T
    new_w = math.ceil(float(np.ptp(moved[:, 0])))
    new_h = math.ceil(float(np.ptp(moved[:, 1])))
    inverse = np.linalg.inv(forward)
    new_centre = np.array([new_w / 2, new_h / 2])
    shift = centre - inverse @ new_centre
    coefficients = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    layer = Image.fromarray(ink, "F").transform(
        (new_w, new_h), Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC
    )
    out: FloatImage = np.clip(np.asarray(layer, np.float32), 0.0, 1.0)
    return out


def place(ink: FloatImage, size: tuple[int, int], top_left: tuple[int, int]) -> FloatImage:
    """Put an ink layer on an empty canvas of (width, height), clipping what falls outside."""
    width, height = size
    canvas = np.zeros((height, width), dtype=np.float32)
    x, y = top_left
    h, w = ink.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, height), min(x + w, width)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = ink[y0 - y : y1 - y, x0 - x : x1 - x]
    return canvas


@dataclass(frozen=True)
class Sheet:
    """A sheet of paper under some light: its colour per pixel, and the light falling on it."""

    colour: FloatImage
    """(height, width, 3), 0..255."""
    light: FloatImage
    """(height, width), 1 where fully lit: the ink on the paper is lit the same."""


def paper(size: tuple[int, int], tone: tuple[int, int, int], gradient: float, rng: Rng) -> Sheet:
    """Paper of a tone, dimmed across the page by a lighting gradient of some direction."""
    width, height = size
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    ramp = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    light = np.float32(1.0) - np.float32(gradient) * (ramp + np.float32(0.5))
    base = np.asarray(tone, dtype=np.float32)
    return Sheet(light[..., None] * base[None, None, :], light)


def compose(
    ink: FloatImage,
    sheet: Sheet,
    colour: tuple[int, int, int],
    *,
    opacity: float = 1.0,
    noise: float = 0.0,
    blur: float = 0.0,
    rng: Rng,
) -> Image.Image:
    """Lay ink of a colour onto lit paper, then add sensor noise and focus blur: an RGB photo."""
    alpha = (ink * opacity)[..., None]
    lit_ink = np.asarray(colour, dtype=np.float32) * sheet.light[..., None]
    pixels = sheet.colour * (1.0 - alpha) + lit_ink * alpha
    if noise:
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(noise)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return image


def encode(image: Image.Image, fmt: str, quality: int = 90) -> Rendering:
    """Encode as JPEG or PNG bytes."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=quality)
        return Rendering(buffer.getvalue(), ".jpg")
    image.save(buffer, "PNG")
    return Rendering(buffer.getvalue(), ".png")


def _digit_on_canvas(
    features: NDArray[np.integer],
    rng: Rng,
    *,
    canvas: tuple[int, int],
    height_share: tuple[float, float],
    pen: float = 0.0,
    rotate: float = 0.0,
    shear: float = 0.0,
) -> FloatImage:
    """A smooth digit of a random size, placed at a random spot on a canvas (ink layer only)."""
    width, height = canvas
    side = max(round(min(width, height) * rng.uniform(*height_share)), 8)
    ink = transform_ink(smooth_ink(features, side, pen), rotate, shear)
    h, w = ink.shape
    x = int(rng.integers(0, max(width - w, 0) + 1)) if width > w else (width - w) // 2
    y = int(rng.integers(0, max(height - h, 0) + 1)) if height > h else (height - h) // 2
    return place(ink, canvas, (x, y))


def render_framed_8px(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """The 8x8 grid itself as a JPEG: input already framed like the training data."""
    return encode(render_digit(features).convert("RGB"), "JPEG", 95)


def render_framed_upscale(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A plain (blocky) upscale of the grid, PNG or JPEG: still framed like the training data."""
    side = int(rng.choice([16, 24, 32, 64, 100, 256, 512]))
    image = render_digit(features, side) if side % GRID == 0 else _resized(features, side)
    return encode(image.convert("RGB"), str(rng.choice(["PNG", "JPEG"])), 92)


def _resized(features: NDArray[np.integer], side: int) -> Image.Image:
    """A nearest-neighbour upscale to a side that is not a multiple of 8."""
    return render_digit(features).resize((side, side), Image.Resampling.NEAREST)


def render_smooth_full(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A smooth pen version of the grid filling the image, as the training bitmaps did."""
    side = int(rng.integers(32, 513))
    ink = smooth_ink(features, side)
    image = compose(ink, paper((side, side), (255, 255, 255), 0.0, rng), (0, 0, 0), rng=rng)
    return encode(image, str(rng.choice(["PNG", "JPEG"])), 92)


def render_canvas(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A web-canvas drawing: black on white PNG, wide margins, digit of any size anywhere."""
    size = int(rng.integers(200, 420))
    ink = _digit_on_canvas(features, rng, canvas=(size, size), height_share=(0.3, 0.85))
    image = compose(ink, paper((size, size), (255, 255, 255), 0.0, rng), (0, 0, 0), rng=rng)
    return encode(image, "PNG")


def render_stroke_width(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A canvas drawing with a much thinner or much thicker pen than the training digits."""
    size = int(rng.integers(200, 420))
    pen = float(rng.choice([rng.uniform(-0.035, -0.015), rng.uniform(0.015, 0.035)]))
    ink = _digit_on_canvas(features, rng, canvas=(size, size), height_share=(0.4, 0.85), pen=pen)
    image = compose(ink, paper((size, size), (255, 255, 255), 0.0, rng), (0, 0, 0), rng=rng)
    return encode(image, "PNG")


def render_rotated_slanted(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A drawing turned a little and written with a slant, as people write."""
    size = int(rng.integers(200, 420))
    ink = _digit_on_canvas(
        features,
        rng,
        canvas=(size, size),
        height_share=(0.4, 0.75),
        rotate=float(rng.uniform(-12, 12)),
        shear=float(rng.uniform(-0.35, 0.35)),
    )
    image = compose(ink, paper((size, size), (255, 255, 255), 0.0, rng), (0, 0, 0), rng=rng)
    return encode(image, str(rng.choice(["PNG", "JPEG"])), 90)


INK_COLOURS = {
    "ballpoint blue": (25, 45, 160),
    "red": (200, 30, 30),
    "green": (20, 120, 50),
    "graphite": (80, 80, 85),
    "black": (15, 15, 20),
}
PAPER_TONES = {
    "white": (255, 255, 255),
    "off-white": (245, 240, 226),
    "grey": (190, 190, 188),
    "yellow note": (250, 238, 160),
    "kraft": (200, 170, 130),
}


def render_ink_paper(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """Coloured ink on tinted paper with a lighting gradient, as a JPEG of middling quality."""
    width, height = int(rng.integers(160, 640)), int(rng.integers(160, 640))
    ink = _digit_on_canvas(features, rng, canvas=(width, height), height_share=(0.35, 0.8))
    tone = list(PAPER_TONES.values())[int(rng.integers(len(PAPER_TONES)))]
    colour = list(INK_COLOURS.values())[int(rng.integers(len(INK_COLOURS)))]
    sheet = paper((width, height), tone, float(rng.uniform(0.0, 0.3)), rng)
    image = compose(ink, sheet, colour, noise=float(rng.uniform(0, 4)), rng=rng)
    return encode(image, "JPEG", int(rng.integers(50, 96)))


def render_faint_pencil(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """Light pencil on off-white paper: little contrast between ink and paper."""
    size = int(rng.integers(160, 500))
    ink = _digit_on_canvas(features, rng, canvas=(size, size), height_share=(0.35, 0.8))
    sheet = paper((size, size), (246, 244, 238), float(rng.uniform(0.0, 0.1)), rng)
    image = compose(
        ink,
        sheet,
        (120, 120, 125),
        opacity=float(rng.uniform(0.25, 0.55)),
        noise=float(rng.uniform(0.5, 3)),
        rng=rng,
    )
    return encode(image, str(rng.choice(["PNG", "JPEG"])), 85)


def render_photo(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A phone photo: large, grey uneven paper, noise, slight blur, a small digit, JPEG."""
    width = round(math.exp(rng.uniform(math.log(600), math.log(3000))))
    height = int(width * rng.uniform(0.75, 1.33))
    ink = _digit_on_canvas(
        features,
        rng,
        canvas=(width, height),
        height_share=(0.15, 0.6),
        rotate=float(rng.uniform(-6, 6)),
        shear=float(rng.uniform(-0.15, 0.15)),
    )
    grey = int(rng.integers(150, 235))
    sheet = paper((width, height), (grey, grey, grey - 8), float(rng.uniform(0.1, 0.4)), rng)
    dark = int(rng.integers(10, 60))
    colour = (dark, dark, int(rng.integers(10, 120)))
    image = compose(
        ink,
        sheet,
        colour,
        noise=float(rng.uniform(2, 8)),
        blur=float(rng.uniform(0, 2.0)) * width / 1000,
        rng=rng,
    )
    return encode(image, "JPEG", int(rng.integers(55, 92)))


def render_inverted(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """Light ink on a dark ground: chalk on a blackboard, or white-on-black digital drawings."""
    size = int(rng.integers(28, 500))
    ink = _digit_on_canvas(features, rng, canvas=(size, size), height_share=(0.4, 0.85))
    if rng.random() < 0.5:
        board = (int(rng.integers(25, 60)), int(rng.integers(45, 80)), int(rng.integers(35, 60)))
        sheet = paper((size, size), board, float(rng.uniform(0.0, 0.3)), rng)
        image = compose(
            ink,
            sheet,
            (235, 235, 225),
            opacity=float(rng.uniform(0.6, 1.0)),
            noise=float(rng.uniform(2, 10)),
            rng=rng,
        )
        return encode(image, "JPEG", int(rng.integers(60, 95)))
    image = compose(ink, paper((size, size), (0, 0, 0), 0.0, rng), (255, 255, 255), rng=rng)
    return encode(image, "PNG")


def render_transparent(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A PNG with a transparent background where the digit is the only opaque thing."""
    size = int(rng.integers(64, 400))
    ink = _digit_on_canvas(features, rng, canvas=(size, size), height_share=(0.4, 0.85))
    colour = list(INK_COLOURS.values())[int(rng.integers(len(INK_COLOURS)))]
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    rgb[...] = np.asarray(colour, dtype=np.uint8)
    alpha = np.rint(ink * 255).astype(np.uint8)
    image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    return encode(image, "PNG")


def render_tiny(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A thumbnail, 8 to 24 pixels a side, with a little margin around the digit."""
    size = int(rng.integers(8, 25))
    big = size * 8
    ink = _digit_on_canvas(features, rng, canvas=(big, big), height_share=(0.7, 0.95))
    image = compose(ink, paper((big, big), (255, 255, 255), 0.0, rng), (0, 0, 0), rng=rng)
    small = image.resize((size, size), Image.Resampling.BOX)
    return encode(small, str(rng.choice(["PNG", "JPEG"])), 90)


def render_specks(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A drawing with dust, dots and a stray pen mark away from the digit."""
    size = int(rng.integers(200, 420))
    ink = _digit_on_canvas(features, rng, canvas=(size, size), height_share=(0.35, 0.6))
    image = compose(ink, paper((size, size), (250, 250, 248), 0.0, rng), (10, 10, 10), rng=rng)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 15))):
        x, y = rng.integers(0, size, 2)
        radius = float(rng.uniform(0.5, 2.5)) * size / 250
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(20, 20, 20))
    if rng.random() < 0.5:
        x, y = rng.integers(0, size, 2)
        length = size * rng.uniform(0.03, 0.08)
        draw.line((x, y, x + length, y + rng.uniform(-3, 3)), fill=(20, 20, 20), width=2)
    return encode(image, str(rng.choice(["PNG", "JPEG"])), 88)


Point = tuple[float, float]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> list[Point]:
    """Points along an ellipse arc, angles in degrees (0 = right, 90 = down), either direction."""
    steps = max(int(abs(end - start) / 10), 2)
    angles = np.radians(np.linspace(start, end, steps + 1))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


PEN_TEMPLATES: dict[int, list[list[list[Point]]]] = {
    0: [[_arc(0.5, 0.5, 0.45, 0.5, -90, 270)], [_arc(0.5, 0.5, 0.4, 0.5, -60, 300)]],
    1: [
        [[(0.5, 0.0), (0.5, 1.0)]],
        [[(0.2, 0.25), (0.55, 0.0), (0.55, 1.0)]],
        [[(0.2, 0.25), (0.55, 0.0), (0.55, 1.0)], [(0.2, 1.0), (0.9, 1.0)]],
    ],
    2: [
        [[*_arc(0.5, 0.3, 0.42, 0.3, 200, 390), (0.05, 1.0), (0.95, 1.0)]],
        [[*_arc(0.5, 0.28, 0.4, 0.28, 190, 400), (0.1, 0.98), (0.5, 0.92), (0.95, 1.0)]],
    ],
    3: [
        [[*_arc(0.5, 0.26, 0.4, 0.26, 200, 450), *_arc(0.5, 0.74, 0.45, 0.26, 270, 510)]],
        [[(0.1, 0.0), (0.9, 0.0), (0.45, 0.4), *_arc(0.5, 0.7, 0.45, 0.3, 270, 510)]],
    ],
    4: [
        [[(0.65, 0.0), (0.05, 0.68), (0.95, 0.68)], [(0.7, 0.25), (0.7, 1.0)]],
        [[(0.15, 0.0), (0.1, 0.6), (0.9, 0.6)], [(0.72, 0.0), (0.72, 1.0)]],
    ],
    5: [
        [[(0.9, 0.0), (0.2, 0.0), (0.15, 0.45), *_arc(0.5, 0.7, 0.42, 0.3, 230, 495)]],
        [
            [(0.2, 0.0), (0.15, 0.45), *_arc(0.5, 0.7, 0.42, 0.3, 230, 495)],
            [(0.2, 0.0), (0.9, 0.02)],
        ],
    ],
    6: [
        [[(0.8, 0.0), (0.4, 0.2), (0.1, 0.6), *_arc(0.5, 0.72, 0.4, 0.28, 180, 540)]],
        [[*_arc(0.75, 0.55, 0.65, 0.55, 250, 180), *_arc(0.5, 0.72, 0.4, 0.28, 180, 530)]],
    ],
    7: [
        [[(0.05, 0.0), (0.95, 0.0), (0.35, 1.0)]],
        [[(0.05, 0.05), (0.95, 0.0), (0.4, 1.0)], [(0.3, 0.52), (0.85, 0.5)]],
    ],
    8: [
        [_arc(0.5, 0.25, 0.33, 0.25, 0, 360), _arc(0.5, 0.73, 0.42, 0.27, 0, 360)],
        [[*_arc(0.5, 0.25, 0.35, 0.25, 90, -270), *_arc(0.5, 0.74, 0.42, 0.26, 270, 630)]],
    ],
    9: [
        [_arc(0.5, 0.28, 0.42, 0.28, 0, 360), [(0.92, 0.28), (0.85, 1.0)]],
        [[*_arc(0.5, 0.28, 0.42, 0.28, 0, 370), (0.88, 0.6), (0.6, 1.0)]],
    ],
}
"""Pen paths of each digit in a unit box (x right, y down), a few ways people write them. Not
derived from load_digits: an independent check that framing suits digits drawn from scratch."""


def pen_ink(label: int, size: int, rng: Rng, height_share: tuple[float, float]) -> FloatImage:
    """A digit drawn from scratch with a round pen on a size x size canvas (ink 0..1).

    One of the digit's template paths, under a smooth random wobble, slant, turn and pen width.
    """
    styles = PEN_TEMPLATES[label]
    strokes = styles[int(rng.integers(len(styles)))]
    height = size * rng.uniform(*height_share)
    width = height * rng.uniform(0.45, 0.8)
    slant = rng.uniform(-0.3, 0.3)
    angle = math.radians(rng.uniform(-8, 8))
    cos, sin = math.cos(angle), math.sin(angle)
    left = rng.uniform(0.05 * size, max(size - width - 0.1 * size, 0.06 * size))
    top = rng.uniform(0.05 * size, max(size - height - 0.05 * size, 0.06 * size))
    supersample = 4
    sheet = Image.new("L", (size * supersample, size * supersample), 0)
    draw = ImageDraw.Draw(sheet)
    pen = max(int(height * rng.uniform(0.05, 0.14) * supersample), 1)
    # A smooth random warp (a writer's wobble), not per-point noise, which would look jagged.
    waves = rng.uniform(0.5, 1.5, 2), rng.uniform(0, 2 * math.pi, 2), rng.uniform(0.01, 0.05, 2)
    for stroke in strokes:
        points = []
        for x0, y0 in stroke:
            x = x0 + waves[2][0] * math.sin(2 * math.pi * waves[0][0] * y0 + waves[1][0])
            y = y0 + waves[2][1] * math.sin(2 * math.pi * waves[0][1] * x0 + waves[1][1])
            dx, dy = (x - 0.5 + slant * (0.5 - y)) * width, (y - 0.5) * height
            px = left + width / 2 + cos * dx - sin * dy
            py = top + height / 2 + sin * dx + cos * dy
            points.append((px * supersample, py * supersample))
        draw.line(points, fill=255, width=pen, joint="curve")
        radius = pen / 2
        for x, y in (points[0], points[-1]):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    ink: FloatImage = (
        np.asarray(sheet.resize((size, size), Image.Resampling.BOX), np.float32) / 255.0
    )
    return ink


def render_pen_strokes(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A digit drawn from scratch with a pen on a web canvas, dark on white."""
    size = int(rng.integers(120, 400))
    ink = pen_ink(label, size, rng, (0.35, 0.8))
    dark = int(rng.integers(0, 60))
    sheet = paper((size, size), (255, 255, 255), 0.0, rng)
    return encode(compose(ink, sheet, (dark, dark, dark), rng=rng), "PNG")


def render_mnist_style(features: NDArray[np.integer], label: int, rng: Rng) -> Rendering:
    """A pen-drawn digit in the MNIST format: 28x28 grey, white on black.

    As MNIST was made: fitted in a 20x20 box (proportions kept), centred on its centre of mass.
    """
    ink = pen_ink(label, 112, rng, (0.6, 0.8))
    rows, columns = np.flatnonzero(ink.max(axis=1) > 0.05), np.flatnonzero(ink.max(axis=0) > 0.05)
    crop = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    scale = 20 / max(crop.shape)
    width, height = max(round(crop.shape[1] * scale), 1), max(round(crop.shape[0] * scale), 1)
    small = np.asarray(
        Image.fromarray(crop, "F").resize((width, height), Image.Resampling.LANCZOS), np.float32
    )
    small = np.clip(small, 0.0, 1.0)
    cy, cx = ndimage.center_of_mass(small)
    top = int(np.clip(round(14 - cy), 0, 28 - height))
    left = int(np.clip(round(14 - cx), 0, 28 - width))
    canvas = np.zeros((28, 28), dtype=np.float32)
    canvas[top : top + height, left : left + width] = small
    return encode(Image.fromarray(np.rint(canvas * 255).astype(np.uint8), "L"), "PNG")


Renderer = Callable[[NDArray[np.integer], int, Rng], Rendering]

GROUPS: dict[str, Renderer] = {
    "framed_8px": render_framed_8px,
    "framed_upscale": render_framed_upscale,
    "smooth_full": render_smooth_full,
    "canvas": render_canvas,
    "stroke_width": render_stroke_width,
    "rotated_slanted": render_rotated_slanted,
    "ink_paper": render_ink_paper,
    "faint_pencil": render_faint_pencil,
    "photo": render_photo,
    "inverted": render_inverted,
    "transparent_png": render_transparent,
    "tiny": render_tiny,
    "specks": render_specks,
    "pen_strokes": render_pen_strokes,
    "mnist_style": render_mnist_style,
}
"""Every group of the evaluation set, named for the real-world condition it stands for."""

FRAMED_GROUPS = ("framed_8px", "framed_upscale")

PEN_GROUPS = ("pen_strokes", "mnist_style")
"""Groups drawn from pen templates, not from load_digits: only their label is shared."""
"""Groups already framed like the training data: preprocessing must give back the raw vectors."""


def write_evalset(
    directory: Path,
    per_group: int,
    *,
    seed: int = 0,
    groups: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    training_half: bool = False,
) -> Path:
    """Render `per_group` held-out digits for each group into `directory`; return the manifest.

    `training_half` renders the model's training digits instead: a calibration set for tuning
    preprocessing without looking at the held-out digits the published numbers come from.
    """
    split = split_digits()
    digits, labels = (
        (split.x_train, split.y_train) if training_half else (split.x_test, split.y_test)
    )
    half = "train" if training_half else "test"
    names = list(groups or GROUPS)
    unknown = sorted(set(names) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown group(s): {', '.join(unknown)}; known: {', '.join(GROUPS)}")
    directory.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    total = per_group * len(names)
    for number, name in enumerate(names):
        rng = np.random.default_rng([seed, list(GROUPS).index(name)])
        count = min(per_group, len(labels))
        picks = rng.choice(len(labels), size=count, replace=False)
        (directory / name).mkdir(exist_ok=True)
        for position, index in enumerate(picks):
            features = digits[index].astype(np.int64)
            label = int(labels[index])
            rendering = GROUPS[name](features, label, rng)
            relative = f"{name}/{position:04d}_{label}{rendering.suffix}"
            (directory / relative).write_bytes(rendering.data)
            source = "pen template" if name in PEN_GROUPS else f"{half}:{index}"
            rows.append({"file": relative, "label": label, "group": name, "source": source})
            if progress is not None:
                progress(number * per_group + position + 1, total)
    manifest = directory / MANIFEST
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest
