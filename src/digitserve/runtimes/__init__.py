"""Runtimes: how one model file is loaded and asked for predictions, by its format.

scikit-learn files (pickle, joblib, skops) are served by `digitserve.classifier`; ONNX files by
ONNX Runtime (`runtimes.onnx`). Either way the result is one `Classifier`, checked and warmed up,
that knows nothing of HTTP or images.
"""

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from digitserve.classifier import Classifier, ScoreKind, load_classifier, read_card, read_pinned
from digitserve.errors import ModelLoadError
from digitserve.preprocessing import LEVELS, N_FEATURES

logger = logging.getLogger("digitserve")


def load_model(
    path: Path,
    name: str,
    *,
    version: str | None = None,
    expected_sha256: str | None = None,
    trusted_types: Sequence[str] = (),
    compile_onnx: bool = False,
) -> Classifier:
    """Load one model file with the runtime its suffix names (compared case-insensitively).

    With `compile_onnx`, a scikit-learn model that only the public API could serve is served by
    ONNX Runtime instead when its export is exact and faster (`runtimes.compiled`).
    """
    if path.suffix.lower() != ".onnx":
        classifier = load_classifier(
            path,
            name,
            expected_sha256=expected_sha256,
            trusted_types=trusted_types,
            version=version,
        )
        if not compile_onnx or classifier.path != "scikit-learn":
            return classifier
        return _compiled(classifier)
    from digitserve.runtimes.onnx import load_onnx, looks_like_probabilities

    data, sha256 = read_pinned(path, expected_sha256)
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


def _compiled(classifier: Classifier) -> Classifier:
    """The classifier served by ONNX Runtime when its export passes, else as it is; say which."""
    from digitserve.runtimes.compiled import compiled

    verdict = compiled(classifier.estimator, classifier.sha256, classifier.answer)
    card = {**classifier.card, "runtime_check": verdict.reason}
    if verdict.model is None:
        logger.warning("model %s: served by scikit-learn: %s", classifier.name, verdict.reason)
        return replace(classifier, card=card)
    logger.info("model %s: served by ONNX Runtime: %s", classifier.name, verdict.reason)
    return replace(classifier, answer=verdict.model.answer, path="onnxruntime", card=card)
