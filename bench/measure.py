"""One benchmark cell: wrk (or another load) against a server from the load core, and what it cost.

A cell records req/s, latency percentiles, the server tree's CPU time per request, errors by status
and resident memory, and checks the answers' labels before and after the load.
"""

import json
import os
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.bodies import Body
from bench.servers import (
    LOAD_CORE,
    ROOT,
    START_SECONDS,
    Server,
    cpu_seconds,
    pss_mb,
    rss_mb,
    start,
    stop,
    tree,
    wait_until_idle,
)

WRK_SCRIPT = ROOT / "bench" / "wrk" / "post.lua"


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
    statuses = {str(k): v for k, v in summary["statuses"].items()}
    errors = (
        summary["connect_errors"]
        + summary["read_errors"]
        + summary["write_errors"]
        + summary["timeouts"]
        + max(summary["status_errors"], sum(v for k, v in statuses.items() if k != "200"))
    )
    return cell_result(
        server,
        server.name,
        body,
        concurrency,
        summary,
        used,
        errors,
        statuses,
        labels_ok=labels_ok,
        calls=(calls_before, calls_after),
    )


def cell_result(
    server: Server,
    name: str,
    body: Body,
    concurrency: int,
    summary: dict[str, Any],
    used: float,
    errors: int,
    statuses: dict[str, int],
    *,
    labels_ok: bool,
    calls: tuple[tuple[int, int] | None, tuple[int, int] | None],
) -> Result:
    """A cell's result from a load generator's summary and the server's CPU time and calls."""
    assert server.process is not None
    before, after = calls
    count = max(summary["requests"], 1)
    return Result(
        server=name,
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
        model_calls=None if after is None or before is None else after[0] - before[0],
        model_rows=None if after is None or before is None else after[1] - before[1],
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


MEMORY_WORKERS = 2
"""Workers of the memory measurement: forked after the model is loaded, they share most pages."""

MEMORY_STOP_SECONDS = 10.0
"""How long the memory measurement's server may take to exit on SIGTERM before it is killed (and
`stopped_on_sigterm` is false): it has just answered a few requests, with nothing left to drain."""


def worker_memory(
    server: Server,
    workers: int,
    bodies: dict[str, Body],
    repeat: int,
    start_seconds: float = START_SECONDS,
) -> dict[str, Any]:
    """Memory of a server with N forked workers (`digitserve serve --workers N`, built by the
    caller) after each body `repeat` times, per process.

    RSS counts shared pages in every process that maps them, so the workers' RSS add up to far
    more than the machine pays. The footprint counts the arbiter's RSS (everything it maps, the
    libraries and model included) and each worker's own pages (USS): what the tree costs, however
    many other processes share the libraries (PSS would credit this harness for its own share).
    """
    start(server, start_seconds)
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
    finally:
        started = time.monotonic()
        clean = stop(server, MEMORY_STOP_SECONDS)
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
        "stopped_on_sigterm": clean,
        "stop_seconds": round(time.monotonic() - started, 1),
    }
