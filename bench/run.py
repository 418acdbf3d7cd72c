"""Run the benchmark: digitserve, a naive Flask app, the HTTP floor and the bare work, in one run.

Each server runs pinned to core 0 (`taskset`), wrk drives it from core 1. For every body and
concurrency it records req/s, latency percentiles, server CPU time per request (the whole process
tree), errors by status and resident memory, checks the answers' labels on a sample, and writes
JSON and a markdown table with ratios against the baselines measured in the same run. The body
`oip-pixels` is also sent to digitserve over gRPC (`digitserve-grpc`, driven by bench/grpc_load.py
from core 1), the same tensor as over REST, in the same rounds.

The model matrix (bench/matrix.py) serves each model of bench/models.py three ways on the same
pickle. A full run writes latest.json and latest.md, and the run-by-run log
`<YYYY-MM-DD>-<HHMM>.md` beside them; latest.md keeps the section a run did not measure from the
previous latest.json, each section with its own date.

    python -m bench.run            # the body matrix (~10 minutes)
    python -m bench.run --matrix   # the model matrix only (~7 minutes)
    python -m bench.run --all      # both in one run (~17 minutes)
    python -m bench.run --smoke    # about a minute: both, small, as CI runs it
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from bench import matrix
from bench.bodies import Body, make_bodies, write_bodies
from bench.measure import (
    MEMORY_WORKERS,
    SETTLE_SECONDS,
    Result,
    cell_result,
    cpu_seconds,
    measure,
    merged,
    model_calls,
    worker_memory,
)
from bench.models import NAMES as MODEL_NAMES
from bench.servers import (
    JPEG_ONLY,
    LOAD_CORE,
    NAMES,
    ROOT,
    Server,
    digitserve,
    on_server_core,
    servers,
    start,
    stop,
    wait_until_idle,
)
from digitserve.classifier import load_classifier
from digitserve.preprocessing import image_to_features, load_pixels, open_image

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
    return cell_result(
        server,
        GRPC,
        body,
        concurrency,
        summary,
        used,
        summary["status_errors"],
        summary["statuses"],
        labels_ok=labels_ok,
        calls=(calls_before, calls_after),
    )


OVERLOAD_BODY = "jpeg-8px"
"""The body of the overload cell: cheap requests past digitserve's in-flight bound (64), which it
should shed with 503 `overloaded`, where a server without a bound queues them all."""


def in_process(bodies: dict[str, Body]) -> dict[str, float]:
    """Microseconds per call of decode + preprocess + predict, and of a full-resolution decode.

    Timed on the servers' core, where the pipeline runs in the server.
    """
    with on_server_core():
        return _in_process(bodies)


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

    def scaled_decode() -> None:
        load_pixels(open_image(bodies["jpeg-12mp"].data, max_pixels=40_000_000))

    # The floor under the pipeline: libjpeg-turbo's decode at the reduced DCT scale still
    # entropy-decodes every coefficient of the file.
    timings["jpeg-12mp_scaled_decode_us"] = (
        min(timeit.repeat(scaled_decode, number=3, repeat=3)) / 3 * 1e6
    )
    return timings


def _rows_per_call(result: dict[str, Any]) -> str:
    """Feature rows per model call in a cell, as text; '-' for servers that do not say."""
    calls, rows = result.get("model_calls"), result.get("model_rows")
    return f"{rows / calls:.1f}" if calls and rows is not None else "-"


def markdown(report: dict[str, Any]) -> str:
    """latest.md: the body matrix and the model matrix, whichever the report holds, with their
    targets."""
    sections = []
    if "results" in report:
        sections.append([*body_markdown(report), *(f"- {line}" for line in body_targets(report))])
    if "matrix" in report:
        sections.append(
            [
                *matrix.markdown(report["matrix"]),
                "",
                *(f"- {line}" for line in matrix.targets(report["matrix"])),
            ]
        )
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def body_markdown(report: dict[str, Any]) -> list[str]:
    """The body matrix's table and in-process timings."""
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
    return lines


def targets(report: dict[str, Any]) -> list[str]:
    """The issue's targets, from the body matrix and the model matrix the report holds."""
    lines = body_targets(report) if "results" in report else []
    return lines + (matrix.targets(report["matrix"]) if "matrix" in report else [])


