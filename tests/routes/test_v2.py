"""The Open Inference Protocol routes: every route, field and error, over plain HTTP."""

import base64
import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image
from sklearn.svm import SVC

from digitserve.app import create_app
from digitserve.classifier import Classifier, load_classifier
from digitserve.inference_protocol import deserialize_bytes, parse_request, serialize_bytes
from digitserve.routes.v2 import INLINE_BYTES, decodes_quickly
from digitserve.schemas import (
    InferenceResponse,
    ModelMetadataV2,
    ModelReady,
    ServerLive,
    ServerMetadataV2,
    ServerReady,
)
from digitserve.settings import Settings
from digitserve.training import Split
from tests.conftest import DATA_DIR, MODEL_PATH, Renderer, encode
from tests.hostile import png_header_claiming
from tests.routes.test_v1 import assert_problem

INFER = "/v2/models/digits/infer"
IHCL = "Inference-Header-Content-Length"


def b64(data: bytes) -> str:
    """Standard base64 text, as JSON BYTES image elements carry it."""
    return base64.b64encode(data).decode()


def json_infer(client: TestClient, document: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POST a JSON inference request that must succeed; return the JSON response."""
    response = client.post(INFER, content=orjson.dumps(document), **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert IHCL.lower() not in response.headers
    body: dict[str, Any] = response.json()
    InferenceResponse.model_validate(body)
    return body


def binary_request(document: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary data extension body and its headers (no Content-Type, like tritonclient)."""
    header = orjson.dumps(document)
    return header + b"".join(blobs), {IHCL: str(len(header))}


def split_binary(response: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A binary response's JSON header and each binary output's bytes."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers[IHCL])
    header: dict[str, Any] = orjson.loads(response.content[:length])
    InferenceResponse.model_validate(header)
    blobs = {}
    offset = length
    for output in header["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            assert "data" not in output
            blobs[output["name"]] = response.content[offset : offset + size]
            offset += size
    assert offset == len(response.content)
    return header, blobs


def outputs_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Index a response's outputs by name."""
    return {output["name"]: output for output in body["outputs"]}


def pixels_input(rows: NDArray[Any], datatype: str = "INT64") -> dict[str, Any]:
    """A JSON `pixels` input."""
    return {
        "name": "pixels",
        "shape": list(rows.shape),
        "datatype": datatype,
        "data": rows.tolist(),
    }


def test_server_metadata(client: TestClient) -> None:
    response = client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {
        "name": "digitserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "classification"],
    }
    ServerMetadataV2.model_validate(response.json())
    # KServe's OpenAPI lists it at /v2/: answered there too, not redirected.
    slash = client.get("/v2/", follow_redirects=False)
    assert (slash.status_code, slash.json()) == (200, response.json())


def test_live_and_ready(client: TestClient) -> None:
    live = client.get("/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    ServerLive.model_validate(live.json())
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    ServerReady.model_validate(ready.json())


def test_model_ready_unversioned_and_versioned(client: TestClient) -> None:
    for path in ("/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (200, {"name": "digits", "ready": True})
        ModelReady.model_validate(response.json())


def test_not_ready_is_503_never_200_false(settings: Settings) -> None:
    client = TestClient(create_app(settings))  # not entered: the model is not loaded
    assert client.get("/v2/health/live").status_code == 200
    for path in ("/v2/health/ready", "/v2/models/digits/ready", "/v2/models/digits"):
        assert_problem(client.get(path), 503, "model_not_ready")
    assert_problem(client.post(INFER, content=b"{}"), 503, "model_not_ready")
    # Before the repository is read no name is known: any model is not ready yet.
    assert_problem(client.get("/v2/models/other/ready"), 503, "model_not_ready")


def test_model_metadata(client: TestClient) -> None:
    response = client.get("/v2/models/digits")
    assert response.status_code == 200
    body = response.json()
    ModelMetadataV2.model_validate(body)
    assert client.get("/v2/models/digits/versions/1").json() == body
    assert body["name"] == "digits"
    assert body["versions"] == ["1"]
    assert body["platform"] == "scikit-learn"
    inputs = {tensor["name"]: tensor for tensor in body["inputs"]}
    outputs = {tensor["name"]: tensor for tensor in body["outputs"]}
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["inputs"]] == [
        ("image", "BYTES", [-1]),
        ("pixels", "INT64", [-1, 64]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["outputs"]] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 10]),
        ("warnings", "BYTES", [-1]),
    ]
    assert inputs["image"]["parameters"]["json_encoding"] == "base64"
    assert inputs["image"]["parameters"]["max_image_pixels"] == 40_000_000
    assert inputs["pixels"]["parameters"]["shapes"] == "[-1, 64] or [-1, 8, 8]"
    assert inputs["pixels"]["parameters"]["range"] == "0..16"
    assert "FP32" in inputs["pixels"]["parameters"]["datatypes"]
    assert outputs["probabilities"]["parameters"]["scores"] == "probabilities"
    assert outputs["probabilities"]["parameters"]["classes"] == "0,1,2,3,4,5,6,7,8,9"
    assert body["parameters"]["scores"] == "probabilities"
    assert len(body["parameters"]["sha256"]) == 64
    assert body["parameters"]["max_images_per_request"] == 64


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/other",
        "/v2/models/other/ready",
        "/v2/models/digits/versions/2/ready",
        "/v2/models/digits/versions/2",
        "/v2/models/DIGITS",
    ],
)
def test_unknown_model_or_version_is_404(client: TestClient, path: str) -> None:
    code = "version_not_found" if "/versions/" in path else "model_not_found"
    body = assert_problem(client.get(path), 404, code)
    assert "'digits'" in body["error"] or "'1'" in body["error"]


