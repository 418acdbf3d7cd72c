"""Ray Serve: the same app on a local Ray with 2 replicas, in a network namespace of its own.

Ray binds ports on every interface, so the scenario runs under `unshare -n` (root, or a kernel
that allows user namespaces) with only a loopback interface, and is driven as a module:
`python -m tests.test_ray_app` prints one RESULT line that the test reads.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest
import requests

from tests.conftest import DATA_DIR, MODEL_PATH, ROOT

pytestmark = pytest.mark.ray

RESULT_PREFIX = "RESULT "
PORT = 8000


def test_two_replicas_on_local_ray_answer_with_correct_labels() -> None:
    command = 'ip link set lo up && exec "$0" -m tests.test_ray_app'
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", command, sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    output = result.stdout[-3000:] + result.stderr[-5000:]
    assert result.returncode == 0, output
    assert lines, output
    report = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    assert report["ready"] == 200
    assert len(report["replicas"]) == 2, report["replicas"]
    assert all(count > 0 for count in report["replicas"].values())
    assert report["wrong"] == []
    assert report["answered"] >= 30
    assert report["metadata"]["name"] == "digits"
    assert report["error"]["code"] == "invalid_image"
    assert report["error"]["status"] == 400


def scenario() -> dict[str, Any]:
    """Start Ray and Serve, deploy 2 replicas, send the example images, shut everything down."""
    import ray
    from ray import serve

    from digitserve.ray_app import REPLICA_HEADER, deployment
    from digitserve.settings import Settings

    temp_dir = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(deployment(Settings(model_path=MODEL_PATH), replicas=2), route_prefix="/")
        url = f"http://127.0.0.1:{PORT}"
        with (DATA_DIR / "labels.csv").open() as handle:
            examples = [
                (DATA_DIR / row["file"], int(row["label"])) for row in csv.DictReader(handle)
            ]
        replicas: dict[str, int] = {}
        wrong: list[str] = []
        answered = 0
        deadline = time.monotonic() + 120
        while (answered < len(examples) or len(replicas) < 2) and time.monotonic() < deadline:
            path, label = examples[answered % len(examples)]
            response = requests.post(
                f"{url}/v1/models/digits:predict",
                data=path.read_bytes(),
                headers={"Content-Type": "image/jpeg"},
                timeout=30,
            )
            answered += 1
            replica = response.headers[REPLICA_HEADER.decode()]
            replicas[replica] = replicas.get(replica, 0) + 1
            if response.status_code != 200 or response.json()["predictions"][0]["label"] != label:
                wrong.append(f"{path.name}: {response.status_code} {response.text[:200]}")
        error = requests.post(
            f"{url}/v1/models/digits:predict",
            data=b"junk",
            headers={"Content-Type": "image/jpeg"},
            timeout=30,
        ).json()
        return {
            "ready": requests.get(f"{url}/readyz", timeout=30).status_code,
            "replicas": replicas,
            "wrong": wrong,
            "answered": answered,
            "metadata": requests.get(f"{url}/v1/models/digits", timeout=30).json(),
            "error": error,
        }
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    print(RESULT_PREFIX + json.dumps(scenario()), flush=True)
