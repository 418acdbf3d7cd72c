"""Loading the model: what it can do is decided once, and every unusable file is refused clearly."""

import json
import math
import pickle
import shutil
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import _ovr_decision_function

from digitserve.classifier import (
    KERNEL_BLOCK_ROWS,
    Classifier,
    KernelTable,
    load_classifier,
    ovr_scores,
    pair_votes,
)
from digitserve.errors import ModelLoadError
from digitserve.training import Split
from tests.conftest import MODEL_PATH


def write_pickle(path: Path, obj: object) -> Path:
    """Pickle an object to a file."""
    path.write_bytes(pickle.dumps(obj))
    return path


def test_bundled_svc_takes_the_kernel_table(classifier: Classifier) -> None:
    assert classifier.path == "kernel-table"


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.float32, np.float64])
def test_kernel_table_answers_bit_for_bit_like_scikit_learn(
    classifier: Classifier, dtype: type
) -> None:
    rows = load_digits().data.astype(dtype)  # 1,797 rows: several kernel blocks
    assert len(rows) > 2 * KERNEL_BLOCK_ROWS
    labels, probabilities = classifier.answer(rows)
    assert np.array_equal(labels, classifier.estimator.predict(rows))
    assert np.array_equal(probabilities, classifier.estimator.predict_proba(rows))


@pytest.mark.parametrize("shape", ["ovr", "ovo"])
def test_svc_without_probabilities_takes_the_kernel_table_too(
    tmp_path: Path, split: Split, shape: str
) -> None:
    model = SVC(gamma=0.001, decision_function_shape=shape).fit(split.x_train, split.y_train)
    loaded = load_classifier(write_pickle(tmp_path / "classic.pickle", model))
    assert (loaded.path, loaded.score_kind) == ("kernel-table", "decision_scores")
    rows = load_digits().data
    labels, scores = loaded.answer(rows.astype(np.int64))
    assert np.array_equal(labels, model.predict(rows))
    pairs = model.decision_function(rows)
    expected = pairs if shape == "ovr" else _ovr_decision_function(pairs < 0, -pairs, 10)
    assert np.array_equal(scores, expected)  # bit for bit, one score per class
    assert len(loaded.predict(rows[:1].astype(np.int64))[0].scores) == 10


