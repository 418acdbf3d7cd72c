"""Marks are labelled with numpy exactly as scipy.ndimage labelled them, so scipy stays unloaded."""

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from digitserve import evalset
from digitserve.framing import (
    MARK_INK,
    NEAR_SHARE,
    SPECK_SHARE,
    WORK_SIDE,
    Box,
    FloatArray,
    Marks,
    find_marks,
    label_marks,
    measure_levels,
    to_array,
)
from digitserve.training import Split

ROOT = Path(__file__).resolve().parents[1]
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

Mask = NDArray[np.bool_]


def scipy_labels(mask: Mask) -> tuple[NDArray[np.int32], int, list[Box]]:
    """The reference: scipy's labels, count and boxes, the boxes as (top, bottom, left, right)."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    boxes = [
        (rows.start, rows.stop - 1, columns.start, columns.stop - 1)
        for rows, columns in ndimage.find_objects(labels)
    ]
    return labels, count, boxes


def scipy_find_marks(ink: FloatArray, threshold: float = MARK_INK) -> Marks | None:
    """`find_marks` as it was with scipy.ndimage: the behaviour the numpy labelling must keep."""
    mask = ink > threshold
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    largest = int(np.argmax(sizes))
    keep = {largest}
    rows, columns = boxes[largest]
    top, bottom, left, right = rows.start, rows.stop - 1, columns.start, columns.stop - 1
    others_ignored = False
    for index in np.argsort(-sizes):
        index = int(index)
        if index == largest or sizes[index] < SPECK_SHARE * sizes[largest]:
            continue
        near = NEAR_SHARE * (bottom - top + 1)
        rows, columns = boxes[index]
        t, b, lft, r = rows.start, rows.stop - 1, columns.start, columns.stop - 1
        if t <= bottom + near and b >= top - near and lft <= right + near and r >= left - near:
            keep.add(index)
            top, bottom, left, right = min(top, t), max(bottom, b), min(left, lft), max(right, r)
        else:
            others_ignored = True
    kept = np.zeros(count + 1, dtype=bool)
    kept[[index + 1 for index in keep]] = True
    return Marks(kept[labels], (top, bottom, left, right), others_ignored)


def assert_as_scipy(mask: Mask) -> None:
    """Labels (values and dtype), count and boxes all equal scipy's."""
    labels, count, boxes = label_marks(mask)
    expected_labels, expected_count, expected_boxes = scipy_labels(mask)
    assert count == expected_count
    assert boxes == expected_boxes
    assert labels.dtype == expected_labels.dtype
    assert labels.shape == mask.shape
    assert np.array_equal(labels, expected_labels)


def assert_same_marks(ink: FloatArray) -> None:
    """`find_marks` gives what the scipy version gave, field by field."""
    found, expected = find_marks(ink), scipy_find_marks(ink)
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert found.box == expected.box
    assert found.others_ignored == expected.others_ignored
    assert np.array_equal(found.digit, expected.digit)


