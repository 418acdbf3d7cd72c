"""The hosted model: loaded and checked once, then asked for predictions and its own description."""

import functools
import hashlib
import io
import json
import logging
import math
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from digitserve.errors import ModelLoadError
from digitserve.preprocessing import LEVELS, N_FEATURES
from digitserve.repository import MODEL_SUFFIXES, ModelFormat

logger = logging.getLogger(__name__)

MODEL_FORMATS: dict[str, ModelFormat] = {
    suffix: model_format
    for suffix, model_format in MODEL_SUFFIXES.items()
    if model_format != "onnx"
}
"""The suffixes of scikit-learn files (`repository.MODEL_SUFFIXES` less ONNX, which
`digitserve.runtimes` loads)."""

ScoreKind = Literal["probabilities", "decision_scores"]
Label = int | str
Rows = NDArray[np.float64]
Predictor = Callable[[Rows], NDArray[Any]]
Answers = tuple[NDArray[Any], NDArray[Any]]
Answerer = Callable[[NDArray[Any]], Answers]
"""(n, 64) feature rows -> each row's label, as `predict()` gives it, and its score per class."""
PredictionPath = Literal[
    "scikit-learn", "libsvm", "kernel-table", "onnxruntime", "svm", "neighbors"
]
"""How predictions are made: the public API, libsvm without per-call checks (`_direct_svc`),
libsvm given a kernel looked up once per call (`KernelTable`), ONNX Runtime, or numpy's SVC and
nearest neighbours (`runtimes.svm`, `runtimes.neighbors`)."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """One answer: the label from `predict()`, how sure the model is, and a score per class."""

    label: Label
    confidence: float | None
    scores: dict[str, float]


@dataclass(frozen=True, slots=True)
class Classifier:
    """A fitted scikit-learn classifier with 64 inputs, and what it was found able to do at load."""

    estimator: Any
    name: str
    version: str
    sha256: str
    classes: tuple[Label, ...]
    score_kind: ScoreKind
    answer: Answerer = field(repr=False)
    path: PredictionPath = "scikit-learn"
    card: dict[str, Any] = field(default_factory=dict)
    batchable: bool = False
    """Whether a row's answer is the same, to the bit, alone or in a batch with other rows: only
    then may requests share model calls (`batching`)."""
    model_format: ModelFormat = "pickle"
    """The format of the file served (its framework, for the v2 metadata's `platform`), whatever
    runtime answers for it."""

    @property
    def class_keys(self) -> tuple[str, ...]:
        """Class labels as the strings used for JSON keys."""
        return tuple(str(label) for label in self.classes)

    def predict(self, features: NDArray[np.int64]) -> list[Prediction]:
        """Classify a batch of (n, 64) feature rows."""
        labels, scores = self.answer(features.reshape(-1, N_FEATURES))
        keys = self.class_keys
        index = {label: position for position, label in enumerate(self.classes)}
        predictions = []
        for label, row in zip(labels.tolist(), scores.tolist(), strict=True):
            confidence = row[index[label]] if self.score_kind == "probabilities" else None
            predictions.append(Prediction(label, confidence, dict(zip(keys, row, strict=True))))
        return predictions


def float_rows(features: NDArray[Any]) -> Rows:
    """The C-contiguous float64 rows scikit-learn and libsvm compute on."""
    return np.ascontiguousarray(features, dtype=np.float64)


def answerer(predictors: tuple[Predictor, Predictor]) -> Answerer:
    """Ask for labels, then scores, from the same float rows."""
    labels, scores = predictors

    def answer(features: NDArray[Any]) -> Answers:
        rows = float_rows(features)
        return labels(rows), np.asarray(scores(rows), dtype=np.float64)

    return answer


def _public_predictors(estimator: Any, score_kind: ScoreKind) -> tuple[Predictor, Predictor]:
    """Predict through scikit-learn's public API: right for any classifier.

    An SVC asked for one-vs-one decision values (`decision_function_shape="ovo"`) gives one per
    pair of classes; the service reports one score per class, so those are turned into
    one-vs-rest scores with scikit-learn's own function, as its default shape does.
    """
    if score_kind == "probabilities":
        return estimator.predict, estimator.predict_proba
    n_classes = len(estimator.classes_)
    if getattr(estimator, "decision_function_shape", None) == "ovo" and n_classes > 2:
        from sklearn.utils.multiclass import _ovr_decision_function

        def one_vs_rest(rows: Rows) -> NDArray[np.float64]:
            pairs = estimator.decision_function(rows)
            return _decision_matrix(_ovr_decision_function(pairs < 0, -pairs, n_classes))

        return estimator.predict, one_vs_rest
    return estimator.predict, lambda rows: _decision_matrix(estimator.decision_function(rows))


@functools.cache
def _one_vs_rest_plan(n_classes: int) -> tuple[NDArray[np.intp], Rows, NDArray[np.intp]]:
    """Which pair adds to which class, in which order and with which sign (see `ovr_scores`).

    Made once per number of classes, and shared: its arrays are read-only.
    """
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    index = {pair: k for k, pair in enumerate(pairs)}
    columns = np.empty((n_classes - 1, n_classes), dtype=np.intp)
    signs = np.empty((n_classes - 1, n_classes), dtype=np.float64)
    for c in range(n_classes):
        steps = [(index[i, c], 1.0) for i in range(c)]
        steps += [(index[c, j], -1.0) for j in range(c + 1, n_classes)]
        for t, (k, sign) in enumerate(steps):
            columns[t, c], signs[t, c] = k, sign
    winners = np.array(pairs, dtype=np.intp).reshape(-1, 2)  # (pairs, 2): winner if >= 0, if < 0
    for array in (columns, signs, winners):
        array.flags.writeable = False
    return columns, signs, winners


def pair_votes(second_wins: NDArray[np.bool_], n_classes: int) -> Rows:
    """Each class's votes over its pairs (rows, classes), as exact float counts.

    `second_wins` (rows, pairs) says where a pair's second class won. A pair's first class counts
    once per pair it leads, less the pairs it lost: one small matrix product, in place of
    comparing every winner with every class.
    """
    led, swing = _vote_plan(n_classes)
    votes: Rows = second_wins @ swing
    votes += led
    return votes


@functools.cache
def _vote_plan(n_classes: int) -> tuple[Rows, Rows]:
    """Votes per class if every pair's first class won, and what each pair's loss moves."""
    winners = _one_vs_rest_plan(n_classes)[2]
    led = np.zeros(n_classes)
    swing = np.zeros((len(winners), n_classes))
    for pair, (first, second) in enumerate(winners):
        led[first] += 1.0
        swing[pair, first] -= 1.0
        swing[pair, second] += 1.0
    for array in (led, swing):
        array.flags.writeable = False
    return led, swing


def ovr_scores(one_vs_one: Rows, n_classes: int) -> Rows:
    """scikit-learn's `_ovr_decision_function(d < 0, -d, n)` for libsvm's values d, vectorised.

    scikit-learn's loop visits each pair of classes in turn, about 400 µs for one row of ten
    classes, more than the prediction. Here each class adds its pairs' confidences in the very
    order that loop does (so the float sums are the same to the bit): the steps are laid out on
    the first axis of a C-contiguous array, which numpy reduces by adding row after row. Votes are
    counts. `load_classifier` checks the result against the public API anyway.
    """
    columns, signs, _ = _one_vs_rest_plan(n_classes)
    # (steps, rows, classes): step t of every class, for every row.
    steps = np.negative(one_vs_one.T[columns]).transpose(0, 2, 1) * signs[:, np.newaxis, :]
    sums = np.add.reduce(np.ascontiguousarray(steps), axis=0) + 0.0  # 0.0: -0.0 as the loop's
    # scikit-learn's vote: a pair's first class wins unless the value is below 0.
    votes = pair_votes(one_vs_one < 0, n_classes)
    result: Rows = votes + sums / (3 * (np.abs(sums) + 1))
    return result


def _direct_svc(estimator: Any, score_kind: ScoreKind) -> tuple[Predictor, Predictor] | None:
    """For a dense libsvm SVC with probabilities, call libsvm without the per-call input checks.

    In scikit-learn 1.9 those checks (dataframe detection, feature names, finiteness) cost three
    times the prediction itself for one row. The service already hands over C-contiguous float64
    (n, 64) rows of 0..16, so they prove nothing here. These are private methods: `load_classifier`
    uses them only after checking they give exactly the public API's answers.
    """
    from sklearn.svm import SVC

    if type(estimator) is not SVC or score_kind != "probabilities":
        return None
    if getattr(estimator, "_sparse", True) or getattr(estimator, "break_ties", True):
        return None
    dense_predict = getattr(estimator, "_dense_predict", None)
    dense_proba = getattr(estimator, "_dense_predict_proba", None)
    if not callable(dense_predict) or not callable(dense_proba):
        return None
    classes: NDArray[Any] = np.asarray(estimator.classes_)

    def labels(rows: Rows) -> NDArray[Any]:
        positions: NDArray[np.intp] = np.asarray(dense_predict(rows), dtype=np.intp)
        return classes.take(positions)

    return labels, dense_proba


@dataclass(frozen=True, slots=True)
class RbfTable:
    """An RBF kernel for integer rows 0..16 against integer support vectors, from one table.

    |x - sv|^2 is then an integer from 0 to 64 * 16^2, which float64 holds exactly however the
    sum is ordered: |x|^2 + |sv|^2 - 2 x.sv from one matrix product is the very number libsvm's
    loop gives, and exp(-gamma * that) is looked up in a table made with `math.exp`, the C
    library's exp that libsvm calls. Used by `KernelTable` and the numpy SVC (`runtimes.svm`).
    """

    minus_twice_vectors_t: Rows
    """-2 * the support vectors, transposed: one product gives -2 x.sv for every pair."""
    squared_norms: Rows
    exp_table: Rows
    """exp(-gamma * s) for every possible squared distance s."""

    @classmethod
    def of(cls, vectors: Rows, gamma: float) -> "RbfTable":
        """The table for these support vectors (integers 0..16) and this gamma."""
        largest = N_FEATURES * LEVELS**2
        return cls(
            minus_twice_vectors_t=np.ascontiguousarray(-2.0 * vectors.T),
            squared_norms=np.einsum("ij,ij->i", vectors, vectors),
            exp_table=np.array([math.exp(-gamma * s) for s in range(largest + 1)]),
        )

    def kernel(self, rows: Rows) -> Rows:
        """The (n, support vectors) kernel of integer rows 0..16."""
        distances = rows @ self.minus_twice_vectors_t
        distances += self.squared_norms
        distances += (rows * rows).sum(axis=1, keepdims=True)
        kernel: Rows = self.exp_table.take(distances.astype(np.intp))
        return kernel


@dataclass(frozen=True, slots=True)
class KernelTable:
    """An RBF SVC's kernel for integer features 0..16, computed once per call from a table.

    libsvm works the RBF kernel out one support vector at a time, in a scalar loop, and does it
    twice per row: once for the label, once again for the probabilities. With features and
    support vectors that are integers 0..16, |x - sv|^2 is an integer from 0 to 64 * 16^2, which
    float64 holds exactly however the sum is ordered: |x|^2 + |sv|^2 - 2 x.sv from one matrix
    product gives the very number libsvm's loop does, and exp(-gamma * that) is looked up in a
    table made with `math.exp`, the C library's exp that libsvm calls. libsvm then takes the
    kernel in its precomputed-kernel mode and votes and couples probabilities as it always does
    (or, for an SVC without probabilities, sums its one-vs-one decision values, which scikit-learn's
    own function turns into one-vs-rest scores), so answers are bit for bit its own
    (`load_classifier` checks that before using this).
    """

    table: RbfTable
    classes: NDArray[Any]
    model_arguments: tuple[Any, ...]
    """What libsvm's predict calls take after the kernel: the fitted model, read once."""
    model_options: dict[str, Any]
    fallback: Answerer
    """For rows the table does not cover: not integers 0..16, or none at all."""
    libsvm: Any = None
    """scikit-learn's libsvm binding, held here: scikit-learn is imported only to load a model."""
    decision_shape: str | None = None
    """None: the scores are probabilities; else `decision_function_shape` ("ovr" or "ovo")."""

    @classmethod
    def build(
        cls, estimator: Any, score_kind: ScoreKind, fallback: Answerer
    ) -> "KernelTable | None":
        """The table for an RBF SVC whose support vectors are integers 0..16, or None."""
        from sklearn.svm import SVC, _libsvm
        from sklearn.svm._base import LIBSVM_IMPL

        if type(estimator) is not SVC or estimator.kernel != "rbf" or estimator.break_ties:
            return None
        if getattr(estimator, "_sparse", True):
            return None  # fitted on a sparse matrix: its support vectors are sparse too
        vectors: Rows = np.ascontiguousarray(estimator.support_vectors_, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != N_FEATURES or not _digit_levels(vectors):
            return None
        return cls(
            table=RbfTable.of(vectors, float(estimator._gamma)),
            classes=np.asarray(estimator.classes_),
            model_arguments=(
                np.arange(len(vectors), dtype=np.int32),  # the kernel's columns, in order
                _NO_VECTORS,
                estimator._n_support,
                estimator._dual_coef_,
                estimator._intercept_,
                estimator._probA,
                estimator._probB,
            ),
            model_options={
                "svm_type": LIBSVM_IMPL.index(estimator._impl),
                "kernel": "precomputed",
                "degree": estimator.degree,
                "coef0": estimator.coef0,
                "gamma": estimator._gamma,
                "cache_size": estimator.cache_size,
            },
            fallback=fallback,
            libsvm=_libsvm,
            decision_shape=(
                None if score_kind == "probabilities" else str(estimator.decision_function_shape)
            ),
        )

    def kernel(self, rows: Rows) -> Rows:
        """The (n, support vectors) kernel of integer rows 0..16."""
        return self.table.kernel(rows)

    def answer(self, features: NDArray[Any]) -> Answers:
        """Labels and probabilities from one kernel, or from the fallback outside the table."""
        if not _digit_levels(features):
            return self.fallback(features)
        rows = float_rows(features)
        if len(rows) <= KERNEL_BLOCK_ROWS:
            return self._answer_block(rows)
        blocks = [
            self._answer_block(rows[start : start + KERNEL_BLOCK_ROWS])
            for start in range(0, len(rows), KERNEL_BLOCK_ROWS)
        ]
        return (
            np.concatenate([labels for labels, _ in blocks]),
            np.concatenate([scores for _, scores in blocks]),
        )

    def _answer_block(self, rows: Rows) -> Answers:
        kernel = self.kernel(rows)
        arguments, options = self.model_arguments, self.model_options
        libsvm = self.libsvm
        positions = libsvm.predict(kernel, *arguments, **options).astype(np.intp)
        if self.decision_shape is None:
            scores = libsvm.predict_proba(kernel, *arguments, **options)
        else:
            scores = self._decision_scores(libsvm.decision_function(kernel, *arguments, **options))
        return self.classes.take(positions), scores

    def _decision_scores(self, one_vs_one: Rows) -> Rows:
        """`SVC.decision_function` from libsvm's one-vs-one values, one score per class."""
        n_classes = len(self.classes)
        if n_classes == 2:
            return _decision_matrix(-one_vs_one.ravel())
        return _decision_matrix(ovr_scores(one_vs_one, n_classes))


KERNEL_BLOCK_ROWS = 256
"""Rows whose kernel is computed at once: a few MB at most, however large a batch is allowed."""

_NO_VECTORS = np.empty((0, 0), dtype=np.float64)
"""libsvm's precomputed-kernel mode reads the kernel, not the support vectors."""


def _digit_levels(values: NDArray[Any]) -> bool:
    """Whether there are values and every one is an integer 0..16, as the features are."""
    if not values.size or values.dtype.kind not in "iuf":
        return False
    if values.dtype.kind == "f" and not np.array_equal(values, np.rint(values)):
        return False  # fractions, or NaN
    return bool(values.min() >= 0 and values.max() <= LEVELS)


def _same_answers(fast: Answerer, public: Answerer) -> bool:
    """Check a fast path against the public API on digit-like rows, at load time."""
    rows = np.random.default_rng(0).integers(0, LEVELS + 1, size=(64, N_FEATURES))
    try:
        return all(
            np.array_equal(ours, theirs)
            for ours, theirs in zip(fast(rows), public(rows), strict=True)
        )
    except Exception:  # any failure of the private path means: use the public one
        return False


def _decision_matrix(scores: NDArray[Any]) -> NDArray[np.float64]:
    """Give a binary classifier's single decision column one score per class, like multi-class."""
    if scores.ndim == 1:
        return np.stack([-scores, scores], axis=1).astype(np.float64)
    return scores.astype(np.float64)


def file_sha256(path: Path) -> str:
    """Hash the model file so clients and the model card can tell exactly which one is served."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_classifier(
    path: Path,
    name: str = "digits",
    *,
    expected_sha256: str | None = None,
    trusted_types: Sequence[str] = (),
    version: str | None = None,
    pinned: tuple[bytes, str] | None = None,
) -> Classifier:
    """Load the operator's model file, check it can serve 64-feature digits, and warm it up.

    The file is read once; its hash is checked against `expected_sha256` before anything in it is
    deserialised, and the same bytes are then loaded as its suffix says (`MODEL_FORMATS`): a pickle
    or joblib file, or a `.skops` file, which may hold only skops' safe types plus `trusted_types`.
    `pinned` is the file's bytes and sha256 when the caller has already read them (`read_pinned`).
    Every reason to refuse becomes one `ModelLoadError` with a message an operator can act on.
    """
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    model_format = model_format_of(path)  # an unknown suffix is refused before reading
    data, sha256 = pinned if pinned is not None else read_pinned(path, expected_sha256)
    if model_format == "skops":
        estimator = _load_skops(path, data, trusted_types)
    else:
        estimator = _unpickle(path, data, model_format)
    from sklearn.base import BaseEstimator, is_classifier
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(estimator, BaseEstimator) or not is_classifier(estimator):
        raise ModelLoadError(
            f"{path} holds a {type(estimator).__name__}, not a scikit-learn classifier"
        )
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ModelLoadError(f"{path} holds a classifier that was never fitted") from exc
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features != N_FEATURES:
        raise ModelLoadError(
            f"{path} expects {n_features} features; digitserve feeds {N_FEATURES} (an 8x8 grid)"
        )
    score_kind: ScoreKind
    if _has_method(estimator, "predict_proba"):
        score_kind = "probabilities"
    elif _has_method(estimator, "decision_function"):
        score_kind = "decision_scores"
    else:
        raise ModelLoadError(f"{path} has neither predict_proba nor decision_function")
    card = read_card(path, sha256)
    path_taken, answer = _fastest_answerer(path, estimator, score_kind)
    classifier = Classifier(
        estimator=estimator,
        name=name,
        version=version or str(card.get("version") or sha256[:12]),
        sha256=sha256,
        classes=tuple(np.asarray(estimator.classes_).tolist()),
        score_kind=score_kind,
        answer=answer,
        path=path_taken,
        card=card,
        # libsvm computes each row alone, the kernel table in exact arithmetic; scikit-learn's
        # public API may block a batch's floating-point work otherwise than a row's.
        batchable=path_taken in ("libsvm", "kernel-table"),
        model_format=model_format,
    )
    return warmed_up(classifier, path)


def warmed_up(classifier: Classifier, path: Path) -> Classifier:
    """The classifier, once a first prediction went through (a model that fails it is refused)."""
    try:
        classifier.predict(np.zeros((1, N_FEATURES), dtype=np.int64))
    except Exception as exc:
        raise ModelLoadError(f"{path} failed a warm-up prediction: {exc}") from exc
    return classifier


def _fastest_answerer(
    path: Path, estimator: Any, score_kind: ScoreKind
) -> tuple[PredictionPath, Answerer]:
    """The fastest way to predict that gives exactly the public API's answers."""
    public = answerer(_public_predictors(estimator, score_kind))
    fallback: tuple[PredictionPath, Answerer] = ("scikit-learn", public)
    direct_predictors = _direct_svc(estimator, score_kind)
    if direct_predictors is not None:
        direct = answerer(direct_predictors)
        if _same_answers(direct, public):
            fallback = ("libsvm", direct)
        else:
            logger.warning("%s: direct libsvm calls disagree with scikit-learn's API", path)
    table = KernelTable.build(estimator, score_kind, fallback=fallback[1])
    if table is None:
        return fallback
    if not _same_answers(table.answer, public):
        logger.warning("%s: the kernel table disagrees with scikit-learn's API; not used", path)
        return fallback
    return "kernel-table", table.answer


def read_pinned(path: Path, expected_sha256: str | None) -> tuple[bytes, str]:
    """A model file's bytes and sha256, refused before any use when a pin says otherwise."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise ModelLoadError(
            f"{path} has sha256 {sha256}, not the expected {expected_sha256.lower()}; "
            "refusing to load it"
        )
    return data, sha256


def model_format_of(path: Path) -> ModelFormat:
    """The format a model file is loaded as, from its suffix compared in lower case."""
    model_format = MODEL_FORMATS.get(path.suffix.lower())
    if model_format is None:
        found = f"the suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise ModelLoadError(
            f"{path} has {found}; a model file must end in {', '.join(MODEL_FORMATS)} "
            "(in any case), which says how it is loaded"
        )
    return model_format


def _unpickle(path: Path, data: bytes, model_format: ModelFormat) -> Any:
    """Unpickle, turning a scikit-learn version mismatch into a refusal rather than a warning."""
    from sklearn.exceptions import InconsistentVersionWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", InconsistentVersionWarning)
            if model_format == "joblib":
                import joblib

                return joblib.load(io.BytesIO(data))
            return pickle.loads(data)  # noqa: S301 - the operator's own, trusted file
    except InconsistentVersionWarning as exc:
        raise _version_mismatch(path, exc) from exc
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable model {model_format} file: {exc}") from exc


def _load_skops(path: Path, data: bytes, trusted_types: Sequence[str]) -> Any:
    """Load a skops file, which builds only types known to be safe plus those the operator named."""
    import skops.io
    from sklearn.exceptions import InconsistentVersionWarning

    try:
        untrusted = sorted(set(skops.io.get_untrusted_types(data=data)) - set(trusted_types))
        if untrusted:
            raise ModelLoadError(
                f"{path} holds types that are not trusted: {', '.join(untrusted)}; list them in "
                "DIGITSERVE_MODEL_TRUSTED_TYPES only if you trust whoever wrote the file"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", InconsistentVersionWarning)
            return skops.io.load(io.BytesIO(data), trusted=list(trusted_types))
    except ModelLoadError:
        raise
    except InconsistentVersionWarning as exc:
        raise _version_mismatch(path, exc) from exc
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable skops file: {exc}") from exc


def _version_mismatch(path: Path, warning: Any) -> ModelLoadError:
    """The refusal for a model written by another scikit-learn release."""
    import sklearn

    return ModelLoadError(
        f"{path} was written by scikit-learn {warning.original_sklearn_version}; this service runs "
        f"{sklearn.__version__}. Retrain it (digitserve train) or install the matching release."
    )


def _has_method(estimator: Any, name: str) -> bool:
    """Whether a method is really available: SVC hides predict_proba unless probability=True."""
    try:
        return callable(getattr(estimator, name))
    except AttributeError:
        return False


def read_card(model_path: Path, sha256: str) -> dict[str, Any]:
    """Read the JSON model card beside the pickle (same stem), if it describes this very file."""
    card_path = model_path.with_suffix(".json")
    if not card_path.is_file():
        return {}
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model card {card_path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or card.get("sha256") != sha256:
        logger.warning(
            "ignoring model card %s: it describes another file (sha256 differs)", card_path
        )
        return {}
    return card
