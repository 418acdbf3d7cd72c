"""Runtimes: one model file loaded by its format, checked, warmed up, answering like its source."""

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from digitserve.errors import ModelLoadError
from digitserve.runtimes import load_model
from digitserve.training import Split


def export(estimator: Any, path: Path, options: dict[int, Any] | None = None) -> Path:
    """Write an estimator as skl2onnx exports it (with its `options`)."""
    with warnings.catch_warnings():
        # skl2onnx reads SVC's probA_/probB_, which scikit-learn 1.9 marks deprecated.
        warnings.simplefilter("ignore", FutureWarning)
        onnx = to_onnx(estimator, np.zeros((1, 64), dtype=np.float32), options=options)
    path.write_bytes(onnx.SerializeToString())
    return path


@pytest.fixture(scope="module")
def forest(split: Split) -> RandomForestClassifier:
    """A small forest on the training half."""
    return RandomForestClassifier(n_estimators=10, random_state=0).fit(split.x_train, split.y_train)


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
def test_onnx_forest_answers_like_scikit_learn(
    tmp_path: Path, split: Split, forest: RandomForestClassifier, zipmap: bool
) -> None:
    options = None if zipmap else {id(forest): {"zipmap": False}}
    classifier = load_model(export(forest, tmp_path / "model.onnx", options), "forest")
    assert classifier.path == "onnxruntime"
    assert classifier.score_kind == "probabilities"
    assert classifier.classes == tuple(range(10))
    rows = split.x_test[:200].astype(np.int64)
    predictions = classifier.predict(rows)
    assert [p.label for p in predictions] == forest.predict(rows).tolist()
    expected = forest.predict_proba(rows)
    got = np.array([[p.scores[str(k)] for k in range(10)] for p in predictions])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_svc_without_probabilities_gives_decision_scores(tmp_path: Path, split: Split) -> None:
    svc = SVC(gamma=0.001).fit(split.x_train, split.y_train)
    classifier = load_model(export(svc, tmp_path / "svc.ONNX"), "svc")
    assert classifier.score_kind == "decision_scores"
    rows = split.x_test[:100].astype(np.int64)
    assert [p.label for p in classifier.predict(rows)] == svc.predict(rows).tolist()
    assert all(p.confidence is None for p in classifier.predict(rows[:3]))


def test_onnx_string_labels(tmp_path: Path, split: Split) -> None:
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    model = KNeighborsClassifier(3).fit(split.x_train, names[split.y_train])
    classifier = load_model(export(model, tmp_path / "model.onnx"), "named")
    rows = split.x_test[:50].astype(np.int64)
    assert [p.label for p in classifier.predict(rows)] == model.predict(rows).tolist()
    assert set(classifier.classes) == set(names)


def test_scikit_learn_files_in_every_format_and_estimator(tmp_path: Path, split: Split) -> None:
    knn = KNeighborsClassifier(3).fit(split.x_train, split.y_train)
    path = tmp_path / "model.PKL"
    path.write_bytes(pickle.dumps(knn))
    classifier = load_model(path, "knn", version="3")
    assert (classifier.version, classifier.path, classifier.score_kind) == (
        "3",
        "scikit-learn",
        "probabilities",
    )
    rows = split.x_test[:20].astype(np.int64)
    assert [p.label for p in classifier.predict(rows)] == knn.predict(rows).tolist()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an onnx graph", "not a model ONNX Runtime can open"),
    ],
)
def test_broken_onnx_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path, "broken")


def test_onnx_with_the_wrong_feature_count_is_refused(tmp_path: Path, split: Split) -> None:
    small = DecisionTreeClassifier(random_state=0).fit(split.x_train[:, :10], split.y_train)
    onnx = to_onnx(small, np.zeros((1, 10), dtype=np.float32))
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx.SerializeToString())
    with pytest.raises(ModelLoadError, match="expects 10 features"):
        load_model(path, "small")


def test_an_onnx_file_is_checked_against_its_pin(
    tmp_path: Path, forest: RandomForestClassifier
) -> None:
    path = export(forest, tmp_path / "model.onnx")
    with pytest.raises(ModelLoadError, match="refusing to load it"):
        load_model(path, "forest", expected_sha256="0" * 64)