def test_unknown_model_or_version_on_infer_is_404(
    client: TestClient, seven: NDArray[np.int64]
) -> None:
    document = orjson.dumps({"inputs": [pixels_input(seven.reshape(1, 64))]})
    body = assert_problem(
        client.post("/v2/models/other/infer", content=document), 404, "model_not_found"
    )
    assert body["error"] == "no model named 'other'; this server hosts 'digits'"
    body = assert_problem(
        client.post("/v2/models/digits/versions/9/infer", content=document),
        404,
        "version_not_found",
    )
    assert body["error"] == "model 'digits' has no version '9'; its versions: 1"


def test_wrong_method_is_405(client: TestClient) -> None:
    assert_problem(client.get(INFER), 405, "method_not_allowed")
    assert_problem(client.post("/v2/health/live"), 405, "method_not_allowed")


def test_json_pixels_flat_and_grid(
    client: TestClient, split: Split, classifier: Classifier
) -> None:
    rows = split.x_test[:5].astype(np.int64)
    expected = classifier.estimator.predict(rows.astype(np.float64)).tolist()
    probabilities = classifier.estimator.predict_proba(rows.astype(np.float64))
    for tensor in (pixels_input(rows), pixels_input(rows.reshape(5, 8, 8))):
        body = json_infer(client, {"inputs": [tensor]})
        assert body["model_name"] == "digits"
        assert body["model_version"] == "1"
        assert "id" not in body
        assert [output["name"] for output in body["outputs"]] == ["label", "probabilities"]
        label, scores = body["outputs"]
        assert (label["datatype"], label["shape"], label["data"]) == ("INT64", [5], expected)
        assert (scores["datatype"], scores["shape"]) == ("FP32", [5, 10])
        np.testing.assert_allclose(
            np.asarray(scores["data"], dtype=np.float32).reshape(5, 10), probabilities, rtol=1e-6
        )


@pytest.mark.parametrize(
    "datatype", ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "FP16", "FP64"]
)
def test_pixels_in_any_numeric_datatype(
    client: TestClient, seven: NDArray[np.int64], datatype: str
) -> None:
    body = json_infer(client, {"inputs": [pixels_input(seven.reshape(1, 64), datatype)]})
    assert outputs_by_name(body)["label"]["data"] == [7]


def test_fractional_float_pixels_are_used_as_they_are(
    client: TestClient, seven: NDArray[np.int64], classifier: Classifier
) -> None:
    rows = seven.reshape(1, 64) * 0.97
    body = json_infer(client, {"inputs": [pixels_input(rows, "FP64")]})
    expected = classifier.estimator.predict_proba(rows)[0]
    np.testing.assert_allclose(outputs_by_name(body)["probabilities"]["data"], expected, rtol=1e-6)


