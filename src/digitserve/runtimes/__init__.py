"""Runtimes: how one model file is loaded and asked for predictions, by its format.

scikit-learn files (pickle, joblib, skops) are served by `digitserve.classifier`; ONNX files by
ONNX Runtime (`runtimes.onnx`). Either way the result is one `Classifier`, checked and warmed up,
that knows nothing of HTTP or images.
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digitserve.classifier import Classifier, ScoreKind, load_classifier, read_card
from digitserve.errors import ModelLoadError
from digitserve.preprocessing import LEVELS, N_FEATURES


def load_model(
    path: Path,
    name: str,
    *,
    version: str | None = None,
    expected_sha256: str | None = None,
    trusted_types: Sequence[str] = (),
) -> Classifier:
    """Load one model file with the runtime its suffix names (compared case-insensitively)."""
    if path.suffix.lower() != ".onnx":
        return load_classifier(
            path,
            name,
            expected_sha256=expected_sha256,
            trusted_types=trusted_types,
            version=version,
        )
    from digitserve.runtimes.onnx import load_onnx, looks_like_probabilities

    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise ModelLoadError(
            f"{path} has sha256 {sha256}, not the expected {expected_sha256.lower()}; "
            "refusing to load it"
        )
    model = load_onnx(str(path), data)
    rows = np.random.default_rng(0).integers(0, LEVELS + 1, size=(64, N_FEATURES))
    try:
        labels, scores = model.answer(rows)
    except Exception as exc:
        raise ModelLoadError(f"{path} failed a warm-up prediction: {exc}") from exc
    if scores.shape != (len(rows), len(model.classes)):
        raise ModelLoadError(
            f"{path} gives {scores.shape[-1]} scores per row for {len(model.classes)} classes"
        )
    unknown = set(labels.tolist()) - set(model.classes)
    if unknown:
        raise ModelLoadError(f"{path} predicts labels outside its classes: {sorted(unknown)[:5]}")
    score_kind: ScoreKind = (
        "probabilities" if looks_like_probabilities(scores) else "decision_scores"
    )
    return Classifier(
        estimator=model,
        name=name,
        version=version or sha256[:12],
        sha256=sha256,
        classes=model.classes,
        score_kind=score_kind,
        answer=model.answer,
        path="onnxruntime",
        card=read_card(path, sha256),
    )
