"""Liveness and readiness probes for orchestrators and load balancers."""

from fastapi import APIRouter, Request

from digitserve.dependencies import ClassifierDep
from digitserve.errors import PROBLEM_MEDIA_TYPE, ModelNotReady
from digitserve.schemas import Health, Problem

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
async def live() -> Health:
    """Answer while the process can serve HTTP at all."""
    return Health(status="alive")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: the model is loaded and warmed up, and no shutdown has begun",
    responses={503: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}},
)
async def ready(request: Request, classifier: ClassifierDep) -> Health:
    """Answer 200 only once the model has loaded and made a warm-up prediction, until SIGTERM."""
    if request.app.state.draining:
        raise ModelNotReady("the server is shutting down; send requests elsewhere")
    return Health(status="ready", model={"name": classifier.name, "version": classifier.version})