def test_pixels_scaled_to_0_1_are_refused_with_the_contract(
    client: TestClient, seven: NDArray[np.int64]
) -> None:
    rows = seven.reshape(1, 64) / 16
    response = client.post(INFER, content=orjson.dumps({"inputs": [pixels_input(rows, "FP32")]}))
    body = assert_problem(response, 400, "invalid_input")
    assert "scaled to 0..1" in body["detail"]
    assert "multiply by 16" in body["detail"]
    binary = (seven.reshape(1, 64) > 8).astype(np.float32)  # whole numbers 0..1: a binary grid
    assert json_infer(client, {"inputs": [pixels_input(binary, "FP32")]})["outputs"]


def test_json_image_base64_and_id_echo(
    client: TestClient, seven: NDArray[np.int64], render: Renderer
) -> None:
    document = {
        "id": "req-1",
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "data": [b64(render(seven, 64)), b64(render(seven, 16, "PNG"))],
            }
        ],
        "outputs": [{"name": "label"}],
    }
    body = json_infer(client, document)
    assert body == {
        "model_name": "digits",
        "model_version": "1",
        "id": "req-1",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [7, 7]}],
    }
    assert json_infer(client, {**document, "id": ""})["id"] == ""


def test_json_image_elements_as_data_urls_and_wrapped_base64(
    client: TestClient, seven: NDArray[np.int64], render: Renderer
) -> None:
    png = render(seven, 64, "PNG")
    elements = [
        "data:image/png;base64," + b64(png),
        base64.encodebytes(png).decode().replace("\n", "\r\n"),
    ]
    document = {"inputs": [image_input(*elements)], "outputs": [{"name": "label"}]}
    assert json_infer(client, document)["outputs"][0]["data"] == [7, 7]


def test_batch_of_32_images_json_and_binary(
    client: TestClient, split: Split, classifier: Classifier, render: Renderer
) -> None:
    rows = split.x_test[:32].astype(np.int64)
    expected = classifier.estimator.predict(rows.astype(np.float64)).tolist()
    images = [render(row, 32) for row in rows]
    body = json_infer(
        client,
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [32],
                    "datatype": "BYTES",
                    "data": list(map(b64, images)),
                }
            ]
        },
    )
    assert outputs_by_name(body)["label"]["data"] == expected
    blob = serialize_bytes(images)
    content, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [32],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        blob,
    )
    header, blobs = split_binary(client.post(INFER, content=content, headers=headers))
    assert np.frombuffer(blobs["label"], dtype="<i8").tolist() == expected
    scores = np.frombuffer(blobs["probabilities"], dtype="<f4").reshape(32, 10)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert outputs_by_name(header)["probabilities"]["shape"] == [32, 10]


def test_every_example_image(client: TestClient) -> None:
    files = sorted(DATA_DIR.glob("*.jpg"))
    data = [b64(path.read_bytes()) for path in files]
    body = json_infer(
        client,
        {
            "inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}],
            "outputs": [{"name": "label"}],
        },
    )
    assert body["outputs"][0]["data"] == [int(path.name[0]) for path in files]


def test_binary_pixels_input(client: TestClient, split: Split, classifier: Classifier) -> None:
    rows = split.x_test[:3].astype(np.float32)
    content, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [3, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "outputs": [{"name": "label"}],
        },
        rows.astype("<f4").tobytes(),
    )
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["outputs"][0]["data"] == classifier.estimator.predict(rows).tolist()


def test_raw_binary_request_is_one_image(
    client: TestClient, seven: NDArray[np.int64], render: Renderer
) -> None:
    response = client.post(
        INFER,
        content=render(seven, 64),
        headers={IHCL: "0", "Content-Type": "application/octet-stream"},
    )
    header, blobs = split_binary(response)
    assert [(o["name"], o["shape"]) for o in header["outputs"]] == [
        ("label", [1]),
        ("probabilities", [1, 10]),
    ]
    assert np.frombuffer(blobs["label"], dtype="<i8").tolist() == [7]
    assert len(blobs["probabilities"]) == 40


