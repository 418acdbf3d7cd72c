"""Runtimes: how one model file is loaded and asked for predictions, by its format.

ONNX files are served by ONNX Runtime (`runtimes.onnx`). scikit-learn files (pickle, joblib,
skops) by the runtime their plan chose (`runtimes.compiled`: ONNX Runtime, numpy, or scikit-learn
with `digitserve.classifier`'s fast paths), or by `digitserve.classifier` alone when compiling is
off. Either way the result is one `Classifier`, checked and warmed up, that knows nothing of HTTP
or images.
"""

import hashlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
from numpy.typing import NDArray

from digitserve.batching import answers_alike_in_batches
from digitserve.classifier import (
    Classifier,
    PredictionPath,
    ScoreKind,
    load_classifier,
    model_format_of,
    read_card,
    read_pinned,
    warmed_up,
)
from digitserve.errors import ModelLoadError
from digitserve.preprocessing import LEVELS, N_FEATURES

if TYPE_CHECKING:
    from digitserve.runtimes.compiled import Plan

logger = logging.getLogger("digitserve")


class ArrayRuntime(Protocol):
    """A numpy runtime: made from an estimator in the compiling child, served without it.

    It is saved as arrays (`.npz`, read without pickle) and answers without scikit-learn.
    """

    @property
    def classes(self) -> tuple[int | str, ...]: ...

    def answer(self, features: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]: ...

    def arrays(self) -> dict[str, NDArray[Any]]: ...


class ArrayRuntimeType(Protocol):
    """How an array runtime is made: from an estimator (None if it cannot take it) or arrays."""

    def from_estimator(self, estimator: Any) -> ArrayRuntime | None: ...

    def from_arrays(self, arrays: Mapping[str, NDArray[Any]]) -> ArrayRuntime: ...


def _array_runtimes() -> dict[str, ArrayRuntimeType]:
    from digitserve.runtimes.neighbors import NeighborsModel
    from digitserve.runtimes.svm import SvmModel

    return {SvmModel.KIND: SvmModel, NeighborsModel.KIND: NeighborsModel}


ARRAY_RUNTIMES: dict[str, ArrayRuntimeType] = _array_runtimes()
"""The numpy runtimes by name, as plans name them."""


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

    With `compile_onnx`, a scikit-learn file is served by the runtime its plan chose
    (`runtimes.compiled`): ONNX Runtime or numpy without scikit-learn in this process, or
    scikit-learn with `digitserve.classifier`'s fast paths.
    """
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, name, version, expected_sha256)
    if not compile_onnx:
        return load_classifier(
            path,
            name,
            expected_sha256=expected_sha256,
            trusted_types=trusted_types,
            version=version,
        )
    from digitserve.runtimes.compiled import plan_for

    model_format_of(path)  # an unknown suffix is refused before anything is read or run
    data, sha256 = read_pinned(path, expected_sha256)
    plan, folder, how = plan_for(path, sha256, trusted_types)
    if plan is None or plan.needs_scikit_learn:
        # The bytes already read and hashed: the file the plan was made for is the one loaded.
        classifier = load_classifier(
            path, name, trusted_types=trusted_types, version=version, pinned=(data, sha256)
        )
        reason = plan.reason if plan is not None else how
        if plan is None:
            logger.warning("model %s: served by %s: %s", name, classifier.path, reason)
        return replace(classifier, card={**classifier.card, "runtime_check": reason})
    del data  # served without it: the plan's runtime file stands in for the model
    logger.info("model %s: served by %s (%s plan): %s", name, plan.runtime, how, plan.reason)
    return _from_plan(path, name, version, sha256, plan, folder)


def _from_plan(
    path: Path, name: str, version: str | None, sha256: str, plan: "Plan", folder: Path
) -> Classifier:
    """Open the plan's runtime file: the model is served without unpickling it."""
    assert plan.artefact is not None  # noqa: S101 - a plan without scikit-learn has one
    data = (folder / plan.artefact).read_bytes()
    if hashlib.sha256(data).hexdigest() != plan.artefact_sha256:
        raise ModelLoadError(f"the compiled runtime of {path} changed in the cache; retry")
    classes = tuple(plan.classes)
    model: Any
    if plan.runtime == "onnxruntime":
        from digitserve.runtimes.onnx import load_onnx

        model = load_onnx(str(folder / plan.artefact), data, classes)
    else:
        runtime = ARRAY_RUNTIMES.get(plan.runtime)
        if runtime is None:
            raise ModelLoadError(f"{path}: its plan names an unknown runtime {plan.runtime!r}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                model = runtime.from_arrays(dict(arrays))
        except ValueError as exc:
            raise ModelLoadError(f"the compiled runtime of {path} is unreadable: {exc}") from exc
    card = read_card(path, sha256)
    classifier = Classifier(
        estimator=model,
        name=name,
        version=version or str(card.get("version") or sha256[:12]),
        sha256=sha256,
        classes=classes,
        score_kind="probabilities" if plan.score_kind == "probabilities" else "decision_scores",
        answer=model.answer,
        path=cast(PredictionPath, plan.runtime),
        card={**card, "runtime_check": plan.reason},
        batchable=plan.batchable,
        model_format=model_format_of(path),
    )
    return warmed_up(classifier, path)


def _load_onnx(
    path: Path, name: str, version: str | None, expected_sha256: str | None
) -> Classifier:
    """An operator's ONNX file: opened, checked on random rows and warmed up."""
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
        batchable=answers_alike_in_batches(model.answer, rows),
        model_format="onnx",
    )
