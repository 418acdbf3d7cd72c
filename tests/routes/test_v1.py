"""The native API: every request shape, every documented error, the model card."""

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image
from sklearn.svm import SVC

from digitserve.app import create_app
from digitserve.classifier import Classifier, load_classifier
from digitserve.diagnostics import LOW_CONFIDENCE_MARGIN, WARNING_CODES
from digitserve.evalset import compose, paper, place, smooth_ink
from digitserve.routes.v1 import decodes_quickly
from digitserve.schemas import ModelMetadata, PredictResponse, Problem
from digitserve.settings import Settings
from digitserve.training import Split
from tests.conftest import DATA_DIR, Renderer, encode

PREDICT = "/v1/models/digits:predict"


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Check a response is the one error envelope with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    Problem.model_validate(body)
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"/v1/errors#{code}"
    assert body["error"] == body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


def test_jpeg_body(client: TestClient, seven: NDArray[np.int64], render: Renderer) -> None:
    response = client.post(PREDICT, content=render(seven), headers={"content-type": "image/jpeg"})
    assert response.status_code == 200
    body = PredictResponse.model_validate(response.json())
    assert body.model.model_dump() == {
        "name": "digits",
        "version": "1",
        "scores": "probabilities",
    }
    [prediction] = body.predictions
    assert prediction.label == 7
    assert prediction.probabilities is not None
    assert (
        prediction.confidence
        == prediction.probabilities["7"]
        == max(prediction.probabilities.values())
    )
    assert prediction.pixels is None
    assert "pixels" not in response.json()["predictions"][0]
    assert response.json()["predictions"][0]["warnings"] == []


