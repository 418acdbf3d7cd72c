"""Rebuild the bundled artefact: the SVC pickle, its model card, and the example images in data/.

Deterministic: the same scikit-learn and numpy releases write the same bytes.
"""

import csv
import json
import pickle
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from numpy.typing import NDArray
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from digitserve.classifier import file_sha256
from digitserve.preprocessing import ACCEPTED_MEDIA_TYPES, GRID, LEVELS, render_digit

SEED = 0
"""One seed for the split and the SVC's probability calibration: the artefact is reproducible."""

TEST_FRACTION = 0.5
"""Half of load_digits is held out, stratified by class, for accuracy and for the examples."""

SVC_PARAMS: dict[str, Any] = {"C": 5.0, "gamma": 0.001}
"""Chosen by 5-fold cross-validation on the training half only (C in 1,5,10; gamma 5e-4..2e-3)."""

MODEL_VERSION = "1.0.0"
"""Bump when the training recipe changes."""

EXAMPLE_SIDES = (8, 64, 256)
"""Each digit ships at the model's own 8x8 and as plain upscales, one held-out sample per size."""

LABEL_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Split:
    """The stratified train/test halves of load_digits."""

    x_train: NDArray[np.float64]
    x_test: NDArray[np.float64]
    y_train: NDArray[np.int64]
    y_test: NDArray[np.int64]


def split_digits() -> Split:
    """Split load_digits the one documented way every part of the project uses."""
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SEED
    )
    return Split(x_train, x_test, y_train, y_test)


def fit_svc(split: Split) -> SVC:
    """Fit the SVC with calibrated probabilities, as the service reports them."""
    with warnings.catch_warnings():
        # scikit-learn 1.9 deprecates `probability=True` (removal planned for 1.11); the pinned
        # release still supports it and the product requires a plain SVC with predict_proba.
        warnings.simplefilter("ignore", FutureWarning)
        model = SVC(**SVC_PARAMS, probability=True, random_state=SEED)
        model.fit(split.x_train, split.y_train)
    return model


def model_card(model: SVC, split: Split, sha256: str) -> dict[str, Any]:
    """Describe the artefact for consumers who know nothing about it."""
    return {
        "name": "digits",
        "version": MODEL_VERSION,
        "description": "Reads a hand-drawn digit (black ink on white) and says which of 0-9 it is.",
        "sha256": sha256,
        "estimator": f"sklearn.svm.SVC({', '.join(f'{k}={v}' for k, v in SVC_PARAMS.items())}, "
        "probability=True)",
        "created_with": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "classes": [int(label) for label in model.classes_],
        "labels": {str(int(label)): LABEL_NAMES[int(label)] for label in model.classes_},
        "training": {
            "dataset": "sklearn.datasets.load_digits (1,797 8x8 images, values 0..16)",
            "split": f"stratified train_test_split, test_size={TEST_FRACTION}, random_state={SEED}",
            "train_samples": len(split.y_train),
            "test_samples": len(split.y_test),
            "train_accuracy": round(float(model.score(split.x_train, split.y_train)), 4),
            "test_accuracy": round(float(model.score(split.x_test, split.y_test)), 4),
        },
        "input": {
            "media_types": list(ACCEPTED_MEDIA_TYPES),
            "features": {
                "shape": [1, GRID * GRID],
                "dtype": "integer",
                "range": [0, LEVELS],
                "order": "8x8 grid read row by row, 0 = white paper, 16 = solid ink",
            },
        },
    }


def write_examples(model: SVC, split: Split, directory: Path) -> list[dict[str, Any]]:
    """Render held-out digits as JPEGs a new user can send straight away, with an index file."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    correct = model.predict(split.x_test) == split.y_test
    for digit in range(10):
        # Correctly classified held-out samples only: the examples demonstrate, they do not test.
        candidates = np.flatnonzero((split.y_test == digit) & correct)
        for side, sample in zip(EXAMPLE_SIDES, candidates, strict=False):
            name = f"{digit}_{side}px.jpg"
            render_digit(split.x_test[sample].astype(np.int64), side).save(
                directory / name, "JPEG", quality=95
            )
            rows.append({"file": name, "label": digit, "size": side, "test_index": int(sample)})
    with (directory / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "size", "test_index"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def train(model_path: Path, examples_dir: Path | None) -> dict[str, Any]:
    """Train, write the pickle and its card (and the examples), and return the card."""
    split = split_digits()
    model = fit_svc(split)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with model_path.open("wb") as handle:
        pickle.dump(model, handle, protocol=pickle.HIGHEST_PROTOCOL)
    card = model_card(model, split, file_sha256(model_path))
    model_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    if examples_dir is not None:
        write_examples(model, split, examples_dir)
    return card
