"""Prometheus metrics: names, labels, isolation between apps, and sums across real workers."""

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import requests
import sklearn
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from digitserve.app import create_app
from digitserve.classifier import Classifier
from digitserve.settings import Settings
from tests.conftest import DATA_DIR
from tests.live import LiveServer, start_server, stop_server

PREDICT_ROUTE = "/v1/models/{model_name}:predict"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse exposition text into {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, /, **labels: str
) -> float:
    """One sample's value, 0 when absent."""
    return parsed.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_predictions_errors_and_stages(client: TestClient) -> None:
    seven = (DATA_DIR / "7_64px.jpg").read_bytes()
    for _ in range(3):
        response = client.post(
            "/v1/models/digits:predict", content=seven, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code == 200
    two = client.post(
        "/v1/models/digits:predict",
        files=[
            ("image", ("a.jpg", seven, "image/jpeg")),
            ("image", ("b.jpg", seven, "image/jpeg")),
        ],
    )
    assert two.status_code == 200
    bad = client.post(
        "/v1/models/digits:predict", content=b"junk", headers={"Content-Type": "image/jpeg"}
    )
    assert bad.status_code == 400
    assert client.get("/no/such/path/abc123").status_code == 404

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert "/no/such/path" not in response.text
    parsed = samples(response.text)
    route = {"protocol": "http", "route": PREDICT_ROUTE, "method": "POST"}
    assert value(parsed, "digitserve_requests_total", status="200", **route) == 4
    assert value(parsed, "digitserve_requests_total", status="400", **route) == 1
    assert (
        value(
            parsed,
            "digitserve_requests_total",
            protocol="http",
            route="unmatched",
            method="GET",
            status="404",
        )
        == 1
    )
    assert (
        value(
            parsed,
            "digitserve_request_duration_seconds_count",
            protocol="http",
            route=PREDICT_ROUTE,
        )
        == 5
    )
    assert (
        value(parsed, "digitserve_predictions_total", model="digits", version="1", label="7") == 5
    )
    assert value(parsed, "digitserve_errors_total", code="invalid_image") == 1
    assert value(parsed, "digitserve_errors_total", code="not_found") == 1
    assert value(parsed, "digitserve_stage_duration_seconds_count", stage="decode") == 5
    assert value(parsed, "digitserve_stage_duration_seconds_count", stage="preprocess") == 5
    assert value(parsed, "digitserve_stage_duration_seconds_count", stage="predict") == 4
    assert value(parsed, "digitserve_batch_size_sum") == 5
    assert value(parsed, "digitserve_batch_size_count") == 4
    assert value(parsed, "digitserve_image_size_bytes_count") == 6
    assert value(parsed, "digitserve_image_size_bytes_sum") == 5 * len(seven) + 4
    # The scrape itself is in flight while it renders.
    assert value(parsed, "digitserve_requests_in_flight") == 1


def test_model_info_names_version_sha256_and_sklearn(
    client: TestClient, classifier: Classifier
) -> None:
    parsed = samples(client.get("/metrics").text)
    labels = {
        "name": "digits",
        "version": "1",
        "sha256": classifier.sha256,
        "sklearn_version": sklearn.__version__,
    }
    assert value(parsed, "digitserve_model_info", **labels) == 1


def test_every_metric_follows_prometheus_naming(client: TestClient) -> None:
    names = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
    assert names == {
        "digitserve_requests",
        "digitserve_request_duration_seconds",
        "digitserve_requests_in_flight",
        "digitserve_stage_duration_seconds",
        "digitserve_predictions",
        "digitserve_errors",
        "digitserve_image_size_bytes",
        "digitserve_batch_size",
        "digitserve_read_batch_size",
        "digitserve_model_info",
    }
    text = client.get("/metrics").text
    assert "digitserve_requests_total{" in text  # the parser drops counters' _total; text has it


def test_each_app_owns_its_registry(settings: Settings, classifier: Classifier) -> None:
    with (
        TestClient(create_app(settings, classifier)) as first,
        TestClient(create_app(settings, classifier)) as second,
    ):
        first.get("/healthz")
        first.get("/healthz")
        count_first = value(
            samples(first.get("/metrics").text),
            "digitserve_requests_total",
            protocol="http",
            route="/healthz",
            method="GET",
            status="200",
        )
        count_second = value(
            samples(second.get("/metrics").text),
            "digitserve_requests_total",
            protocol="http",
            route="/healthz",
            method="GET",
            status="200",
        )
    assert (count_first, count_second) == (2, 0)


@pytest.mark.integration
def test_two_workers_add_up_in_one_scrape(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    seven = (DATA_DIR / "7_64px.jpg").read_bytes()
    with log_path.open("wb") as log:
        server = start_server("--workers", "2", output=log)
        try:
            sent = 0
            pids: set[int] = set()
            lock = threading.Lock()

            def send(count: int) -> None:
                nonlocal sent
                for _ in range(count):
                    response = requests.post(
                        f"{server.url}/v1/models/digits:predict",
                        data=seven,
                        headers={"Content-Type": "image/jpeg", "Connection": "close"},
                        timeout=30,
                    )
                    assert response.status_code == 200
                    with lock:
                        sent += 1

            # Concurrent clients keep one worker busy so the other accepts too; stop once the
            # access log shows both worker pids (bounded).
            for _ in range(20):
                threads = [threading.Thread(target=send, args=(5,)) for _ in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                pids = _access_pids(log_path)
                if len(pids) == 2:
                    break
            assert len(pids) == 2, "both workers should have answered"
            parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # a worker counts just after its response goes out
                parsed = samples(requests.get(f"{server.url}/metrics", timeout=10).text)
                if (
                    value(
                        parsed,
                        "digitserve_predictions_total",
                        model="digits",
                        version="1",
                        label="7",
                    )
                    >= sent
                ):
                    break
                time.sleep(0.1)
            assert (
                value(
                    parsed, "digitserve_predictions_total", model="digits", version="1", label="7"
                )
                == sent
            )
            assert (
                value(
                    parsed,
                    "digitserve_requests_total",
                    protocol="http",
                    route=PREDICT_ROUTE,
                    method="POST",
                    status="200",
                )
                == sent
            )
            assert value(parsed, "digitserve_image_size_bytes_count") == sent
            model_info = [key for key in parsed if key[0] == "digitserve_model_info"]
            assert len(model_info) == 1  # one series however many workers, no pid label
        finally:
            assert stop_server(server) == 0
    assert set(_access_pids(log_path)) == pids


IN_FLIGHT = "digitserve_requests_in_flight"


def in_flight(server: LiveServer) -> float:
    """The in-flight gauge as a scrape reports it (the scrape itself is one of them)."""
    return value(samples(requests.get(f"{server.url}/metrics", timeout=10).text), IN_FLIGHT)


def wait_for(condition: Callable[[], bool], seconds: float = 15) -> bool:
    """Poll until the condition holds or the time is up; say whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.integration
def test_a_killed_worker_s_request_stops_counting_as_in_flight(tmp_path: Path) -> None:
    with (tmp_path / "server.log").open("wb") as log:
        server = start_server("--workers", "2", output=log)
        try:
            arbiter = psutil.Process(server.process.pid)
            assert wait_for(lambda: len(arbiter.children()) == 2)
            assert in_flight(server) == 1  # the scrape
            # A request whose body never finishes: the worker holds it, in flight.
            host, port = server.url.removeprefix("http://").split(":")
            held = socket.create_connection((host, int(port)), timeout=10)
            try:
                held.sendall(
                    b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\nxx"
                )
                assert wait_for(lambda: in_flight(server) == 2)
                client_port = held.getsockname()[1]
                [holder] = [
                    worker
                    for worker in arbiter.children()
                    if any(
                        connection.raddr and connection.raddr.port == client_port
                        for connection in worker.net_connections("tcp")
                    )
                ]
                os.kill(holder.pid, signal.SIGKILL)
                assert wait_for(
                    lambda: (
                        holder.pid not in {worker.pid for worker in arbiter.children()}
                        and len(arbiter.children()) == 2
                    )
                )
                assert wait_for(lambda: in_flight(server) == 1), in_flight(server)
            finally:
                held.close()
        finally:
            assert stop_server(server) == 0


def _access_pids(log_path: Path) -> set[int]:
    """Worker pids that wrote an access line for a prediction."""
    pids = set()
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["logger"] == "digitserve.access" and record["route"] == PREDICT_ROUTE:
                pids.add(record["pid"])
    return pids
