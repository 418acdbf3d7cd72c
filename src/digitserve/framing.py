"""Find the digit in a real image and frame it the way load_digits framed its digits.

load_digits (NIST handprint, 32x32 bitmaps reduced 4x4) framed every digit the same way: its ink
spans all 32 rows, most digits are 20 pixels (six 4-pixel columns) wide and centred, strokes are
bold (about 30% of the bitmap inked), writers' slant is mostly removed. A photo of a digit on a page
is nothing like that, and the model only knows that. So, per image:

1. `measure_levels`: the paper tone (a plane, for lighting gradients), which side the ink is on
   (dark on light, or light on dark), and how far the ink stands from the paper. It takes any
   number of channels; the service gives it a grey copy of at most `WORK_SIDE` pixels a side.
2. `find_marks`: separate the ink into connected marks; drop specks, keep the digit and what is
   close to it, note any separate mark that was ignored.
3. `frame`: cut out the digit's ink box, straighten a strong slant, and map the box onto the
   training frame at 64x64 (twice the training bitmap), then thicken or thin the strokes toward the
   training ink mass.

Input that is already framed like the training data (its ink touches the top and bottom edges, as
every load_digits digit does) is left as it is: re-framing it would shift it, and a one-pixel shift
costs the model dearly. Everything here is pure numpy on arrays: no HTTP, no model.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from digitserve.diagnostics import Diagnostic, warning

FloatArray = NDArray[np.float32]

WORK_SIDE = 128
"""Images are located at no more than about this many pixels a side: enough to find a digit that
fills a tenth of a photo, cheap enough to stay under a millisecond."""

CANVAS = 64
"""The framed digit is resampled at 64x64, twice the training bitmap, then averaged 2x2."""

BITMAP = 32
"""The training bitmaps' side: load_digits counted the inked pixels of 4x4 blocks of 32x32."""

FRAME_HEIGHT = 1.0
"""Share of the frame's height the ink box fills: every training digit's ink spans all 8 rows."""

FRAME_MAX_WIDTH = 19.5 / 32
"""Widest ink box, as a share of the frame: training digits' ink boxes are a median 19.5 of 32
pixels wide (columns 1-6 of the grid; 5th-95th percentile 15.7-23), whatever their shape, while
narrow ones (a plain 1) keep their proportions."""

FRAME_CENTRE = 16.4 / 32
"""Where the ink box's centre goes, as a share of the frame's width: training digits' boxes are
centred a median 0.4 pixel right of the middle (on smooth renderings of the training half)."""

TRAINING_INK_SHARE = (0.30, 0.36)
"""Share of the 32x32 bitmap that is ink in load_digits: median 0.30, 95th percentile 0.36. Thinner
strokes (a ballpoint, MNIST) are thickened to the median, bolder ones thinned to the 95th."""

MAX_PEN_CHANGE = 6
"""Strokes grow or shrink by at most 6 bitmap pixels on each side (3/16 of the height): a hairline
becomes a bold stroke, and a filled blob does not vanish."""

SLANT_ALLOWED = 0.1
"""Moment slant (horizontal shift per row of height) left alone. Training digits show some
(5th-95th percentile -0.16..0.25: a 7 leans one way, a 6 the other), so only slant beyond this is
removed; 0.1 read the calibration set best (0 and 0.25 both lost 1-3 points on slanted digits)."""

SPECK_SHARE = 0.05
"""A mark smaller than this share of the largest mark is a speck, not part of any digit."""

NEAR_SHARE = 0.3
"""A mark within this share of the digit's height of the digit's box belongs to it (the bar of a 5,
the second stroke of a 4); a farther one is another mark and is ignored."""

FLAT_PAPER = 0.02
"""Paper whose fitted tone changes less than this across the image is taken as evenly lit."""

STATISTICS_SIDE = 32
"""Images at least twice this side have their levels measured on every other pixel, and a paper
plane fitted (a smaller image is a thumbnail or a digital drawing, evenly lit)."""

UNIFORM_TONE = 0.15
UNIFORM_SHARE = 0.75
"""The border tells the paper (and so the polarity) when this share of it lies within
`UNIFORM_TONE` of its median tone; otherwise ink covers much of it, and dark ink on light paper,
the training convention, is assumed."""

