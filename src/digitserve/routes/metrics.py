"""`GET /metrics`: the Prometheus scrape endpoint."""

from fastapi import APIRouter, Response

from digitserve.dependencies import MetricsDep
from digitserve.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."}},
)
async def metrics(collected: MetricsDep) -> Response:
    """Every metric of this server, summed over its worker processes."""
    return Response(collected.render(), media_type=CONTENT_TYPE)
