"""Run the benchmark: digitserve, a naive Flask app, the HTTP floor and the bare work, in one run.

Each server runs pinned to core 0 (`taskset`), wrk drives it from core 1. For every body and
concurrency it records req/s, latency percentiles, server CPU time per request (the whole process
tree), errors by status and resident memory, checks the answers' labels on a sample, and writes
JSON and a markdown table with ratios against the baselines measured in the same run. The body
`oip-pixels` is also sent to digitserve over gRPC (`digitserve-grpc`, driven by bench/grpc_load.py
from core 1), the same tensor as over REST, in the same rounds.

    python -m bench.run            # the full run (a few minutes)
    python -m bench.run --smoke    # a few seconds, as CI runs it
"""

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench.bodies import Body, make_bodies, write_bodies
from digitserve.classifier import load_classifier
from digitserve.preprocessing import image_to_features

ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = ROOT / "bench" / "wrk" / "post.lua"
SERVER_CORE = "0"
LOAD_CORE = "1"


@dataclass
class Server:
    """A server under test: how to start it and where it answers."""

    name: str
    command: list[str]
    path: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    grpc_port: int = 0
    """digitserve's gRPC port (`{grpc_port}` in its command)."""

    def url(self, body: Body) -> str:
        """Where this server takes the body: digitserve has a route per protocol."""
        path = body.path if body.path and self.name == "digitserve" else self.path
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Result:
    """One (server, body, concurrency) measurement."""

    server: str
    body: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int
    statuses: dict[str, int]
    rss_mb: float
    pss_mb: float
    labels_ok: bool
    model_calls: int | None = None
    """digitserve only: model calls made during the cell, and the feature rows they took."""
    model_rows: int | None = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


NAMES = ("digitserve", "flask-naive", "http-floor", "compute-only")

JPEG_ONLY = frozenset({"flask-naive", "compute-only"})
"""Servers that take only a raw JPEG body (no multipart, no Open Inference Protocol)."""


def servers(workers: int) -> list[Server]:
    python = sys.executable
    bindir = Path(python).parent
    return [
        Server(
            "digitserve",
            [
                str(bindir / "digitserve"),
                "serve",
                "--workers",
                str(workers),
                "--port",
                "{port}",
                "--grpc-port",
                "{grpc_port}",
            ],
            "/v1/models/digits:predict",
        ),
        Server(
            "flask-naive",
            [
                str(bindir / "gunicorn"),
                "--workers",
                "2",
                "--bind",
                "127.0.0.1:{port}",
                "--log-level",
                "warning",
                "bench.baselines.flask_app:app",
            ],
            "/predict",
        ),
        Server("http-floor", bare_uvicorn("bench.baselines.floor:app"), "/"),
        Server("compute-only", bare_uvicorn("bench.baselines.compute_only:app"), "/"),
    ]


def bare_uvicorn(app: str) -> list[str]:
    """A bare ASGI app under uvicorn's defaults (httptools, uvloop), without an access log."""
    uvicorn = str(Path(sys.executable).parent / "uvicorn")
    return [uvicorn, "--port", "{port}", "--log-level", "warning", "--no-access-log", app]


def start(server: Server) -> None:
    server.port = free_port()
    server.grpc_port = free_port()
    command = [
        "taskset",
        "-c",
        SERVER_CORE,
        *(part.format(port=server.port, grpc_port=server.grpc_port) for part in server.command),
    ]
    server.process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **server.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                time.sleep(0.5 if server.name != "digitserve" else 0)
                if server.name == "digitserve":
                    ready = requests.get(f"http://127.0.0.1:{server.port}/readyz", timeout=2)
                    if ready.status_code != 200:
                        raise OSError("not ready")
                return
        except (OSError, requests.RequestException):
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not start")


def wait_until_idle(server: Server, timeout: float = 120) -> None:
    """Wait until the server's whole process tree is idle: gunicorn's workers (and uvicorn's)
    import scikit-learn after the port opens, and would otherwise share the core with a
    measurement."""
    assert server.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(server.process.pid)
        time.sleep(0.5)
        if cpu_seconds(server.process.pid) - before < 0.01:
            return


