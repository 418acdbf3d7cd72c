"""Typed FastAPI dependencies: how a route handler reaches the model and the settings."""

from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Request

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


def get_preprocess_limiter(request: Request) -> CapacityLimiter:
    """The bound on how many requests preprocess large images at once (see `preprocess_threads`)."""
    limiter: CapacityLimiter = request.app.state.preprocess_limiter
    return limiter


SettingsDep = Annotated[Settings, Depends(get_settings)]
PreprocessLimiterDep = Annotated[CapacityLimiter, Depends(get_preprocess_limiter)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