@st.composite
def masks(draw: st.DrawFn) -> Mask:
    """A mask up to 40x40, of any density (empty and full included), noise or blocky."""
    height = draw(st.integers(1, 40))
    width = draw(st.integers(1, 40))
    density = draw(st.sampled_from([0.0, 0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]) | st.floats(0, 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        # Blocks of 2-4 pixels a side: wider runs, and marks that merge far from where they start.
        block = int(rng.integers(2, 5))
        coarse = rng.random((-(-height // block), -(-width // block))) < density
        mask: Mask = coarse.repeat(block, axis=0).repeat(block, axis=1)[:height, :width]
        return mask
    noise: Mask = rng.random((height, width)) < density
    return noise


@PROPERTY
@given(masks())
def test_random_masks_are_labelled_as_scipy_labels_them(mask: Mask) -> None:
    assert_as_scipy(mask)


@PROPERTY
@given(masks(), st.integers(0, 2**32 - 1))
def test_find_marks_keeps_what_the_scipy_version_kept(mask: Mask, seed: int) -> None:
    ink = (mask * np.random.default_rng(seed).uniform(0.3, 1.0, mask.shape)).astype(np.float32)
    assert_same_marks(ink)


def spiral(side: int) -> Mask:
    """A square spiral, one pixel wide with one-pixel gaps: one mark whose runs join late."""
    mask = np.zeros((side, side), dtype=bool)
    row, column, down, right = 0, 0, 0, 1
    mask[row, column] = True

    def can_step() -> bool:
        """Whether the next cell is on the canvas, and a gap stays between it and older ink."""
        r, c = row + down, column + right
        if not (0 <= r < side and 0 <= c < side) or mask[r, c]:
            return False
        r, c = r + down, c + right
        return not (0 <= r < side and 0 <= c < side) or not mask[r, c]

    while True:
        if not can_step():
            down, right = right, -down  # turn clockwise
            if not can_step():
                return mask
        row, column = row + down, column + right
        mask[row, column] = True


def parse(picture: str) -> Mask:
    """A mask drawn in text: '#' is ink."""
    rows = picture.strip().splitlines()
    return np.array([[pixel == "#" for pixel in row.strip()] for row in rows], dtype=bool)


CHECKERBOARD = np.indices((WORK_SIDE, WORK_SIDE)).sum(axis=0) % 2 == 0

EDGE_CASES: dict[str, tuple[Mask, int]] = {
    "empty": (np.zeros((5, 7), dtype=bool), 0),
    "all_true": (np.ones((6, 9), dtype=bool), 1),
    "single_pixel": (parse("...\n.#.\n..."), 1),
    "one_by_one": (np.ones((1, 1), dtype=bool), 1),
    "diagonal": (np.eye(7, dtype=bool), 1),
    "anti_diagonal": (np.eye(7, dtype=bool)[::-1], 1),
    "diagonal_zigzag": (parse("#...#\n.#.#.\n..#..\n.#.#.\n#...#"), 1),
    "late_merging_u": (parse("#...#\n#...#\n#...#\n#####"), 1),
    "late_merging_w": (parse("#..#..#\n#..#..#\n#..#..#\n.#.#.#.\n..#.#.."), 1),
    "late_diagonal_v": (parse("#.....#\n.#...#.\n..#.#..\n...#..."), 1),
    "later_mark_wraps_an_earlier": (parse(".....#..\n#.......\n#......#\n########"), 2),
    "raster_order_not_size_order": (parse("..#.....\n........\n#.######\n#.######"), 3),
    "spiral": (spiral(23), 1),
    "row": (parse("##.#..##.#"), 4),
    "column": (parse("##.#..##.#").T.copy(), 4),
    "checkerboard": (CHECKERBOARD, 1),
    "inverse_checkerboard": (~CHECKERBOARD, 1),
    "stripes": (np.indices((WORK_SIDE, WORK_SIDE))[1] % 2 == 0, WORK_SIDE // 2),
    "two_wide_gaps": (np.indices((20, 20)).sum(axis=0) % 3 == 0, 13),
}


@pytest.mark.parametrize(("mask", "count"), EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_edge_cases_are_labelled_as_scipy_labels_them(mask: Mask, count: int) -> None:
    assert label_marks(mask)[1] == count
    assert_as_scipy(mask)
    assert_same_marks(mask.astype(np.float32))


def test_marks_are_numbered_in_the_raster_order_of_their_first_pixel() -> None:
    mask = parse(".....#..\n#.......\n#......#\n########")
    labels, count, boxes = label_marks(mask)
    assert count == 2
    assert labels[0, 5] == 1  # the lone pixel's row comes first...
    assert labels[3, 0] == 2  # ...though the other mark is larger and reaches further left
    assert boxes == [(0, 0, 5, 5), (1, 3, 0, 7)]


def test_a_u_is_one_mark_with_its_full_box() -> None:
    labels, count, boxes = label_marks(parse("#...#\n#...#\n#...#\n#####"))
    assert count == 1
    assert set(labels[parse("#...#\n#...#\n#...#\n#####")].tolist()) == {1}
    assert boxes == [(0, 3, 0, 4)]


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_zero_size_masks_have_no_marks(shape: tuple[int, int]) -> None:
    labels, count, boxes = label_marks(np.zeros(shape, dtype=bool))
    assert labels.shape == shape
    assert labels.dtype == np.int32
    assert (count, boxes) == (0, [])


def test_a_non_contiguous_view_is_read_as_its_values() -> None:
    mask = np.random.default_rng(3).random((30, 40)) < 0.45
    view = mask[::2, ::-3].T
    assert not view.flags.c_contiguous
    assert_as_scipy(view)


def rendered_inks(split: Split) -> list[FloatArray]:
    """Ink maps of rendered photos, pen strokes, specks and slants, as the service measures them."""
    rng = np.random.default_rng(5)
    renderers: list[Callable[[NDArray[np.int64], int, evalset.Rng], evalset.Rendering]] = [
        evalset.render_photo,
        evalset.render_specks,
        evalset.render_pen_strokes,
        evalset.render_rotated_slanted,
        evalset.render_ink_paper,
        evalset.render_canvas,
        evalset.render_faint_pencil,
        evalset.render_inverted,
    ]
    inks = []
    for number, renderer in enumerate(renderers):
        for row in range(number, 40, 10):
            rendering = renderer(split.x_test[row].astype(np.int64), int(split.y_test[row]), rng)
            image = Image.open(io.BytesIO(rendering.data)).convert("L")
            factor = -(-max(image.size) // WORK_SIDE)
            grey = np.asarray(image.reduce(factor) if factor > 1 else image)
            inks.append(measure_levels(to_array(grey)).ink)
    return inks


def test_find_marks_on_rendered_digits_is_unchanged(split: Split) -> None:
    inks = rendered_inks(split)
    assert len(inks) == 32
    # Two digits a digit's height apart: the second one is another mark, ignored.
    height = min(inks[0].shape[0], inks[1].shape[0])
    gap = np.zeros((height, height), dtype=np.float32)
    inks.append(np.hstack([inks[0][:height], gap, inks[1][:height]]))
    for ink in inks:
        assert_same_marks(ink)
        assert_as_scipy(ink > MARK_INK)
    pair = find_marks(inks[-1])
    assert pair is not None
    assert pair.others_ignored


def test_importing_framing_does_not_import_scipy() -> None:
    code = "import sys, digitserve.framing; print('scipy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"
