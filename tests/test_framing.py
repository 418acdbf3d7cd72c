"""Framing step by step on synthetic images: levels, polarity, marks, frame, strokes, warnings."""

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from digitserve import framing
from digitserve.classifier import Classifier
from digitserve.errors import BlankImage
from digitserve.evalset import compose, paper, place, smooth_ink
from digitserve.framing import (
    BITMAP,
    FRAME_MAX_WIDTH,
    TRAINING_INK_SHARE,
    already_framed,
    find_marks,
    frame,
    measure_levels,
    normalise_strokes,
    to_array,
)
from digitserve.preprocessing import read_digit, render_digit
from digitserve.training import Split

Colour = tuple[int, int, int]
RNG = np.random.default_rng(0)


def drawing(
    features: NDArray[np.int64],
    *,
    size: tuple[int, int] = (200, 200),
    digit: int = 120,
    at: tuple[int, int] = (40, 40),
    sheet: Colour = (255, 255, 255),
    ink: Colour = (0, 0, 0),
    gradient: float = 0.0,
) -> Image.Image:
    """A held-out digit drawn with a smooth pen at a size and place on coloured paper."""
    layer = place(smooth_ink(features, digit), size, at)
    return compose(layer, paper(size, sheet, gradient, RNG), ink, rng=RNG)


def levels_of(image: Image.Image) -> framing.Levels:
    """Measure an image's levels directly."""
    return measure_levels(to_array(np.asarray(image)))


