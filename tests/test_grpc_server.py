"""The gRPC server in the app's own event loop: statuses, limits, keys, health and the drain.

The app runs under Starlette's TestClient (its lifespan starts gRPC on a free port) and the
tests call it over a real socket with digitserve's own generated stub.
"""

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw

from digitserve import errors
from digitserve.app import create_app
from digitserve.classifier import Classifier
from digitserve.grpc_server import status_of
from digitserve.protos import grpc_predict_v2_pb2 as pb
from digitserve.protos import grpc_predict_v2_pb2_grpc as services
from digitserve.settings import Settings
from tests.conftest import MODEL_PATH

KEY = "in-process-key-0123456789"


@contextmanager
def serving(classifier: Classifier | None = None, **settings: Any) -> Iterator[Any]:
    """The app with gRPC on a free port: yields (TestClient, channel)."""
    app = create_app(Settings(**{"grpc_port": 0, "access_log": False, **settings}), classifier)
    with (
        TestClient(app) as client,
        grpc.insecure_channel(f"127.0.0.1:{app.state.grpc.port}") as channel,
    ):
        yield client, channel


def pixels_request() -> pb.ModelInferRequest:
    """One blank row of pixels (typed contents)."""
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(
        name="pixels", datatype="INT64", shape=[1, 64]
    ).contents.int64_contents.extend([0] * 64)
    return request


def slow_request(images: int = 8) -> pb.ModelInferRequest:
    """Large PNGs, decoded one after another: about 0.1 s each."""
    image = Image.new("L", (6000, 6000), 255)
    ImageDraw.Draw(image).line([(1000, 1000), (5000, 1000), (2500, 5000)], fill=0, width=400)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(
        name="image", datatype="BYTES", shape=[images]
    ).contents.bytes_contents.extend([buffer.getvalue()] * images)
    return request