UNIFORM_SHARE_SMALL = 0.97
"""At training-bitmap size and below (8x8 grids, 28x28 MNIST-style, 32x32 bitmaps) a digit leaves
its margin clean: the border must be almost all one tone before the image is read as inverted,
or a dense bitmap's black majority would pass for a blackboard."""

DARKEST_PAPER = 0.2
"""Paper darker than this (of white) is not divided by: the ratio would only amplify noise."""

LOW_CONTRAST = 0.3
"""Ink standing less than this far from the paper (on the 0..1 scale of black on white) is faint."""

MIN_CONTRAST = 0.06
"""Below this there is no ink at all: the image is blank (or one flat colour)."""

CLEAN_PAPER = 0.12
"""Paper within this distance of white and ink darker than `CLEAN_INK` need no level stretch."""

CLEAN_INK = 0.75

SMALL_DIGIT_SHARE = 0.02
"""A digit box covering less than this share of the image: the image is mostly empty."""

LOW_RESOLUTION_PX = 12
"""A digit fewer source pixels tall than this has lost the detail that tells digits apart."""


@dataclass(frozen=True, slots=True)
class Levels:
    """How ink and paper look in one image: the stretched ink map and what was learnt on the way."""

    ink: FloatArray
    """Ink from 0 (paper) to 1 (full ink), per pixel, whatever the ink and paper colours."""
    contrast: float
    """How far the ink stands from the paper, 0..1 (1 = black on white)."""
    inverted: bool
    """Light ink on a dark background."""
    clean: bool
    """Dark ink on white paper: the plain reading needs no level stretch."""


@dataclass(frozen=True, slots=True)
class Marks:
    """The digit's pixels, and whether other marks were ignored."""

    digit: NDArray[np.bool_]
    box: tuple[int, int, int, int]
    """top, bottom, left, right: the digit's ink box, inclusive pixel indices."""
    others_ignored: bool


def any_true(mask: NDArray[np.generic]) -> bool:
    """`mask.any()` (any non-zero), at a fifth of its cost on small arrays: no Python wrapper."""
    return bool(np.count_nonzero(mask))


def clip_unit(values: FloatArray) -> FloatArray:
    """`np.clip(values, 0, 1)` as two ufunc calls: the same values, without `clip`'s checks."""
    clipped: FloatArray = np.minimum(np.maximum(values, np.float32(0.0)), np.float32(1.0))
    return clipped


def to_array(pixels: NDArray[np.uint8]) -> FloatArray:
    """Pixels as planar floats 0..1, shape (channels, height, width): one plane per channel."""
    planar = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, 2, 0)
    return np.ascontiguousarray(planar, dtype=np.float32) / np.float32(255.0)


