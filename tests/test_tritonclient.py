"""NVIDIA's own `tritonclient.http` against the real server process, as a Triton user would."""

import base64
import csv
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from digitserve.classifier import Classifier
from digitserve.training import Split
from tests.conftest import DATA_DIR
from tests.live import LiveServer, start_server, stop_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One real server for the module (no access log: nobody reads the pipe until the end)."""
    server = start_server("--no-access-log")
    yield server
    assert stop_server(server) == 0


@pytest.fixture
def client(live: LiveServer) -> Iterator[triton.InferenceServerClient]:
    """A tritonclient HTTP client pointed at the live server."""
    client = triton.InferenceServerClient(live.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def examples() -> list[tuple[bytes, int]]:
    """Every example image in data/ with its label."""
    with (DATA_DIR / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 20
    return [((DATA_DIR / row["file"]).read_bytes(), int(row["label"])) for row in rows]


def image_input(images: list[bytes], *, binary: bool = True) -> triton.InferInput:
    """The `image` input; in JSON mode each element is the base64 text of the image."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(image) for image in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def pixels_input(
    rows: NDArray[np.generic], datatype: str, *, binary: bool = True
) -> triton.InferInput:
    """The `pixels` input."""
    tensor = triton.InferInput("pixels", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


def test_health_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("other")
    assert not client.is_model_ready("digits", "2")


def test_server_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "digitserve"
    assert metadata["extensions"] == ["binary_tensor_data", "classification"]


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("digits")
    assert client.get_model_metadata("digits", "1") == metadata
    assert metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("image", "BYTES", [-1]),
        ("pixels", "INT64", [-1, 64]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 10]),
        ("warnings", "BYTES", [-1]),
    ]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("other")
    assert caught.value.status() == "404"
    assert caught.value.message() == "no model named 'other'; this server hosts 'digits'"


def test_every_example_image_binary_default(
    client: triton.InferenceServerClient, examples: list[tuple[bytes, int]]
) -> None:
    result = client.infer("digits", [image_input([image for image, _ in examples])])
    labels = result.as_numpy("label")
    assert labels.dtype == np.int64
    assert labels.tolist() == [label for _, label in examples]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(examples), 10)
    assert probabilities.argmax(axis=1).tolist() == labels.tolist()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    for output in result.get_response()["outputs"]:
        assert "binary_data_size" in output["parameters"]


def test_every_example_image_json_mode(
    client: triton.InferenceServerClient, examples: list[tuple[bytes, int]]
) -> None:
    outputs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = client.infer(
        "digits",
        [image_input([image for image, _ in examples], binary=False)],
        outputs=outputs,
        request_id="json-1",
    )
    response = result.get_response()
    assert response["id"] == "json-1"
    assert all("data" in output for output in response["outputs"])
    assert result.as_numpy("label").tolist() == [label for _, label in examples]
    assert result.as_numpy("probabilities").shape == (len(examples), 10)


def test_each_example_image_alone_through_a_version(
    client: triton.InferenceServerClient, examples: list[tuple[bytes, int]]
) -> None:
    for image, label in examples:
        result = client.infer("digits", [image_input([image])], model_version="1")
        assert result.as_numpy("label").tolist() == [label]
        assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize(("datatype", "grid"), [("INT64", False), ("UINT8", True), ("FP32", True)])
@pytest.mark.parametrize("binary", [True, False])
def test_pixels(
    client: triton.InferenceServerClient,
    split: Split,
    classifier: Classifier,
    datatype: str,
    grid: bool,
    binary: bool,
) -> None:
    rows = split.x_test[:16]
    expected = classifier.estimator.predict(rows).tolist()
    values = rows.astype(triton.triton_to_np_dtype(datatype))
    if grid:
        values = values.reshape(-1, 8, 8)
    outputs = [triton.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer(
        "digits", [pixels_input(values, datatype, binary=binary)], outputs=outputs
    )
    assert result.as_numpy("label").tolist() == expected
    assert result.as_numpy("probabilities") is None


def test_classification_top_k(
    client: triton.InferenceServerClient, split: Split, classifier: Classifier
) -> None:
    rows = split.x_test[:5]
    probabilities = classifier.estimator.predict_proba(rows)
    for binary in (True, False):
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]
        result = client.infer("digits", [pixels_input(rows, "FP64")], outputs=outputs)
        top = result.as_numpy("probabilities")
        assert top.shape == (5, 3)
        for entries, expected in zip(top.tolist(), probabilities, strict=True):
            texts = [e.decode() if isinstance(e, bytes) else e for e in entries]
            assert isinstance(entries[0], bytes) is binary
            scores = [float(text.split(":")[0]) for text in texts]
            indices = [int(text.split(":")[1]) for text in texts]
            assert indices == np.argsort(-expected, kind="stable")[:3].tolist()
            assert scores == pytest.approx(expected[indices], abs=1e-6)
            assert [text.split(":")[2] for text in texts] == [str(i) for i in indices]


@pytest.mark.parametrize("request_coding", ["gzip", "deflate"])
@pytest.mark.parametrize("response_coding", [None, "gzip", "deflate"])
def test_compression(
    client: triton.InferenceServerClient,
    examples: list[tuple[bytes, int]],
    request_coding: str,
    response_coding: str | None,
) -> None:
    result = client.infer(
        "digits",
        [image_input([image for image, _ in examples])],
        request_compression_algorithm=request_coding,
        response_compression_algorithm=response_coding,
    )
    assert result.as_numpy("label").tolist() == [label for _, label in examples]


def test_errors_reach_the_client_with_status_and_message(
    client: triton.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [pixels_input(np.full((1, 64), 20, dtype=np.int64), "INT64")])
    assert caught.value.status() == "400"
    assert caught.value.message() == "input 'pixels': values must lie in 0..16"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [image_input([b"not an image"])])
    assert caught.value.status() == "400"
    assert caught.value.message().startswith("input 'image' element 0: ")
    with pytest.raises(InferenceServerException) as caught:
        client.infer("other", [image_input([b"x"])])
    assert caught.value.status() == "404"
