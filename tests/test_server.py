"""How `digitserve serve` runs uvicorn: the options that shape speed and fairness, and workers."""

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest
import uvicorn
from gunicorn.app.base import BaseApplication
from uvicorn.server import ServerState

from digitserve import server
from digitserve.classifier import Classifier
from digitserve.dataplane import DataPlane
from digitserve.metrics import Metrics
from digitserve.middleware import ADMITTED_KEY
from digitserve.settings import Settings
from tests.conftest import MODEL_PATH


def captured_options(
    monkeypatch: pytest.MonkeyPatch, classifier: Classifier, **overrides: Any
) -> dict[str, Any]:
    """The options `serve` hands to uvicorn.run or to `serve_forked` (neither is started)."""
    calls: list[dict[str, Any]] = []
    for switch in ("_srcfile", "logThreads", "logMultiprocessing"):  # restored after the test
        monkeypatch.setattr(logging, switch, getattr(logging, switch))
    monkeypatch.setattr(
        uvicorn,
        "run",
        lambda app, **options: calls.append({**options, "frozen": gc.get_freeze_count()}),
    )
    monkeypatch.setattr(
        server,
        "serve_forked",
        lambda app, settings, options: calls.append(
            {**options, "forked": 1, "frozen": gc.get_freeze_count()}
        ),
    )
    try:
        settings = Settings(model_path=MODEL_PATH, **overrides)
        dataplane = DataPlane(settings, Metrics(), admitted=lambda: 1, classifier=classifier)
        dataplane.start()
        server.serve(settings, dataplane)
    finally:
        gc.unfreeze()
    [options] = calls
    return options


def test_malloc_thresholds_are_fixed_before_serving(
    monkeypatch: pytest.MonkeyPatch, classifier: Classifier
) -> None:
    calls: list[tuple[int, int]] = []

    class Libc:
        """The C library, recording `mallopt` calls."""

        def mallopt(self, parameter: int, value: int) -> int:
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr("signal.signal", lambda *_: None)
    monkeypatch.setattr(server, "one_blas_thread", lambda: None)  # it opens libraries too
    monkeypatch.setattr("ctypes.CDLL", lambda name: Libc())
    captured_options(monkeypatch, classifier)
    # Large blocks unmapped when freed, heaps trimmed past 2 MiB free: never raised as it runs.
    assert calls == [(server.M_MMAP_THRESHOLD, 1 << 20), (server.M_TRIM_THRESHOLD, 2 << 20)]


@pytest.mark.parametrize("workers", [1, 2])
def test_serves_on_asyncio_with_httptools_and_a_header_deadline(
    monkeypatch: pytest.MonkeyPatch, classifier: Classifier, workers: int
) -> None:
    monkeypatch.setattr("signal.signal", lambda *_: None)
    monkeypatch.setattr("os.environ", {})
    options = captured_options(monkeypatch, classifier, workers=workers, max_header_bytes=8192)
    # uvloop starved a few of 64 concurrent connections for seconds; asyncio's loop does not.
    assert options["loop"] == "asyncio"
    protocol = options["http"]
    assert issubclass(protocol.func, server.HeaderDeadlineProtocol)
    admission = protocol.keywords.pop("admission")
    assert protocol.keywords == {"header_timeout": 30.0, "max_header_bytes": 8192}
    assert (admission.limit, admission.held) == (64, 0)
    assert options["access_log"] is False
    assert options.get("forked", 0) == (workers > 1)
    # What start-up made is frozen before serving: full collections skip it (and forked workers
    # leave the arbiter's pages alone).
    assert options["frozen"] > 10_000
    # Records skip the caller lookup that no log line shows (see `skip_unused_record_fields`).
    assert (logging._srcfile, logging.logThreads) == (None, False)


@pytest.mark.parametrize(("host", "bind"), [("127.0.0.1", "127.0.0.1:8123"), ("::", "[::]:8123")])
def test_workers_are_forked_by_gunicorn_after_the_model_is_loaded(
    monkeypatch: pytest.MonkeyPatch, host: str, bind: str
) -> None:
    arbiters: list[Any] = []
    monkeypatch.setattr(BaseApplication, "run", lambda self: arbiters.append(self))
    settings = Settings(
        model_path=MODEL_PATH, host=host, port=8123, workers=3, shutdown_delay_seconds=2.5
    )
    app = object()
    options = {"host": host, "port": 8123, "log_config": {}, "loop": "asyncio", "http": "ours"}
    server.serve_forked(app, settings, options)  # type: ignore[arg-type]
    [arbiter] = arbiters
    assert arbiter.load() is app  # built here, with the model: the workers inherit both
    cfg = arbiter.cfg
    assert (cfg.bind, cfg.workers, cfg.preload_app) == ([bind], 3, True)
    assert cfg.graceful_timeout == 38  # drain delay + in-flight grace + 5, in whole seconds
    assert cfg.control_socket_disable  # nothing written next to a read-only root filesystem
    # The workers run uvicorn as one process would: same loop and protocol, lifespan on.
    assert cfg.worker_class.CONFIG_KWARGS == {
        "loop": "asyncio",
        "http": "ours",
        "lifespan": "on",
        "timeout_keep_alive": 5,
    }
    loggers = cfg.logconfig_dict["loggers"]
    assert loggers["gunicorn.error"] == loggers["digitserve"]  # the arbiter logs as we do