def test_ovr_scores_match_scikit_learn_to_the_bit() -> None:
    rng = np.random.default_rng(0)
    for n_classes in (3, 4, 10, 17, 26):
        pairs = rng.normal(size=(50, n_classes * (n_classes - 1) // 2))
        pairs *= 10.0 ** rng.integers(-8, 8, size=pairs.shape)  # sums that round
        pairs[0, :] = 0.0  # ties and zeros
        pairs[1, ::2] = -0.0
        expected = _ovr_decision_function(pairs < 0, -pairs, n_classes)
        assert ovr_scores(pairs, n_classes).tobytes() == expected.tobytes()
        assert ovr_scores(pairs[3:4], n_classes).tobytes() == expected[3:4].tobytes()


def test_pair_votes_count_each_pairs_winner() -> None:
    rng = np.random.default_rng(1)
    for n_classes in (2, 3, 10):
        pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
        second_wins = rng.random((20, len(pairs))) < 0.5
        expected = np.zeros((20, n_classes))
        for row in range(20):
            for pair, (first, second) in enumerate(pairs):
                expected[row, second if second_wins[row, pair] else first] += 1
        assert np.array_equal(pair_votes(second_wins, n_classes), expected)


def test_kernel_is_exp_of_the_exact_squared_distance(classifier: Classifier) -> None:
    table = KernelTable.build(classifier.estimator, "probabilities", fallback=classifier.answer)
    assert table is not None
    rows = np.random.default_rng(3).integers(0, 17, size=(5, 64)).astype(np.float64)
    vectors = classifier.estimator.support_vectors_
    gamma = classifier.estimator._gamma
    expected = [
        [math.exp(-gamma * float(((row - vector) ** 2).sum())) for vector in vectors]
        for row in rows
    ]
    assert table.kernel(rows).tolist() == expected


@pytest.mark.parametrize(
    "rows",
    [
        np.full((2, 64), 17, dtype=np.int64),  # past the table's largest distance
        np.full((1, 64), -1, dtype=np.int64),
        np.linspace(0, 16, 64).reshape(1, 64),  # not integers
        np.zeros((0, 64), dtype=np.int64),
    ],
    ids=["above-16", "negative", "fractions", "no-rows"],
)
def test_rows_outside_the_table_are_answered_by_libsvm(
    classifier: Classifier, rows: np.ndarray
) -> None:
    labels, probabilities = classifier.answer(rows)
    floats = rows.astype(np.float64)
    if len(rows):
        assert np.array_equal(labels, classifier.estimator.predict(floats))
        assert np.array_equal(probabilities, classifier.estimator.predict_proba(floats))
    else:
        assert labels.shape == (0,)


def test_svc_on_fractional_features_calls_libsvm_directly(tmp_path: Path, split: Split) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # probability=True, deprecated in 1.9
        model = SVC(gamma=0.001 * 256, probability=True, random_state=0)
        model.fit(split.x_train / 16, split.y_train)
    loaded = load_classifier(write_pickle(tmp_path / "scaled.pickle", model))
    assert loaded.path == "libsvm"
    rows = split.x_test[:5] / 16
    labels, probabilities = loaded.answer(rows)
    assert np.array_equal(labels, model.predict(rows))
    assert np.array_equal(probabilities, model.predict_proba(rows))


def test_svc_subclass_or_sparse_model_uses_the_public_api(tmp_path: Path, split: Split) -> None:
    import scipy.sparse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = SVC(gamma=0.001, probability=True, random_state=0)
        model.fit(scipy.sparse.csr_matrix(split.x_train), split.y_train)
    loaded = load_classifier(write_pickle(tmp_path / "sparse.pickle", model))
    assert loaded.path == "scikit-learn"
    assert (
        loaded.predict(split.x_test[:3].astype(np.int64))[0].label
        == model.predict(split.x_test[:1])[0]
    )


def test_bundled_model_reports_probabilities(classifier: Classifier) -> None:
    assert classifier.name == "digits"
    assert classifier.version == "1.0.0"
    assert classifier.score_kind == "probabilities"
    assert classifier.classes == tuple(range(10))
    assert classifier.card["sha256"] == classifier.sha256


def test_predictions_agree_with_the_estimator(classifier: Classifier, split: Split) -> None:
    rows = split.x_test.astype(np.int64)
    predictions = classifier.predict(rows)
    assert [p.label for p in predictions] == classifier.estimator.predict(rows).tolist()
    probabilities = classifier.estimator.predict_proba(rows)
    assert [list(p.scores.values()) for p in predictions] == probabilities.tolist()
    for prediction in predictions:
        assert sum(prediction.scores.values()) == pytest.approx(1.0)
        assert prediction.confidence == prediction.scores[str(prediction.label)]
        assert set(prediction.scores) == {str(label) for label in range(10)}


def test_svc_without_probabilities_reports_decision_scores(tmp_path: Path, split: Split) -> None:
    model = SVC(gamma=0.001).fit(split.x_train, split.y_train)
    loaded = load_classifier(write_pickle(tmp_path / "plain.pickle", model))
    assert loaded.score_kind == "decision_scores"
    assert loaded.version == loaded.sha256[:12]
    [prediction] = loaded.predict(split.x_test[:1].astype(np.int64))
    assert prediction.confidence is None
    assert prediction.label == model.predict(split.x_test[:1])[0]
    assert max(prediction.scores, key=prediction.scores.__getitem__) == str(prediction.label)


def test_binary_decision_function_gets_a_score_per_class(tmp_path: Path, split: Split) -> None:
    odd = split.y_train % 2
    model = SVC(gamma=0.001).fit(split.x_train, odd)
    loaded = load_classifier(write_pickle(tmp_path / "odd.pickle", model))
    [prediction] = loaded.predict(split.x_test[:1].astype(np.int64))
    assert set(prediction.scores) == {"0", "1"}
    assert prediction.scores["0"] == -prediction.scores["1"]


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_classifier(tmp_path / "absent.pickle")


def test_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pickle"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ModelLoadError, match="not a readable model pickle"):
        load_classifier(path)


@pytest.mark.parametrize("name", ["model.pkl", "model.PKL", "model.Pickle", "model.PICKLE"])
def test_pickle_suffixes_are_read_in_any_case(
    name: str, tmp_path: Path, classifier: Classifier
) -> None:
    path = tmp_path / name
    shutil.copy(MODEL_PATH, path)
    assert load_classifier(path).sha256 == classifier.sha256


@pytest.mark.parametrize("name", ["model.joblib", "model.JobLib"])
def test_joblib_model_loads_like_the_pickle(
    name: str, tmp_path: Path, classifier: Classifier, split: Split
) -> None:
    path = tmp_path / name
    joblib.dump(classifier.estimator, path)
    loaded = load_classifier(path)
    rows = split.x_test[:20].astype(np.int64)
    assert [p.label for p in loaded.predict(rows)] == [p.label for p in classifier.predict(rows)]


def test_joblib_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.joblib"
    path.write_bytes(b"not a joblib file")
    with pytest.raises(ModelLoadError, match="not a readable model joblib file"):
        load_classifier(path)


@pytest.mark.parametrize("obj", [{"weights": [1, 2, 3]}, StandardScaler().fit([[0.0], [1.0]])])
def test_non_classifier_is_refused(tmp_path: Path, obj: object) -> None:
    with pytest.raises(ModelLoadError, match="not a scikit-learn classifier"):
        load_classifier(write_pickle(tmp_path / "other.pickle", obj))


def test_unfitted_classifier_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="never fitted"):
        load_classifier(write_pickle(tmp_path / "unfitted.pickle", SVC()))


def test_wrong_number_of_features_is_refused(tmp_path: Path, split: Split) -> None:
    model = SVC().fit(split.x_train[:, :10], split.y_train)
    with pytest.raises(ModelLoadError, match="expects 10 features"):
        load_classifier(write_pickle(tmp_path / "narrow.pickle", model))


def test_other_scikit_learn_release_is_refused(tmp_path: Path) -> None:
    import sklearn

    data = MODEL_PATH.read_bytes()
    current = sklearn.__version__.encode()
    assert data.count(current) >= 1
    older = b"0" + current[1:]
    path = tmp_path / "old.pickle"
    path.write_bytes(data.replace(current, older))
    with pytest.raises(ModelLoadError, match=f"written by scikit-learn {older.decode()}"):
        load_classifier(path)


def test_card_describing_another_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pickle"
    shutil.copy(MODEL_PATH, path)
    card = json.loads(MODEL_PATH.with_suffix(".json").read_text())
    card["sha256"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(card))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_classifier(path)
    assert loaded.card == {}
    assert loaded.version == loaded.sha256[:12]


def test_unreadable_card_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pickle"
    shutil.copy(MODEL_PATH, path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_classifier(path)


def test_expected_sha256_accepts_the_very_file(classifier: Classifier) -> None:
    loaded = load_classifier(MODEL_PATH, expected_sha256=classifier.sha256.upper())
    assert loaded.sha256 == classifier.sha256


def test_expected_sha256_refuses_any_other_file_before_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pickle"
    path.write_bytes(b"not even a pickle")
    expected = "0" * 64
    with pytest.raises(ModelLoadError) as refusal:
        load_classifier(path, expected_sha256=expected)
    message = str(refusal.value)
    assert message.startswith(f"{path} has sha256 ")
    assert message.endswith(f"not the expected {expected}; refusing to load it")
    assert "\n" not in message


def test_skops_model_loads_and_predicts_like_the_pickle(
    tmp_path: Path, classifier: Classifier, split: Split
) -> None:
    path = tmp_path / "classifier.skops"
    skops.io.dump(classifier.estimator, path)
    loaded = load_classifier(path)
    rows = split.x_test[:20].astype(np.int64)
    assert [p.label for p in loaded.predict(rows)] == [p.label for p in classifier.predict(rows)]
    assert loaded.score_kind == "probabilities"
    assert loaded.card == {}  # the card beside it describes another file


def test_skops_model_with_an_untrusted_type_is_refused_unless_trusted(
    tmp_path: Path, split: Split
) -> None:
    pipeline = make_pipeline(FunctionTransformer(np.round), SVC(gamma=0.001))
    path = tmp_path / "rounded.skops"
    skops.io.dump(pipeline.fit(split.x_train, split.y_train), path)
    with pytest.raises(ModelLoadError, match=r"holds types that are not trusted: numpy\.round;"):
        load_classifier(path)
    trusted = load_classifier(path, trusted_types=["numpy.round"])
    assert trusted.score_kind == "decision_scores"
    assert trusted.predict(split.x_test[:1].astype(np.int64))[0].label == split.y_test[0]


def test_corrupt_skops_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.skops"
    path.write_bytes(b"PK\x03\x04 not a real archive")
    with pytest.raises(ModelLoadError, match="is not a readable skops file"):
        load_classifier(path)


def test_skops_model_from_another_scikit_learn_release_is_refused(
    tmp_path: Path, classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.skops"
    monkeypatch.setattr("sklearn.base.__version__", "0.24.2")
    skops.io.dump(classifier.estimator, path)
    monkeypatch.undo()
    with pytest.raises(ModelLoadError, match=r"written by scikit-learn 0\.24\.2"):
        load_classifier(path)
