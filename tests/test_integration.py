"""The real server as a process on a real socket: examples, held-out accuracy, limits, SIGTERM."""

import base64
import csv
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from digitserve.classifier import Classifier
from digitserve.dataplane import DataPlane
from digitserve.evaluation import evaluate, local_reader, read_samples, summarise
from digitserve.training import Split
from tests.conftest import DATA_DIR, Renderer
from tests.live import LiveServer, free_port, start_server, stop_server
from tests.test_evaluation import parse_groups

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One real server for the module."""
    server = start_server()
    yield server
    assert stop_server(server) == 0


def test_every_example_image_gets_its_label(live: LiveServer) -> None:
    with (DATA_DIR / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 20
    for row in rows:
        response = requests.post(
            f"{live.url}/v1/models/digits:predict",
            data=(DATA_DIR / row["file"]).read_bytes(),
            headers={"Content-Type": "image/jpeg"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == int(row["label"]), row["file"]


def test_held_out_digits_as_jpegs_agree_with_raw_vectors(
    live: LiveServer, split: Split, classifier: Classifier, render: Renderer
) -> None:
    rows = split.x_test.astype(np.int64)
    expected = classifier.estimator.predict(rows.astype(np.float64))
    answers: list[int] = []
    for start in range(0, len(rows), 64):
        batch = rows[start : start + 64]
        files = [("image", (f"{i}.jpg", render(row), "image/jpeg")) for i, row in enumerate(batch)]
        response = requests.post(f"{live.url}/v1/models/digits:predict", files=files, timeout=30)
        assert response.status_code == 200, response.text
        answers.extend(p["label"] for p in response.json()["predictions"])
    agreement = float(np.mean(np.asarray(answers) == expected))
    assert len(answers) == len(rows) == 899
    assert agreement >= 0.99


def predict_together(server: LiveServer, bodies: list[bytes]) -> list[object]:
    """Send every request but its last byte, then all the last bytes at once, and read answers.

    A request is admitted (and counts for batching) once its body is complete: sent like this,
    the bodies complete within microseconds of each other, so the requests meet in the worker.
    """
    port = int(server.url.rsplit(":", 1)[1])
    sockets = []
    for body in bodies:
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (
            "POST /v1/models/digits:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        connection.sendall(head + body[:-1])
        sockets.append(connection)
    time.sleep(0.2)  # every head and all but one byte of every body are in the server
    for connection, body in zip(sockets, bodies, strict=True):
        connection.sendall(body[-1:])
    answers = []
    for connection in sockets:
        with connection:
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), data[:300]
        answers.append(json.loads(payload)["predictions"])
    return answers


def test_concurrent_requests_share_model_calls_and_get_the_answers_made_alone(
    split: Split, render: Renderer
) -> None:
    # A batch waits 200 ms for others here, so requests sent together surely meet; 12 requests
    # are fewer than the worker batches for by default (16).
    server = start_server(
        env={"DIGITSERVE_BATCH_WAIT_MS": "200", "DIGITSERVE_BATCH_MIN_REQUESTS": "2"}
    )
    try:
        bodies = [render(row) for row in split.x_test[:12].astype(np.int64)]

        def predict(body: bytes) -> object:
            response = requests.post(
                f"{server.url}/v1/models/digits:predict",
                data=body,
                headers={"Content-Type": "image/jpeg"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            return response.json()["predictions"]

        alone = [predict(body) for body in bodies]  # one at a time: each alone, no wait
        together = predict_together(server, bodies)
        assert together == alone  # every score, to the last digit
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
        }
        assert samples["digitserve_batch_size_sum"] == 2 * len(bodies)
        assert samples["digitserve_batch_size_count"] < 2 * len(bodies)  # some call took several
        # The 8x8 images were read together too (`ImageReadings`), each as alone (compared above).
        assert samples["digitserve_read_batch_size_sum"] == 2 * len(bodies)
        assert samples["digitserve_read_batch_size_count"] < 2 * len(bodies)
    finally:
        assert stop_server(server) == 0


def test_json_base64_over_the_wire(live: LiveServer, render: Renderer, seven: np.ndarray) -> None:
    payload = {"instances": [{"b64": base64.b64encode(render(seven, 256)).decode()}]}
    response = requests.post(f"{live.url}/v1/models/digits:predict", json=payload, timeout=10)
    assert response.json()["predictions"][0]["label"] == 7


def test_oversized_body_is_refused_before_it_is_sent(live: LiveServer) -> None:
    with socket.create_connection(
        ("127.0.0.1", int(live.url.rsplit(":", 1)[1])), timeout=10
    ) as conn:
        conn.sendall(
            b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 40000000\r\n\r\n"
        )
        reply = io.BytesIO()
        while b"\r\n\r\n" not in reply.getvalue():
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply.write(chunk)
    head = reply.getvalue().split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 413 Request Entity Too Large"
    assert requests.get(f"{live.url}/readyz", timeout=5).status_code == 200


def test_a_100_continue_goes_out_at_once_and_the_answer_follows(
    live: LiveServer, render: Renderer, seven: np.ndarray
) -> None:
    body = render(seven)
    with socket.create_connection(
        ("127.0.0.1", int(live.url.rsplit(":", 1)[1])), timeout=10
    ) as conn:
        conn.sendall(
            b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        interim = conn.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(body)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, answer = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 200 OK"
    assert json.loads(answer)["predictions"][0]["label"] == 7


def predict_often(url: str, times: int) -> None:
    """Fresh connections, so that the arbiter's workers take turns."""
    for _ in range(times):
        response = requests.post(
            f"{url}/v1/models/digits:predict",
            json={"instances": [[0, 0, 10, 16, 16, 10, 0, 0] * 8]},
            headers={"Connection": "close"},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] in range(10)


