"""Shared fixtures: the bundled model, an app from the factory, and images of known digits."""

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from digitserve.app import create_app
from digitserve.classifier import Classifier, load_classifier
from digitserve.dataplane import DataPlane
from digitserve.evalset import write_evalset
from digitserve.metrics import Metrics
from digitserve.preprocessing import render_digit
from digitserve.settings import Settings
from digitserve.training import Split, split_digits

ROOT = Path(__file__).resolve().parents[1]
MODEL_PATH = ROOT / "src" / "digitserve" / "models" / "digits" / "1" / "model.pickle"
DATA_DIR = ROOT / "data"

Renderer = Callable[..., bytes]


@pytest.fixture(scope="session")
def classifier() -> Classifier:
    """The bundled model, loaded once for the whole run."""
    return load_classifier(MODEL_PATH)


@pytest.fixture(scope="session")
def dataplane(classifier: Classifier) -> DataPlane:
    """A data plane serving the session's model, as the CLI builds one."""
    plane = DataPlane(
        Settings(model_path=MODEL_PATH), Metrics(), admitted=lambda: 1, classifier=classifier
    )
    plane.start()
    return plane


@pytest.fixture(scope="session")
def split() -> Split:
    """The documented train/test split of load_digits."""
    return split_digits()


@pytest.fixture
def settings() -> Settings:
    """Settings for the bundled model with default limits."""
    return Settings(model_path=MODEL_PATH)


@pytest.fixture(params=[True, False], ids=["direct", "framework"])
def app(request: pytest.FixtureRequest, settings: Settings, classifier: Classifier) -> FastAPI:
    """An app from the factory, reusing the session's model.

    Every test of it runs twice: with the prediction routes served directly (as in production,
    see `routes.direct`) and by FastAPI's router, which declares them; both must answer alike.
    """
    return create_app(settings, classifier, direct_routes=request.param)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client used as a context manager, so the lifespan (and readiness) runs."""
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def encode(image: object, fmt: str = "JPEG", **options: object) -> bytes:
    """Encode a PIL image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)  # type: ignore[attr-defined]
    return buffer.getvalue()


@pytest.fixture(scope="session")
def render() -> Renderer:
    """Render a feature vector as an encoded image of a given side, format and quality."""

    def _render(
        features: NDArray[np.floating] | NDArray[np.integer],
        side: int = 8,
        fmt: str = "JPEG",
        quality: int = 95,
    ) -> bytes:
        image = render_digit(np.asarray(features, dtype=np.int64), side)
        options: dict[str, object] = {"quality": quality} if fmt == "JPEG" else {}
        return encode(image, fmt, **options)

    return _render


@pytest.fixture(scope="session")
def seven(split: Split) -> NDArray[np.int64]:
    """A held-out 7 the model reads correctly."""
    index = int(np.flatnonzero(split.y_test == 7)[0])
    row: NDArray[np.int64] = split.x_test[index].astype(np.int64)
    return row


EVALSET_PER_GROUP = 4
"""Images per group in the tests' small evaluation set: enough for a format and a floor."""


@pytest.fixture(scope="session")
def small_evalset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small evaluation set (every group, a few held-out digits each), rendered once."""
    folder = tmp_path_factory.mktemp("evalset")
    write_evalset(folder, EVALSET_PER_GROUP, seed=0)
    return folder