def stop(server: Server) -> None:
    if server.process is not None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for process in tree(pid):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_mb(pid: int) -> float:
    return sum(p.memory_info().rss for p in tree(pid)) / 1e6


def pss_mb(pid: int) -> float:
    """The process tree's memory with shared pages counted once: forked workers share most."""
    return sum(p.memory_full_info().pss for p in tree(pid)) / 1e6


SETTLE_SECONDS = 120
"""How long a server may take to work off the queue a cell left behind (wrk stops sending, not the
server working: 64 queued 12-megapixel photos take seconds)."""


def labels_of(server: Server, body: Body) -> tuple[int, ...]:
    """The labels the server gives for this body, once it has worked off any earlier backlog.

    A 503 `overloaded` means the previous cell's queue is still being served: wait and retry.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        reply = requests.post(
            server.url(body),
            data=body.data,
            headers={"Content-Type": body.content_type},
            timeout=30,
        )
        if reply.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(float(reply.headers.get("Retry-After", "1")))
    if reply.status_code != 200:
        return ()
    document = reply.json()
    if "outputs" in document:
        [label] = [output for output in document["outputs"] if output["name"] == "label"]
        return tuple(label["data"])
    if "predictions" in document:
        return tuple(p["label"] for p in document["predictions"])
    return (document["label"],) if "label" in document else ()


def wrk(
    server: Server, body_file: Path, body: Body, concurrency: int, seconds: float
) -> dict[str, Any]:
    command = [
        "taskset",
        "-c",
        LOAD_CORE,
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        server.url(body),
    ]
    env = {**os.environ, "BODY_FILE": str(body_file), "BODY_TYPE": body.content_type}
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^WRKJSON (.*)$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk printed no summary: {output}")
    return json.loads(match.group(1))


def measure(
    server: Server, body: Body, body_file: Path, concurrency: int, seconds: float
) -> Result:
    assert server.process is not None
    labels_ok = labels_of(server, body) == body.labels if server.name != "http-floor" else True
    calls_before = model_calls(server)
    before = cpu_seconds(server.process.pid)
    summary = wrk(server, body_file, body, concurrency, seconds)
    used = cpu_seconds(server.process.pid) - before
    calls_after = model_calls(server)
    labels_ok = labels_ok and (
        server.name == "http-floor" or labels_of(server, body) == body.labels
    )
    count = max(summary["requests"], 1)
    statuses = {str(k): v for k, v in summary["statuses"].items()}
    errors = (
        summary["connect_errors"]
        + summary["read_errors"]
        + summary["write_errors"]
        + summary["timeouts"]
        + max(summary["status_errors"], sum(v for k, v in statuses.items() if k != "200"))
    )
    return Result(
        server=server.name,
        body=body.name,
        concurrency=concurrency,
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        rps=summary["requests"] / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        cpu_us_per_request=used / count * 1e6,
        errors=errors,
        statuses=statuses,
        rss_mb=rss_mb(server.process.pid),
        pss_mb=pss_mb(server.process.pid),
        labels_ok=labels_ok,
        model_calls=None if calls_after is None else calls_after[0] - calls_before[0],
        model_rows=None if calls_after is None else calls_after[1] - calls_before[1],
    )


GRPC = "digitserve-grpc"
"""The name of digitserve's gRPC cells in the results."""


def grpc_labels_of(server: Server, body: Body) -> tuple[int, ...]:
    """The labels digitserve gives for the body's pixels over gRPC (after any backlog)."""
    import grpc

    from bench.grpc_load import METHOD, labels_of, request_bytes

    assert body.pixels is not None
    deadline = time.monotonic() + SETTLE_SECONDS
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.unary_unary(METHOD)
        while True:
            try:
                return labels_of(call(request_bytes(list(body.pixels)), timeout=30))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    return ()
                time.sleep(1)


def grpc_load(server: Server, body: Body, concurrency: int, seconds: float) -> dict[str, Any]:
    """bench/grpc_load.py against digitserve's gRPC port, from the load core."""
    assert body.pixels is not None
    command = [
        "taskset",
        "-c",
        LOAD_CORE,
        sys.executable,
        "-m",
        "bench.grpc_load",
        f"127.0.0.1:{server.grpc_port}",
        "--pixels",
        ",".join(map(str, body.pixels)),
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(max(1.0, seconds)),
    ]
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^GRPCJSON (.*)$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"grpc_load printed no summary: {output}")
    summary: dict[str, Any] = json.loads(match.group(1))
    return summary


