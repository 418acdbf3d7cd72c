"""The synthetic variation behind digits-robust: seeded, and each kind does what it says."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from digitserve import augment
from digitserve.augment import HANDWRITING_FONTS, PRINTED_FONTS, Variation
from digitserve.preprocessing import area_average, read_digit
from digitserve.training import Split

PLAIN = Variation(
    warp=0.0,
    pen=0,
    rotate=0.0,
    shear=0.0,
    squeeze=1.0,
    height=64,
    tight=False,
    place=(0.5, 0.5),
)
"""A variation that changes nothing but the margin."""

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@pytest.fixture(scope="module")
def ink(split: Split) -> augment.FloatImage:
    """A training digit (a 0, with a loop) as a smooth 64x64 stroke."""
    zero = int(np.flatnonzero(split.y_train == 0)[0])
    return augment.grid_ink(split.x_train[zero].astype(np.int64))


def test_variations_are_drawn_the_same_for_a_seed() -> None:
    first = [augment.draw_variation(np.random.default_rng(7)) for _ in range(2)]
    assert first[0] == first[1]
    assert augment.draw_variation(np.random.default_rng(8)) != first[0]


def test_variations_stay_in_their_ranges() -> None:
    ranges = augment.Ranges()
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = augment.draw_variation(rng, ranges)
        assert ranges.warp[0] <= v.warp <= ranges.warp[1]
        assert ranges.pen[0] <= v.pen <= ranges.pen[1]
        assert ranges.rotate[0] <= v.rotate <= ranges.rotate[1]
        assert ranges.shear[0] <= v.shear <= ranges.shear[1]
        assert ranges.squeeze[0] <= v.squeeze <= ranges.squeeze[1]
        assert ranges.height[0] <= v.height <= ranges.height[1]


def test_a_varied_digit_is_the_same_for_a_seed(ink: augment.FloatImage) -> None:
    def varied(seed: int) -> augment.FloatImage:
        rng = np.random.default_rng(seed)
        return augment.vary(ink, augment.draw_variation(rng), rng)

    assert np.array_equal(varied(3), varied(3))
    assert not np.array_equal(varied(3), varied(4))


def test_grid_ink_is_the_grid_drawn_smooth(split: Split, ink: augment.FloatImage) -> None:
    zero = split.x_train[int(np.flatnonzero(split.y_train == 0)[0])]
    assert ink.shape == (augment.SIDE, augment.SIDE)
    assert ink.min() >= 0.0
    assert ink.max() <= 1.0
    # The same share of ink as the grid, in the same places.
    assert ink.mean() == pytest.approx(zero.mean() / 16, abs=0.03)
    reduced = area_average(ink).ravel() * 16
    assert np.corrcoef(reduced, zero)[0, 1] > 0.95


def test_a_broader_pen_adds_ink_and_a_finer_one_takes_it(ink: augment.FloatImage) -> None:
    mass = float(ink.sum())
    assert float(augment.change_pen(ink, 2).sum()) > 1.2 * mass
    thinner = float(augment.change_pen(ink, -1).sum())
    assert 0.5 * mass <= thinner < 0.9 * mass
    assert np.array_equal(augment.change_pen(ink, 0), ink)


def test_thinning_never_erases_a_fine_stroke() -> None:
    line = np.zeros((40, 40), dtype=np.float32)
    line[5:35, 19:21] = 1.0
    assert float(augment.change_pen(line, -3).sum()) >= 0.5 * float(line.sum())


def test_turning_and_slanting_keep_the_ink_mass(ink: augment.FloatImage) -> None:
    mass = float(ink.sum())
    for rotate, shear in ((15.0, 0.0), (-10.0, 0.0), (0.0, 0.4), (8.0, -0.3)):
        moved = augment.transform(augment.pad(ink, 16), rotate, shear, 1.0)
        assert float(moved.sum()) == pytest.approx(mass, rel=0.05), (rotate, shear)
    assert float(augment.transform(ink, 0.0, 0.0, 0.8).sum()) == pytest.approx(0.8 * mass, rel=0.05)


def test_turning_turns_the_ink_the_stated_way() -> None:
    bar = np.zeros((41, 41), dtype=np.float32)
    bar[20, 5:36] = 1.0  # a horizontal bar
    turned = augment.transform(bar, 30.0, 0.0, 1.0)
    ys, xs = np.nonzero(turned > 0.5)
    # Anticlockwise on the page (y down): the right end rises, so y falls as x grows.
    assert np.polyfit(xs, ys, 1)[0] == pytest.approx(-np.tan(np.radians(30)), abs=0.05)


def test_slant_leans_the_top_to_the_right() -> None:
    post = np.zeros((41, 41), dtype=np.float32)
    post[5:36, 20] = 1.0  # a vertical post
    leant = augment.transform(post, 0.0, 0.3, 1.0)
    ys, xs = np.nonzero(leant > 0.5)
    assert np.polyfit(ys, xs, 1)[0] == pytest.approx(-0.3, abs=0.03)


def test_placing_a_digit_moves_its_centre_of_mass(ink: augment.FloatImage) -> None:
    corner = augment.vary(ink, replace(PLAIN, place=(0.0, 0.0)), np.random.default_rng(0))
    across = augment.vary(ink, replace(PLAIN, place=(1.0, 0.0)), np.random.default_rng(0))
    assert corner.shape == across.shape
    y0, x0 = ndimage.center_of_mass(corner)
    y1, x1 = ndimage.center_of_mass(across)
    # The margin is as wide as the digit is tall: from one side of it to the other.
    assert (y1 - y0, x1 - x0) == pytest.approx((0.0, float(PLAIN.height)), abs=0.5)


def test_elastic_warp_bends_strokes_without_losing_them(ink: augment.FloatImage) -> None:
    padded = augment.pad(ink, 8)
    warped = augment.elastic(padded, 4.0, np.random.default_rng(0))
    assert not np.array_equal(warped, padded)
    assert float(warped.sum()) == pytest.approx(float(padded.sum()), rel=0.15)
    # Nothing moves further than the amplitude: the centre of mass stays within it.
    before, after = ndimage.center_of_mass(padded), ndimage.center_of_mass(warped)
    assert np.hypot(after[0] - before[0], after[1] - before[1]) <= 4.0
    unchanged = augment.elastic(padded, 0.0, np.random.default_rng(0))
    assert np.array_equal(unchanged, padded)


def test_resizing_sets_the_height_and_keeps_proportions(ink: augment.FloatImage) -> None:
    wide = ink[:, :48]
    small = augment.resize_height(wide, 16)
    assert small.shape == (16, 12)


def test_a_margin_is_framed_by_the_service_and_a_tight_crop_is_not(
    ink: augment.FloatImage,
) -> None:
    margin = augment.vary(ink, PLAIN, np.random.default_rng(0))
    tight = augment.vary(ink, replace(PLAIN, tight=True), np.random.default_rng(0))
    assert margin.shape[0] > 64
    assert tight.shape[0] == 64
    assert read_digit(augment.to_pixels(margin)).reframed
    assert not read_digit(augment.to_pixels(tight)).reframed


def test_service_features_are_what_the_service_reads(ink: augment.FloatImage) -> None:
    page = augment.vary(ink, PLAIN, np.random.default_rng(0))
    features = augment.service_features(page)
    assert features is not None
    assert np.array_equal(features, read_digit(augment.to_pixels(page)).features)
    assert augment.service_features(np.zeros((32, 32), dtype=np.float32)) is None


def test_pixels_are_black_ink_on_white() -> None:
    ink = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    assert augment.to_pixels(ink).tolist() == [[255, 0], [128, 191]]


def test_every_font_names_the_debian_package_that_ships_it() -> None:
    for font in HANDWRITING_FONTS + PRINTED_FONTS:
        assert font.package.startswith("fonts-")
        assert font.path.is_relative_to(augment.FONT_DIR)
    assert {font.style for font in HANDWRITING_FONTS} == {"handwriting"}
    assert {font.style for font in PRINTED_FONTS} == {"printed"}


@pytest.mark.skipif(not DEJAVU.is_file(), reason="needs the Debian package fonts-dejavu-core")
def test_a_font_digit_is_drawn_side_tall() -> None:
    one = augment.font_ink(DEJAVU, 1)
    eight = augment.font_ink(DEJAVU, 8)
    assert one.shape[0] == eight.shape[0] == augment.SIDE
    assert one.shape[1] < eight.shape[1]  # proportions kept
    assert eight.max() == pytest.approx(1.0, abs=0.01)
    assert np.array_equal(eight, augment.font_ink(DEJAVU, 8))
