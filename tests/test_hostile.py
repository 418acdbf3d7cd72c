"""The hostile corpus, through the ASGI app and against a real server: each request gets its
documented answer, nothing leaks, and the next good request is still answered correctly."""

import http.client
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from digitserve.schemas import PredictResponse, Problem
from tests.conftest import ROOT
from tests.hostile import GOOD_LABEL, PREDICT, Hostile, corpus, good_jpeg, memory_kib
from tests.live import LiveServer, start_server, stop_server

LEAKS = ("Traceback", 'File "', "site-packages", "digitserve/", "Error(", str(ROOT))
"""Fragments of stack traces, exception reprs and file paths that must never reach a client."""


BODY_LIMIT = 10 * 1024 * 1024
"""The default `max_body_bytes` the real server runs with."""

SOCKET_SLACK = 8 * 1024 * 1024
"""Bytes a client can push into loopback socket buffers before it sees the server's answer."""


PEAK_GROWTH_KIB = 192 * 1024
"""One hostile request at a time may not raise the server's peak memory by more than this (the
39-megapixel PNG costs about 80 MB; reducing it all at once would cost over 400 MB)."""


@dataclass
class Answer:
    """What came back for one request, whichever client sent it."""

    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture(scope="module")
def hostile() -> tuple[Hostile, ...]:
    """The corpus (built once per session)."""
    return corpus()


def check(item: Hostile, answer: Answer) -> list[str]:
    """Every way this answer differs from what the corpus entry requires."""
    problems: list[str] = []
    text = answer.body.decode("utf-8", "replace")
    if answer.status != item.status:
        problems.append(f"status {answer.status}, expected {item.status}: {text[:200]}")
        return problems
    problems += [f"leaks {leak!r}" for leak in LEAKS if leak in text]
    if answer.headers.get("x-content-type-options") != "nosniff":
        problems.append("no X-Content-Type-Options: nosniff")
    if item.code is not None:
        if answer.headers.get("content-type") != "application/problem+json":
            problems.append(f"content-type {answer.headers.get('content-type')}")
            return problems
        body = orjson.loads(answer.body)
        Problem.model_validate(body)
        if (body["code"], body["status"]) != (item.code, item.status):
            problems.append(f"code {body['code']}, expected {item.code}")
        if body["request_id"] != answer.headers.get("x-request-id"):
            problems.append("request_id differs from X-Request-ID")
    else:
        prediction = PredictResponse.model_validate_json(answer.body).predictions[0]
        if prediction.label != item.label:
            problems.append(f"label {prediction.label}, expected {item.label}")
        if len(answer.headers.get("x-request-id", "")) > 128:
            problems.append("an oversized X-Request-ID was echoed")
    return problems


def check_good(answer: Answer) -> list[str]:
    """The good request after a hostile one must still be read correctly."""
    if answer.status != 200:
        return [f"next good request: status {answer.status}"]
    label = PredictResponse.model_validate_json(answer.body).predictions[0].label
    return [] if label == GOOD_LABEL else [f"next good request: label {label}"]


def via_test_client(client: TestClient, item: Hostile) -> Answer:
    """Send one corpus entry through the ASGI app."""
    content: Any = item.body if isinstance(item.body, bytes) else item.body()
    response = client.request(
        item.method, item.path, content=content, headers=item.request_headers()
    )
    return Answer(response.status_code, dict(response.headers), response.content)


def test_every_hostile_request_gets_its_answer_in_process(
    client: TestClient, hostile: tuple[Hostile, ...]
) -> None:
    failures: list[str] = []
    for item in hostile:
        failures += [f"{item.name}: {p}" for p in check(item, via_test_client(client, item))]
        good = client.post(PREDICT, content=good_jpeg(), headers={"Content-Type": "image/jpeg"})
        answer = Answer(good.status_code, dict(good.headers), good.content)
        failures += [f"after {item.name}: {p}" for p in check_good(answer)]
    assert not failures, "\n".join(failures)


def raw_exchange(server: LiveServer, item: Hostile) -> tuple[Answer, int]:
    """Send one request byte for byte on a socket, as a client that stops when answered.

    Bodies go in 64 KB pieces (chunked when the entry streams); sending stops as soon as the
    server has answered, and the count of body bytes sent is returned with the answer.
    """
    host, port = server.url.removeprefix("http://").split(":")
    pieces: Iterator[bytes]
    head = [f"{item.method} {item.path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in item.request_headers().items()]
    if isinstance(item.body, bytes):
        head.append(f"Content-Length: {len(item.body)}")
        data = item.body
        pieces = (data[i : i + 65536] for i in range(0, len(data), 65536))
        chunked = False
    else:
        head.append("Transfer-Encoding: chunked")
        pieces = item.body()
        chunked = True
    sent = 0
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        try:
            for piece in pieces:
                if select.select([conn], [], [], 0)[0]:
                    break
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            else:
                if chunked:
                    conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = http.client.HTTPResponse(conn, method=item.method)
        response.begin()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, headers, body), sent


@pytest.mark.integration
def test_every_hostile_request_gets_its_answer_from_a_real_server(
    hostile: tuple[Hostile, ...],
) -> None:
    server = start_server("--no-access-log")
    good = Hostile("good", good_jpeg(), "image/jpeg", 200, label=GOOD_LABEL)
    failures: list[str] = []
    try:
        before = memory_kib(server.process.pid)
        for item in hostile:
            answer, sent = raw_exchange(server, item)
            failures += [f"{item.name}: {p}" for p in check(item, answer)]
            if item.code == "body_too_large" and sent > BODY_LIMIT + SOCKET_SLACK:
                failures.append(f"{item.name}: {sent} bytes went out before the refusal")
            after = check_good(raw_exchange(server, good)[0])
            failures += [f"after {item.name}: {p}" for p in after]
        peak = memory_kib(server.process.pid, "VmHWM") - before
        if peak > PEAK_GROWTH_KIB:
            failures.append(f"resident memory peaked {peak} KiB above its start")
    finally:
        assert stop_server(server) == 0
    assert not failures, "\n".join(failures)


def send_head(server: LiveServer, head: bytes) -> bytes:
    """Send a raw request head and return whatever comes back (empty if the server hung up)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        try:
            conn.sendall(head)
            return conn.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            return b""


@pytest.mark.integration
def test_oversized_and_malformed_request_heads_are_refused_by_the_server() -> None:
    server = start_server("--no-access-log")
    good = Hostile("good", good_jpeg(), "image/jpeg", 200, label=GOOD_LABEL)
    try:
        # One good request first: its first-time allocations are not what this test measures.
        assert not check_good(raw_exchange(server, good)[0])
        before = memory_kib(server.process.pid, "VmHWM")
        for head in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(100_000))
            + b"\r\n",
            b"GARBAGE\r\n\r\n",
            b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        ):
            reply = send_head(server, head)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 400 "), reply[:100]
            assert not check_good(raw_exchange(server, good)[0])
        assert memory_kib(server.process.pid, "VmHWM") - before < 4096
    finally:
        assert stop_server(server) == 0
