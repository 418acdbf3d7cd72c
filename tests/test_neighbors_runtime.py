"""The k-nearest-neighbours array runtime: scikit-learn's answers, bit for bit, from numpy alone.

scikit-learn searches row by row (its answers then depend on nothing else) when a batch has more
rows than the model has training rows, so every comparison here asks it for more rows than that.
"""

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.utils._sorting import _py_simultaneous_sort
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

import digitserve.runtimes.neighbors as neighbors
from digitserve.runtimes.neighbors import NeighborsModel
from digitserve.training import Split

Rows = NDArray[np.float64]


@pytest.fixture(scope="module")
def check_rows(split: Split) -> Rows:
    """The test half and 512 seeded random 0..16 grids: 1,411 rows, more than the 898 trained."""
    random = np.random.default_rng(0).integers(0, 17, size=(512, 64)).astype(np.float64)
    return np.vstack([split.x_test, random])


def served(estimator: Any) -> NeighborsModel:
    """The runtime's model for a fitted estimator, which must be one it serves."""
    model = NeighborsModel.from_estimator(estimator)
    assert model is not None
    return model


def assert_same_answers(estimator: Any, rows: Rows, model: NeighborsModel | None = None) -> None:
    """Labels equal `predict`'s and probabilities equal `predict_proba`'s, exactly."""
    labels, scores = (model or served(estimator)).answer(rows)
    assert np.array_equal(labels, estimator.predict(rows))
    assert scores.dtype == np.float64
    assert np.array_equal(scores, estimator.predict_proba(rows))


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_answers_as_scikit_learn(split: Split, check_rows: Rows, k: int, weights: str) -> None:
    """Fitted on the training half: the same labels and probabilities on every check row."""
    estimator = KNeighborsClassifier(k, weights=weights).fit(split.x_train, split.y_train)
    model = served(estimator)
    assert model.search == "argkmin"
    assert (model.KIND, model.score_kind, model.classes) == (
        "neighbors",
        "probabilities",
        (*range(10),),
    )
    assert_same_answers(estimator, check_rows, model)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_fitted_on_other_dtypes(
    split: Split, check_rows: Rows, k: int, weights: str, dtype: type
) -> None:
    """Training rows that are not float64 send scikit-learn to `argpartition`, and the runtime."""
    estimator = KNeighborsClassifier(k, weights=weights)
    estimator.fit(split.x_train.astype(dtype), split.y_train)
    model = served(estimator)
    assert model.search == "argpartition"
    assert_same_answers(estimator, check_rows, model)


@pytest.mark.parametrize("dtype", [str, object])
def test_string_classes(split: Split, check_rows: Rows, dtype: type) -> None:
    """String labels come back as strings, stored without object arrays."""
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    estimator = KNeighborsClassifier(5, weights="distance")
    estimator.fit(split.x_train, names[split.y_train].astype(dtype))
    model = served(estimator)
    assert model.classes == tuple(sorted(names.tolist()))
    assert model.arrays()["classes"].dtype.kind == "U"
    assert_same_answers(estimator, check_rows, model)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [2, 4])
def test_two_classes(split: Split, check_rows: Rows, k: int, weights: str) -> None:
    """Even or odd, with an even k: tied votes go to the first class, as `predict` gives them."""
    estimator = KNeighborsClassifier(k, weights=weights).fit(split.x_train, split.y_train % 2)
    assert_same_answers(estimator, check_rows)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_rows_at_distance_zero(split: Split, check_rows: Rows, weights: str) -> None:
    """Queries equal to training rows, some of them trained twice with different labels.

    With distance weights only the rows at distance 0 count, each as 1.
    """
    twins = split.x_train[:40]
    estimator = KNeighborsClassifier(5, weights=weights).fit(
        np.vstack([split.x_train, twins]),
        np.concatenate([split.y_train, (split.y_train[:40] + 1) % 10]),
    )
    assert_same_answers(estimator, np.vstack([split.x_train, check_rows]))
    if weights == "distance":  # each twin: its two training rows, of two classes, half each
        _, scores = served(estimator).answer(twins)
        assert np.array_equal(np.sort(scores, axis=1)[:, -2:], np.full((40, 2), 0.5))


