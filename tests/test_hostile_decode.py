"""Work that outlives its request, against a real server: files crafted to make a decoder work far
beyond their size are refused undecoded, decode threads stay within their bound when requests run
out of time, and a SIGTERM with decodes in flight still ends the process within its grace period.

The hostile files are made here, in memory, from JPEGs and PNGs Pillow writes.
"""

import base64
import io
import os
import re
import signal
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from digitserve.preprocessing import MAX_JPEG_SCANS
from tests.hostile import GOOD_LABEL, PREDICT, good_jpeg, memory_kib
from tests.live import LiveServer, start_server, stop_server

INFER = "/v2/models/digits/infer"

ANSWER_SECONDS = 5.0
"""A generous bound on refusing a hostile file: the point is seconds, not the minute it cost."""

MEMORY_SLACK_KIB = 64 * 1024
"""How far above its baseline a server's memory may stay once the hostile requests are answered."""

_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The next marker after entropy-coded data (where FF is followed by 00 or a restart marker)."""


def progressive_jpeg(side: int, mode: str = "L") -> bytes:
    """A blank progressive JPEG, as Pillow (libjpeg) writes it: a few scans, each tiny."""
    buffer = io.BytesIO()
    Image.new(mode, (side, side), "white").save(buffer, "JPEG", progressive=True)
    return buffer.getvalue()


def repeated_scan_jpeg(side: int, scans: int, mode: str = "L") -> bytes:
    """A progressive JPEG of `scans` scans: its smallest AC scan repeated until there are enough.

    Every scan is another pass of the decoder over the whole image, however few bytes it holds.
    """
    data = progressive_jpeg(side, mode)
    starts = [found.start() for found in re.finditer(rb"\xff\xda", data)]
    spans = []
    for start in starts:
        (length,) = struct.unpack(">H", data[start + 2 : start + 4])
        end = _MARKER.search(data, start + 2 + length)
        assert end is not None
        spans.append((start, end.start()))
    first, last = min(spans[1:], key=lambda span: span[1] - span[0])
    end_of_image = data.rindex(b"\xff\xd9")
    repeats = scans - len(starts)
    assert repeats >= 0
    return data[:end_of_image] + data[first:last] * repeats + data[end_of_image:]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_with_chunks(before_pixels: int = 0, empty_idats: int = 0) -> bytes:
    """A real 64x64 PNG with empty ancillary chunks before its pixels or empty IDATs after them."""
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, "PNG")
    data = buffer.getvalue()
    first_idat = data.index(b"IDAT") - 4
    end = data.index(b"IEND") - 4
    return (
        data[:first_idat]
        + png_chunk(b"ruSt", b"") * before_pixels
        + data[first_idat:end]
        + png_chunk(b"IDAT", b"") * empty_idats
        + data[end:]
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_count(pid: int) -> int:
    """Live threads of a process."""
    return len(os.listdir(f"/proc/{pid}/task"))


def settled_cpu(pid: int, limit: float = 20.0) -> float:
    """CPU seconds the process used in its first quiet second, waiting up to `limit` for one."""
    deadline = time.monotonic() + limit
    while True:
        before = cpu_seconds(pid)
        time.sleep(1)
        used = cpu_seconds(pid) - before
        if used < 0.2 or time.monotonic() > deadline:
            return used


def post_image(server: LiveServer, data: bytes, timeout: float = 120) -> requests.Response:
    """POST an image as a raw /v1 body."""
    return requests.post(
        server.url + PREDICT, data=data, headers={"content-type": "image/jpeg"}, timeout=timeout
    )


def assert_good_request_answered(server: LiveServer) -> None:
    """The request every hostile one is followed by."""
    response = post_image(server, good_jpeg(), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == GOOD_LABEL


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server with the default limits."""
    log = (tmp_path_factory.mktemp("hostile_decode") / "server.log").open("wb")
    live = start_server("--no-access-log", output=log)
    try:
        yield live
    finally:
        stop_server(live)
        log.close()


def hostile_files() -> list[tuple[str, bytes]]:
    """Files that made a decoder (or Pillow's Python) work for seconds to minutes, by design.

    Each stays under 7.5 MB, so that base64 in a JSON body stays under the 10 MiB body limit.
    """
    fill = progressive_jpeg(64)
    return [
        ("100,000 repeats of one 12-byte scan", repeated_scan_jpeg(1024, 100_000)),
        ("one scan over the limit", repeated_scan_jpeg(1024, MAX_JPEG_SCANS + 1)),
        (
            "1.5 million empty comments before the first scan",
            fill[:2] + b"\xff\xfe\x00\x02" * 1_500_000 + fill[2:],
        ),
        ("6 MB of fill bytes before a marker", fill[:2] + b"\xff" * 6_000_000 + fill[2:]),
        ("500,000 empty chunks before the pixels", png_with_chunks(before_pixels=500_000)),
        ("500,000 empty IDAT chunks", png_with_chunks(empty_idats=500_000)),
    ]


