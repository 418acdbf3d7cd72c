"""How `digitserve serve` runs uvicorn: the options that shape speed and fairness."""

import asyncio
from typing import Any

import pytest
import uvicorn

from digitserve import server
from digitserve.classifier import Classifier
from digitserve.middleware import ADMITTED_KEY
from digitserve.settings import Settings
from tests.conftest import MODEL_PATH


def captured_options(
    monkeypatch: pytest.MonkeyPatch, classifier: Classifier, **overrides: Any
) -> dict[str, Any]:
    """The keyword arguments `serve` hands to uvicorn.run (which is not started)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    server.serve(Settings(model_path=MODEL_PATH, **overrides), classifier)
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
    assert options.get("workers", 1) == workers


def test_admission_holds_a_place_until_the_app_is_done_even_if_it_fails() -> None:
    admission = server.Admission(limit=2)
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(admission.held)
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
