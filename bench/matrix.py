"""The model matrix: each model of bench/models.py served three ways on the same pickle, in turn.

For one model at a time, three servers load the very same file, each pinned to the server core:
digitserve (`digitserve serve --model <pickle>`, with the runtime it picks at load, ONNX Runtime
included), the tutorial's Flask app under gunicorn, and compute-only (digitserve's image reading and
the same runtime behind a bare ASGI app). They take the 8x8 JPEG in turn, in short rounds, as the
body matrix's servers do. A model may read the body as another digit than the bundled one does:
each server's label is checked against the model's own `predict` on digitserve's 8x8 grid of the
body (which the tutorial's formula must reproduce: checked once per run). Then digitserve's memory
with two forked workers, and one row's cost through the same runtime (bench/row_cost.py).
"""

import json
import os
import pickle
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.baselines.flask_app import features as tutorial_features
from bench.bodies import Body, write_bodies
from bench.measure import MEMORY_WORKERS, Result, measure, merged, worker_memory
from bench.models import build_models
from bench.servers import (
    ROOT,
    SERVER_CORE,
    compute_only,
    digitserve,
    flask_naive,
    start,
    stop,
    wait_until_idle,
)
from digitserve.preprocessing import image_to_features

BODY = "jpeg-8px"
"""The matrix's one body: the cheapest image, where the model's own cost shows most."""

START_SECONDS = 180.0
"""A first start exports the model to ONNX in a child process and checks the export (~60 s at
worst on a loaded core): much longer than a plain start may take."""

MAX_PIXELS = 40_000_000

TRAINED_ON = (
    "the training half of load_digits (stratified train_test_split, test_size=0.5, "
    "random_state=0), as the bundled model; the body is from the held-out half"
)


@dataclass(frozen=True)
class Plan:
    """What the matrix measures: which models, at which concurrency, for how long."""

    models: tuple[str, ...]
    concurrency: int
    seconds: float
    """Per model and server, split into `rounds` rounds."""
    rounds: int
    workers: int
    """digitserve's workers in the cells (memory is measured with `MEMORY_WORKERS` apart)."""
    memory_models: tuple[str, ...]
    """The models whose `MEMORY_WORKERS`-worker memory is measured (it restarts digitserve)."""
    memory_repeat: int


def run_matrix(plan: Plan, body: Body, scratch: Path) -> dict[str, Any]:
    """Build the models into `scratch` and measure each in turn; the report's `matrix` section."""
    cache = scratch / "onnx"  # empty: each model's first start compiles it
    paths = build_models(scratch / "models", plan.models)
    body_file = write_bodies({body.name: body}, scratch / "matrix-body")[body.name]
    grid = image_to_features(body.data, max_pixels=MAX_PIXELS).reshape(1, -1)
    tutorial_grid = tutorial_features(body.data)
    rows = [
        model_row(name, path, body, body_file, grid, plan, cache) for name, path in paths.items()
    ]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "body": body.name,
        "body_label": body.labels[0],
        "concurrency": plan.concurrency,
        "seconds": plan.seconds,
        "rounds": plan.rounds,
        "workers": plan.workers,
        "memory_workers": MEMORY_WORKERS,
        "trained_on": TRAINED_ON,
        # The tutorial's formula and digitserve's preprocessing read the 8x8 JPEG alike, so a label
        # check against the model's own predict on digitserve's grid holds for Flask too.
        "flask_grid_equal": bool(np.array_equal(tutorial_grid, grid)),
        "grid": grid.reshape(-1).tolist(),
        "models": rows,
    }


