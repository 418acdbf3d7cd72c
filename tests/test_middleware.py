"""The traffic middleware: the in-flight bound, the time limit, and the access log line."""

import asyncio
import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient

from digitserve.app import create_app
from digitserve.classifier import Classifier
from digitserve.logs import ACCESS_LOGGER, JsonFormatter
from digitserve.middleware import ADMITTED_KEY
from digitserve.settings import Settings
from tests.conftest import DATA_DIR, MODEL_PATH
from tests.live import LiveServer, start_server, stop_server

SEVEN = (DATA_DIR / "7_64px.jpg").read_bytes()


@dataclass
class Answer:
    """What an ASGI app sent back."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


async def call(
    app: FastAPI,
    method: str,
    path: str,
    *,
    body: asyncio.Event | bytes = b"",
    headers: dict[str, str] | None = None,
    reading: asyncio.Event | None = None,
) -> Answer:
    """Drive one HTTP request through the ASGI app; an Event body arrives only once it is set."""
    answer = Answer()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if reading is not None:
            reading.set()
        if isinstance(body, asyncio.Event):
            await body.wait()
            return {"type": "http.request", "body": SEVEN, "more_body": False}
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    return answer


def limited_app(classifier: Classifier, **limits: Any) -> FastAPI:
    """An app with tight limits, sharing the session's model."""
    return create_app(Settings(model_path=MODEL_PATH, **limits), classifier)


def test_over_the_bound_is_503_overloaded_with_retry_after(classifier: Classifier) -> None:
    app = limited_app(classifier, max_concurrent_requests=1)

    async def scenario() -> tuple[Answer, Answer, Answer, Answer]:
        async with app.router.lifespan_context(app):
            release, reading = asyncio.Event(), asyncio.Event()
            held = asyncio.create_task(
                call(
                    app,
                    "POST",
                    "/v1/models/digits:predict",
                    body=release,
                    headers={"Content-Type": "image/jpeg"},
                    reading=reading,
                )
            )
            await reading.wait()  # the first request is in the route, waiting for its body
            refused = await call(app, "GET", "/v1/models/digits", headers={"X-Request-ID": "r-2"})
            probe = await call(app, "GET", "/healthz")
            release.set()
            first = await held
            after = await call(app, "GET", "/v1/models/digits")
            return refused, probe, first, after

    refused, probe, first, after = asyncio.run(scenario())
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["x-request-id"] == "r-2"
    assert refused.json() == {
        "type": "/v1/errors#overloaded",
        "title": "Server overloaded",
        "status": 503,
        "detail": "this worker is at its limit of 1 requests in flight; retry",
        "code": "overloaded",
        "request_id": "r-2",
        "error": "this worker is at its limit of 1 requests in flight; retry",
        "limit": 1,
    }
    assert probe.status == 200  # probes are never refused for load
    assert first.status == 200
    assert first.json()["predictions"][0]["label"] == 7
    assert after.status == 200


def test_a_stalled_body_is_cut_at_the_time_limit(classifier: Classifier) -> None:
    app = limited_app(classifier, request_timeout_seconds=0.2)

    async def scenario() -> tuple[Answer, Answer]:
        async with app.router.lifespan_context(app):
            never = asyncio.Event()
            stalled = await call(
                app,
                "POST",
                "/v1/models/digits:predict",
                body=never,
                headers={"Content-Type": "image/jpeg", "X-Request-ID": "slow-1"},
            )
            metrics = await call(app, "GET", "/metrics")
            return stalled, metrics

    stalled, metrics = asyncio.run(scenario())
    assert stalled.status == 408
    assert stalled.headers["connection"] == "close"
    assert stalled.json()["code"] == "request_timeout"
    assert stalled.json()["request_id"] == "slow-1"
    assert stalled.json()["limit_seconds"] == 0.2
    text = metrics.body.decode()
    assert 'digitserve_errors_total{code="request_timeout"} 1.0' in text
    assert (
        'digitserve_requests_total{method="POST",protocol="http",'
        'route="/v1/models/{model_name}:predict",status="408"} 1.0' in text
    )
    assert "digitserve_requests_in_flight 1.0" in text  # only the scrape: the slot was freed