def measure_levels(colour: FloatArray) -> Levels:
    """Estimate paper and ink, fix polarity, and stretch the ink to 0..1.

    The paper is first the median colour of the image's border, then a plane fitted to the pixels
    that are not ink (a lighting gradient); ink is the colour distance from that paper on the side
    (darker or lighter) where the ink lies, so blue ink, grey paper and chalk all read alike.
    Statistics are taken on every other pixel; only the final ink map is at full resolution.
    """
    channels = colour.shape[0]
    step = 2 if min(colour.shape[1:]) >= 2 * STATISTICS_SIDE else 1
    sample = colour[:, ::step, ::step]
    luminance = colour[0] if channels == 1 else colour.sum(axis=0) / np.float32(channels)
    rings = _border(colour)  # (channels, ring): every plane's border at once
    # Summed over the channels in the same order as `luminance`: its border, to the bit.
    ring = rings[0] if channels == 1 else rings.sum(axis=0) / np.float32(channels)
    median = _quantile(ring, 0.5)
    uniform = UNIFORM_SHARE if min(luminance.shape) > TRAINING_SIDE else UNIFORM_SHARE_SMALL
    if np.count_nonzero(np.abs(ring - median) < UNIFORM_TONE) / ring.size >= uniform:
        paper = [np.float32(median)] if channels == 1 else _ring_quantiles(rings, 0.5)
        darker, lighter = _extremes(luminance[::step, ::step] - np.float32(median))
        inverted = lighter > -darker and lighter > MIN_CONTRAST
    else:
        # Ink crosses much of the border (a tight crop): take the lightest border as the paper.
        paper = _ring_quantiles(rings, 0.9)
        inverted = False
    # Light falls on ink and paper alike: on light paper, ink is read relative to the paper under
    # it (a ratio), so a shadowed corner is not ink. On a dark ground (near 0) the difference is.
    relative = not inverted
    distance = _distance(sample, paper, relative=relative)
    ink_level = _ink_level(distance.ravel())
    if ink_level < MIN_CONTRAST:
        return Levels(np.zeros(luminance.shape, np.float32), ink_level, inverted, False)
    planes: Sequence[FloatArray | np.float32] = paper
    if min(luminance.shape) >= 2 * STATISTICS_SIDE:
        fitted = _fit_planes(sample, distance < 0.5 * ink_level, step, luminance.shape)
        planes = paper if fitted is None else fitted
    if step > 1 or planes is not paper:
        # Otherwise the sample is the whole image and the paper the same: `distance` stands.
        distance = _distance(colour, planes, relative=relative)
    deviation = luminance - (planes[0] if channels == 1 else sum(planes) / np.float32(channels))
    # Only pixels on the ink's side of the paper are ink: glare on dark-on-light paper is not.
    on_ink_side = deviation > 0 if inverted else deviation < 0
    distance = distance * on_ink_side  # distance >= 0: zero where False, as np.where, faster
    paper_level, ink_level = _levels(distance[::step, ::step])
    contrast = ink_level - paper_level
    if contrast < MIN_CONTRAST:
        return Levels(np.zeros(luminance.shape, np.float32), contrast, inverted, False)
    white = max(abs(1.0 - float(level)) for level in paper)
    clean = not inverted and white < CLEAN_PAPER and ink_level > CLEAN_INK
    stretched = clip_unit((distance - np.float32(paper_level)) / np.float32(contrast))
    return Levels(stretched, contrast, inverted, clean)


def measures_together(shape: tuple[int, ...]) -> bool:
    """Whether grey images of this (height, width) can be measured many at once.

    That is, by `measure_grey_levels`: small enough that their statistics take every pixel and
    no paper plane is fitted, so the work is the same few steps for each.
    """
    return len(shape) == 2 and min(shape) < 2 * STATISTICS_SIDE


