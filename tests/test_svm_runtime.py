"""The numpy SVC runtime: libsvm's votes and scikit-learn's scores, to the bit, without sklearn."""

import io
import pickle
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.svm import SVC, LinearSVC

from digitserve.classifier import _public_predictors, answerer
from digitserve.runtimes.svm import SvmModel
from digitserve.training import Split
from tests.conftest import MODEL_PATH, ROOT

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


def check_rows() -> np.ndarray[Any, np.dtype[np.float64]]:
    random = np.random.default_rng(1).integers(0, 17, size=(300, 64))
    return np.vstack([load_digits().data, random]).astype(np.float64)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: SVC(gamma=0.001).fit(s.x_train, s.y_train),
        lambda s: SVC(gamma=0.002, C=3, decision_function_shape="ovo").fit(s.x_train, s.y_train),
        lambda s: SVC(gamma=0.001).fit(s.x_train, NAMES[s.y_train]),
        lambda s: SVC(gamma=0.001).fit(s.x_train[s.y_train < 2], s.y_train[s.y_train < 2]),
        lambda s: SVC().fit(s.x_train / 16, s.y_train),  # fractional support vectors
    ],
    ids=["classic", "ovo", "string-labels", "two-classes", "fractional-vectors"],
)
def test_answers_equal_scikit_learns_to_the_bit(split: Split, make: Any) -> None:
    estimator = make(split)
    model = SvmModel.from_estimator(estimator)
    assert model is not None
    rows = check_rows()
    labels, scores = model.answer(rows)
    public_labels, public_scores = answerer(_public_predictors(estimator, "decision_scores"))(rows)
    assert np.array_equal(labels, public_labels)
    assert np.array_equal(scores, public_scores)
    assert np.array_equal(model.decision_values(rows), estimator._dense_decision_function(rows))


def test_rows_with_fractions_get_the_same_labels(split: Split) -> None:
    estimator = SVC(gamma=0.001).fit(split.x_train, split.y_train)
    model = SvmModel.from_estimator(estimator)
    assert model is not None
    rows = check_rows()[:400] * 0.73 + 0.1
    labels, scores = model.answer(rows)
    assert np.array_equal(labels, estimator.predict(rows))
    np.testing.assert_allclose(scores, estimator.decision_function(rows), rtol=0, atol=1e-12)


def test_batches_answer_as_rows_alone(split: Split) -> None:
    model = SvmModel.from_estimator(SVC(gamma=0.001).fit(split.x_train, split.y_train))
    assert model is not None
    rows = check_rows()[:150]
    together = model.answer(rows)
    alone = [model.answer(row[np.newaxis]) for row in rows]
    assert np.array_equal(together[0], np.concatenate([labels for labels, _ in alone]))
    assert np.array_equal(together[1], np.concatenate([scores for _, scores in alone]))


def test_round_trip_through_npz_without_pickle(split: Split) -> None:
    estimator = SVC(gamma=0.001).fit(split.x_train, NAMES[split.y_train])
    model = SvmModel.from_estimator(estimator)
    assert model is not None
    buffer = io.BytesIO()
    arrays: dict[str, Any] = model.arrays()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as arrays:
        again = SvmModel.from_arrays(dict(arrays))
    rows = check_rows()[:100]
    assert again.classes == tuple(estimator.classes_.tolist())
    assert np.array_equal(again.answer(rows)[0], estimator.predict(rows))
    assert np.array_equal(again.answer(rows)[1], model.answer(rows)[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"terms": np.full((45, 3), 10_000)}, "terms and coefficients|does not exist"),
        ({"rho": np.zeros(3)}, "one value per pair"),
        ({"classes": np.array([[1, 2]])}, "integers or strings"),
        ({"vectors": np.full((4, 64), np.nan)}, "finite"),
        ({"shape": np.array("sideways")}, "shape"),
    ],
)
def test_malformed_arrays_are_refused(split: Split, change: dict[str, Any], message: str) -> None:
    model = SvmModel.from_estimator(SVC(gamma=0.001).fit(split.x_train, split.y_train))
    assert model is not None
    with pytest.raises(ValueError, match=message):
        SvmModel.from_arrays({**model.arrays(), **change})
    arrays = model.arrays()
    del arrays["rho"]
    with pytest.raises(ValueError, match="missing array"):
        SvmModel.from_arrays(arrays)


def test_only_dense_rbf_svcs_without_probabilities_are_taken(split: Split) -> None:
    bundled = pickle.loads(MODEL_PATH.read_bytes())  # SVC(probability=True)
    assert SvmModel.from_estimator(bundled) is None
    assert SvmModel.from_estimator(SVC(kernel="poly").fit(split.x_train, split.y_train)) is None
    assert SvmModel.from_estimator(LinearSVC().fit(split.x_train / 16, split.y_train)) is None

    class Custom(SVC):  # type: ignore[misc]
        """A subclass may predict otherwise."""

    assert SvmModel.from_estimator(Custom(gamma=0.001).fit(split.x_train, split.y_train)) is None


def test_importing_the_runtime_does_not_import_scikit_learn() -> None:
    code = (
        "import sys, digitserve.runtimes.svm; "
        "print(any(m.startswith('sklearn') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("classes", [10, 2], ids=["ten", "two"])
def test_each_row_alone_equals_libsvm(split: Split, classes: int) -> None:
    keep = split.y_train < classes
    estimator = SVC(gamma=0.001).fit(split.x_train[keep], split.y_train[keep])
    model = SvmModel.from_estimator(estimator)
    assert model is not None
    rows = check_rows()[::7]
    alone = np.vstack([model.decision_values(row[np.newaxis]) for row in rows])
    assert np.array_equal(alone, estimator._dense_decision_function(rows).reshape(len(rows), -1))


def test_a_pair_at_zero_votes_for_its_second_class_as_libsvm(split: Split) -> None:
    model = SvmModel.from_estimator(SVC(gamma=0.001).fit(split.x_train, split.y_train))
    assert model is not None
    values = np.zeros((3, 45))
    values[1] = np.nan  # not above 0 either
    values[2, :9] = 1.0  # class 0 wins its nine pairs; every other pair goes to its second
    # With every pair to its second class, the last class has the most votes (9).
    assert model._labels(values).tolist() == [9, 9, 0]