def test_png_body_with_pixels(
    client: TestClient, seven: NDArray[np.int64], render: Renderer
) -> None:
    response = client.post(
        PREDICT,
        params={"include": "pixels"},
        content=render(seven, 32, "PNG"),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["pixels"] == seven.reshape(8, 8).tolist()


def test_multipart_keeps_order(
    client: TestClient, classifier: Classifier, split: Split, render: Renderer
) -> None:
    rows = split.x_test[:5].astype(np.int64)
    files = [("image", (f"{i}.jpg", render(row, 64), "image/jpeg")) for i, row in enumerate(rows)]
    response = client.post(PREDICT, files=files)
    assert response.status_code == 200
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == classifier.estimator.predict(rows).tolist()


def test_json_instances_of_every_kind(
    client: TestClient, seven: NDArray[np.int64], render: Renderer
) -> None:
    instances = [
        {"b64": base64.b64encode(render(seven)).decode()},
        seven.tolist(),
        seven.reshape(8, 8).tolist(),
    ]
    response = client.post(PREDICT, json={"instances": instances}, params={"include": "pixels"})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == [7, 7, 7]
    assert predictions[1]["pixels"] == seven.reshape(8, 8).tolist()


def test_data_examples_are_read_correctly(client: TestClient) -> None:
    files = sorted(DATA_DIR.glob("*.jpg"))
    assert len(files) >= 20
    response = client.post(
        PREDICT, files=[("image", (f.name, f.read_bytes(), "image/jpeg")) for f in files]
    )
    assert response.status_code == 200
    assert [p["label"] for p in response.json()["predictions"]] == [int(f.name[0]) for f in files]


def test_model_without_probabilities_says_so(
    tmp_path: Path, split: Split, render: Renderer
) -> None:
    path = tmp_path / "plain.pickle"
    import pickle

    path.write_bytes(pickle.dumps(SVC(gamma=0.001).fit(split.x_train, split.y_train)))
    settings = Settings(model_path=path)
    with TestClient(create_app(settings, load_classifier(path))) as client:
        response = client.post(
            PREDICT, content=render(split.x_test[0]), headers={"content-type": "image/jpeg"}
        )
        card = client.get("/v1/models/digits").json()
    body = response.json()
    assert body["model"]["scores"] == "decision_scores"
    [prediction] = body["predictions"]
    assert prediction["confidence"] is None
    assert "probabilities" not in prediction
    assert len(prediction["decision_scores"]) == 10
    assert card["scores"] == "decision_scores"
    assert card["version"] == "1"  # a single model file is version 1 of its name
    assert "release" not in card  # and it has no card of its own with a release string


def test_model_card(client: TestClient) -> None:
    response = client.get("/v1/models/digits")
    assert response.status_code == 200
    card = ModelMetadata.model_validate(response.json()).model_dump()
    assert card["name"] == "digits"
    assert card["classes"] == list(range(10))
    assert card["labels"]["3"] == "three"
    assert card["scores"] == "probabilities"
    assert card["limits"] == {
        "max_body_bytes": 10 * 1024 * 1024,
        "max_image_pixels": 40_000_000,
        "max_images_per_request": 64,
        "min_image_side": 8,
    }
    assert set(card["input"]["media_types"]) == {
        "image/jpeg",
        "image/png",
        "multipart/form-data",
        "application/json",
    }
    assert card["endpoints"]["predict"] == "POST /v1/models/digits:predict"
    assert card["endpoints"]["predict_this_version"] == "POST /v1/models/digits/versions/1:predict"
    assert card["version"] == "1"
    assert card["release"] == "1.0.0"  # the card's own release string stands beside it
    assert card["runtime"] == "kernel-table"
    assert card["warnings"] == WARNING_CODES
    assert "warnings" in card["output"]
    assert response.json()["training"]["test_accuracy"] >= 0.98
    assert client.get("/v1/models").json() == {
        "models": [
            {
                "name": "digits",
                "default_version": "1",
                "versions": [{"version": "1", "state": "READY", "reason": ""}],
                "card": response.json(),
            }
        ]
    }
    assert client.get("/v1/models/digits/versions/1").json() == response.json()


def test_index_and_error_catalogue(client: TestClient) -> None:
    index = client.get("/v1").json()
    assert index["links"]["predict"] == PREDICT
    assert index["models"] == [{"name": "digits", "default_version": "1"}]
    for name, link in index["links"].items():
        if link.startswith("POST "):
            assert client.post(link.removeprefix("POST ")).status_code == 200, link
            continue
        assert client.get(link).status_code == (405 if name == "predict" else 200), link
    page = client.get("/")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'href="v1"' in page.text
    errors = client.get("/v1/errors").json()
    assert {"code": "blank_image", "status": 422}.items() <= {
        **errors[0],
        **next(e for e in errors if e["code"] == "blank_image"),
    }.items()


# ---- errors, one test per documented code ---------------------------------------------------


def test_400_undecodable_image(client: TestClient) -> None:
    body = assert_problem(
        client.post(
            PREDICT, content=b"\xff\xd8\xff garbage", headers={"content-type": "image/jpeg"}
        ),
        400,
        "invalid_image",
    )
    assert "truncated or corrupt" in body["detail"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"inputs": []}', 'one key, "instances"'),
        (b'{"instances": []}', "non-empty list"),
        (b'{"instances": [{"b64": "***"}]}', "item 0: b64 is not valid base64"),
        (b'{"instances": [{"b64": "QUJD\\n"}]}', "item 0: b64 is not valid base64"),
        (b'{"instances": [{"b64": "QQ==QQ=="}]}', "item 0: b64 is not valid base64"),
        (b'{"instances": [{"b64": "\xc3\xa9"}]}', "item 0: b64 is not valid base64"),
        (b'{"instances": [{"url": "http://x"}]}', '{"b64"'),
        (b'{"instances": [[1, 2, 3]]}', "item 0: pixels must hold 64 values"),
        (b'{"instances": ["abc"]}', "item 0: pixels must be a list"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
        (b'{"instances": "\xff\xfe"}', "not valid JSON"),
    ],
)
def test_400_malformed_json(client: TestClient, payload: bytes, message: str) -> None:
    body = assert_problem(
        client.post(PREDICT, content=payload, headers={"content-type": "application/json"}),
        400,
        "invalid_input",
    )
    assert message in body["detail"]


