"""The real server as a process on a free port, shared by the integration and browser tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import requests

from tests.conftest import MODEL_PATH


@dataclass
class LiveServer:
    """A running `digitserve serve` process."""

    process: subprocess.Popen[bytes]
    url: str


def free_port() -> int:
    """Ask the kernel for a port nobody is using."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(*args: str, env: Mapping[str, str] | None = None) -> LiveServer:
    """Start the CLI's server (with extra environment variables) and wait until it is ready."""
    port = free_port()
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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {process.stdout.read()!r}")  # type: ignore[union-attr]
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return LiveServer(process, url)
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become ready in 60 s")


def stop_server(server: LiveServer) -> int:
    """SIGTERM, as an orchestrator would, and return the exit status."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    finally:
        if server.process.stdout:
            server.process.stdout.close()