def model_row(
    name: str, path: Path, body: Body, body_file: Path, grid: np.ndarray, plan: Plan, cache: Path
) -> dict[str, Any]:
    """One model: its three servers' cells, digitserve's runtime and memory, one row's cost."""
    with path.open("rb") as handle:
        estimator = pickle.load(handle)
    label = estimator.predict(grid.astype(np.float64)).tolist()[0]
    mine = replace(body, labels=(label,))
    takers = [
        digitserve(plan.workers, cache, path, name),
        flask_naive(path),
        compute_only(cache, path),
    ]
    per_round = max(1.0, plan.seconds / max(plan.rounds, 1))
    try:
        for server in takers:  # digitserve first: it compiles, the others find the export cached
            start(server, START_SECONDS)
        for server in takers:
            wait_until_idle(server)
        reply = requests.get(f"http://127.0.0.1:{takers[0].port}/v1/models/{name}", timeout=10)
        reply.raise_for_status()
        card = reply.json()
        rounds: dict[str, list[Result]] = {server.name: [] for server in takers}
        for _ in range(plan.rounds):
            for server in takers:
                rounds[server.name].append(
                    measure(server, mine, body_file, plan.concurrency, per_round)
                )
    finally:
        for server in takers:
            stop(server)
    results = {server: asdict(merged(cells)) for server, cells in rounds.items()}
    memory = None
    if name in plan.memory_models:
        memory = worker_memory(
            digitserve(MEMORY_WORKERS, cache, path, name),
            MEMORY_WORKERS,
            {body.name: mine},
            plan.memory_repeat,
            START_SECONDS,
        )
    runtime, row_us = one_row(path, name, grid, cache)
    ours, flask, bare = (results[s] for s in ("digitserve", "flask-naive", "compute-only"))
    for server, result in results.items():
        print(
            f"matrix {name:14} {server:12} {result['rps']:8.0f} req/s p50 {result['p50_ms']:7.2f} ms "
            f"p99 {result['p99_ms']:7.2f} ms cpu {result['cpu_us_per_request']:6.0f} µs "
            f"errors {result['errors']} labels {'ok' if result['labels_ok'] else 'WRONG'}",
            file=sys.stderr,
        )
    return {
        "model": name,
        "estimator": _describe(estimator),
        "runtime": card.get("runtime"),
        "runtime_check": card.get("runtime_check"),
        "in_process_runtime": runtime,
        "in_process_us_per_row": row_us,
        "label": label,
        "labels_ok": all(r["labels_ok"] for r in results.values()),
        "errors": sum(r["errors"] for r in results.values()),
        "rps_vs_flask": ours["rps"] / flask["rps"] if flask["rps"] else None,
        "cpu_vs_compute_only": ours["cpu_us_per_request"] / bare["cpu_us_per_request"]
        if bare["cpu_us_per_request"]
        else None,
        "p99_over_p50": ours["p99_ms"] / max(ours["p50_ms"], 1e-9),
        "rss_mb": ours["rss_mb"],
        "memory": memory,
        "results": results,
    }


def _describe(estimator: Any) -> str:
    """The estimator as scikit-learn prints it, on one line."""
    return " ".join(repr(estimator).split())


def one_row(path: Path, name: str, grid: np.ndarray, cache: Path) -> tuple[str, float]:
    """The runtime `load_model` picks (with the servers' ONNX cache) and one row's best predict
    time through it, in µs: bench/row_cost.py, started on the servers' core as they are."""
    command = [
        "taskset",
        "-c",
        SERVER_CORE,
        sys.executable,
        "-m",
        "bench.row_cost",
        str(path),
        name,
        "--grid",
        ",".join(str(v) for v in grid.reshape(-1).tolist()),
    ]
    output = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "DIGITSERVE_ONNX_CACHE": str(cache)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"^ROWJSON (.*)$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"row_cost printed no summary: {output}")
    summary = json.loads(match.group(1))
    return str(summary["runtime"]), float(summary["us_per_row"])


