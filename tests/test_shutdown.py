"""SIGTERM: readiness false at once, requests still served through the delay, none lost."""

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
import requests
from fastapi.testclient import TestClient

from digitserve.shutdown import drain_on_sigterm
from tests.conftest import DATA_DIR
from tests.live import start_server


@contextmanager
def server_handler() -> Iterator[list[int]]:
    """Stand in for uvicorn's SIGTERM handler: record each signal it is handed."""
    handed: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        handed.append(signum)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield handed
    finally:
        signal.signal(signal.SIGTERM, previous)


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Yield to the loop until a condition holds (bounded)."""
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_first_sigterm_drains_then_hands_on_a_second_at_once() -> None:
    with server_handler() as handed:

        async def scenario() -> None:
            drained: list[bool] = []
            restore = drain_on_sigterm(lambda: drained.append(True), delay=0.3)
            os.kill(os.getpid(), signal.SIGTERM)
            await until(lambda: bool(drained))
            assert drained == [True]
            assert handed == []  # the server has not been told yet: it keeps serving
            await until(lambda: bool(handed))
            assert handed == [signal.SIGTERM]
            os.kill(os.getpid(), signal.SIGTERM)
            await until(lambda: len(handed) == 2)
            assert handed == [signal.SIGTERM, signal.SIGTERM]
            restore()

        asyncio.run(scenario())
        assert signal.getsignal(signal.SIGTERM).__name__ == "handle"  # type: ignore[union-attr]


def test_no_delay_hands_on_at_once() -> None:
    with server_handler() as handed:

        async def scenario() -> None:
            drained: list[bool] = []
            drain_on_sigterm(lambda: drained.append(True), delay=0)
            os.kill(os.getpid(), signal.SIGTERM)
            await until(lambda: bool(handed))
            assert (drained, handed) == ([True], [signal.SIGTERM])

        asyncio.run(scenario())


def test_nothing_to_wrap_off_the_main_thread_or_without_a_handler() -> None:
    results: list[object] = []

    async def scenario() -> None:
        restore = drain_on_sigterm(lambda: None, delay=1)
        results.append(signal.getsignal(signal.SIGTERM))
        restore()

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=asyncio.run, args=(scenario(),))
    thread.start()
    thread.join()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert results == [before, signal.SIG_DFL]


def test_readiness_turns_false_while_draining(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    client.app.state.draining = True  # type: ignore[attr-defined]
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["code"] == "model_not_ready"
    assert response.json()["detail"] == "the server is shutting down; send requests elsewhere"
    # Work is still served while draining, and each answer asks the client to reconnect elsewhere.
    predict = client.post(
        "/v1/models/digits:predict",
        content=(DATA_DIR / "3_64px.jpg").read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert predict.status_code == 200
    assert predict.headers["connection"] == "close"


@dataclass
class Outcome:
    """One client request: when it ran and how it ended."""

    started: float
    ended: float
    status: int | None
    code: str | None
    error: str | None


@pytest.mark.integration
@pytest.mark.parametrize("workers", ["1", "2"])
def test_no_accepted_request_is_lost_on_sigterm_under_load(workers: str, tmp_path: Path) -> None:
    images = [
        ("image", (path.name, path.read_bytes(), "image/jpeg"))
        for path in sorted(DATA_DIR.glob("*_64px.jpg"))
    ]
    with (tmp_path / "server.log").open("wb") as log:
        server = start_server(
            "--workers",
            workers,
            "--no-access-log",
            env={"DIGITSERVE_SHUTDOWN_DELAY_SECONDS": "3"},
            output=log,
        )
        outcomes: list[Outcome] = []
        lock = threading.Lock()
        stop = threading.Event()
        readiness: list[int] = []

        def client() -> None:
            # Like a load balancer's traffic: sent until readiness is seen to fail.
            while not stop.is_set():
                started = time.monotonic()
                status = code = error = None
                try:
                    response = requests.post(
                        f"{server.url}/v1/models/digits:predict", files=images, timeout=60
                    )
                    status = response.status_code
                    if status == 200:
                        assert len(response.json()["predictions"]) == len(images)
                    else:
                        code = response.json()["code"]
                except requests.RequestException as exc:
                    error = repr(exc)
                with lock:
                    outcomes.append(Outcome(started, time.monotonic(), status, code, error))

        def balancer() -> None:
            # The load balancer's readiness probe: traffic stops a second after the first
            # failure (probe threshold and endpoint propagation), well within the drain delay.
            failed_at = None
            while not stop.is_set():
                try:
                    status = requests.get(f"{server.url}/readyz", timeout=10).status_code
                except requests.RequestException:
                    status = 0
                readiness.append(status)
                if status != 200 and failed_at is None:
                    failed_at = time.monotonic()
                if failed_at is not None and time.monotonic() - failed_at > 1:
                    stop.set()
                time.sleep(0.05)

        threads = [threading.Thread(target=client) for _ in range(4)]
        threads.append(threading.Thread(target=balancer))
        for thread in threads:
            thread.start()
        try:
            while len(outcomes) < 8:  # under load
                time.sleep(0.05)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            for thread in threads:
                thread.join(timeout=120)
            exit_status = server.process.wait(timeout=120)
        finally:
            stop.set()
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGKILL)
            if server.process.stdout:
                server.process.stdout.close()

    assert exit_status == 0
    assert readiness[-1] == 503, "readiness must answer 503 while the listener is still open"
    failures = [o for o in outcomes if o.error or o.status not in (200, 503)]
    assert failures == []
    assert {o.code for o in outcomes if o.status == 503} <= {"model_not_ready", "overloaded"}
    in_flight_at_signal = [o for o in outcomes if o.started < signalled < o.ended]
    assert in_flight_at_signal, "SIGTERM should have arrived mid-request"
    assert all(o.status == 200 for o in in_flight_at_signal)
    assert any(o.started > signalled and o.status == 200 for o in outcomes), (
        "requests arriving during the drain are still served"
    )