def rpc_error(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    """The error a call ends with."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidImage, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
        (errors.ModelControlDisabled, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
        (errors.VersionNotFound, grpc.StatusCode.NOT_FOUND),
        (errors.RequestTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.TooManyImages, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ImageTooLarge, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnsupportedMediaType, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.BlankImage, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotReady, grpc.StatusCode.UNAVAILABLE),
        (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.InternalError, grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_has_its_status(
    error: type[errors.DigitserveError], status: grpc.StatusCode
) -> None:
    assert status_of(error("x")) is status


def test_a_call_past_the_time_limit_is_deadline_exceeded(classifier: Classifier) -> None:
    with serving(classifier, request_timeout_seconds=0.2) as (_, channel):
        stub = services.GRPCInferenceServiceStub(channel)
        error = rpc_error(stub.ModelInfer, slow_request())
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error.details() == "the call was not answered within 0.2 s"
        assert stub.ModelInfer(pixels_request()).model_name == "digits"  # the slot was freed


def test_a_client_deadline_is_recorded_as_deadline_exceeded(classifier: Classifier) -> None:
    with serving(classifier) as (client, channel):
        stub = services.GRPCInferenceServiceStub(channel)
        error = rpc_error(stub.ModelInfer, slow_request(), timeout=0.2)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        line = (
            'digitserve_requests_total{method="POST",protocol="grpc",'
            'route="/inference.GRPCInferenceService/ModelInfer",status="DEADLINE_EXCEEDED"} 1.0'
        )
        deadline = time.monotonic() + 10  # recorded once the server sees the cancellation
        while line not in client.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert line in client.get("/metrics").text


def test_each_call_writes_an_access_line(
    classifier: Classifier, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="digitserve.access"),
        serving(classifier, access_log=True) as (_, channel),
    ):
        stub = services.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(pixels_request(), metadata=[("x-request-id", "line-1")])
        rpc_error(stub.ModelInfer, pb.ModelInferRequest(model_name="nope"))
    ok, refused = (
        getattr(record, "fields")  # noqa: B009 - set through `extra`
        for record in caplog.records
        if record.name == "digitserve.access"
    )
    assert ok["protocol"] == "grpc"
    assert ok["path"] == "/inference.GRPCInferenceService/ModelInfer"
    assert (ok["grpc_status"], ok["model"], ok["model_version"], ok["images"]) == (
        "OK",
        "digits",
        "1",
        1,
    )
    assert ok["client"].startswith("ipv4:127.0.0.1:")
    assert (refused["grpc_status"], refused["code"]) == ("NOT_FOUND", "model_not_found")


def test_calls_past_the_bound_are_resource_exhausted(classifier: Classifier) -> None:
    with serving(classifier, max_concurrent_requests=1) as (client, channel):
        stub = services.GRPCInferenceServiceStub(channel)
        running = stub.ModelInfer.future(slow_request())
        server = client.app.state.grpc
        while not server.in_flight():
            time.sleep(0.01)
        error = rpc_error(stub.ModelInfer, pixels_request())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == "this worker is at its limit of 1 calls in flight; retry"
        trailers: dict[str, Any] = {m.key: m.value for m in error.trailing_metadata()}
        assert trailers["grpc-retry-pushback-ms"] == "1000"
        assert trailers["digitserve-error-code"] == "overloaded"
        health = health_pb2_grpc.HealthStub(channel)  # probes are never refused
        assert health.Check(health_pb2.HealthCheckRequest()).status == 1
        assert len(running.result(timeout=30).raw_output_contents) == 2


def test_keys_guard_every_call_and_probes_with_auth_probes(classifier: Classifier) -> None:
    with serving(classifier, api_keys=[KEY], auth_probes=True) as (_, channel):
        stub = services.GRPCInferenceServiceStub(channel)
        error = rpc_error(stub.ServerLive, pb.ServerLiveRequest())
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=[("x-api-key", KEY)]).live
        both = [("x-api-key", KEY), ("authorization", "Bearer wrong-key-0123456789")]
        error = rpc_error(stub.ServerLive, pb.ServerLiveRequest(), metadata=both)
        assert error.details() == "the API key is not valid"  # one bad key spoils the good one
        health = health_pb2_grpc.HealthStub(channel)
        error = rpc_error(health.Check, health_pb2.HealthCheckRequest())
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        watch = health.Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.RpcError) as caught:
            next(watch)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        keyed = [("authorization", f"Bearer {KEY}")]
        assert health.Check(health_pb2.HealthCheckRequest(), metadata=keyed).status == 1


def test_draining_turns_readiness_off_but_serves(classifier: Classifier) -> None:
    with serving(classifier, shutdown_timeout_seconds=5) as (client, channel):
        stub = services.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        listed = health.List(health_pb2.HealthListRequest())
        assert {name: entry.status for name, entry in listed.statuses.items()} == {
            "": 1,
            "liveness": 1,
            "readiness": 1,
            "inference.GRPCInferenceService": 1,
        }
        server = client.app.state.grpc
        client.app.state.draining = True  # what SIGTERM does first
        client.portal.call(server.drain, 60.0)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert list(watch) == []  # the watch ends, so it holds up no shutdown
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest()).status == not_serving
        live = health_pb2.HealthCheckRequest(service="liveness")
        assert health.Check(live).status == health_pb2.HealthCheckResponse.SERVING
        assert stub.ModelInfer(pixels_request()).model_name == "digits"  # still served


def test_a_second_drain_stops_at_once(classifier: Classifier) -> None:
    with serving(classifier) as (client, channel):
        server = client.app.state.grpc
        client.portal.call(server.drain, 60.0)
        client.portal.call(server.drain, 60.0)
        stub = services.GRPCInferenceServiceStub(channel)
        assert first_refusal(stub) == grpc.StatusCode.UNAVAILABLE


def first_refusal(stub: Any, seconds: float = 5) -> grpc.StatusCode | None:
    """The status of the first call refused within `seconds` (the stop runs on the app's loop)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=1)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
        time.sleep(0.05)
    return None


def test_repository_load_and_unload_in_explicit_mode() -> None:
    with serving(model_control_mode="explicit") as (_, channel):
        stub = services.GRPCInferenceServiceStub(channel)
        ready = pb.ModelReadyRequest(name="digits")
        assert stub.ModelReady(ready).ready
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="digits"))
        assert not stub.ModelReady(ready).ready
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
        assert "digits" not in [model.name for model in index.models]
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits"))
        assert stub.ModelReady(ready).ready
        error = rpc_error(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="no"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = rpc_error(
            stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="elsewhere")
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        load = pb.RepositoryModelLoadRequest(model_name="digits")
        load.parameters["config"].string_param = "{}"
        assert "not supported" in str(rpc_error(stub.RepositoryModelLoad, load).details())


def test_a_taken_port_stops_start_up(classifier: Classifier) -> None:
    with serving(classifier) as (client, _):
        port = client.app.state.grpc.port
        app = create_app(Settings(model_path=MODEL_PATH, grpc_port=port), classifier)
        with pytest.raises(OSError, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
            TestClient(app).__enter__()