def test_two_workers_share_the_model_are_replaced_and_stop_cleanly() -> None:
    server = start_server("--workers", "2")
    try:
        predict_often(server.url, 20)
        arbiter = psutil.Process(server.process.pid)
        # gunicorn forks its workers up to 0.1 s apart, and the first one answers /readyz.
        deadline = time.monotonic() + 30
        while len(arbiter.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        predict_often(server.url, 20)
        workers = arbiter.children()
        assert len(workers) == 2
        for worker in workers:
            # Forked after the imports and the model: most of a worker's memory is shared.
            assert worker.memory_full_info().uss < arbiter.memory_info().rss / 2
        workers[0].kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            replacements = [w for w in arbiter.children() if w.pid not in {x.pid for x in workers}]
            if replacements:
                break
            time.sleep(0.1)
        assert replacements, "gunicorn should have forked a new worker"
        predict_often(server.url, 10)
    finally:
        assert stop_server(server) == 0


def test_evaluate_through_the_running_service_matches_the_local_run(
    live: LiveServer, small_evalset: Path, dataplane: DataPlane
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digitserve", "evaluate", str(small_evalset), "--url", live.url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.endswith(f"on {small_evalset} via {live.url}")
    local = summarise(
        evaluate(
            read_samples(small_evalset),
            local_reader(dataplane, dataplane.default_model(), "digitserve"),
        )
    )
    assert first.startswith(
        f"accuracy {local.accuracy:.4f} ({local.correct}/{len(local.outcomes)})"
    )
    remote_groups = parse_groups(result.stdout)
    assert remote_groups == {g.group: (g.images, round(g.accuracy, 4)) for g in local.groups}
    assert result.stderr == ""  # no progress bar into a pipe


def test_evaluate_reports_an_unreachable_service(small_evalset: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitserve",
            "evaluate",
            str(small_evalset),
            "--url",
            f"http://127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("digitserve: cannot reach http://127.0.0.1:")
    assert line.endswith("Connection refused")


def test_evaluate_through_the_service_counts_refusals(live: LiveServer, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "4_good.jpg").write_bytes((DATA_DIR / "4_64px.jpg").read_bytes())
    Image.new("L", (64, 64), 255).save(tmp_path / "5_blank.png")
    result = subprocess.run(
        [sys.executable, "-m", "digitserve", "evaluate", str(tmp_path), "--url", live.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"accuracy 0.5000 (1/2) on {tmp_path} via {live.url}"
    assert any(
        line.startswith("  refused   5_blank.png (true 5): blank_image: the image has no ink")
        for line in lines
    )
