"""How `digitserve serve` runs uvicorn: the options that shape speed and fairness."""

from typing import Any

import pytest
import uvicorn

from digitserve import server
from digitserve.classifier import Classifier
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
    assert protocol.keywords == {"header_timeout": 30.0, "max_header_bytes": 8192}
    assert options["access_log"] is False
    assert options.get("workers", 1) == workers
