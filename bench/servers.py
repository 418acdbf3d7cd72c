"""The servers under test: how each is started pinned to the server core, and what its processes use.

Every server runs on core 0 (`taskset`); the load generators run on core 1. Each server's CPU time
and memory are those of its whole process tree (gunicorn's and uvicorn's workers included).
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from bench.bodies import Body

ROOT = Path(__file__).resolve().parents[1]
SERVER_CORE = "0"
LOAD_CORE = "1"

START_SECONDS = 60.0
"""How long a server may take to answer after it is started (the model matrix allows more)."""


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


NAMES = ("digitserve", "flask-naive", "http-floor", "compute-only")

JPEG_ONLY = frozenset({"flask-naive", "compute-only"})
"""Servers that take only a raw JPEG body (no multipart, no Open Inference Protocol)."""


def _bin(command: str) -> str:
    """A console script of the environment the harness runs in."""
    return str(Path(sys.executable).parent / command)


def digitserve(
    workers: int, onnx_cache: Path, model: Path | None = None, name: str = "digits"
) -> Server:
    """`digitserve serve`, the real CLI: the bundled repository (with gRPC), or one model file.

    `DIGITSERVE_ONNX_CACHE` points into the run's own folder, so the first start compiles a model
    that ONNX Runtime serves, as a fresh deployment would.
    """
    command = [_bin("digitserve"), "serve", "--workers", str(workers), "--port", "{port}"]
    if model is None:
        command += ["--grpc-port", "{grpc_port}"]
    else:
        command += ["--model", str(model), "--model-name", name]
    return Server(
        "digitserve",
        command,
        f"/v1/models/{name}:predict",
        env={"DIGITSERVE_ONNX_CACHE": str(onnx_cache)},
    )


def flask_naive(model: Path | None = None) -> Server:
    """The tutorial's Flask app under gunicorn, two sync workers."""
    return Server(
        "flask-naive",
        [
            _bin("gunicorn"),
            "--workers",
            "2",
            "--bind",
            "127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.baselines.flask_app:create_app()",
        ],
        "/predict",
        env={} if model is None else {"DIGITSERVE_MODEL_PATH": str(model)},
    )


def http_floor() -> Server:
    """A bare ASGI app answering a constant."""
    return Server("http-floor", bare_uvicorn("bench.baselines.floor:app"), "/")


def compute_only(onnx_cache: Path, model: Path | None = None) -> Server:
    """The floor's bare app plus digitserve's own reading and model call, on digitserve's runtime."""
    env = {"DIGITSERVE_ONNX_CACHE": str(onnx_cache)}
    if model is not None:
        env["DIGITSERVE_MODEL_PATH"] = str(model)
    return Server(
        "compute-only",
        bare_uvicorn("bench.baselines.compute_only:create_app", factory=True),
        "/",
        env=env,
    )


def servers(workers: int, onnx_cache: Path) -> list[Server]:
    """The body matrix's servers, on the bundled model."""
    return [
        digitserve(workers, onnx_cache),
        flask_naive(),
        http_floor(),
        compute_only(onnx_cache),
    ]


def bare_uvicorn(app: str, *, factory: bool = False) -> list[str]:
    """A bare ASGI app under uvicorn's defaults (httptools, uvloop), without an access log."""
    command = [_bin("uvicorn"), "--port", "{port}", "--log-level", "warning", "--no-access-log"]
    return [*command, *(["--factory"] if factory else []), app]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(server: Server, timeout: float = START_SECONDS) -> None:
    """Start the server on the server core and wait until it answers (digitserve: until ready)."""
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
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
    stop(server)
    raise RuntimeError(f"{server.name} did not start: {' '.join(server.command)}")


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


STOP_SECONDS = 30.0
"""How long a server may take to exit on SIGTERM before its processes are killed."""


def stop(server: Server, grace: float = STOP_SECONDS) -> bool:
    """SIGTERM the server, and kill whatever of its tree is left after `grace` seconds.

    Workers are remembered first: an arbiter that gives up on a hung worker and exits would
    otherwise leave it running. True if every process exited on SIGTERM alone.
    """
    if server.process is None or server.process.poll() is not None:
        return True
    try:
        workers = tree(server.process.pid)[1:]
    except psutil.NoSuchProcess:
        workers = []
    deadline = time.monotonic() + grace
    server.process.terminate()
    clean = True
    try:
        server.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        clean = False
    _, alive = psutil.wait_procs(workers, timeout=max(0.0, deadline - time.monotonic()))
    for process in alive:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    return clean and not alive


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


@contextmanager
def on_server_core() -> Iterator[None]:
    """Run this process on the servers' core for a while: in-process timings are taken there."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)
