"""Typed FastAPI dependencies: how a route handler reaches the model and the settings."""

from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Request

from digitserve.batching import MicroBatcher
from digitserve.classifier import Classifier
from digitserve.errors import ModelNotReady
from digitserve.metrics import Metrics
from digitserve.settings import Settings


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_classifier(request: Request) -> Classifier:
    """The loaded model, or 503 while it is not (yet, or any more) ready to serve."""
    classifier: Classifier | None = getattr(request.app.state, "classifier", None)
    if classifier is None or not request.app.state.ready:
        raise ModelNotReady("the model is not ready to serve; retry shortly")
    return classifier


def get_metrics(request: Request) -> Metrics:
    """The app's own metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_batcher(request: Request) -> MicroBatcher:
    """What makes the model calls, batching concurrent requests (see `digitserve.batching`)."""
    batcher: MicroBatcher = request.app.state.batcher
    return batcher


def get_preprocess_limiter(request: Request) -> CapacityLimiter:
    """The bound on threads preprocessing large images: a token is held until its thread is done.

    Pass it to `offload.run_sync`, which keeps that promise when the request runs out of time
    (see `preprocess_threads`).
    """
    limiter: CapacityLimiter = request.app.state.preprocess_limiter
    return limiter


# FastAPI runs a plain `def` dependency on a worker thread: a thread hop per request for an
# attribute read. The async twins below run inline on the event loop. (The prediction routes use
# none: they call the getters directly, see `routes.direct`.)


async def _settings(request: Request) -> Settings:
    """`get_settings`, inline."""
    return get_settings(request)


async def _classifier(request: Request) -> Classifier:
    """`get_classifier`, inline."""
    return get_classifier(request)


async def _metrics(request: Request) -> Metrics:
    """`get_metrics`, inline."""
    return get_metrics(request)


SettingsDep = Annotated[Settings, Depends(_settings)]
ClassifierDep = Annotated[Classifier, Depends(_classifier)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
