"""`digitserve train` rebuilds the committed artefact byte for byte, with an honest card."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitserve.classifier import load_classifier
from digitserve.training import train
from tests.conftest import DATA_DIR, MODEL_PATH


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh training run into a temporary folder."""
    folder = tmp_path_factory.mktemp("artefact")
    train(folder / "classifier.pickle", folder / "data")
    return folder


def test_train_command_rebuilds_the_bundled_model_byte_for_byte(tmp_path: Path) -> None:
    target = tmp_path / "classifier.pickle"
    subprocess.run(
        [sys.executable, "-m", "digitserve", "train", "--model", str(target), "--no-examples"],
        check=True,
        capture_output=True,
    )
    assert target.read_bytes() == MODEL_PATH.read_bytes()
    assert target.with_suffix(".json").read_text() == MODEL_PATH.with_suffix(".json").read_text()


def test_in_process_training_fits_the_same_model(trained: Path) -> None:
    # Pickle bytes depend on string interning in the process; the fitted arrays must not differ.
    fresh = load_classifier(trained / "classifier.pickle").estimator
    bundled = load_classifier(MODEL_PATH).estimator
    for name in ("support_vectors_", "dual_coef_", "intercept_"):
        assert np.array_equal(getattr(fresh, name), getattr(bundled, name)), name
    probe = np.arange(64, dtype=np.float64).reshape(1, 64) % 17
    assert np.array_equal(fresh.predict_proba(probe), bundled.predict_proba(probe))


def test_card_has_what_consumers_need(trained: Path) -> None:
    card = json.loads((trained / "classifier.json").read_text())
    assert card["name"] == "digits"
    assert card["classes"] == list(range(10))
    assert card["labels"]["7"] == "seven"
    assert set(card["created_with"]) == {"python", "scikit-learn", "numpy"}
    assert card["training"]["train_samples"] + card["training"]["test_samples"] == 1797
    assert card["training"]["test_accuracy"] >= 0.98
    assert card["input"]["features"]["range"] == [0, 16]
    assert load_classifier(trained / "classifier.pickle").card == card
    bundled = json.loads(MODEL_PATH.with_suffix(".json").read_text())
    assert {**card, "sha256": None} == {**bundled, "sha256": None}


def test_examples_cover_every_digit_at_three_sizes(trained: Path) -> None:
    with (trained / "data" / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({int(row["label"]) for row in rows}) == list(range(10))
    assert {int(row["size"]) for row in rows} == {8, 64, 256}
    for row in rows:
        assert row["file"].startswith(f"{row['label']}_")
        with Image.open(trained / "data" / row["file"]) as image:
            assert image.format == "JPEG"
            assert image.size == (int(row["size"]), int(row["size"]))
        assert (trained / "data" / row["file"]).read_bytes() == (
            DATA_DIR / row["file"]
        ).read_bytes()