def measure_grey_levels(grey: FloatArray) -> list[Levels]:
    """`measure_levels` of many small grey images at once, (n, height, width): the same Levels.

    On a small image the work is a few dozen numpy calls on a few hundred numbers, so their
    overhead is the cost: measured together, n images take those calls once. Each step is the
    single image's, on a leading axis; each branch is taken per image by selecting between both
    ways. Order statistics are exact whichever way they are found, and every sum runs over the
    same values in the same order, so the results are `measure_levels`'s to the bit (tested).
    """
    count, height, width = grey.shape
    if not measures_together((height, width)):
        raise ValueError(f"{height}x{width} images are measured one at a time")
    flat_size = height * width
    ring = _border(grey)  # (n, ring): each image's border
    ring_size = ring.shape[1]
    median = _order_statistics(ring, min(int(0.5 * ring_size), ring_size - 1))
    uniform = UNIFORM_SHARE if min(height, width) > TRAINING_SIDE else UNIFORM_SHARE_SMALL
    near_median = np.abs(ring - median[:, np.newaxis]) < UNIFORM_TONE
    even = np.count_nonzero(near_median, axis=1) / ring_size >= uniform
    low = min(int(0.002 * flat_size), flat_size - 1)
    high = min(int(0.998 * flat_size), flat_size - 1)
    around = np.partition(
        (grey - median[:, np.newaxis, np.newaxis]).reshape(count, -1), [low, high]
    )
    darker, lighter = around[:, low].astype(np.float64), around[:, high].astype(np.float64)
    inverted = even & (lighter > -darker) & (lighter > MIN_CONTRAST)
    lightest = _order_statistics(ring, min(int(0.9 * ring_size), ring_size - 1))
    paper = np.where(even, median, lightest)[:, np.newaxis, np.newaxis]  # float32, (n, 1, 1)
    distance = np.abs(grey - paper)
    # Relative to the paper unless inverted (see `measure_levels`); x / 1 is x to the bit.
    distance /= np.where(
        inverted[:, np.newaxis, np.newaxis],
        np.float32(1.0),
        np.maximum(paper, np.float32(DARKEST_PAPER)),
    )
    first_ink = _order_statistics(distance.reshape(count, -1), high).astype(np.float64)
    deviation = grey - paper
    on_ink_side = np.where(inverted[:, np.newaxis, np.newaxis], deviation > 0, deviation < 0)
    distance = distance * on_ink_side
    flat = distance.reshape(count, -1)
    ink_level = _order_statistics(flat, high).astype(np.float64)
    papery = flat < (np.float32(0.5) * ink_level.astype(np.float32))[:, np.newaxis]
    paper_count = np.count_nonzero(papery, axis=1)
    ordered = np.sort(np.where(papery, flat, np.float32(np.inf)), axis=1)
    middle = np.take_along_axis(ordered, (paper_count // 2)[:, np.newaxis], axis=1)[:, 0]
    paper_level = np.where(paper_count > 0, middle, np.float32(0.0)).astype(np.float64)
    contrast = ink_level - paper_level
    white = np.abs(1.0 - paper[:, 0, 0].astype(np.float64))
    clean = ~inverted & (white < CLEAN_PAPER) & (ink_level > CLEAN_INK)
    with np.errstate(divide="ignore", invalid="ignore"):  # images without ink are not kept
        stretched = clip_unit(
            (distance - paper_level.astype(np.float32)[:, np.newaxis, np.newaxis])
            / contrast.astype(np.float32)[:, np.newaxis, np.newaxis]
        )
    levels = []
    for index in range(count):
        if first_ink[index] < MIN_CONTRAST:
            levels.append(_no_ink(grey[index], float(first_ink[index]), bool(inverted[index])))
        elif contrast[index] < MIN_CONTRAST:
            levels.append(_no_ink(grey[index], float(contrast[index]), bool(inverted[index])))
        else:
            levels.append(
                Levels(
                    stretched[index],
                    float(contrast[index]),
                    bool(inverted[index]),
                    bool(clean[index]),
                )
            )
    return levels


def _no_ink(grey: FloatArray, contrast: float, inverted: bool) -> Levels:
    """The levels of an image where nothing stands out from the paper."""
    return Levels(np.zeros(grey.shape, np.float32), contrast, inverted, False)


def _order_statistics(rows: FloatArray, rank: int) -> FloatArray:
    """The value of each row at `rank` in sorted order (as `_quantile` takes it for one)."""
    ordered: FloatArray = np.partition(rows, rank, axis=1)[:, rank]
    return ordered


def _quantile(values: FloatArray, share: float) -> float:
    """The value below which `share` of the values lie (nearest rank; np.percentile is slower)."""
    flat = values.ravel()
    rank = min(int(share * len(flat)), len(flat) - 1)
    return float(_partitioned(flat, rank)[rank])


def _extremes(values: FloatArray) -> tuple[float, float]:
    """The 0.2% and 99.8% quantiles."""
    flat = values.ravel()
    low = min(int(0.002 * len(flat)), len(flat) - 1)
    high = min(int(0.998 * len(flat)), len(flat) - 1)
    ordered = _partitioned(flat, (low, high))
    return float(ordered[low]), float(ordered[high])


def _levels(distance: FloatArray) -> tuple[float, float]:
    """Paper level (median of the pixels nearer paper than ink) and ink level (99.8% quantile).

    The paper level is the noise floor left after the paper plane; it is measured on the paper
    pixels only, as ink may cover more than half of a tightly cropped image.
    """
    flat = distance.ravel()
    ink_level = _ink_level(flat)
    paper = flat[flat < 0.5 * ink_level]
    if len(paper) == 0:
        return 0.0, ink_level
    # The median, not the mean: faint ink (a training digit's light cells) must not lift it.
    middle = len(paper) // 2
    paper.partition(middle)  # a copy already (boolean indexing)
    return float(paper[middle]), ink_level


def _ink_level(flat: FloatArray) -> float:
    """The ink level alone: the 99.8% quantile of the distances (see `_levels`)."""
    high = min(int(0.998 * len(flat)), len(flat) - 1)
    return float(_partitioned(flat, high)[high])


def _partitioned(flat: FloatArray, kth: int | tuple[int, ...]) -> FloatArray:
    """`np.partition(flat, kth)` of a 1-D array without its Python wrapper: a partitioned copy."""
    ordered = flat.copy()
    ordered.partition(kth)
    return ordered


def _border(planes: FloatArray) -> FloatArray:
    """The pixels of the outermost ring of each plane (channels, height, width): mostly paper."""
    return np.concatenate(
        [planes[:, 0], planes[:, -1], planes[:, 1:-1, 0], planes[:, 1:-1, -1]], axis=1
    )


def _ring_quantiles(rings: FloatArray, share: float) -> list[np.float32]:
    """Each channel's ring quantile (as `_quantile` takes it), in one partition for all."""
    rank = min(int(share * rings.shape[1]), rings.shape[1] - 1)
    ordered = np.partition(rings, rank, axis=1)
    return [np.float32(value) for value in ordered[:, rank]]


def _distance(
    colour: FloatArray, paper: Sequence[FloatArray | np.float32], *, relative: bool
) -> FloatArray:
    """Colour distance from the paper, scaled so black on white is 1.

    `relative` measures each channel as a share of the paper's (reflectance, not light). One
    channel (the service's grey working image) is its absolute difference: sqrt(x * x) is |x|
    exactly in binary floating point, so both ways give the same bits.
    """
    if len(colour) == 1:
        absolute: FloatArray = np.abs(colour[0] - paper[0])
        if relative:
            absolute /= np.maximum(paper[0], np.float32(DARKEST_PAPER))
        return absolute
    if all(np.ndim(level) == 0 for level in paper):  # one paper colour: every channel at once
        levels = np.array(paper, dtype=np.float32)[:, np.newaxis, np.newaxis]
        differences = colour - levels
        if relative:
            differences /= np.maximum(levels, np.float32(DARKEST_PAPER))
        # Summed over the first axis: channel after channel, as the loop below adds them.
        total: FloatArray = (differences * differences).sum(axis=0)
    else:
        total = np.zeros(colour.shape[1:], dtype=np.float32)
        for plane, level in zip(colour, paper, strict=True):
            difference = plane - level
            if relative:
                difference /= np.maximum(level, np.float32(DARKEST_PAPER))
            total += difference * difference
    result: FloatArray = np.sqrt(total / np.float32(len(colour)))
    return result


def _fit_planes(
    sample: FloatArray, paper_mask: NDArray[np.bool_], step: int, shape: tuple[int, ...]
) -> list[FloatArray] | None:
    """Least-squares plane per channel through the paper pixels: the paper under uneven light.

    Fitted on a sample taken every `step` pixels; returned at the full `shape`, or None when the
    paper is evenly lit (or too little of it shows) and its border colour will do.
    """
    ys, xs = np.nonzero(paper_mask[::2, ::2])
    if len(ys) < 16:
        return None
    values = sample[:, ::2, ::2][:, ys, xs].astype(np.float64)
    x = xs.astype(np.float64) * (2 * step)
    y = ys.astype(np.float64) * (2 * step)
    normal = np.array(
        [
            [len(x), x.sum(), y.sum()],
            [x.sum(), x @ x, x @ y],
            [y.sum(), x @ y, y @ y],
        ]
    )
    moments = np.stack([values.sum(axis=1), values @ x, values @ y])
    try:
        coefficients = np.linalg.solve(normal, moments).astype(np.float32)
    except np.linalg.LinAlgError:
        return None
    height, width = shape
    if np.abs(coefficients[1:] * np.float32(max(height, width))).max() < FLAT_PAPER:
        return None
    grid_x = np.arange(width, dtype=np.float32)[None, :]
    grid_y = np.arange(height, dtype=np.float32)[:, None]
    return [
        (grid_y * coefficients[2, c] + coefficients[0, c]) + grid_x * coefficients[1, c]
        for c in range(sample.shape[0])
    ]


MARK_INK = 0.5
"""Stretched ink above this belongs to a mark."""


def has_ink(levels: Levels) -> bool:
    """Whether anything stands out from the paper: enough contrast, and some pixel of a mark.

    Exactly when `find_marks` finds a mark, at a fraction of its cost.
    """
    return levels.contrast >= MIN_CONTRAST and any_true(levels.ink > MARK_INK)


def find_marks(ink: FloatArray, threshold: float = MARK_INK) -> Marks | None:
    """Group ink into marks; keep the largest and the marks near it, drop specks.

    Returns None when no pixel is above the threshold (a blank page).
    """
    mask = ink > threshold
    labels, count, boxes = label_marks(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes))
    keep = {largest}
    top, bottom, left, right = boxes[largest]
    others_ignored = False
    # Grow the digit's box by every substantial mark near it, largest first.
    for index in np.argsort(-sizes):
        index = int(index)
        if index == largest or sizes[index] < SPECK_SHARE * sizes[largest]:
            continue
        near = NEAR_SHARE * (bottom - top + 1)
        t, b, lft, r = boxes[index]
        if t <= bottom + near and b >= top - near and lft <= right + near and r >= left - near:
            keep.add(index)
            top, bottom, left, right = min(top, t), max(bottom, b), min(left, lft), max(right, r)
        else:
            others_ignored = True
    kept = np.zeros(count + 1, dtype=bool)
    kept[[index + 1 for index in keep]] = True
    digit = kept[labels]
    return Marks(digit, (top, bottom, left, right), others_ignored)


Box = tuple[int, int, int, int]
"""top, bottom, left, right: inclusive pixel indices."""


def label_marks(mask: NDArray[np.bool_]) -> tuple[NDArray[np.int32], int, list[Box]]:
    """The 8-connected marks of a mask: labels 1..count, their count, and each one's box.

    Exactly scipy's `ndimage.label(mask, np.ones((3, 3)))` and `find_objects` (marks numbered
    in the raster order of their first pixel), without importing scipy: that costs every worker
    28 MB. Works on runs of ink along rows: two runs in adjacent rows touch (diagonals included)
    when their column spans, each widened by one, overlap.
    """
    height, width = mask.shape
    labels = np.zeros((height, width), dtype=np.int32)
    # Rows end to end, each followed by a blank, after one more blank: pixel (row, column) is
    # flat[1 + key] with key = row * side + column, and each change of value starts or ends a run.
    side = width + 1
    flat = np.zeros(height * side + 1, dtype=bool)
    flat[1:].reshape(height, side)[:, :width] = mask
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    starts, stops = changes[::2], changes[1::2]  # each run's first key, and the key past its last
    if len(starts) == 0:
        return labels, 0, []
    # The runs of the row above that touch a run are consecutive: binary search finds the first
    # one and the one past the last, keys being in raster order.
    first = np.searchsorted(stops, starts - side, side="left")
    touching = np.maximum(np.searchsorted(starts, stops - side, side="right") - first, 0)
    below = np.repeat(np.arange(len(starts)), touching)
    above = np.arange(len(below)) - np.repeat(np.cumsum(touching) - touching - first, touching)
    # Union-find whose roots are each mark's first run, so roots are in scipy's label order.
    parent = list(range(len(starts)))
    for a, b in zip(above.tolist(), below.tolist(), strict=True):
        while parent[a] != a:
            parent[a] = a = parent[parent[a]]  # path halving
        while parent[b] != b:
            parent[b] = b = parent[parent[b]]
        if a < b:
            parent[b] = a
        elif b < a:
            parent[a] = b
    roots = np.array(parent)
    while not np.array_equal(grand := roots[roots], roots):
        roots = grand
    is_root = roots == np.arange(len(roots))
    mark = (np.cumsum(is_root) - 1)[roots]  # each run's mark, numbered from 0
    labels[mask] = np.repeat(mark.astype(np.int32) + 1, stops - starts)
    count = int(np.count_nonzero(is_root))
    rows = starts // side
    tops = rows[is_root]  # a mark's first run is in its top row
    bottoms = np.zeros(count, dtype=np.intp)
    np.maximum.at(bottoms, mark, rows)
    lefts = np.full(count, width, dtype=np.intp)
    np.minimum.at(lefts, mark, starts - rows * side)
    rights = np.zeros(count, dtype=np.intp)
    np.maximum.at(rights, mark, stops - 1 - rows * side)
    boxes = list(zip(tops.tolist(), bottoms.tolist(), lefts.tolist(), rights.tolist(), strict=True))
    return labels, count, boxes


def frame(ink: FloatArray, marks: Marks) -> FloatArray:
    """Draw the digit's ink into the training frame: box to full height, slant removed.

    Resampled at 64x64 and averaged to the 32x32 bitmap, whose strokes are then normalised.
    """
    top, bottom, left, right = marks.box
    # The digit's box and a one-pixel border (the soft edge of its ink, or paper at the image's
    # edge), keeping only ink that belongs to the digit's marks.
    height_px, width_px = ink.shape
    mask = np.zeros((bottom - top + 3, right - left + 3), dtype=np.float32)
    crop = np.zeros_like(mask)
    rows = slice(max(top - 1, 0), min(bottom + 2, height_px))
    columns = slice(max(left - 1, 0), min(right + 2, width_px))
    inside = (
        slice(rows.start - top + 1, rows.stop - top + 1),
        slice(columns.start - left + 1, columns.stop - left + 1),
    )
    mask[inside] = marks.digit[rows, columns]
    crop[inside] = ink[rows, columns]
    crop *= _morph(mask, grow=True, square=True)
    slant, cy = _slant(crop)
    rows_inked = np.flatnonzero(mask.any(axis=1))
    inked = mask[rows_inked] > 0
    firsts = inked.argmax(axis=1)
    lasts = inked.shape[1] - inked[:, ::-1].argmax(axis=1)
    # Pixel-edge coordinates: pixel i covers [i, i + 1); the shear pivots on the centre of mass.
    lean = slant * (rows_inked - cy)
    x0 = float((firsts - lean).min())
    x1 = float((lasts - lean).max())
    # The top and bottom edges to a fraction of a pixel, from how much ink the edge rows hold: a
    # thumbnail's digit is only a few pixels tall, and half a pixel is a tenth of it.
    y0 = 2.0 - float(crop[1].max()) - float(crop[0].max())
    y1 = float(bottom - top + 1) + float(crop[-2].max()) + float(crop[-1].max())
    height = y1 - y0
    width = max(x1 - x0, 1.0)
    frame_height = CANVAS * FRAME_HEIGHT
    frame_width = min(width * frame_height / height, CANVAS * FRAME_MAX_WIDTH)
    step_x, step_y = width / frame_width, height / frame_height
    origin_y = y0 - (CANVAS - frame_height) / 2 * step_y
    origin_x = x0 - (CANVAS * FRAME_CENTRE - frame_width / 2) * step_x
    # Canvas (u, v) -> crop (x, y): y = origin_y + v * step_y,
    # x = origin_x + u * step_x + slant * (y - centre row).
    affine = (
        step_x,
        slant * step_y,
        origin_x + slant * (origin_y - cy - 0.5),
        0.0,
        step_y,
        origin_y,
    )
    framed = Image.fromarray(crop, "F").transform(
        (CANVAS, CANVAS), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR
    )
    canvas = np.clip(np.asarray(framed, dtype=np.float32), 0.0, 1.0)
    half = CANVAS // BITMAP
    bitmap = canvas.reshape(BITMAP, half, BITMAP, half).mean(axis=(1, 3), dtype=np.float32)
    return normalise_strokes(bitmap)


def _slant(weights: FloatArray) -> tuple[float, float]:
    """The slant to remove (x shift per row beyond `SLANT_ALLOWED`) and the row centre of mass."""
    rows = np.arange(weights.shape[0], dtype=np.float64)
    columns = np.arange(weights.shape[1], dtype=np.float64)
    row_mass = weights.sum(axis=1, dtype=np.float64)
    total = float(row_mass.sum())
    cy = float(rows @ row_mass) / total
    cx = float(columns @ weights.sum(axis=0, dtype=np.float64)) / total
    mu02 = float(((rows - cy) ** 2) @ row_mass)
    mu11 = float((rows - cy) @ (weights.astype(np.float64) @ (columns - cx)))
    slant = mu11 / mu02 if mu02 > 0 else 0.0
    return float(np.sign(slant)) * max(abs(slant) - SLANT_ALLOWED, 0.0), cy


def normalise_strokes(bitmap: FloatArray) -> FloatArray:
    """Thicken or thin strokes toward the training ink share, as a broader or finer pen would.

    Works on the 32x32 bitmap, as the training data was measured: the pen grows (or shrinks) one
    pixel at a time, alternating a square and a cross so it stays round, and the last step is
    blended so the ink mass meets the nearest bound of `TRAINING_INK_SHARE` exactly.
    """
    share = float(bitmap.mean())
    low, high = TRAINING_INK_SHARE
    if low <= share <= high or share == 0.0 or share == 1.0:
        return bitmap
    target = low if share < low else high
    grow = share < low
    current, mass = bitmap, share
    for step in range(MAX_PEN_CHANGE):
        following = _morph(current, grow=grow, square=step % 2 == 1)
        following_mass = float(following.mean())
        if (following_mass >= target) if grow else (following_mass <= target):
            blend = (target - mass) / (following_mass - mass)
            result: FloatArray = current + np.float32(blend) * (following - current)
            return result
        current, mass = following, following_mass
    return current


def _morph(image: FloatArray, *, grow: bool, square: bool) -> FloatArray:
    """One step of grey dilation (or erosion) by a cross, or by a 3x3 square."""
    pick = np.maximum if grow else np.minimum
    out = image.copy()
    pick(out[1:], image[:-1], out=out[1:])
    pick(out[:-1], image[1:], out=out[:-1])
    source = out if square else image
    wide = out.copy()
    pick(wide[:, 1:], source[:, :-1], out=wide[:, 1:])
    pick(wide[:, :-1], source[:, 1:], out=wide[:, :-1])
    return wide


def touches(marks_mask: NDArray[np.bool_]) -> tuple[bool, bool, bool, bool]:
    """Whether ink reaches the top, bottom, left and right edges of the image."""
    return (
        any_true(marks_mask[0]),
        any_true(marks_mask[-1]),
        any_true(marks_mask[:, 0]),
        any_true(marks_mask[:, -1]),
    )


FRAMED_INK = 0.25
"""Ink above this (of the stretched 0..1) counts when asking whether ink touches an edge: the top
and bottom rows of every training digit hold at least 5 of 16."""

TRAINING_SIDE = BITMAP
"""An image no larger than the training bitmap holds nothing finer to re-frame."""


def already_framed(ink: FloatArray, side: int) -> bool:
    """Whether the ink already fills the frame as in load_digits: it touches top and bottom.

    A tight crop that also touches both sides is re-framed (training digits leave side margins),
    unless the image is no larger than the training bitmap itself.
    """
    top, bottom, left, right = touches(ink > FRAMED_INK)
    return top and bottom and (not (left and right) or side <= TRAINING_SIDE)


def read_plainly(levels: Sequence[Levels], side: int) -> NDArray[np.bool_]:
    """For many images of one size, whether `has_ink`, `already_framed` and `clean` all hold.

    Those are the images read plainly from their own pixels: the three checks, for all at once.
    """
    ink = np.stack([level.ink for level in levels])
    contrast = np.array([level.contrast for level in levels])
    clean = np.array([level.clean for level in levels])
    marked = np.count_nonzero((ink > MARK_INK).reshape(len(ink), -1), axis=1) > 0
    edges = ink > FRAMED_INK
    top, bottom = edges[:, 0].any(axis=1), edges[:, -1].any(axis=1)
    left, right = edges[:, :, 0].any(axis=1), edges[:, :, -1].any(axis=1)
    framed = top & bottom & (~(left & right) | (side <= TRAINING_SIDE))
    plainly: NDArray[np.bool_] = (contrast >= MIN_CONTRAST) & marked & framed & clean
    return plainly


def level_warnings(levels: Levels) -> list[Diagnostic]:
    """The diagnostics about ink and paper."""
    found: list[Diagnostic] = []
    if levels.inverted:
        found.append(warning("inverted_input"))
    if levels.contrast < LOW_CONTRAST:
        found.append(
            warning(
                "low_contrast",
                f"ink stands only {levels.contrast:.2f} from the paper (1.0 is black on white); "
                "the levels were stretched",
            )
        )
    return found


def framing_warnings(
    marks: Marks, shape: tuple[int, ...], source_height: float
) -> list[Diagnostic]:
    """The diagnostics about where the digit is and what else is on the image."""
    found: list[Diagnostic] = []
    top, bottom, left, right = marks.box
    box_share = (bottom - top + 1) * (right - left + 1) / (shape[0] * shape[1])
    if box_share < SMALL_DIGIT_SHARE:
        found.append(
            warning(
                "mostly_empty",
                f"the digit covers {box_share:.1%} of the image; it was cut out and enlarged",
            )
        )
    if source_height < LOW_RESOLUTION_PX:
        found.append(
            warning(
                "low_resolution",
                f"the digit is about {source_height:.0f} pixels tall; {LOW_RESOLUTION_PX} or "
                "more keep the detail that tells digits apart",
            )
        )
    if any(touches(marks.digit)):
        found.append(warning("touches_border"))
    if marks.others_ignored:
        found.append(warning("several_marks"))
    return found
