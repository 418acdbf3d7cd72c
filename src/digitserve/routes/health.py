"""Liveness and readiness probes for orchestrators and load balancers."""

from fastapi import APIRouter, Request

from digitserve.dependencies import DataPlaneDep
from digitserve.errors import PROBLEM_MEDIA_TYPE, ModelNotReady
from digitserve.repository import State
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
async def ready(request: Request, dataplane: DataPlaneDep) -> Health:
    """200 once every model the repository should serve is loaded and warmed up, until SIGTERM."""
    if request.app.state.draining:
        raise ModelNotReady("the server is shutting down; send requests elsewhere")
    if not dataplane.ready():
        unavailable = [
            f"{line.name}/{line.version or '-'}: {line.reason}"
            for line in dataplane.repository.index()
            if line.state is not State.READY and line.reason != "unloaded"
        ]
        raise ModelNotReady("not every model is ready: " + "; ".join(unavailable[:5]))
    served = dataplane.default_model()
    return Health(status="ready", model={"name": served.name, "version": served.version})