def test_400_bad_image_in_a_batch_names_the_item(
    client: TestClient, render: Renderer, seven: Any
) -> None:
    files = [
        ("image", ("good.jpg", render(seven), "image/jpeg")),
        ("image", ("bad.jpg", b"junk", "image/jpeg")),
    ]
    body = assert_problem(client.post(PREDICT, files=files), 400, "invalid_image")
    assert body["detail"].startswith("item 1 (bad.jpg): ")


def test_400_multipart_problems(client: TestClient, render: Renderer, seven: Any) -> None:
    wrong_field = client.post(PREDICT, files=[("picture", ("a.jpg", render(seven), "image/jpeg"))])
    assert "'picture'" in assert_problem(wrong_field, 400, "invalid_input")["detail"]
    no_boundary = client.post(
        PREDICT, content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert "boundary" in assert_problem(no_boundary, 400, "invalid_input")["detail"]
    empty = client.post(
        PREDICT, content=b"--b--\r\n", headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert "no 'image' file part" in assert_problem(empty, 400, "invalid_input")["detail"]
    cut = client.post(
        PREDICT,
        content=b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_problem(cut, 400, "invalid_input")


def test_400_bad_query(client: TestClient, render: Renderer, seven: Any) -> None:
    response = client.post(
        PREDICT,
        params={"include": "everything"},
        content=render(seven),
        headers={"content-type": "image/jpeg"},
    )
    assert "include" in assert_problem(response, 400, "invalid_input")["detail"]


def test_404_unknown_model_and_route(client: TestClient) -> None:
    assert_problem(
        client.post("/v1/models/cats:predict", json={"instances": [[0] * 64]}),
        404,
        "model_not_found",
    )
    assert_problem(client.get("/v1/models/cats"), 404, "model_not_found")
    assert "/nowhere" in assert_problem(client.get("/nowhere"), 404, "not_found")["detail"]


def test_405_wrong_method(client: TestClient) -> None:
    response = client.get(PREDICT)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    response = client.delete("/v1/models")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"
    for method in ("OPTIONS", "DELETE", "PUT"):
        response = client.request(method, PREDICT)
        assert_problem(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "POST", method


def test_413_body_over_the_byte_limit(settings: Settings, classifier: Any) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    with TestClient(create_app(small, classifier)) as client:
        response = client.post(
            PREDICT, content=b"\0" * 4096, headers={"content-type": "image/jpeg"}
        )
        body = assert_problem(response, 413, "body_too_large")
        assert body["limit"] == 2048

        def chunks() -> Any:
            yield b"\0" * 1500
            yield b"\0" * 1500

        streamed = client.post(PREDICT, content=chunks(), headers={"content-type": "image/jpeg"})
        assert_problem(streamed, 413, "body_too_large")


def test_413_image_over_the_pixel_limit(
    settings: Settings, classifier: Any, render: Renderer, seven: Any
) -> None:
    small = settings.model_copy(update={"max_image_pixels": 1000})
    with TestClient(create_app(small, classifier)) as client:
        response = client.post(
            PREDICT, content=render(seven, 64), headers={"content-type": "image/jpeg"}
        )
    assert assert_problem(response, 413, "image_too_large")["limit"] == 1000


def test_413_too_many_images(client: TestClient, render: Renderer, seven: Any) -> None:
    too_many = {"instances": [[0] * 64] * 65}
    assert (
        assert_problem(client.post(PREDICT, json=too_many), 413, "too_many_images")["limit"] == 64
    )
    files = [("image", (f"{i}.jpg", render(seven), "image/jpeg")) for i in range(65)]
    assert_problem(client.post(PREDICT, files=files), 413, "too_many_images")


def test_413_json_with_more_values_than_its_instances_can_hold(
    settings: Settings, classifier: Classifier, seven: Any
) -> None:
    grid = seven.reshape(8, 8).tolist()
    # 64 instances of 64 pixels is the most a request may carry (as many commas as can be).
    most = json.dumps({"instances": [grid] * 32 + [seven.tolist()] * 32}).encode()
    five_million = b'{"instances": [[' + b"0," * 5_000_000 + b"0]]}"
    two = settings.model_copy(update={"max_images_per_request": 2})
    with TestClient(create_app(settings, classifier)) as client:
        response = client.post(PREDICT, content=most, headers={"content-type": "application/json"})
        assert response.status_code == 200
        assert len(response.json()["predictions"]) == 64
        # Refused from a count of its commas, before a single list is built.
        refused = client.post(
            PREDICT, content=five_million, headers={"content-type": "application/json"}
        )
        body = assert_problem(refused, 413, "too_many_images")
        assert body["limit"] == 64
        assert body["detail"] == (
            "the JSON body holds more values than 64 instances of 64 pixels; "
            "the limit is 64 instances"
        )
    with TestClient(create_app(two, classifier)) as client:
        ok = client.post(PREDICT, json={"instances": [seven.tolist()] * 2})
        assert ok.status_code == 200
        over = client.post(PREDICT, json={"instances": [seven.tolist()] * 3})
        assert assert_problem(over, 413, "too_many_images")["limit"] == 2


def test_415_unsupported_media_types(client: TestClient) -> None:
    body = assert_problem(
        client.post(PREDICT, content=b"hello", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert body["accepted"] == [
        "image/jpeg",
        "image/png",
        "multipart/form-data",
        "application/json",
    ]
    assert_problem(client.post(PREDICT, content=b"hello"), 415, "unsupported_media_type")
    gif = encode(Image.new("RGB", (16, 16)), "GIF")
    body = assert_problem(
        client.post(PREDICT, content=gif, headers={"content-type": "image/jpeg"}),
        415,
        "unsupported_media_type",
    )
    assert "image/gif" in body["detail"]


def test_422_not_a_digit(client: TestClient) -> None:
    tiny = encode(Image.new("L", (4, 4)), "PNG")
    assert_problem(
        client.post(PREDICT, content=tiny, headers={"content-type": "image/png"}),
        422,
        "image_too_small",
    )
    blank = encode(Image.new("RGB", (64, 64), "white"), "JPEG")
    assert_problem(
        client.post(PREDICT, content=blank, headers={"content-type": "image/jpeg"}),
        422,
        "blank_image",
    )


def test_500_hides_internals(
    settings: Settings, classifier: Any, render: Renderer, seven: Any
) -> None:
    def fail(rows: Any) -> Any:
        raise RuntimeError("secret path /srv/model.pickle")

    broken = dataclasses.replace(classifier, answer=fail)
    with TestClient(create_app(settings, broken), raise_server_exceptions=False) as client:
        response = client.post(
            PREDICT, content=render(seven), headers={"content-type": "image/jpeg"}
        )
    body = assert_problem(response, 500, "internal_error")
    assert "secret" not in response.text
    assert body["detail"] == "internal error; quote the request_id when reporting it"


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    given = client.get("/v1/models/nope", headers={"x-request-id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    assert given.json()["request_id"] == "trace-42"
    unsafe = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    assert len(unsafe.headers["x-request-id"]) == 32


def test_openapi_documents_every_request_shape_and_error(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/models/{model_name}:predict"]["post"]
    assert set(operation["requestBody"]["content"]) == {
        "image/jpeg",
        "image/png",
        "multipart/form-data",
        "application/json",
    }
    assert {"400", "404", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "PredictRequest" in spec["components"]["schemas"]
    assert "Problem" in spec["components"]["schemas"]
    json.dumps(spec)


def test_docs_are_served_without_a_cdn(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text
    asset = client.get("/docs-assets/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.content) > 100_000


def test_only_surely_cheap_bodies_are_decoded_on_the_event_loop(
    render: Renderer, seven: Any
) -> None:
    assert decodes_quickly("image/jpeg", render(seven, 256))
    assert not decodes_quickly("image/png", render(seven, 257, "PNG"))
    assert decodes_quickly("image/png", b"garbage fails at once")
    assert decodes_quickly("application/json", json.dumps({"instances": [seven.tolist()]}).encode())
    assert not decodes_quickly("application/json", b'{"instances": [{"b64": ""}]}')
    escaped = b'{"instances": [{"\\u0062\\u0036\\u0034": ""}]}'
    assert not decodes_quickly("application/json", escaped)
    assert not decodes_quickly("multipart/form-data", b"")


def test_large_images_are_preprocessed_under_the_thread_bound(
    settings: Settings, classifier: Classifier, render: Renderer, seven: Any
) -> None:
    bounded = settings.model_copy(update={"preprocess_threads": 1})
    with TestClient(create_app(bounded, classifier)) as client:
        limiter = client.app.state.dataplane.limiter  # type: ignore[attr-defined]
        assert limiter.total_tokens == 1
        response = client.post(
            PREDICT, content=render(seven, 300, "PNG"), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] == 7
        assert limiter.borrowed_tokens == 0


def test_warnings_describe_a_poor_image(client: TestClient, seven: NDArray[np.int64]) -> None:
    rng = np.random.default_rng(0)
    chalk = compose(
        place(smooth_ink(seven, 40), (400, 300), (375, 20)),
        paper((400, 300), (40, 60, 50), 0.0, rng),
        (120, 130, 120),
        rng=rng,
    )
    response = client.post(
        PREDICT, content=encode(chalk, "PNG"), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    [prediction] = PredictResponse.model_validate(response.json()).predictions
    codes = [warning.code for warning in prediction.warnings]
    assert codes[:4] == ["inverted_input", "low_contrast", "mostly_empty", "touches_border"]
    assert set(codes) <= set(WARNING_CODES)
    messages = {warning.code: warning.message for warning in prediction.warnings}
    assert messages["inverted_input"] == WARNING_CODES["inverted_input"]
    assert messages["mostly_empty"] == (
        "the digit covers 0.5% of the image; it was cut out and enlarged"
    )


def test_low_confidence_follows_the_top_two_probabilities(client: TestClient, split: Split) -> None:
    zero, one = (split.x_test[split.y_test == digit][0] for digit in (0, 1))
    blends = [np.rint(zero * (1 - w) + one * w).astype(int).tolist() for w in np.linspace(0, 1, 9)]
    response = client.post(PREDICT, json={"instances": blends})
    assert response.status_code == 200
    flagged = []
    for prediction in response.json()["predictions"]:
        first, second = sorted(prediction["probabilities"].values(), reverse=True)[:2]
        codes = [warning["code"] for warning in prediction["warnings"]]
        assert codes == (["low_confidence"] if first - second < LOW_CONFIDENCE_MARGIN else [])
        flagged.append(bool(codes))
    assert flagged[0] is False
    assert any(flagged)


def test_no_confidence_warning_without_probabilities(tmp_path: Path, split: Split) -> None:
    import pickle

    path = tmp_path / "plain.pickle"
    path.write_bytes(pickle.dumps(SVC(gamma=0.001).fit(split.x_train, split.y_train)))
    blend = np.rint((split.x_test[0] + split.x_test[1]) / 2).astype(int).tolist()
    with TestClient(create_app(Settings(model_path=path), load_classifier(path))) as client:
        response = client.post(PREDICT, json={"instances": [blend]})
    assert response.json()["predictions"][0]["warnings"] == []
