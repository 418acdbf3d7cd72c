"""Rebuild the bundled artefacts: the SVC pickles, their model cards, the example images in data/.

`train` makes `digits` (load_digits' training half as it is); `train_robust` makes `digits-robust`
(the same half and digits drawn in fonts, varied by `augment` and read by the service's pipeline).
Deterministic: the same scikit-learn, numpy and Pillow (FreeType) releases and the same font files
write the same bytes.
"""

import csv
import hashlib
import io
import json
import pickle
import platform
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import sklearn
from numpy.typing import NDArray
from PIL import ImageFont
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from digitserve import augment
from digitserve.augment import HANDWRITING_FONTS, PRINTED_FONTS, Font, Ranges
from digitserve.classifier import file_sha256
from digitserve.errors import DigitserveError
from digitserve.preprocessing import (
    ACCEPTED_MEDIA_TYPES,
    GRID,
    LEVELS,
    preprocess_image,
    render_digit,
)

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

INPUT = {
    "media_types": list(ACCEPTED_MEDIA_TYPES),
    "features": {
        "shape": [1, GRID * GRID],
        "dtype": "integer",
        "range": [0, LEVELS],
        "order": "8x8 grid read row by row, 0 = white paper, 16 = solid ink",
    },
}
"""What every model here takes: the card says it so a client needs nothing else."""


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
        "input": INPUT,
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


ROBUST_NAME = "digits-robust"

ROBUST_VERSION = "1.0.0"
"""Bump when the robust recipe changes."""

BUNDLED_REPOSITORY = Path("src/digitserve/models")
"""The bundled model repository, in a checkout: what `digitserve train` rebuilds by default."""

MODEL_PATH = BUNDLED_REPOSITORY / "digits" / "1" / "model.pickle"
"""Where `digitserve train` writes digits: a model repository's <name>/<version>/model.<ext>."""

ROBUST_MODEL_PATH = BUNDLED_REPOSITORY / "digits-robust" / "1" / "model.pickle"
"""Where `digitserve train --robust` writes: a model repository's <name>/<version>/model.<ext>."""

EVAL_MAX_PIXELS = 40_000_000
"""The service's default image limit, for reading the evaluation set as the service would."""


@dataclass(frozen=True)
class RobustRecipe:
    """Everything that decides digits-robust: the same recipe and releases give the same bytes.

    The defaults are the published model. The counts were chosen by cross-validation on the
    training half, by leaving each handwriting font out in turn, and on pen drawings rendered
    apart from the evaluation set, within the support vectors that keep a prediction under twice
    the cost of `digits`'s: more variations of the training digits read fonts no better and the
    digits themselves worse.
    """

    smooth_digits: bool = True
    """Also read each training digit drawn as a smooth stroke filling the image, unvaried: the
    plainest picture of a digit, which the service reads as already framed."""
    digit_variations: int = 1
    """Varied renderings of each load_digits training digit (the digit itself is always kept)."""
    handwriting_variations: int = 3
    """Varied renderings of each digit of each handwriting font."""
    printed_variations: int = 1
    """Varied renderings of each digit of each printed font."""
    fonts: tuple[Font, ...] = HANDWRITING_FONTS + PRINTED_FONTS
    ranges: Ranges = field(default_factory=Ranges)
    digits_per_class: int | None = None
    """Only the first n training digits of each class (tiny recipes for tests); None: all."""
    c: float = 5.0
    gamma: float = 0.001
    """The SVC's C and gamma, as for `digits`: larger sets than this cost support vectors."""
    seed: int = SEED
    evalset_per_group: int = 200
    """Evaluation-set images per group for the card, as `digitserve make-evalset` renders them."""
    evalset_seed: int = 0

    def describe(self) -> dict[str, Any]:
        """The recipe as the card records it."""
        recipe = asdict(self)
        recipe["fonts"] = [font.file for font in self.fonts]
        return recipe


QUICK_RECIPE = RobustRecipe(
    digit_variations=1,
    handwriting_variations=0,
    printed_variations=0,
    fonts=(),
    digits_per_class=8,
    evalset_per_group=2,
)
"""A tiny recipe that trains in about a second, for tests and smoke runs: not a useful model."""


@dataclass(frozen=True)
class Samples:
    """The robust model's training rows, and how many came from each source."""

    features: NDArray[np.float64]
    labels: NDArray[np.int64]
    sources: dict[str, int]