def measure_grpc(server: Server, body: Body, concurrency: int, seconds: float) -> Result:
    """The gRPC cell: the body's tensor over gRPC, measured as `measure` measures REST."""
    assert server.process is not None
    labels_ok = grpc_labels_of(server, body) == body.labels
    calls_before = model_calls(server)
    before = cpu_seconds(server.process.pid)
    summary = grpc_load(server, body, concurrency, seconds)
    used = cpu_seconds(server.process.pid) - before
    calls_after = model_calls(server)
    labels_ok = labels_ok and grpc_labels_of(server, body) == body.labels
    count = max(summary["requests"], 1)
    return Result(
        server=GRPC,
        body=body.name,
        concurrency=concurrency,
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        rps=summary["requests"] / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        cpu_us_per_request=used / count * 1e6,
        errors=summary["status_errors"],
        statuses=summary["statuses"],
        rss_mb=rss_mb(server.process.pid),
        pss_mb=pss_mb(server.process.pid),
        labels_ok=labels_ok,
        model_calls=None if calls_after is None else calls_after[0] - calls_before[0],
        model_rows=None if calls_after is None else calls_after[1] - calls_before[1],
    )


def model_calls(server: Server) -> tuple[int, int] | None:
    """digitserve's model calls so far and the rows they took, from its batch-size histogram.

    Concurrent requests share model calls (micro-batching); rows per call says how much.
    """
    if server.name != "digitserve":
        return None
    text = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return int(samples["digitserve_batch_size_count"]), int(samples["digitserve_batch_size_sum"])


