"""`digitserve train` rebuilds the committed artefacts byte for byte, with honest cards."""

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitserve.augment import Font
from digitserve.classifier import load_classifier
from digitserve.evalset import GROUPS
from digitserve.training import (
    QUICK_RECIPE,
    RobustRecipe,
    Split,
    fit_robust,
    robust_samples,
    train,
    train_robust,
)
from tests.conftest import DATA_DIR, MODEL_PATH, ROOT

ROBUST_PATH = ROOT / "src" / "digitserve" / "models" / "digits-robust" / "1" / "model.pickle"


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


@pytest.fixture(scope="module")
def quick_robust(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-robust trained on the tiny recipe, in the repository layout."""
    path = tmp_path_factory.mktemp("repository") / "digits-robust" / "1" / "model.pickle"
    train_robust(path, QUICK_RECIPE)
    return path


def test_a_tiny_robust_recipe_gives_a_64_feature_10_class_classifier(quick_robust: Path) -> None:
    classifier = load_classifier(quick_robust, "digits-robust")
    assert classifier.estimator.n_features_in_ == 64
    assert classifier.classes == tuple(range(10))
    assert classifier.score_kind == "probabilities"
    assert classifier.path == "kernel-table"  # integer support vectors: the fast path serves it
    assert classifier.version == "1.0.0"


def test_robust_card_records_recipe_sources_and_both_models_scores(quick_robust: Path) -> None:
    card = json.loads(quick_robust.with_suffix(".json").read_text())
    assert card["name"] == "digits-robust"
    assert card["sha256"] == load_classifier(quick_robust).sha256
    assert card["input"]["features"] == {
        "shape": [1, 64],
        "dtype": "integer",
        "range": [0, 16],
        "order": "8x8 grid read row by row, 0 = white paper, 16 = solid ink",
    }
    training = card["training"]
    assert training["recipe"]["digits_per_class"] == QUICK_RECIPE.digits_per_class
    assert training["sources"] == {
        "load_digits training half": 80,
        "training digits drawn smooth": 80,
        "varied training digits": 80,
        "varied handwriting font digits": 0,
        "varied printed font digits": 0,
    }
    assert training["train_samples"] == 240
    assert card["support_vectors"] <= training["train_samples"]
    evaluation = card["evaluation"]
    assert set(evaluation["test_half"]) == {"digits-robust", "digits"}
    assert evaluation["test_half"]["digits"] == 0.9878  # the bundled model's own card says so
    assert set(evaluation["test_half_images"]) == {"digits-robust", "digits"}
    groups = evaluation["evalset"]["groups"]
    assert set(groups) == set(GROUPS)
    assert all(set(scores) == {"digits-robust", "digits"} for scores in groups.values())
    assert evaluation["evalset"]["images"] == "digitserve make-evalset --per-group 2 --seed 0"


def test_robust_training_is_deterministic(split: Split) -> None:
    first = robust_samples(split, QUICK_RECIPE)
    second = robust_samples(split, QUICK_RECIPE)
    assert np.array_equal(first.features, second.features)
    assert np.array_equal(first.labels, second.labels)
    assert np.array_equal(first.features, np.rint(first.features))  # integer levels 0..16
    assert first.features.min() >= 0
    assert first.features.max() <= 16
    one, two = fit_robust(first, QUICK_RECIPE), fit_robust(second, QUICK_RECIPE)
    for name in ("support_vectors_", "dual_coef_", "intercept_"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    assert np.array_equal(one.predict_proba(first.features), two.predict_proba(first.features))


def test_robust_samples_never_include_the_test_half(split: Split) -> None:
    samples = robust_samples(split, replace(QUICK_RECIPE, digit_variations=0, smooth_digits=False))
    test_rows = {row.tobytes() for row in split.x_test}
    train_rows = {row.tobytes() for row in split.x_train}
    assert not {row.tobytes() for row in samples.features} & (test_rows - train_rows)


def test_a_missing_font_names_its_debian_package(split: Split) -> None:
    nothing = Font("truetype/none/Nothing.ttf", "fonts-none", "printed")
    recipe = replace(QUICK_RECIPE, fonts=(nothing,))
    with pytest.raises(FileNotFoundError, match=r"install the Debian package\(s\) fonts-none"):
        robust_samples(split, recipe)


def test_train_command_builds_the_robust_model_where_asked(tmp_path: Path) -> None:
    target = tmp_path / "digits-robust" / "1" / "model.pickle"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitserve",
            "train",
            "--robust",
            "--quick",
            "--model",
            str(target),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert result.stdout.startswith(f"wrote {target} (sha256 ")
    assert "evaluation set" in result.stdout
    assert json.loads(target.with_suffix(".json").read_text())["name"] == "digits-robust"


def test_quick_is_only_for_the_robust_model() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digitserve", "train", "--quick", "--no-examples"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--quick is for --robust" in result.stderr


def test_bundled_robust_model_matches_its_card_and_beats_digits() -> None:
    classifier = load_classifier(ROBUST_PATH, "digits-robust")
    card = classifier.card
    assert card["sha256"] == classifier.sha256  # the card describes this very file
    assert ROBUST_PATH.stat().st_size < 5_000_000
    assert classifier.path == "kernel-table"
    assert card["support_vectors"] == len(classifier.estimator.support_vectors_)
    assert card["training"]["recipe"] == json.loads(json.dumps(RobustRecipe().describe()))
    evaluation = card["evaluation"]
    assert evaluation["test_half"]["digits-robust"] >= 0.98
    assert evaluation["test_half_images"]["digits-robust"] >= 0.98
    groups = evaluation["evalset"]["groups"]
    for group in ("pen_strokes", "mnist_style", "rotated_slanted", "stroke_width"):
        assert groups[group]["digits-robust"] > groups[group]["digits"], group
    assert evaluation["evalset"]["all"]["digits-robust"] > evaluation["evalset"]["all"]["digits"]
