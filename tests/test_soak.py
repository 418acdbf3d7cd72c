"""Soak: many mixed good and hostile requests at high concurrency against a real server process.

Zero 5xx, zero dropped connections, every good answer right, every bad one its documented code
(round 2's small hostile requests included: untrusted /v2 shapes, scan and chunk bombs, gzip
members), resident memory after the run within 10% of what it was after a warm-up, and no CPU
still burning a second after the last answer. Bounded in count and
time, loopback only. The short mode runs in `make test`; the long one is, for example::

    SOAK_REQUESTS=50000 SOAK_CONCURRENCY=64 SOAK_SECONDS=1800 .venv/bin/pytest tests/test_soak.py
"""

import base64
import json
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from digitserve.preprocessing import declared_pixels
from tests.conftest import DATA_DIR
from tests.hostile import PREDICT, Hostile, corpus, memory_kib, multipart
from tests.live import LiveServer, start_server, stop_server
from tests.test_hostile_decode import settled_cpu

REQUESTS = int(os.environ.get("SOAK_REQUESTS", "2000"))
CONCURRENCY = int(os.environ.get("SOAK_CONCURRENCY", "32"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
WARM_UP = max(500, REQUESTS // 10)
MAX_GROWTH = 0.10
HOSTILE_BODY_LIMIT = 64 * 1024
"""Hostile entries small enough to send thousands of times; the big ones run in test_hostile."""
FULL_DECODE_PIXELS = 1024 * 1024
"""Nor are images decoded in full above this (a second of CPU each on a busy machine)."""

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SECONDS * 2 + 240)]


@dataclass(frozen=True)
class Expect:
    """One request of the mix: what to send and what must come back."""

    name: str
    body: bytes
    headers: dict[str, str]
    status: int
    code: str | None = None
    labels: tuple[int, ...] = ()
    path: str = PREDICT


def good_requests() -> list[Expect]:
    """Every example image as a raw body, a multipart batch and base64 JSON, with its labels."""
    files = sorted(DATA_DIR.glob("*.jpg"))
    label = {path: int(path.name[0]) for path in files}
    mix: list[Expect] = []
    for path in files:
        data = path.read_bytes()
        mix.append(
            Expect(path.name, data, {"Content-Type": "image/jpeg"}, 200, None, (label[path],))
        )
        payload = {"instances": [{"b64": base64.b64encode(data).decode()}]}
        mix.append(
            Expect(
                f"{path.name} as JSON",
                json.dumps(payload).encode(),
                {"Content-Type": "application/json", "Connection": "close"},
                200,
                None,
                (label[path],),
            )
        )
    for start in range(0, len(files), 3):
        batch: list[Path] = files[start : start + 3]
        body = multipart([("image", p.name, p.read_bytes()) for p in batch])
        mix.append(
            Expect(
                f"batch from {batch[0].name}",
                body,
                {"Content-Type": "multipart/form-data; boundary=hostile"},
                200,
                None,
                tuple(label[p] for p in batch),
            )
        )
    return mix


def bad_requests() -> list[Expect]:
    """The hostile corpus's small, fixed-body entries that must be refused."""
    chosen: list[Hostile] = [
        item
        for item in corpus()
        if isinstance(item.body, bytes)
        and len(item.body) <= HOSTILE_BODY_LIMIT
        and item.code is not None
        and item.method == "POST"
        and (item.status == 413 or (declared_pixels(item.body) or 0) <= FULL_DECODE_PIXELS)
    ]
    return [
        Expect(item.name, body, item.request_headers(), item.status, item.code, (), item.path)
        for item in chosen
        if isinstance(body := item.body, bytes)
    ]


@dataclass
class Tally:
    """Outcomes of a run, shared by the client threads."""

    statuses: Counter[int]
    failures: list[str]
    dropped: int = 0
    sent: int = 0


def run(server: LiveServer, mix: list[Expect], count: int, deadline: float, seed: int) -> Tally:
    """Send `count` requests drawn from the mix over CONCURRENCY keep-alive clients."""
    tally = Tally(Counter(), [])
    lock = threading.Lock()
    local = threading.local()
    order = random.Random(seed).choices(range(len(mix)), k=count)  # noqa: S311 - not secret

    def one(index: int) -> None:
        if time.monotonic() > deadline:
            return
        expect = mix[index]
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            response = session.post(
                server.url + expect.path, data=expect.body, headers=expect.headers, timeout=60
            )
        except requests.RequestException as exc:
            with lock:
                tally.dropped += 1
                tally.sent += 1
                tally.failures.append(f"{expect.name}: {type(exc).__name__}")
            local.session = None
            return
        problem = check(expect, response)
        with lock:
            tally.sent += 1
            tally.statuses[response.status_code] += 1
            if problem:
                tally.failures.append(f"{expect.name}: {problem}")

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, order))
    return tally


def check(expect: Expect, response: requests.Response) -> str | None:
    """What is wrong with this answer, if anything."""
    if response.status_code != expect.status:
        return f"status {response.status_code}, expected {expect.status}"
    if expect.code is not None:
        code = response.json().get("code")
        return None if code == expect.code else f"code {code}, expected {expect.code}"
    labels = tuple(p["label"] for p in response.json()["predictions"])
    return None if labels == expect.labels else f"labels {labels}, expected {expect.labels}"


def test_soak_mixed_traffic_at_high_concurrency() -> None:
    good, bad = good_requests(), bad_requests()
    assert len(good) >= 60
    assert len(bad) >= 30
    mix = good + bad
    server = start_server("--no-access-log")
    try:
        started = time.monotonic()
        deadline = started + SECONDS
        warm = run(server, mix, WARM_UP, deadline, seed=1)
        before = memory_kib(server.process.pid)
        soak = run(server, mix, REQUESTS, deadline, seed=2)
        elapsed = time.monotonic() - started
        idle_cpu = settled_cpu(server.process.pid, limit=10)  # nothing left burning a core
        after = memory_kib(server.process.pid)
    finally:
        status = stop_server(server)
    growth = (after - before) / before
    print(
        f"\nsoak: {soak.sent} requests after {warm.sent} warm-up, {CONCURRENCY} clients, "
        f"{elapsed:.1f} s; statuses {dict(sorted(soak.statuses.items()))}; "
        f"VmRSS {before} -> {after} KiB ({growth:+.1%})"
    )
    failures = warm.failures + soak.failures
    assert not failures, "\n".join(failures[:20])
    assert warm.dropped == soak.dropped == 0
    assert not any(status >= 500 for status in warm.statuses | soak.statuses)
    assert soak.sent >= min(REQUESTS, 1000), "the time bound cut the run short"
    assert sum(soak.statuses[s] for s in soak.statuses if s >= 400) > soak.sent // 5
    assert growth < MAX_GROWTH
    assert idle_cpu < 0.2, f"the server still used {idle_cpu:.2f} s of CPU a second after the run"
    assert status == 0
