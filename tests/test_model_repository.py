"""A model repository of several models, versions and formats, through every front end.

The repository is the issue's own: `digits/1/model.pickle` (the classic `SVC(gamma=0.001)`, no
probabilities), `digits/2/model.joblib` (StandardScaler + LogisticRegression) and
`forest/1/model.onnx` (a RandomForest exported by skl2onnx with its default options).
"""

import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from digitserve.app import create_app
from digitserve.schemas import ModelList
from digitserve.settings import Settings
from digitserve.training import Split
from tests.conftest import DATA_DIR, Renderer
from tests.live import LiveServer, free_port

SEVEN = (DATA_DIR / "7_64px.jpg").read_bytes()


@pytest.fixture(scope="module")
def estimators(split: Split) -> dict[str, Any]:
    """The three estimators of the repository, fitted once."""
    x, y = split.x_train, split.y_train
    return {
        "svc": SVC(gamma=0.001).fit(x, y),
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y),
        "forest": RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y),
    }


def write_repository(root: Path, estimators: dict[str, Any]) -> Path:
    """Lay the issue's repository out under `root`."""
    (root / "digits" / "1").mkdir(parents=True)
    (root / "digits" / "2").mkdir(parents=True)
    (root / "forest" / "1").mkdir(parents=True)
    (root / "digits" / "1" / "model.pickle").write_bytes(pickle.dumps(estimators["svc"]))
    joblib.dump(estimators["logistic"], root / "digits" / "2" / "model.joblib")
    onnx = to_onnx(estimators["forest"], np.zeros((1, 64), dtype=np.float32))
    (root / "forest" / "1" / "model.onnx").write_bytes(onnx.SerializeToString())
    return root


@pytest.fixture
def repository(tmp_path: Path, estimators: dict[str, Any]) -> Path:
    """A fresh copy of the repository for each test (tests add and remove versions)."""
    return write_repository(tmp_path / "models", estimators)


@pytest.fixture
def served(repository: Path) -> Iterator[TestClient]:
    """The app serving the repository with explicit model control."""
    settings = Settings(model_repository=repository, model_control_mode="explicit")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def predict(client: Any, url: str, path: str, data: bytes = SEVEN) -> Any:
    """POST a JPEG to a /v1 route (in process, or with requests to `url`) and parse the 200."""
    body = {"content": data} if isinstance(client, TestClient) else {"data": data}
    response = client.post(f"{url}{path}", headers={"content-type": "image/jpeg"}, **body)
    assert response.status_code == 200, response.text
    return response.json()


def features_of(client: TestClient) -> NDArray[np.int64]:
    """The 64 features the service reads from SEVEN."""
    body = client.post(
        "/v1/models/digits:predict?include=pixels",
        content=SEVEN,
        headers={"content-type": "image/jpeg"},
    ).json()
    return np.asarray(body["predictions"][0]["pixels"], dtype=np.int64).reshape(1, 64)


def test_every_model_and_version_is_listed_with_its_state(served: TestClient) -> None:
    body = served.get("/v1/models").json()
    ModelList.model_validate(body)
    listing = {model["name"]: model for model in body["models"]}
    assert set(listing) == {"digits", "forest"}
    assert listing["digits"]["default_version"] == "2"
    assert [v["version"] for v in listing["digits"]["versions"]] == ["1", "2"]
    assert {v["state"] for v in listing["digits"]["versions"]} == {"READY"}
    # The pipeline has no fast path of its own: ONNX Runtime serves it, checked against it.
    assert listing["digits"]["card"]["runtime"] == "onnxruntime"
    assert "labels equal scikit-learn's" in listing["digits"]["card"]["runtime_check"]
    assert listing["forest"]["card"]["runtime"] == "onnxruntime"
    assert served.get("/readyz").status_code == 200
    assert served.get("/v1").json()["models"] == [
        {"name": "digits", "default_version": "2"},
        {"name": "forest", "default_version": "1"},
    ]


def test_versioned_and_default_routes_answer_with_their_version(
    served: TestClient, estimators: dict[str, Any]
) -> None:
    rows = features_of(served)
    first = predict(served, "", "/v1/models/digits/versions/1:predict")
    assert first["model"] == {"name": "digits", "version": "1", "scores": "decision_scores"}
    assert first["predictions"][0]["label"] == estimators["svc"].predict(rows)[0]
    second = predict(served, "", "/v1/models/digits:predict")
    assert second["model"] == {"name": "digits", "version": "2", "scores": "probabilities"}
    assert second["predictions"][0]["label"] == estimators["logistic"].predict(rows)[0]
    forest = predict(served, "", "/v1/models/forest:predict")
    assert forest["model"] == {"name": "forest", "version": "1", "scores": "probabilities"}
    assert forest["predictions"][0]["label"] == estimators["forest"].predict(rows)[0]
    expected = estimators["forest"].predict_proba(rows)[0]
    scores = forest["predictions"][0]["probabilities"]
    np.testing.assert_allclose([scores[str(k)] for k in range(10)], expected, atol=1e-5)
    card = served.get("/v1/models/digits/versions/1").json()
    assert (card["version"], card["scores"]) == ("1", "decision_scores")