def markdown(matrix: dict[str, Any]) -> list[str]:
    """The matrix's section of latest.md: one row per model, then how each runtime was chosen."""
    workers = _count(matrix["workers"], "worker")
    lines = [
        "### Model matrix",
        "",
        f"Run {matrix['date']} on {matrix.get('machine', 'this machine')}: each model served by "
        f"digitserve (`serve --model`, {workers}), flask-naive and compute-only on the same "
        f"pickle, pinned to one core, wrk on the other; body `{matrix['body']}` at "
        f"c={matrix['concurrency']}, {matrix['seconds']} s per model and server in "
        f"{_count(matrix['rounds'], 'round')} taken in turn (req/s and CPU over all rounds, median "
        f"p50, worst p99). Models trained on {matrix['trained_on']}. "
        "Labels are checked against each model's own `predict` on the body's 8x8 grid; the "
        "tutorial's formula gives "
        + ("the same grid as digitserve." if matrix["flask_grid_equal"] else "ANOTHER grid."),
        "",
        f"| model | runtime | digitserve req/s | flask req/s | ratio | CPU µs/req ds / flask / "
        f"compute-only | ds ÷ compute-only | p50/p99 ms ds | p99/p50 | RSS MB, {workers} "
        f"| MB per worker at {matrix['memory_workers']} | in-process µs/row | labels |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in matrix["models"]:
        ours, flask, bare = (
            row["results"][s] for s in ("digitserve", "flask-naive", "compute-only")
        )
        memory = row["memory"]
        labels = "ok" if row["labels_ok"] else "WRONG"
        if row["label"] != matrix["body_label"]:
            labels += f" (reads {row['label']})"
        lines.append(
            f"| {row['model']} | {row['runtime']} | {ours['rps']:.0f} | {flask['rps']:.0f} | "
            f"{_times(row['rps_vs_flask'], 1)} | {ours['cpu_us_per_request']:.0f} / "
            f"{flask['cpu_us_per_request']:.0f} / {bare['cpu_us_per_request']:.0f} | "
            f"{_times(row['cpu_vs_compute_only'], 2)} | {ours['p50_ms']:.1f} / {ours['p99_ms']:.1f} | "
            f"{row['p99_over_p50']:.1f} | {row['rss_mb']:.0f} | "
            f"{_per_worker(memory)} | "
            f"{row['in_process_us_per_row']:.0f} | {labels} |"
        )
    lines += ["", "How digitserve chose each runtime (its model card's `runtime_check`):", ""]
    for row in matrix["models"]:
        check = row["runtime_check"] or "a fast path of its own, no ONNX export tried"
        lines.append(f"- {row['model']} ({row['runtime']}): {check}")
    return lines


def _per_worker(memory: dict[str, Any] | None) -> str:
    """MB per worker, flagged when the workers had to be killed to stop."""
    if memory is None:
        return "-"
    hung = "" if memory["stopped_on_sigterm"] else " (killed: hung on SIGTERM)"
    return f"{memory['per_worker_mb']:.0f}{hung}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _times(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def targets(matrix: dict[str, Any]) -> list[str]:
    """The issue's targets for every model, from the matrix's numbers."""
    lines = []
    for row in matrix["models"]:
        memory = row["memory"]
        at_two = (
            ""
            if memory is None
            else f"; {memory['per_worker_mb']:.0f} MB per worker with {memory['workers']} (target <= 100)"
        )
        if memory is not None and not memory["stopped_on_sigterm"]:
            at_two += f", but its workers hung on SIGTERM and were killed after {memory['stop_seconds']:.0f} s"
        lines.append(
            f"model {row['model']} ({row['runtime']}): {_times(row['rps_vs_flask'], 1)} flask req/s "
            f"(target >= 3x); p99/p50 {row['p99_over_p50']:.1f} (target <= 3); service layer "
            f"{_times(row['cpu_vs_compute_only'], 2)} compute-only CPU (target <= 1.3); "
            f"RSS {row['rss_mb']:.0f} MB with {_count(matrix['workers'], 'worker')} (target <= 150){at_two}"
        )
    return lines
