"""Hostile Open Inference Protocol (/v2) requests against a real server: sizes that used to be
trusted too early, lists that used to be parsed in quadratic time, and JSON bodies that used to
balloon the worker. Each gets its documented 4xx within seconds, never a 500, and the next good
request is still answered."""

import base64
import gzip
import http.client
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson
import pytest

from digitserve.schemas import Problem
from tests.hostile import GOOD_LABEL, good_jpeg, memory_kib
from tests.live import LiveServer, start_server, stop_server
from tests.test_hostile_decode import settled_cpu

INFER = "/v2/models/digits/infer"
IHCL = "Inference-Header-Content-Length"
MIB = 1024 * 1024
BODY_LIMIT = 10 * MIB
"""The default `max_body_bytes` the server runs with."""

ANSWER_SECONDS = 5.0
"""Every hostile request is answered within this (generous: the answers take milliseconds; some
took minutes, or froze the event loop, before)."""

PEAK_GROWTH_KIB = 300 * 1024
"""Eight concurrent 10 MB JSON bodies may not raise the server's peak memory by more than this
(they raised it by over a gigabyte while `data` was parsed into Python lists)."""


@dataclass(frozen=True)
class Attack:
    """One hostile /v2 request and the refusal it must get."""

    name: str
    body: Callable[[], bytes]
    status: int
    code: str
    message: str
    """A fragment of the error text."""
    headers: dict[str, str] = field(default_factory=dict)


def _json(document: object) -> bytes:
    """Serialise with the standard library, which writes integers of any size."""
    return json.dumps(document).encode()


def _input(**fields: object) -> dict[str, object]:
    """An INT64 input tensor of one element, with fields replaced."""
    return {"name": "pixels", "shape": [1], "datatype": "INT64", "data": [1]} | fields


def _request(*inputs: dict[str, object], **fields: object) -> bytes:
    """A JSON inference request of these inputs."""
    return _json({"inputs": list(inputs), **fields})