def test_the_inference_protocol_serves_every_version(
    served: TestClient, estimators: dict[str, Any]
) -> None:
    rows = features_of(served)
    document = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "INT64"}]}
    document["inputs"][0]["data"] = rows.ravel().tolist()
    for path, version, estimator in [
        ("/v2/models/digits/versions/1/infer", "1", "svc"),
        ("/v2/models/digits/infer", "2", "logistic"),
        ("/v2/models/forest/infer", "1", "forest"),
    ]:
        body = served.post(path, json=document).json()
        assert body["model_version"] == version, path
        [label] = next(o for o in body["outputs"] if o["name"] == "label")["data"]
        assert label == estimators[estimator].predict(rows)[0], path
    metadata = served.get("/v2/models/digits").json()
    assert metadata["versions"] == ["1", "2"]
    assert served.get("/v2/models/forest").json()["platform"] == "onnxruntime_onnx"
    assert served.get("/v2/models/digits/versions/1/ready").json()["ready"] is True
    missing = served.get("/v2/models/digits/versions/3/ready")
    assert (missing.status_code, missing.json()["code"]) == (404, "version_not_found")


def test_index_unload_and_load(served: TestClient, repository: Path) -> None:
    index = served.post("/v2/repository/index").json()
    assert [(line["name"], line["version"], line["state"]) for line in index] == [
        ("digits", "1", "READY"),
        ("digits", "2", "READY"),
        ("forest", "1", "READY"),
    ]
    assert served.post("/v2/repository/models/forest/unload").status_code == 200
    gone = served.post("/v1/models/forest:predict", content=SEVEN)
    assert (gone.status_code, gone.json()["code"]) == (503, "model_not_ready")
    ready = served.post("/v2/repository/index", json={"ready": True}).json()
    assert {line["name"] for line in ready} == {"digits"}
    assert served.get("/readyz").status_code == 200  # unloaded on purpose
    assert served.post("/v2/repository/models/forest/load").status_code == 200
    assert predict(served, "", "/v1/models/forest:predict")["model"]["version"] == "1"
    shutil.copy(repository / "digits" / "1" / "model.pickle", repository / "digits" / "3.pickle")
    (repository / "digits" / "3").mkdir()
    (repository / "digits" / "3.pickle").rename(repository / "digits" / "3" / "model.pickle")
    loaded = served.post("/v2/repository/models/digits/load").json()
    assert [line["version"] for line in loaded["models"]] == ["1", "2", "3"]
    assert predict(served, "", "/v1/models/digits:predict")["model"]["version"] == "3"
    unknown = served.post("/v2/repository/models/nope/load")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "model_not_found")


def test_control_routes_are_refused_unless_explicit(repository: Path) -> None:
    with TestClient(create_app(Settings(model_repository=repository))) as client:
        refused = client.post("/v2/repository/models/forest/unload")
        assert (refused.status_code, refused.json()["code"]) == (403, "model_control_disabled")
        assert "--model-control-mode explicit" in refused.json()["detail"]
        assert client.post("/v2/repository/index").status_code == 200


def test_a_broken_model_is_unavailable_while_the_others_serve(repository: Path) -> None:
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.pickle").write_bytes(b"not a pickle")
    with TestClient(create_app(Settings(model_repository=repository))) as client:
        [line] = [
            line for line in client.post("/v2/repository/index").json() if line["name"] == "broken"
        ]
        assert line["state"] == "UNAVAILABLE"
        assert "not a readable model pickle" in line["reason"]
        assert predict(client, "", "/v1/models/forest:predict")["model"]["name"] == "forest"
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert "broken/1" in not_ready.json()["detail"]
        assert client.post("/v1/models/broken:predict", content=SEVEN).status_code == 503


def test_bad_input_gets_the_same_answer_from_every_model(served: TestClient) -> None:
    for path in ("/v1/models/digits:predict", "/v1/models/forest:predict"):
        response = served.post(path, json={"instances": [[0.5] * 64]})
        assert (response.status_code, response.json()["code"]) == (400, "invalid_input"), path


