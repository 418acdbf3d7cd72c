"""Hostile load on a real server: large JSON bodies at once, slow uploads, oversized request heads.

Each test starts `digitserve serve` on a free loopback port and attacks it. The attack must be
answered as documented within a generous time, other clients must still be answered, resident
memory must stay within its budget and come back near its baseline, and a good request must work
afterwards. Loops are bounded and every socket and server is closed.
"""

import base64
import contextlib
import functools
import http.client
import io
import json
import random
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from PIL import Image

from tests.hostile import GOOD_LABEL, PREDICT, good_jpeg, memory_kib
from tests.live import LiveServer, start_server, stop_server

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
JSON_BODY_BYTES = 10 * MIB - 4096
"""A JSON body just under the default `max_body_bytes`."""
CONCURRENT_BODIES = 8
PEAK_GROWTH_KIB = 300 * 1024
"""What 8 concurrent 10 MB JSON bodies may add to the worker's peak resident memory."""
NEAR_BASELINE_KIB = 24 * 1024
"""How close to its baseline resident memory must come back once an attack is over."""
ANSWER_SECONDS = 3.0
"""How soon other clients must be answered while an attack goes on."""
SLOW_UPLOADS = 64
"""As many slow uploads as the default `max_concurrent_requests`."""
TRICKLE_SECONDS = 1.0
SEVEN_GRID = [[0, 0, 7, 16, 16, 16, 16, 2]] + [[0, 0, 0, 0, 0, 16, 9, 0]] * 7
"""Ready-made pixels, as an 8x8 grid."""


@dataclass
class Reply:
    """What came back on a raw socket, and how long it took."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def address(server: LiveServer) -> tuple[str, int]:
    """The server's host and port."""
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def request_bytes(body: bytes, content_type: str, path: str = PREDICT) -> bytes:
    """A whole POST request, closing the connection after the answer."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def exchange(server: LiveServer, data: bytes, timeout: float = 60) -> Reply:
    """Send bytes on a new connection and read the answer."""
    started = time.monotonic()
    with socket.create_connection(address(server), timeout=timeout) as conn:
        # Answered and closed before all was sent: the answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(data)
        response = http.client.HTTPResponse(conn, method="POST")
        response.begin()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
    return Reply(response.status, headers, body, time.monotonic() - started)


def good_request_works(server: LiveServer) -> None:
    """A real digit is still read correctly, and promptly."""
    reply = exchange(server, request_bytes(good_jpeg(), "image/jpeg"), timeout=ANSWER_SECONDS * 3)
    assert reply.status == 200, reply.body[:200]
    assert reply.json()["predictions"][0]["label"] == GOOD_LABEL
    assert reply.seconds < ANSWER_SECONDS


def warmed_baseline(server: LiveServer) -> int:
    """The worker's resident memory (KiB) once each kind of small request has been served."""
    good_request_works(server)
    small = [[SEVEN_GRID], [{"b64": base64.b64encode(good_jpeg()).decode()}]]
    for instances in small:
        body = json.dumps({"instances": instances}).encode()
        assert exchange(server, request_bytes(body, "application/json")).status == 200
    time.sleep(0.5)
    return memory_kib(server.process.pid)


def settled_growth(server: LiveServer, baseline: int, seconds: float = 5.0) -> int:
    """Resident memory above the baseline (KiB), once it is near it again or time is up."""
    deadline = time.monotonic() + seconds
    while True:
        growth = memory_kib(server.process.pid) - baseline
        if growth <= NEAR_BASELINE_KIB or time.monotonic() > deadline:
            return growth
        time.sleep(0.1)


