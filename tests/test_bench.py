"""The benchmark harness keeps working: its smoke mode runs all four servers and checks answers,
then a small model matrix (two models, each served three ways on the same pickle).

It asserts the harness's output, never the speed it measured.
"""

import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from digitserve.classifier import PredictionPath
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_smoke_run_measures_every_server_with_correct_answers(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "the harness needs wrk: make sysdeps installs it"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    servers = {result["server"] for result in report["results"]}
    assert "stopped_on_sigterm" in report["memory"]
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
    matrix = report["matrix"]
    runtimes = set(typing.get_args(PredictionPath))
    assert [row["model"] for row in matrix["models"]] == ["svc-classic", "logreg"]
    # The tutorial's 8x8 grid of the 8x8 JPEG is digitserve's: one label check serves both.
    assert matrix["flask_grid_equal"]
    for row in matrix["models"]:
        assert set(row["results"]) == {"digitserve", "flask-naive", "compute-only"}, row
        for result in row["results"].values():
            assert result["requests"] > 0, result
            assert result["errors"] == 0, result
            assert result["labels_ok"], result
            assert result["concurrency"] == 8
        assert row["labels_ok"], row
        assert row["errors"] == 0, row
        assert row["runtime"] in runtimes, row  # from digitserve's model card
        assert row["in_process_runtime"] in runtimes, row
        for ratio in ("rps_vs_flask", "cpu_vs_compute_only", "p99_over_p50"):
            assert row[ratio] > 0, row
        assert row["rss_mb"] > 0, row
        assert row["in_process_us_per_row"] > 0, row
    svc, logreg = matrix["models"]
    # logreg has no fast path of its own: its start-up tries an ONNX export (into the run's own
    # cache) and says on the card what came of it.
    assert logreg["runtime_check"], logreg
    assert svc["memory"]["workers"] == 2
    assert len(svc["memory"]["worker_uss_mb"]) == 2
    assert 0 < svc["memory"]["per_worker_mb"] < svc["memory"]["total_mb"]
    assert logreg["memory"] is None  # the smoke run measures one model's two-worker memory
    text = (tmp_path / "smoke.md").read_text()
    assert "### Model matrix" in text
    assert "\n| svc-classic | " in text
    assert "\n| logreg | " in text
    for name in ("svc-classic", "logreg"):
        assert any(line.startswith(f"model {name} (") for line in report["targets"])
    assert not list(tmp_path.glob("20*.md"))  # a smoke run writes no dated log