def test_raw_binary_request_that_is_not_an_image(client: TestClient) -> None:
    body = assert_problem(
        client.post(INFER, content=b"hello", headers={IHCL: "0"}), 400, "invalid_image"
    )
    assert body["error"].startswith("input 'image' element 0: ")


def test_output_selection_and_binary_overrides(
    client: TestClient, seven: NDArray[np.int64]
) -> None:
    content = orjson.dumps(
        {
            "inputs": [pixels_input(seven.reshape(1, 64))],
            "parameters": {"binary_data_output": True},
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": False}},
                {"name": "label"},
            ],
        }
    )
    header, blobs = split_binary(client.post(INFER, content=content))
    assert [output["name"] for output in header["outputs"]] == ["probabilities", "label"]
    assert len(header["outputs"][0]["data"]) == 10
    assert "parameters" not in header["outputs"][0]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(blobs["label"], dtype="<i8").tolist() == [7]
    only = json_infer(
        client,
        {
            "inputs": [pixels_input(seven.reshape(1, 64))],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
        },
    )
    assert [output["name"] for output in only["outputs"]] == ["probabilities"]
    everything = json_infer(client, {"inputs": [pixels_input(seven.reshape(1, 64))], "outputs": []})
    assert [output["name"] for output in everything["outputs"]] == ["label", "probabilities"]


def test_classification_top_k(client: TestClient, split: Split, classifier: Classifier) -> None:
    rows = split.x_test[:4].astype(np.int64)
    probabilities = classifier.estimator.predict_proba(rows.astype(np.float64))
    body = json_infer(
        client,
        {
            "inputs": [pixels_input(rows)],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
        },
    )
    [output] = body["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [4, 3])
    top = np.asarray(output["data"]).reshape(4, 3)
    for row, expected in zip(top, probabilities, strict=True):
        order = np.argsort(-expected.astype(np.float32), kind="stable")[:3]
        assert [entry.split(":")[1] for entry in row] == [str(i) for i in order]
        assert [entry.split(":")[2] for entry in row] == [str(i) for i in order]
        assert [float(entry.split(":")[0]) for entry in row] == pytest.approx(
            expected[order], abs=1e-6
        )
        assert len(row[0].split(":")[0].split(".")[1]) == 6
    content = orjson.dumps(
        {
            "inputs": [pixels_input(rows[:1])],
            "outputs": [
                {"name": "probabilities", "parameters": {"classification": 20, "binary_data": True}}
            ],
        }
    )
    header, blobs = split_binary(client.post(INFER, content=content))
    assert header["outputs"][0]["shape"] == [1, 10]
    assert len(deserialize_bytes(blobs["probabilities"], "p")) == 10


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_request_bodies(
    client: TestClient, seven: NDArray[np.int64], render: Renderer, coding: str
) -> None:
    image = render(seven, 64)
    content, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(image) + 4},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
        },
        serialize_bytes([image]),
    )
    packed = gzip.compress(content) if coding == "gzip" else zlib.compress(content)
    response = client.post(INFER, content=packed, headers={**headers, "Content-Encoding": coding})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [7]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_responses_when_asked(
    client: TestClient, seven: NDArray[np.int64], coding: str
) -> None:
    content = orjson.dumps(
        {"inputs": [pixels_input(seven.reshape(1, 64))], "parameters": {"binary_data_output": True}}
    )
    with client.stream(
        "POST", INFER, content=content, headers={"Accept-Encoding": coding}
    ) as response:
        raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == coding
        assert response.headers["vary"] == "Accept-Encoding"
        length = int(response.headers[IHCL])
    plain = gzip.decompress(raw) if coding == "gzip" else zlib.decompress(raw)
    header = orjson.loads(plain[:length])
    assert [output["parameters"]["binary_data_size"] for output in header["outputs"]] == [8, 40]
    assert len(plain) == length + 48
    assert np.frombuffer(plain[length : length + 8], dtype="<i8").tolist() == [7]


