"""The ASGI application: built by `create_app(settings)`, nothing at import time."""

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitserve import __version__
from digitserve.auth import KeyRing, key_ring
from digitserve.classifier import Classifier
from digitserve.dataplane import ControlMode, DataPlane
from digitserve.errors import (
    PROBLEM_MEDIA_TYPE,
    DigitserveError,
    InternalError,
    InvalidInput,
    MethodNotAllowed,
    RouteNotFound,
    problem,
)
from digitserve.hardening import (
    ApiKeyMiddleware,
    SecurityHeadersMiddleware,
    TrailingSlashMiddleware,
)
from digitserve.logs import REQUEST_ID, SAFE_REQUEST_ID, new_request_id
from digitserve.metrics import Metrics
from digitserve.middleware import TrafficMiddleware
from digitserve.routes import health, metrics, page, repository, v1, v2
from digitserve.routes.direct import DirectRoute, DirectRoutes, problem_response
from digitserve.schemas import REQUEST_SCHEMAS, problem_examples
from digitserve.settings import Settings
from digitserve.shutdown import drain_on_sigterm

if TYPE_CHECKING:
    from digitserve.grpc_server import GrpcServer

logger = logging.getLogger("digitserve")

REQUEST_ID_HEADER = "x-request-id"

DESCRIPTION = """\
Reads hand-drawn digits. Send a JPEG or PNG (raw body, multipart, or base64 in JSON) to
`POST /v1/models/digits:predict` and get back the digit, how sure the model is, a score per class
and, with `?include=pixels`, the 8x8 grid the model saw. `GET /v1/models/digits` describes the model
and its input contract; every error is an RFC 9457 problem document whose `code` is listed at
`GET /v1/errors`.
"""


DIRECT_ROUTES = (
    DirectRoute("/v1/models/{model_name}:predict", v1.predict_request),
    DirectRoute("/v1/models/{model_name}/versions/{model_version}:predict", v1.predict_version),
    DirectRoute("/v2/models/{model_name}/infer", v2.infer),
    DirectRoute("/v2/models/{model_name}/versions/{model_version}/infer", v2.infer_version),
)
"""The prediction routes, served by `DirectRoutes` (FastAPI declares them for OpenAPI)."""


def create_app(
    settings: Settings,
    classifier: Classifier | None = None,
    *,
    dataplane: DataPlane | None = None,
    handle_sigterm: bool = False,
    direct_routes: bool = True,
    admitted: Callable[[], int] | None = None,
) -> FastAPI:
    """Build the service; its models are loaded in the lifespan unless handed in.

    `dataplane` is one already started (the CLI starts it before the port opens, so that a bad
    model stops start-up); else the lifespan builds one for `classifier` alone, when one is given
    (tests, Ray), or from the settings' model file or repository.

    `handle_sigterm` (for the process that runs the server, not for tests or Ray) drains on
    SIGTERM: see `digitserve.shutdown`. `direct_routes=False` leaves the prediction routes to
    FastAPI, as tests do to check that both paths answer alike. `admitted` counts the requests in
    the worker (the server's count, see `server.Admission`), so that a request alone is predicted
    without waiting for a batch; without it any request may wait one loop turn for others.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        plane = dataplane
        if plane is None:
            plane = DataPlane(
                settings, app.state.metrics, admitted=admitted or _unknown, classifier=classifier
            )
            await anyio.to_thread.run_sync(plane.start)
        app.state.dataplane = plane
        plane.log_index(plane.repository.index())
        app.state.draining = False
        counted = plane.admitted
        grpc_server = await _start_grpc(app, plane) if settings.grpc_port is not None else None
        app.state.grpc = grpc_server
        restore_sigterm = (
            drain_on_sigterm(_start_draining(app, grpc_server), settings.shutdown_delay_seconds)
            if handle_sigterm
            else lambda: None
        )
        poller = (
            asyncio.create_task(plane.poll_forever(settings.model_poll_seconds))
            if plane.control_mode is ControlMode.POLL
            else None
        )
        app.state.ready = True
        yield
        if poller is not None:
            poller.cancel()
        restore_sigterm()
        if grpc_server is not None:
            await grpc_server.stop()
            plane.admitted = counted
        app.state.ready = False

    app = FastAPIOffline(
        title="digitserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url="/docs-assets",
        redoc_url="/redoc",
        # The service exports Prometheus metrics of its own; FastAPI's OpenTelemetry hooks would
        # look up tracer and meter providers (and the environment) on every request for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        # Starlette would redirect `/v1/` to `/v1` with a URL built from the Host header (an open
        # redirect); `TrailingSlashMiddleware` answers the slashed paths directly instead.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.dataplane = None
    app.state.ready = False
    app.state.draining = False
    app.state.grpc = None
    app.state.metrics = Metrics() if dataplane is None else dataplane.metrics

    app.include_router(health.router)
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    app.include_router(metrics.router)
    app.include_router(page.page_router())

    app.add_exception_handler(DigitserveError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    if direct_routes:
        app.add_middleware(DirectRoutes, routes=DIRECT_ROUTES)
    ring = key_ring(settings.all_api_keys(), protect_probes=settings.auth_probes)
    if ring is not None:
        app.add_middleware(ApiKeyMiddleware, ring=ring)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
            max_age=600,
        )
    app.add_middleware(
        TrafficMiddleware, settings=settings, metrics=app.state.metrics, state=app.state
    )
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(TrailingSlashMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    app.state.key_ring = ring
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _unknown() -> int:
    """No count from the server: as if the worker always held requests still to come."""
    return sys.maxsize


def _start_draining(app: FastAPI, grpc_server: "GrpcServer | None") -> Callable[[], None]:
    """What SIGTERM does first: /readyz turns 503 while requests are still served.

    gRPC's readiness turns false too, and its server stops after the same delay as HTTP's
    listener closes.
    """
    loop = asyncio.get_running_loop()
    delay = app.state.settings.shutdown_delay_seconds

    def start() -> None:
        app.state.draining = True
        if grpc_server is not None:  # a signal handler: only the thread-safe call is safe here
            loop.call_soon_threadsafe(grpc_server.drain, delay)

    return start


async def _start_grpc(app: FastAPI, plane: DataPlane) -> "GrpcServer":
    """Serve gRPC from this worker over its data plane, its calls counted with HTTP's requests.

    Imported here: grpc is loaded only by servers that use it, and only after gunicorn forks.
    """
    from digitserve.grpc_server import GrpcServer

    server = GrpcServer(
        app.state.settings,
        plane,
        app.state.metrics,
        app.state.key_ring,
        draining=lambda: bool(app.state.draining),
    )
    await server.start()
    http = plane.admitted
    plane.admitted = lambda: http() + server.in_flight()
    return server


class RequestContextMiddleware:
    """Tag each request with an id, and turn any unhandled fault into the 500 envelope.

    The id is the client's X-Request-ID when it is sane, else a new one; it is echoed in the
    response. A fault is logged with its traceback and answered without internals.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Tag HTTP requests; pass anything else through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        if not SAFE_REQUEST_ID.match(request_id):
            request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        REQUEST_ID.set(request_id)
        header = (b"x-request-id", request_id.encode("latin-1"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            error = InternalError("internal error; quote the request_id when reporting it")
            response = Response(
                orjson.dumps(problem(error, request_id)),
                status_code=error.status,
                media_type=PROBLEM_MEDIA_TYPE,
            )
            await response(scope, receive, send_with_id)


async def _service_error(request: Request, exc: Exception) -> Response:
    """The service's own errors."""
    assert isinstance(exc, DigitserveError)  # noqa: S101 - registered for this class only
    return problem_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """The framework's 404 and 405 (and any other HTTP exception), in the same envelope."""
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this class only
    error: DigitserveError
    if exc.status_code == 404:
        error = RouteNotFound(f"no route for {request.method} {request.url.path}; see /v1 or /docs")
    elif exc.status_code == 405:
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}",
            headers=dict(exc.headers or {}),
        )
    else:
        error = DigitserveError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status = exc.status_code  # type: ignore[misc]
    return problem_response(request, error)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """Query or path parameters the framework rejected: a 400 naming each bad field."""
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this class only
    reasons = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return problem_response(request, InvalidInput(f"invalid request: {reasons}"))


