"""Typed FastAPI dependencies: how a route handler reaches the model and the settings."""

from typing import Annotated

from fastapi import Depends, Request

from digitserve.dataplane import DataPlane, ServedModel
from digitserve.errors import ModelNotReady
from digitserve.metrics import Metrics
from digitserve.settings import Settings


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_dataplane(request: Request) -> DataPlane:
    """The data plane, or 503 while the models are not (yet, or any more) loaded."""
    dataplane: DataPlane | None = request.app.state.dataplane
    if dataplane is None or not request.app.state.ready:
        raise ModelNotReady("the models are not ready to serve; retry shortly")
    return dataplane


def get_model(request: Request, name: str, version: str | None = None) -> ServedModel:
    """The version of a model that answers: 404 for unknown names and versions, 503 not ready."""
    return get_dataplane(request).model(name, version)


def get_metrics(request: Request) -> Metrics:
    """The app's own metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


# FastAPI runs a plain `def` dependency on a worker thread: a thread hop per request for an
# attribute read. The async twins below run inline on the event loop. (The prediction routes use
# none: they call the getters directly, see `routes.direct`.)


async def _dataplane(request: Request) -> DataPlane:
    """`get_dataplane`, inline."""
    return get_dataplane(request)


async def _metrics(request: Request) -> Metrics:
    """`get_metrics`, inline."""
    return get_metrics(request)


MetricsDep = Annotated[Metrics, Depends(_metrics)]
DataPlaneDep = Annotated[DataPlane, Depends(_dataplane)]