def test_responses_are_not_compressed_unless_asked(
    client: TestClient, seven: NDArray[np.int64]
) -> None:
    content = orjson.dumps({"inputs": [pixels_input(seven.reshape(1, 64))]})
    for accept in ("identity", "br", "gzip;q=0"):
        response = client.post(INFER, content=content, headers={"Accept-Encoding": accept})
        assert response.status_code == 200
        assert "content-encoding" not in response.headers
        assert response.headers["vary"] == "Accept-Encoding"
        assert response.json()["outputs"][0]["data"] == [7]


def test_decompression_bomb_is_413(settings: Settings, classifier: Classifier) -> None:
    small = Settings(model_path=MODEL_PATH, max_body_bytes=100_000)
    bomb = gzip.compress(b"{" + b" " * 5_000_000)
    assert len(bomb) < 100_000
    with TestClient(create_app(small, classifier)) as client:
        response = client.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    body = assert_problem(response, 413, "body_too_large")
    assert body["limit"] == 100_000
    assert "inflates past the limit" in body["error"]


def test_compressed_body_errors(client: TestClient) -> None:
    body = assert_problem(
        client.post(INFER, content=b"x", headers={"Content-Encoding": "br"}),
        415,
        "unsupported_media_type",
    )
    assert body["accepted"] == ["gzip", "deflate", "identity"]
    response = client.post(INFER, content=b"x", headers={"Content-Encoding": "br"})
    assert response.headers["accept-encoding"] == "gzip, deflate"
    body = assert_problem(
        client.post(INFER, content=b"not gzip", headers={"Content-Encoding": "gzip"}),
        400,
        "invalid_input",
    )
    assert body["error"].startswith("the body is not valid gzip data")


def test_body_over_the_byte_limit_is_413(classifier: Classifier) -> None:
    small = Settings(model_path=MODEL_PATH, max_body_bytes=2048)
    with TestClient(create_app(small, classifier)) as client:
        response = client.post(INFER, content=b"{" + b" " * 4000 + b"}")
    body = assert_problem(response, 413, "body_too_large")
    assert body["error"] == (
        "request body is 3.9 KiB (4002 bytes); the limit is 2 KiB, set by "
        "DIGITSERVE_MAX_BODY_BYTES=2048"
    )


def image_input(*elements: str) -> dict[str, Any]:
    """A JSON `image` input of base64 elements."""
    return {"name": "image", "shape": [len(elements)], "datatype": "BYTES", "data": list(elements)}


GOOD_PIXELS = [0, 0, 5, 13, 9, 1, 0, 0] * 8