def digit_png_padded(size: int) -> bytes:
    """The good digit as a PNG, padded to about `size` bytes with a private chunk (skipped)."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(good_jpeg())).convert("L").save(buffer, "PNG")
    png = buffer.getvalue()
    payload = b"\0" * max(0, size - len(png) - 12)
    chunk = struct.pack(">I", len(payload)) + b"prVt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"prVt" + payload) & 0xFFFFFFFF)
    first_data = png.index(b"IDAT") - 4
    return png[:first_data] + chunk + png[first_data:]


@functools.cache
def json_bodies() -> dict[str, tuple[bytes, int, str | None]]:
    """Each 10 MB form of /v1 JSON: the body, the status it gets, and its error code."""
    zeros = (JSON_BODY_BYTES - 20) // 2
    many_values = b'{"instances": [[' + b"0," * zeros + b"0]]}"
    instances = json.dumps({"instances": [SEVEN_GRID] * 64})
    padded = (instances[:-1] + " " * (JSON_BODY_BYTES - len(instances)) + "}").encode()
    noise = random.Random(19).randbytes(JSON_BODY_BYTES * 3 // 4 - 64)  # noqa: S311 - not secret
    junk = base64.b64encode(noise).decode()
    image = base64.b64encode(digit_png_padded(JSON_BODY_BYTES * 3 // 4 // 64 - 200)).decode()
    return {
        "pixel lists: five million values": (many_values, 413, "too_many_images"),
        "pixel lists: 64 instances in 10 MB of spaces": (padded, 200, None),
        "base64: 7 MB of junk": (json.dumps({"instances": [{"b64": junk}]}).encode(), 400, None),
        "base64: 64 images of 110 KB": (
            json.dumps({"instances": [{"b64": image}] * 64}).encode(),
            200,
            None,
        ),
    }


@pytest.mark.parametrize("form", list(json_bodies()))
def test_concurrent_10_mb_json_bodies_stay_within_the_memory_budget(form: str) -> None:
    body, status, code = json_bodies()[form]
    assert len(body) <= 10 * MIB
    data = request_bytes(body, "application/json")
    server = start_server("--no-access-log")
    try:
        baseline = warmed_baseline(server)
        with ThreadPoolExecutor(CONCURRENT_BODIES) as pool:
            replies = list(pool.map(lambda _: exchange(server, data), range(CONCURRENT_BODIES)))
        peak = memory_kib(server.process.pid, "VmHWM") - baseline
        for reply in replies:
            assert reply.status == status, reply.body[:200]
            assert reply.seconds < 60
            if code is not None:
                assert reply.json()["code"] == code
            if status == 200:
                predictions = reply.json()["predictions"]
                assert len(predictions) == 64
        if form.startswith("base64: 64 images"):
            labels = {p["label"] for p in replies[0].json()["predictions"]}
            assert labels == {GOOD_LABEL}
        assert peak <= PEAK_GROWTH_KIB, f"peak {peak // 1024} MiB above the baseline"
        growth = settled_growth(server, baseline)
        assert growth <= NEAR_BASELINE_KIB, f"still {growth // 1024} MiB above the baseline"
        good_request_works(server)
    finally:
        assert stop_server(server) == 0


class SlowUploads:
    """Connections that send their headers, then their body a byte at a time."""

    def __init__(self, server: LiveServer, count: int, declared: int) -> None:
        self.connections = [
            socket.create_connection(address(server), timeout=10) for _ in range(count)
        ]
        head = (
            f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        ).encode()
        for conn in self.connections:
            conn.sendall(head)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, args=(declared - 1,))
        self.thread.start()

    def _trickle(self, rounds: int) -> None:
        for _ in range(rounds):
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.send(b"\xff")
            if self.stop.wait(TRICKLE_SECONDS):
                return

    def answered(self) -> int:
        """How many of them the server has answered (or closed) so far."""
        readable, _, _ = select.select(self.connections, [], [], 0)
        return len(readable)

    def close(self) -> None:
        """Stop trickling and hang up."""
        self.stop.set()
        self.thread.join(timeout=10)
        for conn in self.connections:
            conn.close()


def in_flight(server: LiveServer) -> float:
    """The worker's requests-in-flight gauge (uploads included)."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    line = next(line for line in text.splitlines() if line.startswith("digitserve_requests_in"))
    return float(line.split()[-1])


def test_slow_uploads_do_not_lock_other_clients_out() -> None:
    server = start_server("--no-access-log")
    pixels = json.dumps({"instances": [SEVEN_GRID]}).encode()
    try:
        baseline = warmed_baseline(server)
        uploads = SlowUploads(server, SLOW_UPLOADS, declared=1000)
        try:
            deadline = time.monotonic() + 30
            while in_flight(server) < SLOW_UPLOADS + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert in_flight(server) >= SLOW_UPLOADS + 1  # every upload is in, reading its body
            for _ in range(3):
                good_request_works(server)
                reply = exchange(server, request_bytes(pixels, "application/json"), timeout=10)
                assert (reply.status, reply.seconds < ANSWER_SECONDS) == (200, True)
                metadata = requests.get(f"{server.url}/v1/models/digits", timeout=10)
                assert metadata.status_code == 200
                assert metadata.elapsed.total_seconds() < ANSWER_SECONDS
                time.sleep(TRICKLE_SECONDS)
            assert uploads.answered() == 0  # still uploading, none refused
        finally:
            uploads.close()
        growth = settled_growth(server, baseline)
        assert growth <= NEAR_BASELINE_KIB, f"still {growth // 1024} MiB above the baseline"
        good_request_works(server)
    finally:
        assert stop_server(server) == 0


