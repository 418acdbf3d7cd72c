"""Compiled runtimes: which runtime a plan chooses, what its check refuses, the cache's trust."""

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from digitserve.runtimes import compiled, load_model
from digitserve.runtimes.compiled import Candidate, Reference, check, choose
from digitserve.training import Split


def answers(labels: list[int]) -> Any:
    """An answer function giving these labels (and one-hot scores) for any rows."""

    def answer(rows: np.ndarray[Any, Any]) -> tuple[Any, Any]:
        picked = np.resize(np.array(labels), len(rows))
        return picked, np.eye(3)[picked]

    return answer


def timed(runtime: str, microseconds: float, needs_scikit_learn: bool) -> Candidate:
    candidate = Candidate(runtime, answers([0]), needs_scikit_learn)
    candidate.microseconds = microseconds
    return candidate


def test_a_runtime_without_scikit_learn_wins_unless_twice_as_slow() -> None:
    table, onnx = timed("kernel-table", 22, True), timed("onnxruntime", 18, False)
    assert choose([table, onnx]) is onnx
    svm = timed("svm", 66, False)
    assert choose([timed("kernel-table", 46, True), svm]) is svm  # 1.4x slower: still preferred
    fast = timed("kernel-table", 40, True)
    assert choose([fast, timed("onnxruntime", 100, False)]) is fast  # 2.5x slower: not
    svm = timed("svm", 60, False)
    assert choose([timed("scikit-learn", 300, True), svm]) is svm


def test_a_runtime_that_failed_its_check_is_never_chosen() -> None:
    wrong = timed("onnxruntime", 1, False)
    wrong.verdict = "labels differ on 1 of 2309 check rows"
    right = timed("kernel-table", 50, True)
    assert choose([wrong, right]) is right
    assert choose([wrong]) is None


def test_the_check_refuses_one_wrong_label_in_a_batch_or_alone() -> None:
    rows = np.zeros((40, 64))
    expected = Reference.of(answers([0]), rows)
    good = Candidate("x", answers([0]), False)
    check(good, rows, expected)
    assert good.passed
    one_wrong = Candidate("x", answers([0] * 39 + [1]), False)
    check(one_wrong, rows, expected)
    assert one_wrong.verdict == "labels differ on 1 of 40 check rows"

    def wrong_alone(rows: np.ndarray[Any, Any]) -> tuple[Any, Any]:
        picked = np.zeros(len(rows), dtype=int) if len(rows) > 1 else np.ones(1, dtype=int)
        return picked, np.eye(3)[picked]

    lone = Candidate("x", wrong_alone, False)
    check(lone, rows, expected)
    assert lone.verdict == "labels differ on 2 of 2 check rows asked one at a time"


@pytest.fixture
def logistic_file(tmp_path: Path, split: Split) -> Path:
    path = tmp_path / "model.pickle"
    model = LogisticRegression(max_iter=3000).fit(split.x_train, split.y_train)
    path.write_bytes(pickle.dumps(model))
    return path


def test_a_cached_plan_is_used_without_running_the_child_again(
    tmp_path: Path, logistic_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(tmp_path / "cache"))
    first = load_model(logistic_file, "logistic", compile_onnx=True)
    assert first.path == "onnxruntime"
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700

    def no_child(*args: Any) -> None:
        raise AssertionError("the child ran again")

    monkeypatch.setattr(compiled, "_run_child", no_child)
    again = load_model(logistic_file, "logistic", compile_onnx=True)
    assert again.path == "onnxruntime"
    assert again.card["runtime_check"] == first.card["runtime_check"]


def test_a_changed_runtime_file_in_the_cache_is_not_used(
    tmp_path: Path, logistic_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(cache))
    served = load_model(logistic_file, "logistic", compile_onnx=True)
    plan = json.loads((cache / f"{served.sha256}.json").read_text())
    (cache / plan["artefact"]).write_bytes(b"planted by someone else")
    again = load_model(logistic_file, "logistic", compile_onnx=True)  # made afresh
    assert again.path == "onnxruntime"
    assert (cache / plan["artefact"]).read_bytes() != b"planted by someone else"


