"""A real `digitserve serve` process on a free port, for the tests that talk to it over a socket."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO

import requests

from tests.conftest import MODEL_PATH


@dataclass
class LiveServer:
    """A running `digitserve serve` process."""

    process: subprocess.Popen[bytes]
    url: str
    grpc: str = ""
    """host:port of its gRPC server, when started with one."""


def free_port() -> int:
    """Ask the kernel for a port nobody is using."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(
    *args: str,
    env: dict[str, str] | None = None,
    output: IO[bytes] | None = None,
    grpc: bool = False,
) -> LiveServer:
    """Start the CLI's server and wait until /readyz says it is ready.

    `env` adds DIGITSERVE_* variables; `output` takes its log instead of a pipe (a pipe nobody
    reads fills up after a few hundred log lines and stalls the server); `grpc` serves gRPC too,
    on another free port.
    """
    port = free_port()
    grpc_port = free_port() if grpc else None
    if grpc_port is not None:
        args = (*args, "--grpc-port", str(grpc_port))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digitserve",
            "serve",
            "--port",
            str(port),
            "--model",
            str(MODEL_PATH),
            *args,
        ],
        stdout=subprocess.PIPE if output is None else output,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: a failed start kills workers too
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = process.stdout.read() if process.stdout else b"(see the output file)"
            raise RuntimeError(f"server exited early: {log!r}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return LiveServer(process, url, f"127.0.0.1:{grpc_port}" if grpc_port else "")
        except requests.RequestException:  # refused, or accepted before a worker is up
            time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("server did not become ready in 60 s")


def stop_server(server: LiveServer) -> int:
    """SIGTERM, as an orchestrator would, and return the exit status."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    finally:
        if server.process.stdout:
            server.process.stdout.close()