@pytest.mark.integration
@pytest.mark.parametrize("route", ["v1", "v2"])
def test_files_crafted_for_decoder_work_are_refused_and_leave_nothing_running(
    server: LiveServer, route: str
) -> None:
    pid = server.process.pid
    assert_good_request_answered(server)
    memory_before = memory_kib(pid)
    threads_before = thread_count(pid)
    for name, data in hostile_files():
        started = time.monotonic()
        if route == "v1":
            response = post_image(server, data)
        else:
            tensor: dict[str, Any] = {"name": "image", "shape": [1], "datatype": "BYTES"}
            document = {"inputs": [{**tensor, "data": [base64.b64encode(data).decode()]}]}
            response = requests.post(server.url + INFER, json=document, timeout=120)
        elapsed = time.monotonic() - started
        assert response.status_code == 413, (name, response.text)
        assert response.json()["code"] == "image_too_complex", name
        assert elapsed < ANSWER_SECONDS, (name, elapsed)
    assert settled_cpu(pid) < 0.2, "the server is still working after answering"
    # At most the decode threads, started for the large JSON bodies; none still running.
    assert thread_count(pid) <= threads_before + (os.cpu_count() or 1)
    assert memory_kib(pid) < memory_before + MEMORY_SLACK_KIB
    assert_good_request_answered(server)


@pytest.fixture(scope="module")
def slow_jpeg() -> bytes:
    """A legal JPEG at the scan limit that takes the decoders about a second on this machine."""
    return repeated_scan_jpeg(6000, MAX_JPEG_SCANS)


@pytest.mark.integration
def test_decode_threads_stay_within_their_bound_when_requests_time_out(
    slow_jpeg: bytes, tmp_path: Path
) -> None:
    with (tmp_path / "server.log").open("wb") as log:
        server = start_server(
            "--no-access-log",
            env={
                "DIGITSERVE_PREPROCESS_THREADS": "1",
                "DIGITSERVE_REQUEST_TIMEOUT_SECONDS": "0.25",
            },
            output=log,
        )
        try:
            pid = server.process.pid
            response = post_image(server, slow_jpeg)  # starts the one decode thread
            assert response.status_code == 408, response.text
            settled_cpu(pid)
            threads_before = thread_count(pid)
            most = threads_before
            sampling = threading.Event()

            def sample() -> None:
                nonlocal most
                while not sampling.is_set():
                    most = max(most, thread_count(pid))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                # Each request arrives after the one before has run out of time, while its
                # thread is still decoding: a slot given back on time-out would start another.
                with ThreadPoolExecutor(6) as pool:
                    answers = []
                    for _ in range(6):
                        answers.append(pool.submit(post_image, server, slow_jpeg, 30))
                        time.sleep(0.3)
                    statuses = [answer.result().status_code for answer in answers]
            finally:
                sampling.set()
                sampler.join()
            assert set(statuses) <= {200, 408}, statuses
            assert most <= threads_before, f"{most - threads_before} threads beyond the bound"
            assert settled_cpu(pid) < 0.2
        finally:
            stop_server(server)


@pytest.mark.integration
def test_sigterm_with_decodes_in_flight_exits_within_the_grace_period(
    slow_jpeg: bytes, tmp_path: Path
) -> None:
    grace = 1.0
    with (tmp_path / "server.log").open("wb") as log:
        server = start_server(
            "--no-access-log",
            env={"DIGITSERVE_SHUTDOWN_TIMEOUT_SECONDS": str(grace)},
            output=log,
        )
        pool = ThreadPoolExecutor(4)
        try:
            answers = [pool.submit(post_image, server, slow_jpeg, 30) for _ in range(4)]
            time.sleep(0.3)  # the decodes are under way
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            exit_status = server.process.wait(timeout=60)
            exited_after = time.monotonic() - signalled
        finally:
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGKILL)
            if server.process.stdout:
                server.process.stdout.close()
            pool.shutdown(wait=True)
    assert exit_status == 0
    assert exited_after < grace + 3, exited_after
    assert all(answer.done() for answer in answers)  # answered or cut off, never left hanging