class UnknownToSkl2onnx(LogisticRegression):  # type: ignore[misc]
    """A subclass skl2onnx has no converter for."""


def test_a_model_without_a_fast_path_is_served_by_onnx_runtime_when_exact(
    tmp_path: Path, split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(tmp_path / "cache"))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(split.x_train, split.y_train)
    path = tmp_path / "model.pickle"
    path.write_bytes(pickle.dumps(model))
    classifier = load_model(path, "logistic", compile_onnx=True)
    assert classifier.path == "onnxruntime"
    assert "labels equal scikit-learn's on all 2309 check rows" in classifier.card["runtime_check"]
    rows = load_digits().data.astype(np.int64)
    assert [p.label for p in classifier.predict(rows)] == model.predict(rows).tolist()
    [cached] = (tmp_path / "cache").glob("*.onnx")
    assert cached.name == f"{classifier.sha256}.onnx"
    again = load_model(path, "logistic", compile_onnx=True)  # from the cache, no conversion
    assert again.path == "onnxruntime"
    plain = load_model(path, "logistic", compile_onnx=False)
    assert plain.path == "scikit-learn"
    assert "runtime_check" not in plain.card


def test_a_model_onnx_cannot_export_stays_with_scikit_learn_saying_why(
    tmp_path: Path, split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(tmp_path / "cache"))
    model = UnknownToSkl2onnx(max_iter=100).fit(split.x_train / 16, split.y_train)
    path = tmp_path / "model.pickle"
    path.write_bytes(pickle.dumps(model))
    classifier = load_model(path, "odd", compile_onnx=True)
    assert classifier.path == "scikit-learn"
    assert "onnxruntime not used: not converted (" in classifier.card["runtime_check"]
    assert "\n" not in classifier.card["runtime_check"]
    assert not list((tmp_path / "cache").glob("*.onnx"))
    [plan] = (tmp_path / "cache").glob("*.json")  # the decision is kept: no child next time
    assert json.loads(plan.read_text())["runtime"] == "scikit-learn"


def test_the_bundled_svc_is_served_without_scikit_learn_and_answers_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: Split
) -> None:
    from tests.conftest import MODEL_PATH

    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(tmp_path / "cache"))
    served = load_model(MODEL_PATH, "digits", compile_onnx=True)
    assert served.path in ("onnxruntime", "kernel-table")  # the kernel table only if 2x faster
    card = served.card["runtime_check"]
    assert "labels equal scikit-learn's on all 2309 check rows" in card
    assert "kernel-table" in card  # both candidates were timed
    assert "onnxruntime" in card
    estimator = pickle.loads(MODEL_PATH.read_bytes())  # the bundled model
    rows = split.x_test.astype(np.int64)
    labels = [p.label for p in served.predict(rows)]
    assert labels == estimator.predict(rows.astype(np.float64)).tolist()


@pytest.mark.parametrize("kind", ["onnx", "pickle"])
def test_a_worker_serving_only_onnx_never_imports_scikit_learn(
    tmp_path: Path, forest: RandomForestClassifier, kind: str
) -> None:
    if kind == "onnx":
        path = export(forest, tmp_path / "model.onnx", {id(forest): {"zipmap": False}})
    else:  # a pickle whose plan chose ONNX Runtime: the worker never unpickles it
        path = tmp_path / "model.pickle"
        path.write_bytes(pickle.dumps(forest))
    code = f"""
import sys
from pathlib import Path
from digitserve.app import create_app
from digitserve.dataplane import DataPlane
from digitserve.metrics import Metrics
from digitserve.settings import Settings
settings = Settings(model_path=Path({str(path)!r}), model_name="forest")
plane = DataPlane(settings, Metrics(), admitted=lambda: 1)
plane.start()
create_app(settings, dataplane=plane)
print(plane.model("forest").classifier.path)
print(sorted(name for name in sys.modules if name.split(".")[0] == "sklearn"))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "DIGITSERVE_ONNX_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["onnxruntime", "[]"]