def _name_seed(name: str) -> int:
    """A stable number for a name, so one font's variations do not depend on the font list."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def _varied(
    base: augment.FloatImage, count: int, rng: np.random.Generator, ranges: Ranges
) -> list[NDArray[np.int64]]:
    """`count` variations of a digit's ink, as the service reads them (unreadable ones dropped)."""
    rows = []
    for _ in range(count):
        features = augment.service_features(
            augment.vary(base, augment.draw_variation(rng, ranges), rng)
        )
        if features is not None:
            rows.append(features)
    return rows


SOURCES = (
    "load_digits training half",
    "training digits drawn smooth",
    "varied training digits",
    "varied handwriting font digits",
    "varied printed font digits",
)
"""Where the robust model's training rows come from, as the card counts them."""


def robust_samples(split: Split, recipe: RobustRecipe) -> Samples:
    """The training half as it is, drawn smooth, varied, and font digits varied, as feature rows.

    Each digit's variations come from a generator seeded by the recipe's seed and that digit
    alone (its training row, or its font file and value), so every sample is reproducible.
    """
    missing = [font for font in recipe.fonts if not font.path.is_file()]
    if missing:
        packages = sorted({font.package for font in missing})
        raise FileNotFoundError(
            f"fonts not found: {', '.join(str(font.path) for font in missing)}; "
            f"install the Debian package(s) {' '.join(packages)}"
        )
    rows = _training_rows(split.y_train, recipe.digits_per_class)
    features: list[NDArray[Any]] = list(split.x_train[rows])
    labels = [int(label) for label in split.y_train[rows]]
    sources = dict.fromkeys(SOURCES, 0)
    sources[SOURCES[0]] = len(rows)

    def add(source: str, found: list[NDArray[np.int64]], label: int) -> None:
        features.extend(found)
        labels.extend([label] * len(found))
        sources[source] += len(found)

    for row in rows:
        rng = np.random.default_rng([recipe.seed, 0, int(row)])
        base = augment.grid_ink(split.x_train[row].astype(np.int64))
        label = int(split.y_train[row])
        plain = augment.service_features(base) if recipe.smooth_digits else None
        add("training digits drawn smooth", [] if plain is None else [plain], label)
        found = _varied(base, recipe.digit_variations, rng, recipe.ranges)
        add("varied training digits", found, label)
    counts = {"handwriting": recipe.handwriting_variations, "printed": recipe.printed_variations}
    for font in recipe.fonts:
        for digit in range(10):
            rng = np.random.default_rng([recipe.seed, 1, _name_seed(font.file), digit])
            ink = augment.font_ink(font.path, digit)
            found = _varied(ink, counts[font.style], rng, recipe.ranges)
            add(f"varied {font.style} font digits", found, digit)
    return Samples(
        np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64), sources
    )


