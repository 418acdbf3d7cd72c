"""The evaluation-set generator: every group renders decodable images with an honest manifest."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitserve.evalset import (
    FRAMED_GROUPS,
    GROUPS,
    MANIFEST,
    PEN_GROUPS,
    smooth_ink,
    transform_ink,
    write_evalset,
)
from digitserve.training import Split
from tests.conftest import EVALSET_PER_GROUP


def test_manifest_lists_every_group_with_labels_and_sources(
    small_evalset: Path, split: Split
) -> None:
    with (small_evalset / MANIFEST).open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "label", "group", "source"]
    assert [row["group"] for row in rows] == [
        group for group in GROUPS for _ in range(EVALSET_PER_GROUP)
    ]
    for row in rows:
        assert (small_evalset / row["file"]).is_file()
        if row["group"] in PEN_GROUPS:
            assert row["source"] == "pen template"
            continue
        half, index = row["source"].split(":")
        assert half == "test"
        assert int(split.y_test[int(index)]) == int(row["label"])


def test_every_image_decodes_within_the_promised_sizes(small_evalset: Path) -> None:
    with (small_evalset / MANIFEST).open() as handle:
        rows = list(csv.DictReader(handle))
    sides = []
    for row in rows:
        with Image.open(io.BytesIO((small_evalset / row["file"]).read_bytes())) as image:
            image.load()
            assert image.format in ("JPEG", "PNG")
            sides.append(max(image.size))
            if row["group"] == "transparent_png":
                assert image.mode == "RGBA"
            if row["group"] == "mnist_style":
                assert image.size == (28, 28)
    assert min(sides) >= 8
    assert max(sides) <= 3000


def test_framed_groups_are_the_held_out_vectors(small_evalset: Path, split: Split) -> None:
    with (small_evalset / MANIFEST).open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["group"] == FRAMED_GROUPS[0]]
    for row in rows:
        grid = np.asarray(Image.open(small_evalset / row["file"]).convert("L"), dtype=float)
        original = split.x_test[int(row["source"].split(":")[1])]
        assert np.abs((255 - grid.ravel()) / 255 * 16 - original).max() <= 2


def test_smooth_ink_keeps_the_digits_ink_mass(seven: np.ndarray) -> None:
    ink = smooth_ink(seven, 128)
    assert ink.shape == (128, 128)
    assert float(ink.mean()) == pytest.approx(seven.sum() / 16 / 64, abs=0.03)
    assert set(np.unique(ink >= 0.5)) == {False, True}


def test_transform_ink_grows_the_canvas_to_keep_the_digit(seven: np.ndarray) -> None:
    ink = smooth_ink(seven, 100)
    turned = transform_ink(ink, 10, 0.3)
    assert turned.shape[0] > 100
    assert turned.shape[1] > 100
    assert float(turned.sum()) == pytest.approx(float(ink.sum()), rel=0.05)
    assert transform_ink(ink, 0, 0) is ink


def test_the_same_seed_renders_the_same_set(tmp_path: Path) -> None:
    first = write_evalset(tmp_path / "a", 2, seed=3, groups=["canvas", "mnist_style"])
    second = write_evalset(tmp_path / "b", 2, seed=3, groups=["canvas", "mnist_style"])
    assert first.read_text() == second.read_text()
    for name in ("canvas/0000", "mnist_style/0001"):
        [a] = (tmp_path / "a").glob(f"{name}_*")
        [b] = (tmp_path / "b").glob(f"{name}_*")
        assert a.read_bytes() == b.read_bytes()


def test_training_half_is_available_for_calibration(tmp_path: Path) -> None:
    manifest = write_evalset(tmp_path, 2, groups=["canvas"], training_half=True)
    with manifest.open() as handle:
        assert all(row["source"].startswith("train:") for row in csv.DictReader(handle))


def test_unknown_groups_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown group"):
        write_evalset(tmp_path, 1, groups=["canvas", "watercolour"])