def stalled_upload(server: LiveServer, sent: int, declared: int) -> Callable[[], Reply | None]:
    """Start an upload that sends `sent` bytes of its body and stops; return how to end it.

    Ending it waits briefly for an answer (None if the server is still waiting for the body).
    """
    conn = socket.create_connection(address(server), timeout=30)
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.sendall(head + b"\xff" * sent)

    def end() -> Reply | None:
        try:
            if not select.select([conn], [], [], 0.5)[0]:
                return None
            response = http.client.HTTPResponse(conn, method="POST")
            response.begin()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return Reply(response.status, headers, response.read(), time.monotonic() - started)
        finally:
            conn.close()

    return end


def test_stalled_large_uploads_are_bounded_by_the_body_buffer() -> None:
    budget, uploads, each = 32 * MIB, 12, 8 * MIB
    server = start_server(
        "--no-access-log", env={"DIGITSERVE_MAX_BUFFERED_BODY_BYTES": str(budget)}
    )
    try:
        baseline = warmed_baseline(server)
        with ThreadPoolExecutor(uploads) as pool:
            ends = list(pool.map(lambda _: stalled_upload(server, each, each + 1), range(uploads)))
        good_request_works(server)  # a body that arrives whole needs no buffer
        peak = memory_kib(server.process.pid, "VmHWM") - baseline
        replies = [end() for end in ends]
        refused = [reply for reply in replies if reply is not None]
        # At most budget / each uploads fit; the others were refused as they passed it.
        assert len(refused) >= uploads - budget // each
        for reply in refused:
            assert reply.status == 503
            assert reply.headers["retry-after"] == "1"
            assert reply.headers["connection"] == "close"
            assert reply.json()["code"] == "overloaded"
            assert reply.json()["limit_bytes"] == budget
        assert peak <= (budget + 48 * MIB) // 1024, f"peak {peak // 1024} MiB above the baseline"
        growth = settled_growth(server, baseline)
        assert growth <= NEAR_BASELINE_KIB, f"still {growth // 1024} MiB above the baseline"
        good_request_works(server)
    finally:
        assert stop_server(server) == 0


def heads_over_the_limit(limit: int) -> Iterator[tuple[str, bytes]]:
    """Request heads larger than `limit`, each sent in a single write."""
    size = limit + 36 * 1024
    yield (
        "one long header",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n",
    )
    yield (
        "many short headers",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * (size // 11) + b"\r\n",
    )
    yield "a long target", b"GET /" + b"a" * size + b" HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("limit", [64 * 1024, 4096], ids=["default 64 KiB", "4 KiB"])
def test_a_request_head_over_the_limit_is_refused_whatever_the_read_size(limit: int) -> None:
    server = start_server("--no-access-log", env={"DIGITSERVE_MAX_HEADER_BYTES": str(limit)})
    try:
        baseline = warmed_baseline(server)
        for name, head in heads_over_the_limit(limit):
            reply = exchange(server, head, timeout=10)
            assert reply.status == 400, name
            assert reply.seconds < ANSWER_SECONDS, name
            assert reply.headers["content-type"] == "application/problem+json"
            assert reply.headers["connection"] == "close"
            problem = reply.json()
            assert (problem["code"], problem["limit"]) == ("invalid_input", limit), name
            assert problem["request_id"] == reply.headers["x-request-id"]
        # Under the limit, with the body in the same write: served, the body is not head.
        pad = b"X-Pad: " + b"p" * (limit - 1024) + b"\r\n"
        under = request_bytes(good_jpeg(), "image/jpeg").replace(
            b"Host: x\r\n", b"Host: x\r\n" + pad
        )
        reply = exchange(server, under, timeout=10)
        assert reply.status == 200, reply.body[:200]
        growth = settled_growth(server, baseline)
        assert growth <= NEAR_BASELINE_KIB, f"still {growth // 1024} MiB above the baseline"
        good_request_works(server)
    finally:
        assert stop_server(server) == 0