# ---- a real server -------------------------------------------------------------------------


def start(repository: Path, *args: str, cwd: Path | None = None) -> LiveServer:
    """`digitserve serve --model-repository` on a free port, ready."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digitserve",
            "serve",
            "--port",
            str(port),
            "--model-repository",
            str(repository),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return LiveServer(process, url)
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become ready")


def stop(server: LiveServer) -> None:
    """SIGTERM and wait."""
    server.process.terminate()
    server.process.wait(timeout=30)


def hammer(url: str, stop_at: threading.Event, outcomes: list[tuple[float, int, str]]) -> None:
    """Predict with the default digits version until told to stop: (sent at, status, version)."""
    with requests.Session() as session:
        while not stop_at.is_set():
            sent = time.monotonic()
            response = session.post(
                f"{url}/v1/models/digits:predict",
                data=SEVEN,
                headers={"content-type": "image/jpeg"},
                timeout=30,
            )
            version = response.json()["model"]["version"] if response.status_code == 200 else ""
            outcomes.append((sent, response.status_code, version))


@pytest.mark.integration
def test_a_new_version_loaded_under_load_fails_no_request(repository: Path) -> None:
    server = start(repository, "--model-control-mode", "explicit", cwd=Path("/"))
    try:
        stop_at = threading.Event()
        outcomes: list[tuple[float, int, str]] = []
        clients = [
            threading.Thread(target=hammer, args=(server.url, stop_at, outcomes)) for _ in range(4)
        ]
        for client in clients:
            client.start()
        time.sleep(1)
        target = repository / "digits" / "3"
        target.mkdir()
        shutil.copy(repository / "digits" / "1" / "model.pickle", target / "model.pickle")
        load = requests.post(f"{server.url}/v2/repository/models/digits/load", timeout=60)
        assert load.status_code == 200, load.text
        loaded_at = time.monotonic()
        time.sleep(1)
        unload = requests.post(f"{server.url}/v2/repository/models/forest/unload", timeout=60)
        assert unload.status_code == 200
        time.sleep(0.5)
        stop_at.set()
        for client in clients:
            client.join(timeout=60)
        statuses = {status for _, status, _ in outcomes}
        assert statuses == {200}, [outcome for outcome in outcomes if outcome[1] != 200][:5]
        outcomes.sort()
        assert outcomes[0][2] == "2"
        # Every request sent once the load had answered was served by the new default version.
        assert {version for sent, _, version in outcomes if sent > loaded_at} == {"3"}
        assert len(outcomes) > 20
    finally:
        stop(server)


@pytest.mark.integration
def test_poll_mode_serves_new_versions_and_drops_removed_models(repository: Path) -> None:
    server = start(
        repository, "--model-control-mode", "poll", "--poll-seconds", "0.2", cwd=Path("/")
    )
    try:
        target = repository / "digits" / "3"
        target.mkdir()
        shutil.copy(repository / "digits" / "1" / "model.pickle", target / "model.pickle")
        shutil.rmtree(repository / "forest")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            models = requests.get(f"{server.url}/v1/models", timeout=5).json()["models"]
            names = {model["name"]: model["default_version"] for model in models}
            if names == {"digits": "3"}:
                break
            time.sleep(0.2)
        assert names == {"digits": "3"}
        refused = requests.post(f"{server.url}/v2/repository/models/digits/load", timeout=5)
        assert refused.status_code == 403
    finally:
        stop(server)


@pytest.mark.integration
def test_the_bundled_model_serves_from_any_directory(tmp_path: Path, render: Renderer) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "digitserve", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        start_new_session=True,
    )
    server = LiveServer(process, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        body = predict(requests, server.url, "/v1/models/digits:predict")
        assert body["model"] == {"name": "digits", "version": "1", "scores": "probabilities"}
        assert body["predictions"][0]["label"] == 7
    finally:
        stop(server)
    result = subprocess.run(
        [sys.executable, "-m", "digitserve", "predict", str(DATA_DIR / "7_64px.jpg"), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"label": 7' in result.stdout


def test_repository_routes_need_a_key_when_keys_are_set(repository: Path) -> None:
    key = "k" * 32
    settings = Settings(model_repository=repository, model_control_mode="explicit", api_keys=[key])
    with TestClient(create_app(settings)) as client:
        for path in ("/v2/repository/index", "/v2/repository/models/forest/unload"):
            refused = client.post(path)
            assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized"), path
        allowed = client.post("/v2/repository/index", headers={"X-API-Key": key})
        assert allowed.status_code == 200