def test_admission_holds_a_place_until_the_app_is_done_even_if_it_fails() -> None:
    admission = server.Admission(limit=2)
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(admission.count())
        if scope.get("fail"):
            raise RuntimeError("boom")

    counted: Any = admission.counted(app)

    async def scenario() -> None:
        admission.held = 2  # two admitted requests are queued
        await counted({ADMITTED_KEY: True}, None, None)
        await counted({ADMITTED_KEY: False}, None, None)  # refused: held no place
        with pytest.raises(RuntimeError):
            await counted({ADMITTED_KEY: True, "fail": True}, None, None)

    asyncio.run(scenario())
    assert seen == [2, 1, 1]
    assert admission.held == 0


class Transport:
    """Just enough of an asyncio transport for a protocol fed by hand."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Loopback addresses, no TLS."""
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        """Keep what the server writes."""
        self.written += data

    def close(self) -> None:
        """Remember the close."""
        self.closed = True

    def is_closing(self) -> bool:
        """Closed once closed."""
        return self.closed

    def pause_reading(self) -> None:
        """Nothing to pause."""

    def resume_reading(self) -> None:
        """Nothing to resume."""


def fed_protocol(
    app: Any, admission: server.Admission, *, max_header_bytes: int = 65536
) -> tuple[server.HeaderDeadlineProtocol, Transport]:
    """The server's protocol on a fake connection, on the running loop."""
    config = uvicorn.Config(app, lifespan="off", log_level="critical")
    protocol = server.HeaderDeadlineProtocol(
        config=config,
        server_state=ServerState(),
        app_state={},
        header_timeout=30.0,
        max_header_bytes=max_header_bytes,
        admission=admission,
    )
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def test_a_request_is_admitted_once_its_body_has_arrived() -> None:
    admission = server.Admission(limit=1)
    seen: list[tuple[str, object, int]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(("start", scope.get(ADMITTED_KEY), admission.count()))
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        seen.append(("body read", scope.get(ADMITTED_KEY), admission.count()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> None:
        protocol, transport = fed_protocol(app, admission)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        for _ in range(5):
            await asyncio.sleep(0)
        # Headers in, half the body: running, reading its body, and holding no place.
        assert seen == [("start", None, 0)]
        admission.held = 1  # meanwhile, another request has taken the only place
        protocol.data_received(b"67890")
        for _ in range(5):
            await asyncio.sleep(0)
        assert seen[-1] == ("body read", False, 1)  # complete into a full worker: refused
        assert admission.held == 1
        admission.held = 0
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        # No body: admitted in the read that brought the head, before the app starts.
        assert seen[-2:] == [("start", True, 1), ("body read", True, 1)]
        assert admission.held == 0  # given back when answered
        assert transport.written.count(b"HTTP/1.1 200 OK") == 2

    asyncio.run(scenario())


def test_a_request_answered_before_its_body_arrived_is_never_admitted() -> None:
    admission = server.Admission(limit=1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 415, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        protocol, transport = fed_protocol(app, admission)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        protocol.data_received(b"late")
        assert admission.held == 0
        assert transport.written.startswith(b"HTTP/1.1 415 ")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 10_000 + b"\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["one long header", "many headers", "long target"],
)
def test_a_head_over_the_limit_is_refused_even_in_one_read(head: bytes) -> None:
    called: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    async def scenario() -> Transport:
        protocol, transport = fed_protocol(app, server.Admission(limit=1))
        protocol.data_received(head)  # all of it at once
        await asyncio.sleep(0)
        return transport

    transport = asyncio.run(scenario())
    status, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/problem+json" in status
    assert b"x-content-type-options: nosniff" in status
    problem = json.loads(body)
    assert (problem["code"], problem["limit"]) == ("invalid_input", 65536)
    assert problem["detail"] == "the request line and headers exceed the limit of 65536 bytes"
    assert transport.closed
    assert not called


def test_a_body_in_the_same_read_as_its_head_does_not_count_as_head() -> None:
    answered: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        answered.append(size)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> Transport:
        protocol, transport = fed_protocol(app, server.Admission(limit=1), max_header_bytes=4096)
        body = b"x" * 50_000
        protocol.data_received(
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Pad: "
            + b"p" * 3000
            + b"\r\nContent-Length: 50000\r\n\r\n"
            + body
        )
        for _ in range(5):
            await asyncio.sleep(0)
        return transport

    transport = asyncio.run(scenario())
    assert transport.written.startswith(b"HTTP/1.1 200 ")
    assert answered == [50_000]


def test_a_malformed_request_is_refused_in_the_envelope() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    async def scenario() -> Transport:
        protocol, transport = fed_protocol(app, server.Admission(limit=1))
        protocol.data_received(b"GARBAGE\r\n\r\n")
        return transport

    transport = asyncio.run(scenario())
    status, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["code"] == "invalid_input"
    assert json.loads(body)["detail"] == "malformed HTTP request: invalid http request received"
    assert transport.closed


def test_blas_runs_one_thread_per_worker() -> None:
    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from digitserve.server import one_blas_thread\n"
        "one_blas_thread()\n"
        "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "2"},
    )
    assert result.stdout.strip() == "[1]"
