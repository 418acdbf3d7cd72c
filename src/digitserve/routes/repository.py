"""The Open Inference Protocol's model repository extension, as Triton and MLServer serve it.

`POST /v2/repository/index` lists every model and version with its state; `…/models/{name}/load`
re-reads that model's folder (new versions appear, removed ones go) and `…/unload` stops serving
it. Load and unload are allowed only in the `explicit` model control mode.
"""

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from digitserve.dataplane import DataPlane
from digitserve.dependencies import get_dataplane
from digitserve.errors import InvalidInput
from digitserve.repository import State, VersionStatus
from digitserve.routes.bodies import read_body
from digitserve.schemas import RepositoryIndexEntry, problem_responses

router = APIRouter(prefix="/v2/repository", tags=["repository"])

MAX_CONTROL_BODY = 64 * 1024
"""Control bodies are a few bytes of JSON: anything larger is not one."""

_STATUS_DESCRIPTIONS = {
    400: "Malformed request body (`invalid_input`).",
    403: "Load and unload are off: the server runs in model control mode `none` or `poll` "
    "(`model_control_disabled`).",
    404: "No model of that name in the repository (`model_not_found`).",
}


@router.post(
    "/index",
    response_model=list[RepositoryIndexEntry],
    summary="Repository index: every model and version, with its state",
    responses=problem_responses(_STATUS_DESCRIPTIONS, 400),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/RepositoryIndexRequest"}
                }
            },
        }
    },
)
async def index(request: Request) -> Response:
    """List every model and version; `{"ready": true}` lists only those ready to serve."""
    body = await read_body(request, MAX_CONTROL_BODY)
    only_ready = _ready_flag(body)
    lines = get_dataplane(request).repository.index()
    if only_ready:
        lines = [line for line in lines if line.state is State.READY]
    return Response(orjson.dumps([_entry(line) for line in lines]), media_type="application/json")


@router.post(
    "/models/{model_name}/load",
    summary="Load (or reload) a model from the repository folder",
    responses={
        200: {"description": "Loaded: every version's state, as in the index."},
        **problem_responses(_STATUS_DESCRIPTIONS, 400, 403, 404),
    },
)
async def load(request: Request, model_name: str) -> Response:
    """Re-read one model's folder; a new version serves once it loaded and passed a warm-up."""
    await read_body(request, MAX_CONTROL_BODY)
    return _index_response(await get_dataplane(request).load(model_name))


@router.post(
    "/models/{model_name}/unload",
    summary="Stop serving a model",
    responses={
        200: {"description": "Unloaded: every version is UNAVAILABLE."},
        **problem_responses(_STATUS_DESCRIPTIONS, 400, 403, 404),
    },
)
async def unload(request: Request, model_name: str) -> Response:
    """Stop serving a model; requests already running on it finish."""
    await read_body(request, MAX_CONTROL_BODY)
    dataplane: DataPlane = get_dataplane(request)
    return _index_response(await dataplane.unload(model_name))


def _ready_flag(body: bytes) -> bool:
    """Read the optional `{"ready": bool}` body of an index request."""
    if not body.strip():
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the index request is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not set(document) <= {"ready"}:
        raise InvalidInput('the index request must be {} or {"ready": true|false}')
    ready = document.get("ready", False)
    if type(ready) is not bool:
        raise InvalidInput('"ready" must be true or false')
    return ready


def _entry(line: VersionStatus) -> dict[str, Any]:
    """One index line as the protocol writes it."""
    return {
        "name": line.name,
        "version": line.version,
        "state": line.state.value,
        "reason": line.reason,
    }


def _index_response(lines: list[VersionStatus]) -> Response:
    """The states after a load or unload."""
    return Response(
        orjson.dumps({"models": [_entry(line) for line in lines]}),
        media_type="application/json",
    )
