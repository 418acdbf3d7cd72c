"""Prediction routes served directly answer exactly as FastAPI's router would."""

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from digitserve.app import create_app
from digitserve.classifier import Classifier
from digitserve.routes import v1
from digitserve.routes.direct import DirectRoute
from digitserve.settings import Settings
from tests.conftest import Renderer

PREDICT = "/v1/models/digits:predict"


def answer(
    direct: bool, settings: Settings, classifier: Classifier, **request: Any
) -> tuple[int, dict[str, str], Any]:
    """Status, headers (less the request id) and JSON body of one request to a fresh app."""
    app = create_app(settings, classifier, direct_routes=direct)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.request(**request)
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    body = response.json()
    if isinstance(body, dict):
        body.pop("request_id", None)
    return response.status_code, headers, body


def requests_to_compare(seven: NDArray[np.int64], render: Renderer) -> list[dict[str, Any]]:
    jpeg = {"content-type": "image/jpeg"}
    pixels = json.dumps(
        {
            "inputs": [
                {"name": "pixels", "shape": [1, 64], "datatype": "INT64", "data": seven.tolist()}
            ]
        }
    )
    return [
        {"method": "POST", "url": PREDICT, "content": render(seven), "headers": jpeg},
        {
            "method": "POST",
            "url": PREDICT + "?include=pixels",
            "content": render(seven, 64),
            "headers": jpeg,
        },
        {
            "method": "POST",
            "url": PREDICT + "?include=everything",
            "content": render(seven),
            "headers": jpeg,
        },
        {"method": "POST", "url": "/v1/models/other:predict", "content": b"x", "headers": jpeg},
        {
            "method": "POST",
            "url": PREDICT,
            "content": b"x",
            "headers": {"content-type": "text/plain"},
        },
        {"method": "POST", "url": PREDICT, "content": b"not a jpeg", "headers": jpeg},
        {"method": "POST", "url": PREDICT, "json": {"instances": [seven.tolist()]}},
        {"method": "POST", "url": "/v2/models/digits/infer", "content": pixels},
        {"method": "POST", "url": "/v2/models/digits/versions/1/infer", "content": pixels},
        {"method": "POST", "url": "/v2/models/digits/versions/9/infer", "content": pixels},
    ]


def test_direct_and_framework_answers_are_identical(
    settings: Settings, classifier: Classifier, seven: NDArray[np.int64], render: Renderer
) -> None:
    statuses = []
    for request in requests_to_compare(seven, render):
        direct = answer(True, settings, classifier, **request)
        framework = answer(False, settings, classifier, **request)
        assert direct == framework, request["url"]
        statuses.append(direct[0])
    assert statuses == [200, 200, 400, 404, 415, 400, 200, 200, 200, 404]


def test_bad_include_is_the_documented_400(
    client: TestClient, render: Renderer, seven: NDArray[np.int64]
) -> None:
    response = client.post(
        PREDICT + "?include=pixels&include=grid",
        content=render(seven),
        headers={"content-type": "image/jpeg"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_input"
    assert "query.include.1" in response.json()["detail"]


def test_other_methods_go_to_the_framework(client: TestClient) -> None:
    response = client.get(PREDICT)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/models/digits:predict", {"model_name": "digits"}),
        ("/v1/models/a.b-c:predict", {"model_name": "a.b-c"}),
        ("/v1/models/a/b:predict", None),
        ("/v1/models/:predict", None),
        ("/v1/models/digits:predictx", None),
    ],
)
def test_a_path_parameter_is_one_segment(path: str, params: dict[str, str] | None) -> None:
    match = DirectRoute("/v1/models/{model_name}:predict", v1.predict_request).pattern().match(path)
    assert (match.groupdict() if match else None) == params


def test_metrics_and_access_log_name_the_route_template(
    client: TestClient, render: Renderer, seven: NDArray[np.int64]
) -> None:
    client.post(PREDICT, content=render(seven), headers={"content-type": "image/jpeg"})
    metrics = client.get("/metrics").text
    assert 'route="/v1/models/{model_name}:predict"' in metrics