def test_a_cache_others_can_write_is_not_trusted(
    tmp_path: Path, logistic_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # noqa: S103 - the unsafe folder under test
    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(shared))
    served = load_model(logistic_file, "logistic", compile_onnx=True)
    assert served.path == "onnxruntime"  # compiled into a private folder instead
    assert not list(shared.iterdir())


def test_a_classic_svc_is_served_by_numpy_to_the_bit(
    tmp_path: Path, split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(tmp_path / "cache"))
    svc = SVC(gamma=0.001).fit(split.x_train, split.y_train)
    path = tmp_path / "svc.pickle"
    path.write_bytes(pickle.dumps(svc))
    served = load_model(path, "svc", compile_onnx=True)
    assert served.path in ("svm", "kernel-table")  # the kernel table only if twice as fast
    assert "svm" in served.card["runtime_check"]
    assert served.batchable  # each row computed alone, exactly: requests may share calls
    rows = split.x_test.astype(np.int64)
    predictions = served.predict(rows)
    assert [p.label for p in predictions] == svc.predict(rows.astype(np.float64)).tolist()
    scores = np.array([[p.scores[str(k)] for k in range(10)] for p in predictions])
    assert np.array_equal(scores, svc.decision_function(rows.astype(np.float64)))


def test_where_scikit_learn_answers_a_row_otherwise_alone_either_label_passes() -> None:
    rows = np.zeros((40, 64))

    def tie_broken_by_the_batch(rows: np.ndarray[Any, Any]) -> tuple[Any, Any]:
        picked = np.zeros(len(rows), dtype=int) if len(rows) > 1 else np.ones(1, dtype=int)
        return picked, np.eye(3)[picked]

    reference = Reference.of(tie_broken_by_the_batch, rows)  # rows 0 and 20: 0 in a batch, 1 alone
    for labels in ([0], [1] + [0] * 19 + [1] + [0] * 19, [0] * 20 + [1] + [0] * 19):
        candidate = Candidate("x", answers(labels), False)
        check(candidate, rows, reference)
        assert candidate.passed, (labels, candidate.verdict)
    wrong = Candidate("x", answers([0] * 5 + [2] + [0] * 34), False)  # row 5 is not a tie
    check(wrong, rows, reference)
    assert wrong.verdict == "labels differ on 1 of 40 check rows"


def test_a_read_only_cache_is_read_and_new_plans_go_to_a_private_temporary_folder(
    tmp_path: Path, logistic_file: Path, split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(cache))
    load_model(logistic_file, "logistic", compile_onnx=True)  # baked, as the image build does
    writable = os.access
    # A read-only image (root may write anywhere, so the check is what is replaced).
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != cache and writable(path, mode)
    )
    child = compiled._run_child
    monkeypatch.setattr(compiled, "_run_child", lambda *args: pytest.fail("recompiled"))
    assert load_model(logistic_file, "logistic", compile_onnx=True).path == "onnxruntime"
    monkeypatch.setattr(compiled, "_run_child", child)
    other = tmp_path / "svc.pickle"
    other.write_bytes(pickle.dumps(SVC(gamma=0.001).fit(split.x_train, split.y_train)))
    assert load_model(other, "svc", compile_onnx=True).path in ("svm", "kernel-table")
    assert len(list(cache.iterdir())) == 2  # the logistic plan and its ONNX file only


def test_a_classifier_without_probabilities_is_exported_without_zipmap_options(
    tmp_path: Path, split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.svm import LinearSVC

    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(tmp_path / "cache"))
    model = LinearSVC(max_iter=5000).fit(split.x_train, split.y_train)
    path = tmp_path / "linear.pickle"
    path.write_bytes(pickle.dumps(model))
    served = load_model(path, "linear", compile_onnx=True)
    assert served.path == "onnxruntime", served.card["runtime_check"]
    assert served.score_kind == "decision_scores"
    rows = split.x_test.astype(np.int64)
    assert [p.label for p in served.predict(rows)] == model.predict(rows).tolist()