def pixels_doc(
    shape: list[int] | None = None,
    datatype: str = "INT64",
    data: list[Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A request with one JSON `pixels` input (a good one unless told otherwise)."""
    tensor = {
        "name": "pixels",
        "shape": shape or [1, 64],
        "datatype": datatype,
        "data": GOOD_PIXELS if data is None else data,
    }
    return {"inputs": [tensor], **fields}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            pixels_doc([1, 63], data=GOOD_PIXELS[:63]),
            "input 'pixels': shape must be [n, 64] or [n, 8, 8], got [1, 63]",
        ),
        (pixels_doc([64]), "input 'pixels': shape must be [n, 64] or [n, 8, 8], got [64]"),
        (
            pixels_doc(data=GOOD_PIXELS[:60]),
            "input 'pixels': shape [1, 64] holds 64 elements but data has 60",
        ),
        (
            pixels_doc(datatype="BOOL", data=[True] * 64),
            "input 'pixels': datatype must be an integer or float type, got BOOL",
        ),
        (pixels_doc(data=[17] * 64), "input 'pixels': values must lie in 0..16"),
        (pixels_doc(datatype="FP32", data=[-0.5] * 64), "input 'pixels': values must lie in 0..16"),
        (pixels_doc(data=[1.5] * 64), "input 'pixels': INT64 data in JSON must be integers"),
        (
            pixels_doc(datatype="INT8", data=[200] * 64),
            "input 'pixels': a value does not fit in INT8",
        ),
        (pixels_doc([0, 64], data=[]), "input 'pixels' is empty: shape [0, 64]"),
        (
            {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            "input 'image': datatype must be BYTES (encoded JPEG/PNG), got FP32",
        ),
        (
            {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": ["AAAA"]}]},
            "input 'image': shape must be [n], one encoded image per element, got [1, 1]",
        ),
        (
            {"inputs": [image_input("not base64!")]},
            "input 'image' element 0: the string (in JSON, image elements are base64) is not valid "
            "base64",
        ),
        (
            {"inputs": [image_input(b64(b"garbage"))]},
            "input 'image' element 0: not a JPEG or PNG image",
        ),
        (
            {"inputs": [image_input(), *pixels_doc()["inputs"]]},
            "send one input, either 'image' or 'pixels', not both",
        ),
        (
            {"inputs": [{"name": "input0", "shape": [1], "datatype": "INT64", "data": [1]}]},
            "unknown input 'input0'; this model takes 'image' or 'pixels'",
        ),
        (
            pixels_doc(outputs=[{"name": "scores"}]),
            "unknown output 'scores'; this model gives 'label', 'probabilities', 'warnings'",
        ),
        (
            pixels_doc(outputs=[{"name": "label"}, {"name": "label"}]),
            "output 'label' is requested more than once",
        ),
        (
            pixels_doc(outputs=[{"name": "label", "parameters": {"classification": 2}}]),
            "output 'label': classification is available on 'probabilities' only",
        ),
        (
            pixels_doc(outputs=[{"name": "probabilities", "parameters": {"classification": 0}}]),
            "output 'probabilities': classification must be a positive integer",
        ),
        (
            pixels_doc(outputs=[{"name": "label", "parameters": {"shared_memory_region": "r"}}]),
            "output 'label': shared memory is not supported",
        ),
        (
            pixels_doc(parameters={"binary_data_output": "yes"}),
            "the request: parameter 'binary_data_output' must be true or false",
        ),
        (
            pixels_doc(datatype="FP8"),
            "invalid inference request: input 'pixels' (inputs.0.datatype): Input should be",
        ),
        (
            pixels_doc(id=42),
            "invalid inference request: id: Input should be a valid string",
        ),
        ({"inputs": []}, "invalid inference request: inputs: List should have at least 1 item"),
        ({"instances": [GOOD_PIXELS]}, "invalid inference request: inputs: Field required"),
    ],
)
def test_malformed_tensors_are_400_naming_the_tensor(
    client: TestClient, document: dict[str, Any], message: str
) -> None:
    response = client.post(INFER, content=orjson.dumps(document))
    body = assert_problem(response, 400, body_code(message))
    assert body["error"].startswith(message), body["error"]


def body_code(message: str) -> str:
    """Undecodable images are `invalid_image`; everything else malformed is `invalid_input`."""
    return "invalid_image" if "not a JPEG or PNG" in message else "invalid_input"


def test_non_finite_float_pixels_are_400(client: TestClient) -> None:
    values = np.zeros((1, 64), dtype="<f4")
    values[0, 5] = np.nan
    content, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 256},
                }
            ]
        },
        values.tobytes(),
    )
    body = assert_problem(
        client.post(INFER, content=content, headers=headers), 400, "invalid_input"
    )
    assert body["error"] == "input 'pixels': values must be finite numbers 0..16"


@pytest.mark.parametrize(
    ("size", "extra", "message"),
    [
        (100, b"", "input 'pixels': binary_data_size is 100 but only 64 bytes"),
        (64, b"zz", "2 bytes after the JSON header belong to no input"),
        (32, b"", "input 'pixels': shape [1, 64] of UINT8 needs 64 bytes, binary_data_size is 32"),
    ],
)
def test_binary_sizes_that_do_not_add_up(
    client: TestClient, size: int, extra: bytes, message: str
) -> None:
    content, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 64],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": size},
                }
            ]
        },
        bytes(GOOD_PIXELS) + extra,
    )
    body = assert_problem(
        client.post(INFER, content=content, headers=headers), 400, "invalid_input"
    )
    assert body["error"].startswith(message), body["error"]


def test_bad_inference_header_lengths(client: TestClient) -> None:
    for value in ("abc", "-3", "99999"):
        body = assert_problem(
            client.post(INFER, content=b"{}", headers={IHCL: value}), 400, "invalid_input"
        )
        assert body["error"].startswith("Inference-Header-Content-Length must be an integer")
    body = assert_problem(client.post(INFER, content=b"{not json"), 400, "invalid_input")
    assert body["error"].startswith("the inference request is not valid JSON")
    body = assert_problem(
        client.post(INFER, content=b"{}garbage", headers={IHCL: "2"}), 400, "invalid_input"
    )
    assert body["error"] == "invalid inference request: inputs: Field required"


def test_too_many_images_is_413(client: TestClient, seven: NDArray[np.int64]) -> None:
    rows = np.tile(seven, (65, 1))
    body = assert_problem(
        client.post(INFER, content=orjson.dumps({"inputs": [pixels_input(rows)]})),
        413,
        "too_many_images",
    )
    assert body["error"] == (
        "input 'pixels' holds 65 rows; the limit is 64, set by DIGITSERVE_MAX_IMAGES_PER_REQUEST"
    )
    body = assert_problem(
        client.post(INFER, content=orjson.dumps({"inputs": [image_input(*["AAAA"] * 65)]})),
        413,
        "too_many_images",
    )
    assert body["limit"] == 64


def test_image_errors_name_the_element(
    client: TestClient, seven: NDArray[np.int64], render: Renderer
) -> None:
    good = b64(render(seven))
    blank = b64(encode(Image.new("L", (16, 16), 255), "PNG"))
    tiny = b64(encode(Image.new("L", (4, 4), 0), "PNG"))
    body = assert_problem(
        client.post(INFER, content=orjson.dumps({"inputs": [image_input(good, blank)]})),
        422,
        "blank_image",
    )
    assert body["error"].startswith("input 'image' element 1: the image has no ink")
    body = assert_problem(
        client.post(INFER, content=orjson.dumps({"inputs": [image_input(tiny)]})),
        422,
        "image_too_small",
    )
    assert body["error"].startswith("input 'image' element 0: image is 4x4")
    gif = b64(encode(Image.new("L", (16, 16), 0), "GIF"))
    assert_problem(
        client.post(INFER, content=orjson.dumps({"inputs": [image_input(gif)]})),
        415,
        "unsupported_media_type",
    )


def test_image_over_the_pixel_limit_is_413(
    classifier: Classifier, seven: NDArray[np.int64], render: Renderer
) -> None:
    small = Settings(model_path=MODEL_PATH, max_image_pixels=1000)
    with TestClient(create_app(small, classifier)) as client:
        response = client.post(INFER, content=render(seven, 64), headers={IHCL: "0"})
    body = assert_problem(response, 413, "image_too_large")
    assert body["error"].startswith("input 'image' element 0: image is 64x64 = 4096 pixels")


def test_model_without_probabilities_gives_decision_scores(
    tmp_path: Path, split: Split, seven: NDArray[np.int64]
) -> None:
    path = tmp_path / "plain.pickle"
    path.write_bytes(pickle.dumps(SVC(gamma=0.001).fit(split.x_train, split.y_train)))
    plain = load_classifier(path)
    with TestClient(create_app(Settings(model_path=path), plain)) as client:
        metadata = client.get("/v2/models/digits").json()
        body = json_infer(client, {"inputs": [pixels_input(seven.reshape(1, 64))]})
    scores = metadata["outputs"][1]
    assert scores["parameters"]["scores"] == "decision_scores"
    assert scores["parameters"]["content"].startswith("decision scores")
    assert metadata["parameters"]["scores"] == "decision_scores"
    expected = plain.estimator.decision_function(seven.reshape(1, 64).astype(np.float64))
    np.testing.assert_allclose(
        outputs_by_name(body)["probabilities"]["data"], expected[0], rtol=1e-5
    )


def test_string_classes_come_back_as_bytes_labels(
    tmp_path: Path, split: Split, seven: NDArray[np.int64]
) -> None:
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    path = tmp_path / "named.pickle"
    path.write_bytes(pickle.dumps(SVC(gamma=0.001).fit(split.x_train, names[split.y_train])))
    named = load_classifier(path)
    with TestClient(create_app(Settings(model_path=path), named)) as client:
        metadata = client.get("/v2/models/digits").json()
        body = json_infer(
            client,
            {
                "inputs": [pixels_input(seven.reshape(1, 64))],
                "outputs": [
                    {"name": "label"},
                    {"name": "probabilities", "parameters": {"classification": 1}},
                ],
            },
        )
    assert metadata["outputs"][0]["datatype"] == "BYTES"
    label, top = body["outputs"]
    assert (label["datatype"], label["data"]) == ("BYTES", ["seven"])
    assert top["data"][0].endswith(":seven")


def test_large_bodies_are_decoded_off_the_event_loop(
    client: TestClient, split: Split, classifier: Classifier
) -> None:
    rows = split.x_test[:8].astype(np.int64)
    padded = orjson.dumps({"inputs": [pixels_input(rows)]}) + b" " * INLINE_BYTES
    response = client.post(INFER, content=padded)
    assert response.status_code == 200, response.text
    expected = classifier.estimator.predict(rows.astype(np.float64)).tolist()
    assert outputs_by_name(response.json())["label"]["data"] == expected


def test_openapi_documents_the_v2_routes(app: FastAPI, client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/versions/{model_version}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/versions/{model_version}/ready",
    ):
        assert "get" in paths[path], path
    for path in (
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    ):
        operation = paths[path]["post"]
        content = operation["requestBody"]["content"]
        assert content["application/json"]["schema"] == {
            "$ref": "#/components/schemas/InferenceRequest"
        }
        assert content["application/octet-stream"]["schema"]["format"] == "binary"
        assert [p["name"] for p in operation["parameters"] if p["in"] == "header"] == [IHCL]
        ok = operation["responses"]["200"]["content"]
        assert ok["application/json"]["schema"] == {
            "$ref": "#/components/schemas/InferenceResponse"
        }
        assert set(operation["responses"]) == {"200", "400", "404", "413", "415", "422", "503"}
        problem = operation["responses"]["400"]["content"]["application/problem+json"]
        assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
    schemas = spec["components"]["schemas"]
    assert schemas["InferenceRequest"]["required"] == ["inputs"]
    assert schemas["InferenceRequestInput"]["properties"]["shape"]["items"] == {
        "type": "integer",
        "minimum": 0,
    }
    assert schemas["ModelMetadataV2"]["required"] == ["name", "platform", "inputs", "outputs"]
    data = schemas["InferenceRequestInput"]["properties"]["data"]["anyOf"][0]
    assert [item["type"] for item in data["items"]["anyOf"]] == [
        "number",
        "string",
        "boolean",
        "array",
    ]
    assert paths["/v2/health/ready"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/ServerReady"}


def parsed(*inputs: dict[str, Any]) -> Any:
    """A JSON inference request, parsed as the route parses it."""
    body = orjson.dumps({"inputs": list(inputs)})
    return parse_request(body, None, raw_input="image")


def test_only_pixels_or_one_small_image_are_answered_on_the_event_loop(
    seven: NDArray[np.int64], render: Renderer
) -> None:
    pixels = {"name": "pixels", "shape": [1, 64], "datatype": "INT64", "data": seven.tolist()}
    assert decodes_quickly(parsed(pixels))
    assert decodes_quickly(parsed(image_input(b64(render(seven)))))
    assert decodes_quickly(parsed(image_input(b64(render(seven, 256)))))
    assert not decodes_quickly(parsed(image_input(b64(render(seven, 257, "PNG")))))
    assert not decodes_quickly(parsed(image_input(b64(png_header_claiming(5000, 5000)))))
    assert not decodes_quickly(parsed(image_input(b64(render(seven)), b64(render(seven)))))
    raw = parse_request(render(seven), 0, raw_input="image")
    assert decodes_quickly(raw)


def test_a_small_body_declaring_a_huge_image_is_refused_not_decoded(client: TestClient) -> None:
    response = client.post(
        INFER, content=orjson.dumps({"inputs": [image_input(b64(png_header_claiming(9000, 9000)))]})
    )
    assert_problem(response, 413, "image_too_large")