def _training_rows(labels: NDArray[np.int64], per_class: int | None) -> NDArray[np.intp]:
    """Rows of the training half to use: all, or the first `per_class` of each class."""
    if per_class is None:
        return np.arange(len(labels))
    chosen = [np.flatnonzero(labels == label)[:per_class] for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def fit_robust(samples: Samples, recipe: RobustRecipe) -> SVC:
    """Fit the robust SVC with calibrated probabilities, as the service reports them."""
    with warnings.catch_warnings():
        # As in `fit_svc`: scikit-learn 1.9 deprecates `probability=True`; 1.9.1 supports it.
        warnings.simplefilter("ignore", FutureWarning)
        model = SVC(C=recipe.c, gamma=recipe.gamma, probability=True, random_state=recipe.seed)
        model.fit(samples.features, samples.labels)
    return model


def evalset_accuracy(models: dict[str, Any], per_group: int, seed: int) -> dict[str, Any]:
    """Accuracy per evaluation-set group for each model, images read as the service reads them.

    The images are those `digitserve make-evalset --per-group N --seed S` writes (same picks,
    same generator), rendered in memory; an image the service refuses counts as wrong.
    """
    # Imported here: evalset renders the held-out half, so it imports this module.
    from digitserve.evalset import GROUPS

    split = split_digits()
    groups: dict[str, dict[str, float]] = {}
    correct = dict.fromkeys(models, 0)
    total = 0
    for number, (name, renderer) in enumerate(GROUPS.items()):
        rng = np.random.default_rng([seed, number])
        count = min(per_group, len(split.y_test))
        picks = rng.choice(len(split.y_test), size=count, replace=False)
        rows, labels = [], []
        for index in picks:
            label = int(split.y_test[index])
            rendering = renderer(split.x_test[index].astype(np.int64), label, rng)
            try:
                rows.append(preprocess_image(rendering.data, max_pixels=EVAL_MAX_PIXELS).features)
            except DigitserveError:
                continue  # refused: wrong for every model
            labels.append(label)
        groups[name] = {}
        for model_name, model in models.items():
            hits = 0
            if rows:
                predicted = model.predict(np.asarray(rows, dtype=np.float64))
                hits = int(np.count_nonzero(predicted == np.asarray(labels)))
            groups[name][model_name] = round(hits / count, 4)
            correct[model_name] += hits
        total += count
    return {
        "images": f"digitserve make-evalset --per-group {per_group} --seed {seed}",
        "groups": groups,
        "all": {name: round(hits / total, 4) for name, hits in correct.items()},
    }


TEST_IMAGE_SIDE = 64
"""The test half is also sent as images: PNGs of this side, read by the service's pipeline."""


def test_images_accuracy(models: dict[str, Any], split: Split) -> dict[str, float]:
    """Accuracy on the held-out half drawn as PNG images and read as the service reads uploads."""
    rows = []
    for features in split.x_test:
        buffer = io.BytesIO()
        render_digit(features.astype(np.int64), TEST_IMAGE_SIDE).save(buffer, "PNG")
        rows.append(preprocess_image(buffer.getvalue(), max_pixels=EVAL_MAX_PIXELS).features)
    read = np.asarray(rows, dtype=np.float64)
    return {name: round(float(each.score(read, split.y_test)), 4) for name, each in models.items()}


def robust_card(
    model: SVC, samples: Samples, split: Split, recipe: RobustRecipe, sha256: str
) -> dict[str, Any]:
    """Describe digits-robust: what it learnt from, and how it reads beside `digits`."""
    digits = fit_svc(split)
    models = {ROBUST_NAME: model, "digits": digits}
    return {
        "name": ROBUST_NAME,
        "version": ROBUST_VERSION,
        "description": "Reads a hand-written digit (dark on light or light on dark) and says "
        "which of 0-9 it is; trained for the writing styles load_digits never shows.",
        "sha256": sha256,
        "estimator": f"sklearn.svm.SVC(C={recipe.c}, gamma={recipe.gamma}, probability=True)",
        "support_vectors": int(model.n_support_.sum()),
        "created_with": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "freetype": ImageFont.core.freetype2_version,
        },
        "classes": [int(label) for label in model.classes_],
        "labels": {str(int(label)): LABEL_NAMES[int(label)] for label in model.classes_},
        "training": {
            "dataset": "sklearn.datasets.load_digits (1,797 8x8 images, values 0..16): the "
            "training half only, plus digits drawn in fonts; no other handwriting data",
            "split": f"stratified train_test_split, test_size={TEST_FRACTION}, random_state={SEED}",
            "recipe": recipe.describe(),
            "fonts": [
                {"file": font.file, "package": font.package, "sha256": font.sha256()}
                for font in recipe.fonts
            ],
            "sources": samples.sources,
            "train_samples": len(samples.labels),
            "test_samples": len(split.y_test),
            "train_accuracy": round(float(model.score(samples.features, samples.labels)), 4),
            "test_accuracy": round(float(model.score(split.x_test, split.y_test)), 4),
        },
        "evaluation": {
            "test_half": {
                name: round(float(each.score(split.x_test, split.y_test)), 4)
                for name, each in models.items()
            },
            "test_half_images": test_images_accuracy(models, split),
            "evalset": evalset_accuracy(models, recipe.evalset_per_group, recipe.evalset_seed),
        },
        "input": INPUT,
    }


def train_robust(
    model_path: Path = ROBUST_MODEL_PATH, recipe: RobustRecipe = RobustRecipe()
) -> dict[str, Any]:
    """Build digits-robust, write its pickle and its card (same stem, .json), return the card."""
    split = split_digits()
    samples = robust_samples(split, recipe)
    model = fit_robust(samples, recipe)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with model_path.open("wb") as handle:
        pickle.dump(model, handle, protocol=pickle.HIGHEST_PROTOCOL)
    card = robust_card(model, samples, split, recipe, file_sha256(model_path))
    model_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card
