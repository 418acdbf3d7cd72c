"""How `digitserve serve` runs uvicorn: the options that shape speed and fairness, and workers."""

import asyncio
import gc
import logging
from typing import Any

import pytest
import uvicorn
from gunicorn.app.base import BaseApplication

from digitserve import server
from digitserve.classifier import Classifier
from digitserve.dataplane import DataPlane
from digitserve.metrics import Metrics
from digitserve.middleware import ADMITTED_KEY
from digitserve.settings import Settings
from tests.conftest import MODEL_PATH


def captured_options(
    monkeypatch: pytest.MonkeyPatch, classifier: Classifier, **overrides: Any
) -> dict[str, Any]:
    """The options `serve` hands to uvicorn.run or to `serve_forked` (neither is started)."""
    calls: list[dict[str, Any]] = []
    for switch in ("_srcfile", "logThreads", "logMultiprocessing"):  # restored after the test
        monkeypatch.setattr(logging, switch, getattr(logging, switch))
    monkeypatch.setattr(
        uvicorn,
        "run",
        lambda app, **options: calls.append({**options, "frozen": gc.get_freeze_count()}),
    )
    monkeypatch.setattr(
        server,
        "serve_forked",
        lambda app, settings, options: calls.append(
            {**options, "forked": 1, "frozen": gc.get_freeze_count()}
        ),
    )
    try:
        settings = Settings(model_path=MODEL_PATH, **overrides)
        dataplane = DataPlane(settings, Metrics(), admitted=lambda: 1, classifier=classifier)
        dataplane.start()
        server.serve(settings, dataplane)
    finally:
        gc.unfreeze()
    [options] = calls
    return options


@pytest.mark.parametrize("workers", [1, 2])
def test_serves_on_asyncio_with_httptools_and_a_header_deadline(
    monkeypatch: pytest.MonkeyPatch, classifier: Classifier, workers: int
) -> None:
    monkeypatch.setattr("signal.signal", lambda *_: None)
    monkeypatch.setattr("os.environ", {})
    options = captured_options(monkeypatch, classifier, workers=workers, max_header_bytes=8192)
    # uvloop starved a few of 64 concurrent connections for seconds; asyncio's loop does not.
    assert options["loop"] == "asyncio"
    protocol = options["http"]
    assert issubclass(protocol.func, server.HeaderDeadlineProtocol)
    admission = protocol.keywords.pop("admission")
    assert protocol.keywords == {"header_timeout": 30.0, "max_header_bytes": 8192}
    assert (admission.limit, admission.held) == (64, 0)
    assert options["access_log"] is False
    assert options.get("forked", 0) == (workers > 1)
    # What start-up made is frozen before serving: full collections skip it (and forked workers
    # leave the arbiter's pages alone).
    assert options["frozen"] > 10_000
    # Records skip the caller lookup that no log line shows (see `skip_unused_record_fields`).
    assert (logging._srcfile, logging.logThreads) == (None, False)


@pytest.mark.parametrize(("host", "bind"), [("127.0.0.1", "127.0.0.1:8123"), ("::", "[::]:8123")])
def test_workers_are_forked_by_gunicorn_after_the_model_is_loaded(
    monkeypatch: pytest.MonkeyPatch, host: str, bind: str
) -> None:
    arbiters: list[Any] = []
    monkeypatch.setattr(BaseApplication, "run", lambda self: arbiters.append(self))
    settings = Settings(
        model_path=MODEL_PATH, host=host, port=8123, workers=3, shutdown_delay_seconds=2.5
    )
    app = object()
    options = {"host": host, "port": 8123, "log_config": {}, "loop": "asyncio", "http": "ours"}
    server.serve_forked(app, settings, options)  # type: ignore[arg-type]
    [arbiter] = arbiters
    assert arbiter.load() is app  # built here, with the model: the workers inherit both
    cfg = arbiter.cfg
    assert (cfg.bind, cfg.workers, cfg.preload_app) == ([bind], 3, True)
    assert cfg.graceful_timeout == 38  # drain delay + in-flight grace + 5, in whole seconds
    assert cfg.control_socket_disable  # nothing written next to a read-only root filesystem
    # The workers run uvicorn as one process would: same loop and protocol, lifespan on.
    assert cfg.worker_class.CONFIG_KWARGS == {
        "loop": "asyncio",
        "http": "ours",
        "lifespan": "on",
        "timeout_keep_alive": 5,
    }
    loggers = cfg.logconfig_dict["loggers"]
    assert loggers["gunicorn.error"] == loggers["digitserve"]  # the arbiter logs as we do


def test_admission_holds_a_place_until_the_app_is_done_even_if_it_fails() -> None:
    admission = server.Admission(limit=2)
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(admission.count())
        if scope.get("fail"):
            raise RuntimeError("boom")

    counted: Any = admission.counted(app)

    async def scenario() -> None:
        admission.held = 2  # two admitted requests are queued
        await counted({ADMITTED_KEY: True}, None, None)
        await counted({ADMITTED_KEY: False}, None, None)  # refused: held no place
        with pytest.raises(RuntimeError):
            await counted({ADMITTED_KEY: True, "fail": True}, None, None)

    asyncio.run(scenario())
    assert seen == [2, 1, 1]
    assert admission.held == 0