def _binary(document: dict[str, object], blob: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary data extension body and its header."""
    header = _json(document)
    return header + blob, {IHCL: str(len(header))}


HUGE_SHAPE_BINARY, HUGE_SHAPE_HEADERS = _binary(
    {
        "inputs": [
            _input(shape=[2**63 - 1, 0], data=None, parameters={"binary_data_size": 0}),
        ]
    },
    b"",
)


BYTES_ELEMENTS = 2_000_000
BYTES_HEADER = _json(
    {
        "inputs": [
            {
                "name": "image",
                "shape": [BYTES_ELEMENTS],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 5 * BYTES_ELEMENTS},
            }
        ]
    }
)
"""The JSON header of a binary BYTES tensor of two million one-byte elements (10 MB)."""


def _many_bytes_elements() -> bytes:
    """The body after `BYTES_HEADER`: each element a 4-byte length and one byte."""
    return BYTES_HEADER + (struct.pack("<I", 1) + b"a") * BYTES_ELEMENTS


def _numbers_json(size: int) -> bytes:
    """A JSON request of about `size` bytes whose pixels `data` is one long list of numbers."""
    count = (size - 200) // 4
    data = b"[" + b",".join([b"999"] * count) + b"]"
    head = b'{"inputs":[{"name":"pixels","shape":[%d,64],"datatype":"INT64","data":' % (count // 64)
    return head + data + b"}]}"


def _inputs(count: int) -> bytes:
    """A JSON request of `count` differently named inputs."""
    return _request(*(_input(name=f"x{i}") for i in range(count)))


ATTACKS = (
    Attack(
        "shape [2**63-1, 0] with empty data",
        lambda: _request(_input(shape=[2**63 - 1, 0], data=[])),
        400,
        "invalid_input",
        "has a dimension larger than a",
    ),
    Attack(
        "shape [2**63-1, 0] in binary with binary_data_size 0",
        lambda: HUGE_SHAPE_BINARY,
        400,
        "invalid_input",
        "has a dimension larger than",
        HUGE_SHAPE_HEADERS,
    ),
    Attack(
        "65 zero dimensions",
        lambda: _request(_input(shape=[0] * 65, data=[])),
        400,
        "invalid_input",
        "(inputs.0.shape): List should have at most 8 items after validation, not 65",
    ),
    Attack(
        "300 dimensions of 2**64-1",
        lambda: _request(_input(shape=[2**64 - 1] * 300, data=[])),
        400,
        "invalid_input",
        "List should have at most 8 items after validation, not 300",
    ),
    Attack(
        "8 dimensions of 2**64-1",
        lambda: _request(_input(shape=[2**64 - 1] * 8, data=[])),
        400,
        "invalid_input",
        "has a dimension larger than",
    ),
    Attack(
        "5,000 huge dimensions (under the value budget)",
        lambda: _request(_input(shape=[2**64 - 1] * 5000, data=[])),
        400,
        "invalid_input",
        "List should have at most 8 items after validation, not 5000",
    ),
    Attack(
        "150,000 huge dimensions (3.3 MB)",
        lambda: _request(_input(shape=[2**64 - 1] * 150_000, data=[])),
        413,
        "too_many_elements",
        "the JSON request holds more than 9216 values",
    ),
    Attack(
        "Inference-Header-Content-Length of 5,000 digits",
        lambda: _request(_input()),
        400,
        "invalid_input",
        "Inference-Header-Content-Length must be an integer",
        {IHCL: "9" * 5000},
    ),
    Attack(
        "500,000 empty gzip members (10 MB)",
        lambda: gzip.compress(b"") * (BODY_LIMIT // len(gzip.compress(b""))),
        400,
        "invalid_input",
        "the gzip body has more than 64 members; send one",
        {"Content-Encoding": "gzip"},
    ),
    Attack(
        "100,000 input names",
        lambda: _inputs(100_000),
        413,
        "too_many_elements",
        "the JSON request holds more than 9216 values",
    ),
    Attack(
        "1,000 input names (under the value budget)",
        lambda: _inputs(1000),
        400,
        "invalid_input",
        "inputs: List should have at most 16 items after validation, not 1000",
    ),
    Attack(
        "17 outputs",
        lambda: _request(_input(), outputs=[{"name": "label"}] * 17),
        400,
        "invalid_input",
        "outputs: List should have at most 16 items after validation, not 17",
    ),
    Attack(
        "1,000 parameters",
        lambda: _request(_input(), parameters={f"k{i}": None for i in range(1000)}),
        400,
        "invalid_input",
        "parameters: at most 64 parameters are accepted, got 1000",
    ),
    Attack(
        "a tensor name of a million characters",
        lambda: _request(_input(name="n" * 1_000_000)),
        400,
        "invalid_input",
        "... (1000000 characters) (inputs.0.name): String should have at most 256 characters",
    ),
    Attack(
        "10 MB of numbers in JSON data",
        lambda: _numbers_json(BODY_LIMIT - 1000),
        413,
        "too_many_elements",
        "a request's tensors may hold at most 4096 elements",
    ),
    Attack(
        "two million binary BYTES elements (10 MB)",
        _many_bytes_elements,
        413,
        "too_many_elements",
        "input 'image': shape [2000000] holds 2000000 BYTES elements",
        {IHCL: str(len(BYTES_HEADER))},
    ),
)


@dataclass
class Answer:
    """What came back, and how long it took."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def post(server: LiveServer, body: bytes, headers: dict[str, str]) -> Answer:
    """POST to the inference route on a real socket, timing the exchange."""
    host, port = server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", INFER, body=body, headers=headers)
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    seconds = time.monotonic() - started
    answer_headers = {name.lower(): value for name, value in response.getheaders()}
    return Answer(response.status, answer_headers, content, seconds)


def assert_refused(answer: Answer, status: int, code: str, message: str) -> None:
    """The answer is the documented problem, short, and came within `ANSWER_SECONDS`."""
    assert answer.seconds < ANSWER_SECONDS, f"answered after {answer.seconds:.1f} s"
    assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"] == "application/problem+json"
    problem = Problem.model_validate_json(answer.body)
    assert problem.code == code
    assert message in problem.detail
    assert len(problem.detail) < 400, "a client's long input was echoed into the message"


def assert_good_answer(server: LiveServer) -> None:
    """A good request (one base64 JPEG in JSON) is still answered correctly."""
    data = [base64.b64encode(good_jpeg()).decode()]
    image = _input(name="image", shape=[1], datatype="BYTES", data=data)
    answer = post(server, _request(image), {})
    assert answer.status == 200, answer.body[:300]
    outputs = {output["name"]: output for output in orjson.loads(answer.body)["outputs"]}
    assert outputs["label"]["data"] == [GOOD_LABEL]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """One real server for the attacks in turn, idle and with its memory back afterwards."""
    live = start_server("--no-access-log")
    assert_good_answer(live)
    baseline = memory_kib(live.process.pid)
    yield live
    # Every attack was answered; nothing it started may still burn a core or hold memory.
    assert settled_cpu(live.process.pid, limit=10) < 0.2
    assert memory_kib(live.process.pid) - baseline < 64 * 1024
    assert stop_server(live) == 0


@pytest.mark.integration
@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
def test_hostile_v2_request_is_refused_within_seconds(server: LiveServer, attack: Attack) -> None:
    answer = post(server, attack.body(), attack.headers)
    assert_refused(answer, attack.status, attack.code, attack.message)
    assert_good_answer(server)


@pytest.mark.integration
def test_concurrent_10_mb_json_bodies_keep_memory_bounded() -> None:
    body = _numbers_json(BODY_LIMIT - 1000)
    live = start_server("--no-access-log")
    try:
        assert_good_answer(live)  # first-time allocations are not what is measured
        before = memory_kib(live.process.pid, "VmHWM")
        answers: list[Answer] = []
        threads = [
            threading.Thread(target=lambda: answers.append(post(live, body, {}))) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        growth = memory_kib(live.process.pid, "VmHWM") - before
        assert len(answers) == 8
        for answer in answers:
            assert_refused(answer, 413, "too_many_elements", "at most 4096 elements")
        assert growth < PEAK_GROWTH_KIB, f"peak memory grew by {growth} KiB"
        assert_good_answer(live)
    finally:
        assert stop_server(live) == 0