PATH_EXAMPLES = {"model_version": "1"}
"""Values Swagger UI fills in for path parameters (`model_name`: the default model's name)."""

_FRAMEWORK_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the schemas of bodies that handlers read by hand."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(model, "validation") for model in REQUEST_SCHEMAS],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            definitions.get("$defs", {})
        )
        examples = {**PATH_EXAMPLES, "model_name": app.state.settings.model_name}
        _as_served(schema, examples)
        if app.state.key_ring is not None:
            _document_api_keys(schema, app.state.key_ring)
        app.openapi_schema = schema
    return app.openapi_schema


def _as_served(schema: dict[str, Any], examples: dict[str, str]) -> None:
    """Document what the service answers, not what FastAPI would have, and fill in examples.

    FastAPI declares a 422 `HTTPValidationError` on every route with parameters, and every error
    as `application/json` too; the service answers bad parameters with a 400 problem document,
    and every error as `application/problem+json` only. Each error status gets examples of its
    own codes: without them Swagger UI shows the schema's one example under every status.
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            for status, response in list(responses.items()):
                content = response.get("content", {})
                if any(_is_framework_schema(entry) for entry in content.values()):
                    del responses[status]
                elif PROBLEM_MEDIA_TYPE in content:
                    content.pop("application/json", None)
                    problems = content[PROBLEM_MEDIA_TYPE]
                    problems.setdefault("examples", problem_examples(int(status)))
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in examples:
                    parameter["example"] = examples[parameter["name"]]
    for name in _FRAMEWORK_SCHEMAS:
        schema.get("components", {}).get("schemas", {}).pop(name, None)


def _is_framework_schema(media: dict[str, Any]) -> bool:
    """Whether a response's content is FastAPI's validation error, which is never sent."""
    reference = str(media.get("schema", {}).get("$ref", ""))
    return reference.rsplit("/", 1)[-1] in _FRAMEWORK_SCHEMAS


def _document_api_keys(schema: dict[str, Any], ring: KeyRing) -> None:
    """Declare both ways to send a key, and the 401, on every operation that needs one."""
    schema["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    unauthorized = {
        "description": "No valid API key (`unauthorized`); see the WWW-Authenticate header.",
        "content": {
            PROBLEM_MEDIA_TYPE: {
                "schema": {"$ref": "#/components/schemas/Problem"},
                "examples": problem_examples(401),
            }
        },
    }
    for path, operations in schema.get("paths", {}).items():
        if not ring.guards(path):
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation.setdefault("responses", {})["401"] = unauthorized
