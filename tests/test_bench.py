"""The benchmark harness keeps working: its smoke mode runs all four servers and checks answers.

It asserts the harness's output, never the speed it measured.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_smoke_run_measures_every_server_with_correct_answers(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "the harness needs wrk: make sysdeps installs it"
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads((tmp_path / "smoke.json").read_text())
    servers = {result["server"] for result in report["results"]}
    assert servers == {"digitserve", "digitserve-grpc", "flask-naive", "http-floor", "compute-only"}
    # The gRPC cell sends the pixels body's tensor, beside the same body over REST.
    assert {r["body"] for r in report["results"] if r["server"] == "digitserve-grpc"} == {
        "oip-pixels"
    }
    assert ("digitserve", "oip-pixels") in {(r["server"], r["body"]) for r in report["results"]}
    jpeg_only = {"flask-naive", "compute-only"}  # they take raw JPEGs, not multipart or OIP
    assert {r["body"] for r in report["results"] if r["server"] in jpeg_only} == {"jpeg-8px"}
    assert report["rounds"] == 2  # each cell taken twice by every server in turn, then merged
    cells = [(r["server"], r["body"], r["concurrency"]) for r in report["results"]]
    assert len(cells) == len(set(cells))
    for result in report["results"]:
        assert result["requests"] > 0, result
        assert result["seconds"] >= 2 * 0.9, result  # two rounds of at least a second
        assert result["errors"] == 0, result
        assert result["labels_ok"], result
        assert result["cpu_us_per_request"] > 0
        if result["server"].startswith("digitserve"):  # from its metrics: requests share calls
            assert 0 < result["model_calls"] <= result["model_rows"], result
        else:
            assert result["model_calls"] is None, result
    memory = report["memory"]  # digitserve --workers 2, forked: both workers' pages are counted
    assert memory["workers"] == 2
    assert len(memory["worker_uss_mb"]) == 2
    assert 0 < memory["per_worker_mb"] < memory["total_mb"]
    assert (tmp_path / "smoke.md").read_text().startswith("Run ")
    assert any("12 MP JPEG" in line for line in report["targets"])
    assert any("compute-only server" in line for line in report["targets"])
    assert any(line.startswith("pixels [1, 64], c=8: gRPC ") for line in report["targets"])
    # The pipeline is timed before and after the cells; the budget takes each timing's best.
    before, after = report["in_process_runs_us"]
    assert report["in_process_us"] == {key: min(before[key], after[key]) for key in before}
    assert report["in_process_us"]["jpeg-8px_pipeline_us"] > 0