def stroke_and_paper(
    image: Image.Image, seven: NDArray[np.int64]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Where the digit's stroke and the bare paper are (not the stroke's soft edge)."""
    reference = np.asarray(drawing(seven, size=image.size).convert("L"))
    return reference < 64, reference > 250


def test_grey_paper_and_faint_ink_are_stretched(seven: NDArray[np.int64]) -> None:
    image = drawing(seven, sheet=(190, 190, 190), ink=(150, 150, 150))
    levels = levels_of(image)
    stroke, bare = stroke_and_paper(image, seven)
    # Ink is read relative to the paper under it: 40 levels darker than paper at 190.
    assert levels.contrast == pytest.approx(40 / 190, abs=0.02)
    assert not levels.inverted
    assert not levels.clean
    assert np.median(levels.ink[stroke]) > 0.95
    assert levels.ink[bare].max() < 0.05
    codes = [w.code for w in read_digit(image).warnings]
    assert codes == ["low_contrast"]


def test_coloured_ink_on_coloured_paper_reads_as_ink(seven: NDArray[np.int64]) -> None:
    image = drawing(seven, sheet=(250, 238, 160), ink=(25, 45, 160))
    levels = levels_of(image)
    stroke, bare = stroke_and_paper(image, seven)
    assert np.median(levels.ink[stroke]) > 0.95
    assert levels.ink[bare].max() < 0.05
    assert levels.contrast > framing.LOW_CONTRAST


def test_light_ink_on_a_dark_ground_is_inverted(seven: NDArray[np.int64]) -> None:
    image = drawing(seven, sheet=(30, 60, 40), ink=(235, 235, 225))
    levels = levels_of(image)
    stroke, bare = stroke_and_paper(image, seven)
    assert levels.inverted
    assert np.median(levels.ink[stroke]) > 0.95
    assert levels.ink[bare].max() < 0.05
    result = read_digit(image)
    assert [w.code for w in result.warnings] == ["inverted_input"]
    assert np.abs(result.features - read_digit(drawing(seven)).features).max() <= 1


def test_a_lighting_gradient_is_not_ink(seven: NDArray[np.int64]) -> None:
    image = drawing(seven, sheet=(235, 235, 230), ink=(60, 60, 60), gradient=0.5)
    levels = levels_of(image)
    stroke, bare = stroke_and_paper(image, seven)
    assert levels.ink[bare].max() < 0.1
    assert np.median(levels.ink[stroke]) > 0.95


def test_clean_black_on_white_needs_no_stretch(seven: NDArray[np.int64]) -> None:
    levels = levels_of(drawing(seven))
    assert levels.clean
    assert levels.contrast > 0.95


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("plane_paper", [False, True])
def test_one_channel_distance_is_the_colour_formula_bit_for_bit(
    relative: bool, plane_paper: bool
) -> None:
    rng = np.random.default_rng(3)
    grey = rng.random((1, 40, 30), dtype=np.float32)
    level = rng.random((40, 30), dtype=np.float32) if plane_paper else np.float32(rng.random())
    difference = grey[0] - level
    if relative:
        difference /= np.maximum(level, np.float32(framing.DARKEST_PAPER))
    expected = np.sqrt((np.zeros_like(difference) + difference * difference) / np.float32(1))
    assert np.array_equal(framing._distance(grey, [level], relative=relative), expected)


def test_fast_clip_and_any_agree_with_numpy() -> None:
    values = np.random.default_rng(4).normal(0.5, 1.0, (16, 16)).astype(np.float32)
    assert np.array_equal(framing.clip_unit(values), np.clip(values, 0.0, 1.0))
    for mask in (values > 3.0, values > 10.0, np.zeros((0,), dtype=bool)):
        assert framing.any_true(mask) == bool(mask.any())


@pytest.mark.parametrize("colour", [(255, 255, 255), (128, 128, 128), (255, 0, 0), (0, 0, 0)])
def test_one_flat_colour_is_blank(colour: Colour) -> None:
    image = Image.new("RGB", (64, 64), colour)
    assert levels_of(image).contrast < framing.MIN_CONTRAST
    with pytest.raises(BlankImage):
        read_digit(image)


def blob(ink: NDArray[np.float32], top: int, left: int, height: int, width: int) -> None:
    """Paint a solid rectangle of ink."""
    ink[top : top + height, left : left + width] = 1.0


def test_specks_are_dropped_without_a_warning() -> None:
    ink = np.zeros((100, 100), dtype=np.float32)
    blob(ink, 20, 30, 60, 8)
    blob(ink, 20, 30, 8, 30)
    for y, x in [(2, 2), (95, 90), (50, 80), (90, 10)]:
        ink[y, x] = 1.0
    marks = find_marks(ink)
    assert marks is not None
    assert marks.box == (20, 79, 30, 59)
    assert not marks.others_ignored
    assert marks.digit.sum() == 60 * 8 + 8 * 22


def test_a_separate_mark_is_ignored_and_noted() -> None:
    ink = np.zeros((100, 200), dtype=np.float32)
    blob(ink, 20, 20, 60, 10)
    blob(ink, 20, 150, 40, 10)
    marks = find_marks(ink)
    assert marks is not None
    assert marks.box == (20, 79, 20, 29)
    assert marks.others_ignored


def test_strokes_close_to_the_digit_belong_to_it() -> None:
    ink = np.zeros((100, 100), dtype=np.float32)
    blob(ink, 20, 30, 60, 6)
    blob(ink, 20, 50, 30, 6)
    blob(ink, 85, 40, 4, 20)
    marks = find_marks(ink)
    assert marks is not None
    assert marks.box == (20, 88, 30, 59)
    assert not marks.others_ignored


def test_nothing_but_paper_has_no_marks() -> None:
    assert find_marks(np.zeros((20, 20), dtype=np.float32)) is None


def inked_extent(canvas: NDArray[np.float32]) -> tuple[int, int, int, int]:
    """top, bottom, left, right of the half-inked pixels."""
    rows = np.flatnonzero((canvas >= 0.5).any(axis=1))
    columns = np.flatnonzero((canvas >= 0.5).any(axis=0))
    return int(rows[0]), int(rows[-1]), int(columns[0]), int(columns[-1])


def test_frame_stretches_the_ink_box_to_the_training_frame() -> None:
    ink = np.zeros((128, 128), dtype=np.float32)
    blob(ink, 50, 60, 20, 24)  # a small, wide, hollow box: a zero written flat
    ink[54:66, 64:80] = 0.0
    marks = find_marks(ink)
    assert marks is not None
    canvas = frame(ink, marks)
    top, bottom, left, right = inked_extent(canvas)
    assert (top, bottom) == (0, BITMAP - 1)
    assert right - left + 1 == pytest.approx(BITMAP * FRAME_MAX_WIDTH, abs=1)
    assert (left + right + 1) / 2 == pytest.approx(BITMAP * framing.FRAME_CENTRE, abs=1)


def test_a_narrow_digit_keeps_its_proportions() -> None:
    ink = np.zeros((128, 128), dtype=np.float32)
    blob(ink, 10, 60, 100, 4)  # a hairline one, 25 times taller than wide
    marks = find_marks(ink)
    assert marks is not None
    canvas = frame(ink, marks)
    top, bottom, left, right = inked_extent(canvas)
    assert (top, bottom) == (0, BITMAP - 1)
    # Not stretched to the frame's width: only thickened to the training ink share, as training
    # ones are (a stem about 10 of 32 pixels wide).
    assert float(canvas.mean()) == pytest.approx(TRAINING_INK_SHARE[0], abs=0.005)
    assert right - left + 1 == pytest.approx(BITMAP * TRAINING_INK_SHARE[0], abs=1.5)
    assert (left + right + 1) / 2 == pytest.approx(BITMAP * framing.FRAME_CENTRE, abs=1)


def test_strong_slant_is_removed() -> None:
    ink = np.zeros((128, 128), dtype=np.float32)
    for row in range(100):
        start = 70 - row // 2  # leans right by half a pixel per row: slant 0.5
        ink[14 + row, start : start + 10] = 1.0
    marks = find_marks(ink)
    assert marks is not None
    canvas = frame(ink, marks) >= 0.5
    centres = [np.flatnonzero(canvas[row]).mean() for row in (4, BITMAP - 5)]
    leaning = abs(centres[0] - centres[1])
    # Unstraightened, the top would sit 0.5 * 23 pixels right of the bottom; 0.1 * 23 is allowed.
    assert leaning <= framing.SLANT_ALLOWED * 23 + 1.5


@pytest.mark.parametrize(("thickness", "expected"), [(1, 0), (14, 1)])
def test_strokes_are_brought_to_the_training_ink_share(thickness: int, expected: int) -> None:
    bitmap = np.zeros((BITMAP, BITMAP), dtype=np.float32)
    bitmap[:, 10 : 10 + thickness] = 1.0
    bitmap[:thickness, 5:27] = 1.0
    normalised = normalise_strokes(bitmap)
    assert float(normalised.mean()) == pytest.approx(TRAINING_INK_SHARE[expected], abs=1e-4)
    # The stroke keeps its shape: it grows or shrinks around the same skeleton.
    assert normalised[20, 10 + thickness // 2] == 1.0
    assert normalised[20, :3].max() == 0


def test_a_dot_grows_only_as_far_as_the_pen_may() -> None:
    bitmap = np.zeros((BITMAP, BITMAP), dtype=np.float32)
    bitmap[16, 16] = 1.0
    grown = normalise_strokes(bitmap)
    # Six steps, alternating cross and square: a 13-pixel octagon, far short of 30% of the frame.
    assert (grown > 0).sum() == 13 * 13 - 4 * 6
    assert float(grown.mean()) < TRAINING_INK_SHARE[0]


def test_strokes_already_like_training_are_left_alone() -> None:
    bitmap = np.zeros((BITMAP, BITMAP), dtype=np.float32)
    bitmap[:, 10:21] = 1.0  # 34% of the frame
    assert normalise_strokes(bitmap) is bitmap


def test_framed_input_is_recognised(split: Split) -> None:
    digit = split.x_test[5].astype(np.int64)
    upscale = np.asarray(render_digit(digit, 64), dtype=np.float32)
    assert already_framed(np.float32(1) - upscale / np.float32(255), 64)
    on_canvas = levels_of(drawing(digit)).ink
    assert not already_framed(on_canvas, 200)
    tight = np.ones((200, 200), dtype=np.float32)
    assert not already_framed(tight, 200)
    assert already_framed(tight[:32, :32], 32)


def test_canvas_drawings_are_framed_back_to_their_digits(
    split: Split, classifier: Classifier
) -> None:
    rows = split.x_test[:30].astype(np.int64)
    places = [(10, 10), (70, 5), (5, 70), (60, 60), (30, 45)]
    features = np.stack(
        [
            read_digit(drawing(row, digit=int(100 + 10 * (i % 4)), at=places[i % 5])).features
            for i, row in enumerate(rows)
        ]
    )
    assert np.abs(features - rows).mean() < 1.6
    labels = classifier.estimator.predict(features.astype(np.float64))
    assert (labels == split.y_test[:30]).sum() >= 27


def codes_of(image: Image.Image) -> list[str]:
    """The warning codes preprocessing gives an image."""
    return [w.code for w in read_digit(image).warnings]


def test_a_clean_drawing_has_no_warnings(seven: NDArray[np.int64]) -> None:
    assert codes_of(drawing(seven)) == []


def test_a_small_digit_on_a_big_page(seven: NDArray[np.int64]) -> None:
    assert codes_of(drawing(seven, size=(600, 600), digit=60, at=(300, 200))) == ["mostly_empty"]
    assert codes_of(drawing(seven, size=(120, 120), digit=11, at=(50, 50))) == [
        "mostly_empty",
        "low_resolution",
    ]


def test_a_digit_cut_by_the_edge(seven: NDArray[np.int64]) -> None:
    assert codes_of(drawing(seven, at=(120, 40))) == ["touches_border"]


def test_two_digits_side_by_side(split: Split) -> None:
    layer = place(smooth_ink(split.x_test[0].astype(np.int64), 100), (300, 160), (20, 30))
    layer += place(smooth_ink(split.x_test[1].astype(np.int64), 90), (300, 160), (180, 30))
    image = compose(layer, paper((300, 160), (255, 255, 255), 0.0, RNG), (0, 0, 0), rng=RNG)
    assert codes_of(image) == ["several_marks"]