def merged(rounds: list[Result]) -> Result:
    """One cell from its rounds: totals for throughput and CPU, the median p50, the worst p99.

    Percentiles cannot be added up; the worst round's p99 keeps the latency target honest.
    """
    first = rounds[0]
    requests_total = sum(r.requests for r in rounds)
    seconds = sum(r.seconds for r in rounds)
    statuses: dict[str, int] = {}
    for r in rounds:
        for status, count in r.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return Result(
        server=first.server,
        body=first.body,
        concurrency=first.concurrency,
        requests=requests_total,
        seconds=seconds,
        rps=requests_total / seconds,
        p50_ms=sorted(r.p50_ms for r in rounds)[len(rounds) // 2],
        p99_ms=max(r.p99_ms for r in rounds),
        cpu_us_per_request=sum(r.cpu_us_per_request * r.requests for r in rounds)
        / max(requests_total, 1),
        errors=sum(r.errors for r in rounds),
        statuses=statuses,
        rss_mb=max(r.rss_mb for r in rounds),
        pss_mb=max(r.pss_mb for r in rounds),
        labels_ok=all(r.labels_ok for r in rounds),
        model_calls=_total(r.model_calls for r in rounds),
        model_rows=_total(r.model_rows for r in rounds),
    )


def _total(counts: Iterable[int | None]) -> int | None:
    """The sum of per-round counts, or None for a server that has none."""
    values = list(counts)
    return None if None in values else sum(v for v in values if v is not None)


OVERLOAD_BODY = "jpeg-8px"
"""The body of the overload cell: cheap requests past digitserve's in-flight bound (64), which it
should shed with 503 `overloaded`, where a server without a bound queues them all."""


MEMORY_WORKERS = 2
"""Workers of the memory measurement: forked after the model is loaded, they share most pages."""


def worker_memory(bodies: dict[str, Body], workers: int, repeat: int) -> dict[str, Any]:
    """Memory of `digitserve serve --workers N` after each body `repeat` times, per process.

    RSS counts shared pages in every process that maps them, so the workers' RSS add up to far
    more than the machine pays. The footprint counts the arbiter's RSS (everything it maps, the
    libraries and model included) and each worker's own pages (USS): what the tree costs, however
    many other processes share the libraries (PSS would credit this harness for its own share).
    """
    server = servers(workers)[0]
    start(server)
    assert server.process is not None
    try:
        wait_until_idle(server)
        for body in bodies.values():
            for _ in range(repeat):
                requests.post(
                    server.url(body),
                    data=body.data,
                    headers={"Content-Type": body.content_type},
                    timeout=60,
                ).raise_for_status()
        processes = tree(server.process.pid)
        infos = [p.memory_full_info() for p in processes]
        total = (infos[0].rss + sum(info.uss for info in infos[1:])) / 1e6
        return {
            "workers": workers,
            "total_mb": round(total, 1),
            "per_worker_mb": round(total / workers, 1),
            "total_pss_mb": round(sum(info.pss for info in infos) / 1e6, 1),
            "arbiter": {
                "rss_mb": round(infos[0].rss / 1e6, 1),
                "pss_mb": round(infos[0].pss / 1e6, 1),
            },
            "worker_uss_mb": [round(info.uss / 1e6, 1) for info in infos[1:]],
            "worker_rss_mb": [round(info.rss / 1e6, 1) for info in infos[1:]],
        }
    finally:
        stop(server)


def in_process(bodies: dict[str, Body]) -> dict[str, float]:
    """Microseconds per call of decode + preprocess + predict, and of a full-resolution decode.

    Timed on the servers' core, where the pipeline runs in the server.
    """
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    try:
        return _in_process(bodies)
    finally:
        os.sched_setaffinity(0, affinity)


def lowest(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each timing's best over runs: the cost, with less of the machine's drift in it."""
    return {key: min(run[key] for run in runs) for key in runs[0]}


def _in_process(bodies: dict[str, Body]) -> dict[str, float]:
    classifier = load_classifier(
        ROOT / "src" / "digitserve" / "models" / "digits" / "1" / "model.pickle"
    )
    timings: dict[str, float] = {}
    for name in ("jpeg-8px", "jpeg-256px", "jpeg-12mp"):
        data = bodies[name].data

        def pipeline(data: bytes = data) -> None:
            classifier.predict(image_to_features(data, max_pixels=40_000_000).reshape(1, -1))

        # Best of many short runs: on a shared machine the minimum is the cost, the rest noise.
        number, repeat = (5, 6) if name == "jpeg-12mp" else (200, 20)
        timings[f"{name}_pipeline_us"] = (
            min(timeit.repeat(pipeline, number=number, repeat=repeat)) / number * 1e6
        )

    def full_decode() -> None:
        import io

        Image.open(io.BytesIO(bodies["jpeg-12mp"].data)).convert("RGB").load()

    timings["jpeg-12mp_full_decode_us"] = (
        min(timeit.repeat(full_decode, number=3, repeat=3)) / 3 * 1e6
    )
    return timings


def _rows_per_call(result: dict[str, Any]) -> str:
    """Feature rows per model call in a cell, as text; '-' for servers that do not say."""
    calls, rows = result.get("model_calls"), result.get("model_rows")
    return f"{rows / calls:.1f}" if calls and rows is not None else "-"


def markdown(report: dict[str, Any]) -> str:
    rows = report["results"]
    by_key = {(r["server"], r["body"], r["concurrency"]): r for r in rows}
    lines = [
        f"Run {report['date']} on {report['machine']}; server pinned to one core, wrk on the other; "
        f"{report['seconds']} s per cell and server, in {report.get('rounds', 1)} rounds taken in turn "
        "(req/s and CPU over all rounds, median p50, worst p99).",
        "",
        "| body | c | server | req/s | p50 ms | p99 ms | CPU µs/req | errors | RSS MB | labels | "
        "req/s vs flask | rows/model call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        flask = by_key.get(("flask-naive", r["body"], r["concurrency"]))
        ratio = f"{r['rps'] / flask['rps']:.1f}x" if flask and flask["rps"] else "-"
        lines.append(
            f"| {r['body']} | {r['concurrency']} | {r['server']} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us_per_request']:.0f} | {r['errors']} | "
            f"{r['rss_mb']:.0f} | {'ok' if r['labels_ok'] else 'WRONG'} | {ratio} | "
            f"{_rows_per_call(r)} |"
        )
    timings = report["in_process_us"]
    lines += [
        "",
        "In process (µs per image): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
        "",  # a list needs a blank line before it in Markdown (the docs site includes this file)
    ]
    for line in report["targets"]:
        lines.append(f"- {line}")
    return "\n".join(lines) + "\n"


def targets(report: dict[str, Any]) -> list[str]:
    """The issue's targets, computed from this run's numbers."""
    by_key = {(r["server"], r["body"], r["concurrency"]): r for r in report["results"]}
    timings = report["in_process_us"]
    lines = []
    for c in report["concurrency"]:
        ours, flask, floor, bare = (
            by_key.get((s, "jpeg-8px", c))
            for s in ("digitserve", "flask-naive", "http-floor", "compute-only")
        )
        if ours and flask and floor:
            budget = 2 * (floor["cpu_us_per_request"] + timings["jpeg-8px_pipeline_us"])
            lines.append(
                f"8x8 JPEG, c={c}: {ours['rps'] / flask['rps']:.1f}x flask req/s (target >= 3x); "
                f"CPU {ours['cpu_us_per_request']:.0f} µs/req vs budget {budget:.0f} "
                f"(2 x (floor {floor['cpu_us_per_request']:.0f} + in-process {timings['jpeg-8px_pipeline_us']:.0f}))"
            )
            if bare:
                # The same work behind the floor's stack, measured as the servers are: how much of
                # the budget the work alone takes once it runs in a server.
                lines.append(
                    f"8x8 JPEG, c={c}: compute-only server {bare['cpu_us_per_request']:.0f} µs/req "
                    f"({bare['cpu_us_per_request'] / budget:.2f} of the budget; "
                    f"its work {bare['cpu_us_per_request'] - floor['cpu_us_per_request']:.0f} µs above the floor "
                    f"against {timings['jpeg-8px_pipeline_us']:.0f} in process); "
                    f"digitserve {ours['cpu_us_per_request'] / bare['cpu_us_per_request']:.2f}x it"
                )
        if ours and c == max(report["concurrency"]):
            lines.append(
                f"8x8 JPEG, c={c}: p99/p50 = {ours['p99_ms'] / max(ours['p50_ms'], 1e-9):.1f} (target <= 3), "
                f"errors {ours['errors']}"
            )
    lines.append(
        f"12 MP JPEG: pipeline {timings['jpeg-12mp_pipeline_us'] / timings['jpeg-12mp_full_decode_us']:.3f} "
        f"of a full-resolution decode (target <= 0.1)"
    )
    for r in report["results"]:
        if r.get("overload"):
            shed = r["statuses"].get("503", 0)
            other = r["errors"] - shed
            answered = r["statuses"].get("200", 0) / max(r["seconds"], 1e-9)
            lines.append(
                f"overload, {r['server']} at c={r['concurrency']} (digitserve's bound is 64): "
                f"{answered:.0f} answers/s with 200, {shed / max(r['requests'], 1):.0%} shed with 503, "
                f"other errors {other}, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
            )
    for c in report["concurrency"]:
        rest, grpc = (by_key.get((s, "oip-pixels", c)) for s in ("digitserve", GRPC))
        if rest and grpc:
            lines.append(
                f"pixels [1, 64], c={c}: gRPC {grpc['rps']:.0f} req/s, CPU {grpc['cpu_us_per_request']:.0f} µs/req, "
                f"p50 {grpc['p50_ms']:.2f} ms vs REST (JSON) {rest['rps']:.0f} req/s, CPU {rest['cpu_us_per_request']:.0f} µs/req, "
                f"p50 {rest['p50_ms']:.2f} ms (the gRPC client is Python: compare CPU per request)"
            )
    rss = [r["rss_mb"] for r in report["results"] if r["server"] == "digitserve"]
    if rss:
        lines.append(
            f"digitserve RSS max {max(rss):.0f} MB for {report['workers']} worker(s) (target <= 150 per worker)"
        )
    memory = report.get("memory")
    if memory:
        lines.append(
            f"digitserve with {memory['workers']} forked workers, after every body: "
            f"{memory['total_mb']:.0f} MB in all (arbiter RSS + workers' USS), "
            f"{memory['per_worker_mb']:.0f} MB per worker "
            f"(target <= 150); each worker's own pages (USS) {', '.join(f'{m:.0f}' for m in memory['worker_uss_mb'])} MB"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds: four bodies (one also over gRPC), one concurrency",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell and server")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds per cell, the servers taking turns; each round lasts seconds / rounds",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--bodies", nargs="+", default=None)
    parser.add_argument("--servers", nargs="+", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--overload",
        type=int,
        default=256,
        help="connections for the overload cell (8x8 JPEG), past digitserve's bound of 64; 0: none",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("bench: needs wrk and taskset (apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    if args.smoke:
        args.seconds, args.rounds, args.concurrency, args.overload = 1.0, 2, [8], 0
        args.bodies = args.bodies or ["jpeg-8px", "multipart-16", "oip-json-8px", "oip-pixels"]
    bodies = make_bodies()
    chosen = {name: bodies[name] for name in (args.bodies or bodies)}
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.node()}",
        "python": platform.python_version(),
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "overload": args.overload,
        "workers": args.workers,
        "results": [],
    }
    # Timed before the cells and again after them; the budget takes the best of the two, so a
    # machine slowed for one of them does not loosen it.
    in_process_runs = [in_process(bodies)]
    per_round = max(1.0, args.seconds / max(args.rounds, 1))
    report["rounds"] = args.rounds
    wanted = [server for server in servers(args.workers) if server.name in (args.servers or NAMES)]
    with tempfile.TemporaryDirectory() as scratch:
        files = write_bodies(chosen, Path(scratch))
        # All servers run at once (idle but for the one measured) and take each cell in turn, so
        # that a shared machine's drifting load falls alike on the numbers a ratio compares.
        try:
            for server in wanted:
                start(server)
            for server in wanted:
                wait_until_idle(server)
            for name, body in chosen.items():
                for concurrency in args.concurrency:
                    takers = [
                        server
                        for server in wanted
                        if server.name not in JPEG_ONLY or body.content_type == "image/jpeg"
                    ]
                    # The same tensor over gRPC, taken in turn with the REST cells.
                    grpc_taker = next(
                        (s for s in takers if s.name == "digitserve" and body.pixels), None
                    )
                    # Short rounds, servers in turn: a drift in the machine's load falls on all.
                    rounds: dict[str, list[Result]] = {server.name: [] for server in takers}
                    if grpc_taker is not None:
                        rounds[GRPC] = []
                    for _ in range(args.rounds):
                        for server in takers:
                            rounds[server.name].append(
                                measure(server, body, files[name], concurrency, per_round)
                            )
                        if grpc_taker is not None:
                            rounds[GRPC].append(
                                measure_grpc(grpc_taker, body, concurrency, per_round)
                            )
                    for cell in rounds:
                        result = merged(rounds[cell])
                        report["results"].append(asdict(result))
                        print(
                            f"{cell:12} {name:14} c={concurrency:<3} {result.rps:8.0f} req/s "
                            f"p50 {result.p50_ms:7.2f} ms p99 {result.p99_ms:7.2f} ms "
                            f"cpu {result.cpu_us_per_request:6.0f} µs errors {result.errors} "
                            f"labels {'ok' if result.labels_ok else 'WRONG'}",
                            file=sys.stderr,
                        )
            for server in wanted:
                # The bare work has no bound to shed with: its overload cell would show nothing.
                if args.overload and OVERLOAD_BODY in chosen and server.name != "compute-only":
                    result = measure(
                        server,
                        chosen[OVERLOAD_BODY],
                        files[OVERLOAD_BODY],
                        args.overload,
                        args.seconds,
                    )
                    report["results"].append({**asdict(result), "overload": True})
                    print(
                        f"{server.name:12} overload c={args.overload}: {result.statuses} "
                        f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms",
                        file=sys.stderr,
                    )
        finally:
            for server in wanted:
                stop(server)
    in_process_runs.append(in_process(bodies))
    report["in_process_runs_us"] = in_process_runs
    report["in_process_us"] = lowest(in_process_runs)
    if "digitserve" in (args.servers or NAMES):
        report["memory"] = worker_memory(chosen, MEMORY_WORKERS, repeat=3 if args.smoke else 20)
    report["targets"] = targets(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if args.smoke else "latest"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