async def upload(
    app: FastAPI,
    pieces: list[bytes],
    *,
    admit: bool,
    stalled: asyncio.Event | None = None,
    resume: asyncio.Event | None = None,
) -> Answer:
    """POST a JPEG body in pieces as `server.HeaderDeadlineProtocol` hands one over.

    Admission is undecided (`ADMITTED_KEY` None) while the body arrives; with the last piece comes
    the server's decision, `admit`. With `resume`, the upload stalls before its last piece (and
    sets `stalled`) until `resume` is set.
    """
    answer = Answer()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/models/digits:predict",
        "raw_path": b"/v1/models/digits:predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"image/jpeg")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
        "state": {},
        ADMITTED_KEY: None,
    }
    queue = list(pieces)

    async def receive() -> dict[str, Any]:
        if len(queue) == 1:
            if resume is not None:
                assert stalled is not None
                stalled.set()
                await resume.wait()
            scope[ADMITTED_KEY] = admit
        if not queue:
            await asyncio.Event().wait()
        return {"type": "http.request", "body": queue.pop(0), "more_body": bool(queue)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    await app(scope, receive, send)  # type: ignore[arg-type]
    return answer


def test_an_upload_is_admitted_or_refused_once_its_body_is_complete(
    classifier: Classifier,
) -> None:
    app = limited_app(classifier, max_concurrent_requests=1)

    async def scenario() -> tuple[Answer, Answer]:
        async with app.router.lifespan_context(app):
            pieces = [SEVEN[:100], SEVEN[100:300], SEVEN[300:]]
            return (
                await upload(app, pieces, admit=True),
                await upload(app, pieces, admit=False),
            )

    admitted, refused = asyncio.run(scenario())
    assert admitted.status == 200
    assert admitted.json()["predictions"][0]["label"] == 7
    # The worker was full when the body was complete: the usual overload answer.
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1"
    assert "connection" not in refused.headers  # the body was read whole: the connection is fine
    assert refused.json()["code"] == "overloaded"
    assert refused.json()["limit"] == 1


def test_uploads_in_progress_are_bounded_by_the_body_buffer(classifier: Classifier) -> None:
    app = limited_app(classifier, max_body_bytes=1024, max_buffered_body_bytes=1024)

    async def scenario() -> tuple[Answer, Answer, Answer]:
        async with app.router.lifespan_context(app):
            stalled, resume = asyncio.Event(), asyncio.Event()
            holding = asyncio.create_task(
                upload(app, [b"\xff" * 700, b""], admit=True, stalled=stalled, resume=resume)
            )
            await stalled.wait()  # 700 bytes held by an upload that has stopped sending
            over = await upload(app, [SEVEN[:200], SEVEN[200:]], admit=True)
            resume.set()
            await holding
            after = await upload(app, [SEVEN[:200], SEVEN[200:]], admit=True)
            return await holding, over, after

    held, over, after = asyncio.run(scenario())
    assert held.status == 400  # its junk, read in the end
    assert over.status == 503
    assert over.headers["retry-after"] == "1"
    assert over.headers["connection"] == "close"  # the rest of its body was never read
    assert over.json()["code"] == "overloaded"
    assert over.json()["limit_bytes"] == 1024
    assert after.status == 200  # the bytes held by finished requests were given back


def test_a_body_buffer_smaller_than_one_body_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="max_buffered_body_bytes"):
        Settings(model_path=MODEL_PATH, max_body_bytes=4096, max_buffered_body_bytes=2048)


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """Capture digitserve's log records as the JSON lines production writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("digitserve")
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON objects logged so far."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_access_line_per_request_with_its_id(
    client: TestClient, access_lines: io.StringIO
) -> None:
    client.post(
        "/v1/models/digits:predict",
        content=SEVEN,
        headers={"Content-Type": "image/jpeg", "X-Request-ID": "abc-123"},
    )
    client.post(
        "/v1/models/digits:predict",
        content=b"junk",
        headers={"Content-Type": "image/jpeg", "X-Request-ID": "bad-1"},
    )
    lines = [r for r in records(access_lines) if r["logger"] == ACCESS_LOGGER]
    assert len(lines) == 2
    good, bad = lines
    assert good["request_id"] == "abc-123"
    assert good["level"] == "info"
    assert good["message"].startswith("POST /v1/models/digits:predict 200 ")
    keys = ("method", "path", "route", "status", "model", "model_version")
    assert {key: good[key] for key in keys} == {
        "model": "digits",
        "method": "POST",
        "path": "/v1/models/digits:predict",
        "route": "/v1/models/{model_name}:predict",
        "status": 200,
        "model_version": "1",
    }
    assert good["body_bytes"] == len(SEVEN)
    assert good["images"] == 1
    assert good["code"] is None
    assert good["duration_ms"] > 0
    assert (bad["request_id"], bad["status"], bad["code"]) == ("bad-1", 400, "invalid_image")
    # Never the image bytes: the line is short and holds no body.
    assert all(len(json.dumps(line)) < 1000 for line in lines)


def test_probes_log_at_debug_and_access_log_can_be_off(
    settings: Settings, classifier: Classifier, access_lines: io.StringIO
) -> None:
    with TestClient(create_app(settings, classifier)) as client:
        client.get("/healthz")
    [probe] = [r for r in records(access_lines) if r["logger"] == ACCESS_LOGGER]
    assert (probe["level"], probe["route"]) == ("debug", "/healthz")
    quiet = settings.model_copy(update={"access_log": False})
    with TestClient(create_app(quiet, classifier)) as client:
        client.get("/v1/models/digits")
    assert len([r for r in records(access_lines) if r["logger"] == ACCESS_LOGGER]) == 1


def test_an_unhandled_fault_is_logged_with_the_request_id(
    settings: Settings, classifier: Classifier, access_lines: io.StringIO
) -> None:
    app = create_app(settings, classifier)

    async def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "fault-7"})
    assert response.status_code == 500
    assert "kaboom" not in response.text
    logged = [r for r in records(access_lines) if r["request_id"] == "fault-7"]
    error = next(r for r in logged if r["level"] == "error")
    assert "RuntimeError: kaboom" in error["exception"]
    access = next(r for r in logged if r["logger"] == ACCESS_LOGGER)
    assert (access["status"], access["code"]) == (500, "internal_error")


def raw_request(server: LiveServer, data: bytes) -> socket.socket:
    """Open a socket to the server and send some bytes (perhaps not a whole request)."""
    conn = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30)
    conn.sendall(data)
    return conn


def read_all(conn: socket.socket) -> bytes:
    """Read until the server closes the connection."""
    reply = io.BytesIO()
    while chunk := conn.recv(4096):
        reply.write(chunk)
    conn.close()
    return reply.getvalue()


@pytest.mark.integration
def test_slow_clients_on_a_real_socket(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    env = {
        "DIGITSERVE_MAX_CONCURRENT_REQUESTS": "1",
        "DIGITSERVE_REQUEST_TIMEOUT_SECONDS": "2",
    }
    with log_path.open("wb") as log:
        server = start_server(env=env, output=log)
        try:
            # A client sends its headers and half its body, then stops sending.
            trickle = raw_request(
                server,
                b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: image/jpeg\r\nX-Request-ID: trickle-1\r\n"
                b"Content-Length: " + str(len(SEVEN)).encode() + b"\r\n\r\n" + SEVEN[:100],
            )
            _wait_in_flight(server, 2)  # the stalled upload, and this scrape
            # An upload holds no place until its body is in: the only place is still free.
            served = requests.post(
                f"{server.url}/v1/models/digits:predict",
                data=SEVEN,
                headers={"Content-Type": "image/jpeg", "X-Request-ID": "busy-1"},
                timeout=10,
            )
            assert served.status_code == 200
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
            # A client that never finishes its headers is cut off too.
            no_headers = raw_request(server, b"POST /v1/models/digits:predict HTTP/1.1\r\nHo")
            reply = read_all(trickle)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 ")
            assert b"connection: close" in head.lower()
            assert json.loads(body)["code"] == "request_timeout"
            assert json.loads(body)["request_id"] == "trickle-1"
            head, _, body = read_all(no_headers).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 ")
            assert json.loads(body)["code"] == "request_timeout"
            ok = requests.post(
                f"{server.url}/v1/models/digits:predict",
                data=SEVEN,
                headers={"Content-Type": "image/jpeg"},
                timeout=10,
            )
            assert ok.status_code == 200
        finally:
            assert stop_server(server) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    access = {r["request_id"]: r for r in lines if r["logger"] == ACCESS_LOGGER}
    assert access["trickle-1"]["status"] == 408
    assert access["busy-1"]["status"] == 200
    assert all(r["request_id"] for r in lines if r["logger"] == ACCESS_LOGGER)


def _wait_in_flight(server: LiveServer, count: int) -> None:
    """Poll /metrics until `count` requests are in flight."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        if f"digitserve_requests_in_flight {count:.1f}" in text:
            return
        time.sleep(0.05)
    raise AssertionError(f"never saw {count} requests in flight")


@pytest.mark.integration
def test_a_burst_past_the_bound_is_shed_with_503_not_queued(tmp_path: Path) -> None:
    """Requests served on the event loop never overlap in the app; the queue behind them counts."""
    burst, limit = 40, 2
    request = (
        b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: image/jpeg\r\nContent-Length: " + str(len(SEVEN)).encode() + b"\r\n\r\n"
    ) + SEVEN
    with (tmp_path / "server.log").open("wb") as log:
        server = start_server(env={"DIGITSERVE_MAX_CONCURRENT_REQUESTS": str(limit)}, output=log)
        try:
            connections = [raw_request(server, request) for _ in range(burst)]
            replies = [read_all(conn).partition(b"\r\n\r\n") for conn in connections]
        finally:
            assert stop_server(server) == 0
    statuses = [int(head.split(b" ", 2)[1]) for head, _, _ in replies]
    shed = [
        (head, body)
        for (head, _, body), status in zip(replies, statuses, strict=True)
        if status == 503
    ]
    assert set(statuses) == {200, 503}, statuses
    assert len(shed) >= burst // 2, statuses
    for head, body in shed:
        assert b"retry-after: 1" in head.lower()
        assert json.loads(body)["code"] == "overloaded"
