"""NVIDIA's `tritonclient.grpc` against `digitserve serve --grpc-port`, as a Triton user would.

Also grpc.health.v1, keys, the message-size limit, two workers on one port, and a SIGTERM that
lets running calls finish. Calls tritonclient's API does not make (typed contents, trailers) go
through its generated stub, `service_pb2_grpc`.
"""

import csv
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import requests
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from digitserve.classifier import Classifier
from digitserve.training import Split
from tests.conftest import DATA_DIR
from tests.live import LiveServer, start_server, stop_server

pytestmark = pytest.mark.integration

KEY = "grpc-test-key-0123456789"
SMALL_MESSAGES = 64 * 1024
"""The guarded server's `max_body_bytes`: a message past it is refused by the transport."""


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One real server with gRPC for the module (no access log: nobody reads the pipe)."""
    server = start_server("--no-access-log", grpc=True)
    yield server
    assert stop_server(server) == 0


@pytest.fixture
def client(live: LiveServer) -> Iterator[triton.InferenceServerClient]:
    """A tritonclient gRPC client pointed at the live server."""
    client = triton.InferenceServerClient(live.grpc)
    yield client
    client.close()


@pytest.fixture
def stub(live: LiveServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """tritonclient's generated stub, for what its client API does not say."""
    with grpc.insecure_channel(live.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def examples() -> list[tuple[bytes, int]]:
    """Every example image in data/ with its label."""
    with (DATA_DIR / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return [((DATA_DIR / row["file"]).read_bytes(), int(row["label"])) for row in rows]


def image_input(images: list[bytes]) -> triton.InferInput:
    """The `image` input, raw JPEG/PNG bytes (tritonclient sends them length-prefixed)."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def pixels_input(rows: NDArray[np.generic], datatype: str) -> triton.InferInput:
    """The `pixels` input, in raw_input_contents."""
    tensor = triton.InferInput("pixels", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    return tensor


def typed_request(name: str, datatype: str, shape: list[int], **contents: object) -> object:
    """A ModelInferRequest whose one input carries typed contents."""
    request = service_pb2.ModelInferRequest(model_name="digits", id="typed-1")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


def raised(call: object, *args: object, **kwargs: object) -> InferenceServerException:
    """The tritonclient error a call raises."""
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


def test_server_and_model_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("other")  # as Triton answers: not ready, not an error
    assert not client.is_model_ready("digits", "2")


def test_server_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "digitserve"
    assert metadata["extensions"] == ["binary_tensor_data", "classification"]


def test_model_metadata_lists_image_and_pixels(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("digits", as_json=True)
    assert client.get_model_metadata("digits", "1", as_json=True) == metadata
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "scikit-learn"
    # MessageToJson writes int64 as strings.
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("image", "BYTES", ["-1"]),
        ("pixels", "INT64", ["-1", "64"]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("label", "INT64", ["-1"]),
        ("probabilities", "FP32", ["-1", "10"]),
        ("warnings", "BYTES", ["-1"]),
    ]
    error = raised(client.get_model_metadata, "other")
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "no model named 'other'; this server hosts 'digits'"


@pytest.mark.parametrize(("datatype", "grid"), [("INT64", False), ("FP32", False), ("UINT8", True)])
def test_pixel_batches_in_raw_contents(
    client: triton.InferenceServerClient,
    split: Split,
    classifier: Classifier,
    datatype: str,
    grid: bool,
) -> None:
    rows = split.x_test[:32]
    values = rows.astype(triton.triton_to_np_dtype(datatype))
    if grid:
        values = values.reshape(-1, 8, 8)
    result = client.infer("digits", [pixels_input(values, datatype)], request_id="pixels-1")
    assert result.get_response().id == "pixels-1"
    assert result.as_numpy("label").tolist() == classifier.estimator.predict(rows).tolist()
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, classifier.estimator.predict_proba(rows), atol=1e-6)


@pytest.mark.parametrize(
    ("datatype", "field", "cast"),
    [("INT64", "int64_contents", int), ("FP32", "fp32_contents", float)],
)
def test_pixels_in_typed_contents(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    split: Split,
    classifier: Classifier,
    datatype: str,
    field: str,
    cast: type,
) -> None:
    rows = split.x_test[:4]
    request = typed_request(
        "pixels", datatype, [4, 64], **{field: [cast(v) for v in rows.ravel().tolist()]}
    )
    response = stub.ModelInfer(request)
    assert response.id == "typed-1"
    assert [output.name for output in response.outputs] == ["label", "probabilities"]
    labels = np.frombuffer(response.raw_output_contents[0], dtype=np.int64)
    assert labels.tolist() == classifier.estimator.predict(rows).tolist()


def test_raw_jpegs_are_read_right_and_the_id_echoed(
    client: triton.InferenceServerClient, examples: list[tuple[bytes, int]]
) -> None:
    images = [image for image, _ in examples]
    result = client.infer("digits", [image_input(images)], request_id="jpegs-7")
    assert result.get_response().id == "jpegs-7"
    assert result.get_response().model_name == "digits"
    assert result.get_response().model_version == "1"
    assert result.as_numpy("label").tolist() == [label for _, label in examples]
    one, label = examples[0]
    alone = client.infer("digits", [image_input([one])], model_version="1")
    assert alone.as_numpy("label").tolist() == [label]


def test_an_image_in_typed_bytes_contents(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, examples: list[tuple[bytes, int]]
) -> None:
    image, label = examples[3]
    response = stub.ModelInfer(typed_request("image", "BYTES", [1], bytes_contents=[image]))
    assert np.frombuffer(response.raw_output_contents[0], dtype=np.int64).tolist() == [label]


def test_class_count_2_gives_the_top_two(
    client: triton.InferenceServerClient, split: Split, classifier: Classifier
) -> None:
    rows = split.x_test[:5]
    expected = classifier.estimator.predict_proba(rows)
    outputs = [triton.InferRequestedOutput("probabilities", class_count=2)]
    result = client.infer("digits", [pixels_input(rows, "FP64")], outputs=outputs)
    top = result.as_numpy("probabilities")
    assert top.shape == (5, 2)
    assert result.as_numpy("label") is None  # only what was asked for
    for entries, scores in zip(top.tolist(), expected, strict=True):
        fields = [entry.decode().split(":") for entry in entries]
        indices = [int(index) for _, index, _ in fields]
        assert indices == np.argsort(-scores, kind="stable")[:2].tolist()
        assert [float(score) for score, _, _ in fields] == pytest.approx(scores[indices], abs=1e-6)
        assert [name for _, _, name in fields] == [str(index) for index in indices]


def test_a_wrong_shape_is_invalid_argument_and_an_unknown_model_not_found(
    client: triton.InferenceServerClient,
) -> None:
    wrong = pixels_input(np.zeros((2, 63), dtype=np.int64), "INT64")
    error = raised(client.infer, "digits", [wrong])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == "input 'pixels': shape must be [n, 64] or [n, 8, 8], got [2, 63]"
    error = raised(client.infer, "other", [wrong])
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "no model named 'other'; this server hosts 'digits'"
    error = raised(client.infer, "digits", [wrong], model_version="2")
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "version" in error.message()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            lambda: [pixels_input(np.full((1, 64), 20, dtype=np.int64), "INT64")],
            "input 'pixels': values must lie in 0..16",
        ),
        (
            lambda: [image_input([b"not an image"])],
            "input 'image' element 0: ",
        ),
        (
            lambda: [triton.InferInput("pixels", [1, 64], "INT64")],  # no data at all
            "input 'pixels': shape [1, 64] holds 64 elements but the contents have 0",
        ),
        (
            lambda: [
                pixels_input(np.zeros((1, 64), dtype=np.int64), "INT64"),
                image_input([b"x"]),
            ],
            "send one input, either 'image' or 'pixels', not both",
        ),
    ],
)
def test_bad_inputs_are_invalid_argument_naming_what_to_fix(
    client: triton.InferenceServerClient, inputs: object, message: str
) -> None:
    error = raised(client.infer, "digits", inputs())  # type: ignore[operator]
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message().startswith(message)


def test_a_bare_jpeg_in_raw_contents_is_told_to_prefix_its_length(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, examples: list[tuple[bytes, int]]
) -> None:
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(examples[0][0])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4-byte little-endian length" in str(caught.value.details())


def test_trailers_carry_the_request_id_and_the_error_code(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = typed_request("pixels", "INT64", [1, 64], int64_contents=[0] * 64)
    _, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "trace-42")])
    assert ("x-request-id", "trace-42") in call.trailing_metadata()
    bad = typed_request("pixels", "INT64", [1, 64], int64_contents=[99] * 64)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(bad)
    trailers: dict[str, Any] = {m.key: m.value for m in caught.value.trailing_metadata()}
    assert trailers["digitserve-error-code"] == "invalid_input"
    assert len(str(trailers["x-request-id"])) == 32  # a new one: the client sent none


def test_repository_index_and_control(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)
    assert index["models"] == [{"name": "digits", "version": "1", "state": "READY"}]
    error = raised(client.load_model, "digits")
    assert error.status() == "StatusCode.FAILED_PRECONDITION"
    assert "--model-control-mode explicit" in error.message()


def test_grpc_health_for_kubernetes_probes(live: LiveServer) -> None:
    with grpc.insecure_channel(live.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "liveness", "readiness", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_count_grpc_calls_by_protocol(
    client: triton.InferenceServerClient, live: LiveServer
) -> None:
    rows = np.zeros((1, 64), dtype=np.int64)
    for _ in range(3):
        client.infer("digits", [pixels_input(rows, "INT64")])
    raised(client.infer, "digits", [pixels_input(np.zeros((1, 3), dtype=np.int64), "INT64")])
    text = requests.get(f"{live.url}/metrics", timeout=10).text
    counts = {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "digitserve_requests_total" and sample.labels["protocol"] == "grpc"
    }
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert counts[(route, "OK")] >= 3
    assert counts[(route, "INVALID_ARGUMENT")] >= 1


@pytest.fixture(scope="module")
def guarded() -> Iterator[LiveServer]:
    """A server that wants an API key, with small messages."""
    server = start_server(
        "--no-access-log",
        grpc=True,
        env={"DIGITSERVE_API_KEYS": KEY, "DIGITSERVE_MAX_BODY_BYTES": str(SMALL_MESSAGES)},
    )
    yield server
    assert stop_server(server) == 0


def test_a_key_is_needed_in_either_metadata(guarded: LiveServer) -> None:
    client = triton.InferenceServerClient(guarded.grpc)
    try:
        error = raised(client.is_server_ready)
        assert error.status() == "StatusCode.UNAUTHENTICATED"
        assert "authorization: Bearer <key>" in error.message()
        error = raised(client.is_server_ready, headers={"x-api-key": "wrong-key-0123456789"})
        assert error.status() == "StatusCode.UNAUTHENTICATED"
        assert error.message() == "the API key is not valid"
        assert client.is_server_ready(headers={"x-api-key": KEY})
        assert client.is_model_ready("digits", headers={"authorization": f"Bearer {KEY}"})
        rows = np.zeros((1, 64), dtype=np.int64)
        result = client.infer("digits", [pixels_input(rows, "INT64")], headers={"x-api-key": KEY})
        assert result.as_numpy("label").shape == (1,)
    finally:
        client.close()
    with grpc.insecure_channel(guarded.grpc) as channel:  # probes stay open, as /healthz does
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_message_over_the_limit_is_resource_exhausted(guarded: LiveServer) -> None:
    client = triton.InferenceServerClient(guarded.grpc)
    try:
        big = image_input([b"\xff" * (SMALL_MESSAGES + 1)])
        error = raised(client.infer, "digits", [big], headers={"x-api-key": KEY})
    finally:
        client.close()
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert str(SMALL_MESSAGES) in error.message()


def test_two_workers_both_serve_grpc(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = start_server("--workers", "2", grpc=True, output=output)
        try:
            rows = np.zeros((1, 64), dtype=np.int64)
            served: set[int] = set()
            deadline = time.monotonic() + 60
            calls = 0
            while len(served) < 2 and time.monotonic() < deadline:
                # A new client is a new connection, which the kernel gives to either worker.
                client = triton.InferenceServerClient(server.grpc)
                try:
                    client.infer("digits", [pixels_input(rows, "INT64")], request_id=str(calls))
                finally:
                    client.close()
                calls += 1
                served = {
                    line["pid"]
                    for line in map(orjson.loads, log.read_bytes().splitlines())
                    if line.get("protocol") == "grpc"
                }
        finally:
            assert stop_server(server) == 0
    assert len(served) == 2, f"{calls} calls were all served by one worker"
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    access = next(line for line in lines if line.get("protocol") == "grpc")
    assert access["path"] == "/inference.GRPCInferenceService/ModelInfer"
    assert access["grpc_status"] == "OK"
    assert (access["model"], access["model_version"], access["images"]) == ("digits", "1", 1)


def large_png() -> bytes:
    """A 6000x6000 PNG stroke: small to send, some 0.1 s to decode in full (PNG has no draft)."""
    image = Image.new("L", (6000, 6000), 255)
    ImageDraw.Draw(image).line([(1000, 1000), (5000, 1000), (2500, 5000)], fill=0, width=400)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_sigterm_lets_a_running_call_finish(tmp_path: Path) -> None:
    with (tmp_path / "server.log").open("wb") as output:
        server = start_server("--no-access-log", grpc=True, output=output)
    client = triton.InferenceServerClient(server.grpc)
    outcome: list[tuple[object, float]] = []
    done = threading.Event()

    def finished(result: object, error: object) -> None:
        outcome.append((error or result, time.monotonic()))
        done.set()

    try:
        # Eight large images decode one after another: the call runs about a second.
        client.async_infer("digits", [image_input([large_png()] * 8)], finished, request_id="slow")
        time.sleep(0.3)
        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        assert done.wait(timeout=60)
        assert server.process.wait(timeout=60) == 0
    finally:
        client.close()
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)
    [(result, ended)] = outcome
    assert isinstance(result, triton.InferResult), result
    assert result.get_response().id == "slow"
    assert result.as_numpy("label").shape == (8,)
    assert ended > signalled  # it was still running when the signal came