def body_targets(report: dict[str, Any]) -> list[str]:
    """The issue's targets, computed from the body matrix's numbers."""
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
        f"of a full-resolution decode (target <= 0.35); the decode alone at the reduced DCT scale, "
        f"its floor, {timings['jpeg-12mp_scaled_decode_us'] / timings['jpeg-12mp_full_decode_us']:.3f}"
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
        if not memory.get("stopped_on_sigterm", True):
            lines[-1] += (
                f"; its workers hung on SIGTERM and were killed after {memory['stop_seconds']:.0f} s"
            )
    return lines


def run_bodies(args: argparse.Namespace, bodies: dict[str, Body], scratch: Path) -> dict[str, Any]:
    """The body matrix: every body at every concurrency on the bundled model; the report's
    top-level fields."""
    chosen = {name: bodies[name] for name in (args.bodies or bodies)}
    report: dict[str, Any] = {
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "overload": args.overload,
        "workers": args.workers,
        "rounds": args.rounds,
        "results": [],
    }
    # Timed before the cells and again after them; the budget takes the best of the two, so a
    # machine slowed for one of them does not loosen it.
    in_process_runs = [in_process(bodies)]
    per_round = max(1.0, args.seconds / max(args.rounds, 1))
    cache = scratch / "onnx"
    wanted = [s for s in servers(args.workers, cache) if s.name in (args.servers or NAMES)]
    files = write_bodies(chosen, scratch / "bodies")
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
                        rounds[GRPC].append(measure_grpc(grpc_taker, body, concurrency, per_round))
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
        report["memory"] = worker_memory(
            digitserve(MEMORY_WORKERS, cache),
            MEMORY_WORKERS,
            chosen,
            repeat=3 if args.smoke else 20,
        )
    return report


def carried_over(report: dict[str, Any], previous_file: Path) -> dict[str, Any]:
    """This run's report, with the section it did not measure kept from the previous latest.json.

    A run measures the body matrix, the model matrix or both; latest.md shows both, each section
    with its own date, so a matrix-only run does not drop the body table (nor the reverse).
    """
    if not previous_file.is_file():
        return report
    previous = json.loads(previous_file.read_text())
    if "results" not in report and "results" in previous:
        # The body matrix's own date and machine stay at the top; the matrix carries its own.
        report = {
            **{k: v for k, v in previous.items() if k != "matrix"},
            "matrix": report["matrix"],
        }
    elif "matrix" not in report and "matrix" in previous:
        report = {**report, "matrix": previous["matrix"]}
    return {**report, "targets": targets(report)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a minute: four bodies (one also over gRPC) at one concurrency, then two models",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--matrix",
        action="store_true",
        help="the model matrix only: every model of bench/models.py served three ways",
    )
    what.add_argument(
        "--all", action="store_true", help="the body matrix, then the model matrix, in one run"
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
    parser.add_argument(
        "--models", nargs="+", choices=MODEL_NAMES, default=None, help="the model matrix's models"
    )
    parser.add_argument(
        "--matrix-concurrency", type=int, default=64, help="the model matrix's connections"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("bench: needs wrk and taskset (apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    plan = matrix.Plan(
        models=tuple(args.models or MODEL_NAMES),
        concurrency=args.matrix_concurrency,
        seconds=args.seconds,
        rounds=args.rounds,
        workers=args.workers,
        memory_models=tuple(args.models or MODEL_NAMES),
        memory_repeat=20,
    )
    if args.smoke:
        args.seconds, args.rounds, args.concurrency, args.overload = 1.0, 2, [8], 0
        args.bodies = args.bodies or ["jpeg-8px", "multipart-16", "oip-json-8px", "oip-pixels"]
        # Two models quick to start, one on each kind of runtime; the two-worker memory of the
        # first only (a worker serving through ONNX Runtime may take the stop's grace to exit).
        models = tuple(args.models or ("svc-classic", "logreg"))
        plan = matrix.Plan(models, 8, 2.0, 2, args.workers, models[:1], 3)
    bodies = make_bodies()
    now = datetime.now(UTC)
    report: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.node()}",
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        if not args.matrix:
            report.update(run_bodies(args, bodies, Path(scratch) / "bodies"))
        if args.matrix or args.all or args.smoke:
            report["matrix"] = {
                "machine": report["machine"],
                "python": report["python"],
                **matrix.run_matrix(plan, bodies[matrix.BODY], Path(scratch) / "matrix"),
            }
    report["targets"] = targets(report)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        (args.out / "smoke.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "smoke.md").write_text(markdown(report))
    else:
        # The run-by-run log holds what this run measured; latest.md keeps the other section too.
        (args.out / f"{now:%Y-%m-%d-%H%M}.md").write_text(markdown(report))
        report = carried_over(report, args.out / "latest.json")
        (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "latest.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