def tie_training() -> tuple[Rows, NDArray[np.int64]]:
    """Rows at squared distances 2, 2, 1, 1 from the blank grid, then far ones.

    With k=3, ArgKmin's heap keeps rows 1, 2 and 3 (class 1 wins), not the two lowest-indexed
    rows at distance 2 (which would make class 0 win): the order of pushes decides, not indices.
    """
    rows = np.zeros((8, 64))
    rows[0, [0, 1]] = 1
    rows[1, [2, 3]] = 1
    rows[2, 4] = 1
    rows[3, 5] = 1
    rows[4:, :] = 16
    rows[4:, 0] = [1, 2, 3, 4]
    return rows, np.array([0, 1, 0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_ties_across_the_kth_neighbour(weights: str) -> None:
    """More rows at the k-th distance than fit: the ones scikit-learn keeps, not the first."""
    rows, labels = tie_training()
    estimator = KNeighborsClassifier(3, weights=weights).fit(rows, labels)
    blank = np.zeros((20, 64))
    assert_same_answers(estimator, blank)
    assert served(estimator).answer(blank[:1])[0].tolist() == [1]
    # A training set this small is one chunk for scikit-learn: one row alone answers alike.
    assert_same_answers(estimator, blank[:1])


def test_equal_weighted_sums() -> None:
    """Two classes whose distance weights add up to the same number, but for rounding.

    `predict` takes the larger of the two sums as numpy rounds them, summed in the order
    ArgKmin ranks equally near neighbours: the runtime replays that order to round alike.
    """
    squared = [3, 3, 2, 2, 3, 2, 4, 2, 4, 3, 2, 3, 3, 5, 5, 2, 4]
    rows = np.zeros((len(squared), 64))
    for row, ones in zip(rows, squared, strict=True):
        row[:ones] = 1
    labels = [1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    estimator = KNeighborsClassifier(12, weights="distance").fit(rows, labels)
    blank = np.zeros((20, 64))
    assert estimator.predict_proba(blank[:1]).tolist() == [[0.5, 0.5]]
    assert_same_answers(estimator, blank)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_many_ties(k: int, weights: str) -> None:
    """Sparse 0..2 grids tie at nearly every distance: every replay path, and introsort (k > 15)."""
    rng = np.random.default_rng(k)

    def sparse(n: int) -> Rows:
        return (rng.integers(0, 3, size=(n, 64)) * (rng.random((n, 64)) < 0.05)).astype(float)

    rows = sparse(400)
    estimator = KNeighborsClassifier(k, weights=weights).fit(rows, rng.integers(0, 3, size=400))
    assert_same_answers(estimator, np.vstack([sparse(400), rows[:100]]))


def test_one_thread_keeps_the_same_neighbours(split: Split, check_rows: Rows) -> None:
    """On one OpenMP thread, scikit-learn's one-row answers are its batch answers too."""
    estimator = KNeighborsClassifier(3).fit(split.x_train, split.y_train)
    labels, scores = served(estimator).answer(check_rows)
    with threadpool_limits(1, user_api="openmp"):
        for index in range(0, len(check_rows), 7):
            row = check_rows[index : index + 1]
            assert estimator.predict(row)[0] == labels[index]
            assert np.array_equal(estimator.predict_proba(row)[0], scores[index])


def test_simultaneous_sort_as_scikit_learn() -> None:
    """The replayed sort orders ties as scikit-learn's introsort does, short runs and long."""
    rng = np.random.default_rng(0)
    for size in [*range(1, 40), 64, 200]:
        values = rng.integers(0, 4, size=size).astype(np.float64)
        indices = rng.permutation(size).astype(np.intp)
        ours_values, ours_indices = values.tolist(), indices.tolist()
        neighbors._simultaneous_sort(ours_values, ours_indices)
        _py_simultaneous_sort(values, indices, size, use_three_way_partition=False)
        assert (ours_values, ours_indices) == (values.tolist(), indices.tolist())


def test_heapsort_sorts() -> None:
    """The introsort's fallback (taken when quicksort goes too deep) sorts."""
    values = np.random.default_rng(1).integers(0, 5, size=50).astype(np.float64).tolist()
    indices = list(range(50))
    original = list(values)
    neighbors._introsort(values, indices, 0, 50, 0)
    assert values == sorted(original)
    assert [original[index] for index in indices] == values


@pytest.mark.parametrize("classes", ["int", "str"])
def test_round_trip_through_npz(split: Split, check_rows: Rows, classes: str) -> None:
    """Saved with `np.savez`, loaded without pickles: the same model, the same answers."""
    y = split.y_train if classes == "int" else np.array(list("abcdefghij"))[split.y_train]
    model = served(KNeighborsClassifier(5, weights="distance").fit(split.x_train, y))
    buffer = io.BytesIO()
    arrays: dict[str, Any] = model.arrays()  # names, not savez's own keywords
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as stored:
        loaded = NeighborsModel.from_arrays(stored)
    assert (loaded.classes, loaded.n_neighbors, loaded.weights, loaded.search) == (
        model.classes,
        5,
        "distance",
        "argkmin",
    )
    for ours, theirs in zip(loaded.answer(check_rows), model.answer(check_rows), strict=True):
        assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_one_class(split: Split, check_rows: Rows, weights: str) -> None:
    """A model that knows one class answers it, with probability 1."""
    estimator = KNeighborsClassifier(3, weights=weights).fit(split.x_train, split.y_train * 0)
    assert_same_answers(estimator, check_rows)


def fractional(split: Split) -> KNeighborsClassifier:
    """Fitted on rows that are not all integers."""
    return KNeighborsClassifier(3).fit(split.x_train / 2, split.y_train)


UNSERVED: dict[str, Callable[[Split], Any]] = {
    "pipeline": lambda s: make_pipeline(KNeighborsClassifier(3)).fit(s.x_train, s.y_train),
    "manhattan": lambda s: KNeighborsClassifier(3, metric="manhattan").fit(s.x_train, s.y_train),
    "minkowski p=1": lambda s: KNeighborsClassifier(3, p=1).fit(s.x_train, s.y_train),
    "fractional rows": fractional,
    "callable weights": lambda s: KNeighborsClassifier(3, weights=lambda d: 1 / (1 + d)).fit(
        s.x_train, s.y_train
    ),
    "kd_tree": lambda s: KNeighborsClassifier(3, algorithm="kd_tree").fit(s.x_train, s.y_train),
    "unfitted": lambda s: KNeighborsClassifier(3),
    "k above the rows": lambda s: KNeighborsClassifier(20).fit(s.x_train[:10], s.y_train[:10]),
    "two outputs": lambda s: KNeighborsClassifier(3).fit(
        s.x_train, np.stack([s.y_train, s.y_train], axis=1)
    ),
    "float classes": lambda s: KNeighborsClassifier(3).fit(s.x_train, s.y_train.astype(float)),
    "bool classes": lambda s: KNeighborsClassifier(3).fit(s.x_train, s.y_train > 4),
    "32 features": lambda s: KNeighborsClassifier(3).fit(s.x_train[:, :32], s.y_train),
}


@pytest.mark.parametrize("build", UNSERVED.values(), ids=UNSERVED.keys())
def test_from_estimator_declines(split: Split, build: Callable[[Split], Any]) -> None:
    """Anything the runtime could not answer exactly is left to scikit-learn: None, no error."""
    assert NeighborsModel.from_estimator(build(split)) is None


def valid_arrays() -> dict[str, NDArray[Any]]:
    """A small model's arrays, as `arrays()` writes them."""
    rows, labels = tie_training()
    return served(KNeighborsClassifier(3).fit(rows, labels)).arrays()


MALFORMED: dict[str, Callable[[dict[str, NDArray[Any]]], object]] = {
    "missing": lambda a: a.pop("targets"),
    "unexpected": lambda a: a.update(extra=np.zeros(1)),
    "training as float64": lambda a: a.update(training=a["training"].astype(np.float64)),
    "63 features": lambda a: a.update(training=a["training"][:, :63]),
    "training above 16": lambda a: a.update(training=a["training"] + 1),
    "no training rows": lambda a: a.update(training=a["training"][:0], targets=a["targets"][:0]),
    "targets too few": lambda a: a.update(targets=a["targets"][:-1]),
    "target outside classes": lambda a: a.update(targets=a["targets"] + 5),
    "targets as float": lambda a: a.update(targets=a["targets"].astype(np.float64)),
    "object classes": lambda a: a.update(classes=np.array([0, "b"], dtype=object)),
    "float classes": lambda a: a.update(classes=np.array([0.5, 1.5])),
    "repeated classes": lambda a: a.update(classes=np.array([1, 1])),
    "2-D classes": lambda a: a.update(classes=np.array([[0, 1]])),
    "k zero": lambda a: a.update(n_neighbors=np.array(0)),
    "k above rows": lambda a: a.update(n_neighbors=np.array(9)),
    "k as a vector": lambda a: a.update(n_neighbors=np.array([3])),
    "k as text": lambda a: a.update(n_neighbors=np.array("3")),
    "callable weights": lambda a: a.update(weights=np.array("callable")),
    "unknown search": lambda a: a.update(search=np.array("kd_tree")),
}


@pytest.mark.parametrize("spoil", MALFORMED.values(), ids=MALFORMED.keys())
def test_from_arrays_rejects(spoil: Callable[[dict[str, NDArray[Any]]], object]) -> None:
    """A cache file that does not describe a model this runtime can answer: ValueError."""
    arrays = valid_arrays()
    NeighborsModel.from_arrays(arrays)
    spoil(arrays)
    with pytest.raises(ValueError, match="must"):
        NeighborsModel.from_arrays(arrays)


@pytest.mark.parametrize(
    ("classes", "message"),
    [((), "distinct"), ((1, 1), "distinct"), ((0, "1"), "all int or all str"), ((2**70,), "int64")],
)
def test_classes_checked_on_construction(classes: tuple[Any, ...], message: str) -> None:
    """Classes the arrays could not hold, or labels could not be taken from, are refused."""
    with pytest.raises(ValueError, match=message):
        NeighborsModel(
            np.zeros((1, 64)), np.zeros(1, dtype=np.intp), classes, 1, "uniform", "argkmin"
        )


@pytest.mark.parametrize("value", [np.nan, np.inf, 17, -1], ids=["nan", "inf", "17", "-1"])
def test_answer_refuses_other_values(value: float) -> None:
    """Only ink levels 0..16 are answered."""
    rows, labels = tie_training()
    model = served(KNeighborsClassifier(3).fit(rows, labels))
    features = np.zeros((2, 64))
    features[1, 7] = value
    with pytest.raises(ValueError, match=r"ink levels 0\.\.16"):
        model.answer(features)


def test_rows_with_fractions_are_answered_like_scikit_learn_away_from_ties() -> None:
    """Fractions (from /v2 tensors) go the same way; off ties the labels are scikit-learn's."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    estimator = KNeighborsClassifier(3).fit(digits.data[:900], digits.target[:900])
    model = served(estimator)
    rows = digits.data[900:1200] * 0.9 + 0.35
    labels, scores = model.answer(rows)
    assert np.array_equal(labels, estimator.predict(rows))
    assert np.allclose(scores, estimator.predict_proba(rows))


def test_answer_shapes() -> None:
    """Integer dtypes are answered; a wrong width is refused; no rows, no answers."""
    rows, labels = tie_training()
    model = served(KNeighborsClassifier(3).fit(rows, labels))
    as_float = model.answer(np.zeros((3, 64)))
    as_int = model.answer(np.zeros((3, 64), dtype=np.uint8))
    assert all(np.array_equal(a, b) for a, b in zip(as_float, as_int, strict=True))
    with pytest.raises(ValueError, match="features must be"):
        model.answer(np.zeros((1, 63)))
    with pytest.raises(ValueError, match="features must be"):
        model.answer(np.zeros((1, 64), dtype=bool))
    labels_out, scores = model.answer(np.zeros((0, 64)))
    assert (labels_out.shape, scores.shape) == ((0,), (0, 2))


def test_import_needs_no_scikit_learn() -> None:
    """A serving worker imports the runtime without scikit-learn."""
    source = Path(neighbors.__file__).resolve().parents[2]
    code = "import digitserve.runtimes.neighbors, sys; assert 'sklearn' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
