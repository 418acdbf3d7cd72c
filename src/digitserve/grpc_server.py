"""The Open Inference Protocol over gRPC, served beside uvicorn in the same event loop.

`GrpcServer` is started and stopped by the app's lifespan, so it shares the worker's data plane
(models, batcher, metrics) with HTTP, and with `--workers N` each worker serves gRPC too: they
bind the one port with SO_REUSEPORT and the kernel spreads connections across them.

Every RPC passes `Traffic`, gRPC's counterpart of the HTTP middleware: API keys (`x-api-key` or
`authorization: Bearer` metadata), a bound on RPCs in flight (`max_concurrent_requests`, per
worker, as for HTTP), the request time limit, metrics and the access log (labelled
`protocol=grpc`), and the one mapping from `DigitserveError` to a gRPC status (`status_of`).
The transport bounds messages at `max_body_bytes` (RESOURCE_EXHAUSTED past it). `grpc.health.v1`
answers Kubernetes' gRPC probes. On SIGTERM the server drains with HTTP: readiness turns false
at once, and after `shutdown_delay_seconds` it stops taking RPCs and gives those running
`shutdown_timeout_seconds` to finish.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from digitserve.auth import KeyRing, presented_keys
from digitserve.dataplane import DataPlane
from digitserve.errors import (
    DigitserveError,
    InternalError,
    Overloaded,
    RequestTimeout,
    Unauthorized,
)
from digitserve.logs import (
    ACCESS_LOGGER,
    REQUEST_ID,
    SAFE_REQUEST_ID,
    log_access,
    new_request_id,
)
from digitserve.metrics import Metrics
from digitserve.protos import grpc_predict_v2_pb2_grpc as services
from digitserve.routes.inference_grpc import NOTES, SERVICE, CallNotes, InferenceService
from digitserve.settings import Settings

logger = logging.getLogger("digitserve")
access_logger = logging.getLogger(ACCESS_LOGGER)

HEALTH_SERVICE = "grpc.health.v1.Health"

LIVENESS, READINESS = "liveness", "readiness"
"""Health service names for Kubernetes probes that want one or the other (its docs suggest
these); "" and the inference service's own name report readiness."""

SERVICES = ("", LIVENESS, READINESS, SERVICE)
"""Every service name the health service answers for."""

STATUS_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.FAILED_PRECONDITION,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The gRPC status of each error class, by its HTTP status. Over a limit of the request itself
(413: too many images, an image of too many pixels) is INVALID_ARGUMENT: sending it again can
never work, where clients retry RESOURCE_EXHAUSTED. Load and unload outside explicit control
mode (403) are FAILED_PRECONDITION: the server's mode, not the caller, is what refuses."""

STATUS_BY_CODE = {"overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED}
"""Exceptions to `STATUS_BY_HTTP`: a full worker asks clients to back off and retry."""

ERROR_CODE_KEY = "digitserve-error-code"
"""Trailing metadata naming the error's stable code (`invalid_input`, ...), as REST's body does."""

REQUEST_ID_KEY = "x-request-id"
"""Metadata carrying the request id: the client's when it sends a plain one, echoed in trailers."""

RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""gRPC's own trailer telling a retrying client how long to wait (HTTP's Retry-After)."""

RETRY_PUSHBACK_MS = "1000"


def status_of(error: DigitserveError) -> grpc.StatusCode:
    """The gRPC status an error is reported with (see `STATUS_BY_HTTP`)."""
    return STATUS_BY_CODE.get(error.code) or STATUS_BY_HTTP.get(
        error.status, grpc.StatusCode.INTERNAL
    )


class GrpcServer:
    """One worker's gRPC server: built and bound by `start`, drained by `drain`, `stop`ped."""

    def __init__(
        self,
        settings: Settings,
        dataplane: DataPlane,
        metrics: Metrics,
        ring: KeyRing | None,
        draining: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.draining = draining
        self.traffic = Traffic(settings, metrics, ring)
        self.inference = InferenceService(dataplane, draining)
        self.health = Health(lambda: not draining() and dataplane.ready())
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._stopping: asyncio.Task[None] | None = None
        self._stop_timer: asyncio.TimerHandle | None = None

    def in_flight(self) -> int:
        """RPCs admitted and not yet answered (for the micro-batcher's count of requests)."""
        return self.traffic.in_flight

    async def start(self) -> int:
        """Bind the port and start serving; returns the port (useful when 0 was asked for)."""
        settings = self.settings
        assert settings.grpc_port is not None  # noqa: S101 - started only when a port is set
        server = grpc.aio.server(
            interceptors=[self.traffic],
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", settings.max_body_bytes),
                # Workers share the port; a single process must not share it by accident.
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            ],
        )
        services.add_GRPCInferenceServiceServicer_to_server(self.inference, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        address = f"{host}:{settings.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises on a failed bind, older versions return 0
            raise OSError(f"cannot serve gRPC on {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot serve gRPC on {address}: the port is not free")
        await server.start()
        self.server, self.port = server, port
        logger.info("serving the Open Inference Protocol over gRPC on %s:%d", host, port)
        return port

    def drain(self, delay: float) -> None:
        """Shutdown has begun (called on the loop from the SIGTERM handler): stop taking RPCs.

        Readiness is already false; the server stops after `delay`, or at once when called again
        (a second SIGTERM).
        """
        self.health.drain()
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None
            self._begin_stop()
            return
        if self._stopping is None:
            loop = asyncio.get_running_loop()
            self._stop_timer = loop.call_later(delay, self._begin_stop)

    def _begin_stop(self) -> None:
        self._stop_timer = None
        if self._stopping is None and self.server is not None:
            self._stopping = asyncio.create_task(self._stop(self.server))

    async def stop(self) -> None:
        """Stop taking RPCs, let running ones finish within the grace period, then close."""
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        self._begin_stop()
        if self._stopping is not None:
            await self._stopping

    async def _stop(self, server: grpc.aio.Server) -> None:
        self.health.drain()
        grace = self.settings.shutdown_timeout_seconds
        logger.info("gRPC: no new calls; waiting up to %g s for those running", grace)
        await server.stop(grace)


class Health:
    """`grpc.health.v1.Health`: SERVING while ready, for Kubernetes' gRPC probes.

    "", "readiness" and the inference service report readiness (every model loaded, no shutdown
    begun); "liveness" is SERVING while the process answers at all. `Watch` sends the status
    now, and NOT_SERVING when shutdown begins, then ends (so it never holds up a drain).
    """

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready
        self.drained = asyncio.Event()

    def drain(self) -> None:
        """Shutdown has begun: every service reports NOT_SERVING."""
        self.drained.set()

    def status(self, service: str) -> Any:
        """The service's status, or None for a service this server does not know."""
        if service == LIVENESS:
            return health_pb2.HealthCheckResponse.SERVING
        if service not in SERVICES:
            return None
        ready = self.ready() and not self.drained.is_set()
        return (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """The status now; NOT_FOUND for an unknown service, as the health protocol says."""
        status = self.status(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown service {request.service!r}; ask for '', {LIVENESS!r}, "
                f"{READINESS!r} or {SERVICE!r}",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Every service this server reports on, with its status now."""
        response = health_pb2.HealthListResponse()
        for service in SERVICES:
            response.statuses[service].status = self.status(service)
        return response

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The status now; once shutdown begins, the status then if it changed, and the end.

        An unknown service is SERVICE_UNKNOWN, as the health protocol says.
        """
        status = self.status(request.service)
        if status is None:
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        await context.write(health_pb2.HealthCheckResponse(status=status))
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            return
        await self.drained.wait()
        final = self.status(request.service)
        if final != status:
            await context.write(health_pb2.HealthCheckResponse(status=final))


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class Traffic(grpc.aio.ServerInterceptor):
    """Keys, admission, time limit, error status, metrics and the access log for every RPC.

    Health checks, like HTTP's probes, are never refused for load or cut short, need a key only
    with `auth_probes`, and are logged at debug level.
    """

    def __init__(self, settings: Settings, metrics: Metrics, ring: KeyRing | None) -> None:
        self.metrics = metrics
        self.ring = ring
        self.limit = settings.max_concurrent_requests
        self.timeout = settings.request_timeout_seconds
        self.access_log = settings.access_log
        self.in_flight = 0
        self._handlers: dict[str, tuple[Any, Any]] = {}
        self.overloaded = f"this worker is at its limit of {self.limit} calls in flight; retry"
        self.timed_out = f"the call was not answered within {self.timeout:g} s"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """The method's handler, wrapped once per method (unknown methods stay UNIMPLEMENTED)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        probe = method.startswith(f"/{HEALTH_SERVICE}/")
        if handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, probe),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream is not None:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._guarded(handler.unary_stream, probe),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        else:  # no such RPCs here; served as they are
            wrapped = handler
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def _unary(self, behavior: Behavior, method: str, probe: bool) -> Behavior:
        async def serve(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await self.serve(behavior, request, context, method, probe)

        return serve

    def _guarded(self, behavior: Behavior, probe: bool) -> Behavior:
        """A streaming RPC (health's Watch): only the key check applies."""

        async def serve(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                self.authenticate(context.invocation_metadata() or (), probe)
            except Unauthorized as exc:
                await context.abort(status_of(exc), exc.detail)
            return await behavior(request, context)

        return serve

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]], probe: bool) -> None:
        """Raise `Unauthorized` unless the call carries good keys (or needs none)."""
        ring = self.ring
        if ring is None or (probe and not ring.protect_probes):
            return
        presented = presented_keys(
            (
                key.encode("latin-1"),
                value if isinstance(value, bytes) else value.encode("latin-1", "replace"),
            )
            for key, value in metadata
        )
        if not ring.admits(presented):
            raise Unauthorized(
                "the API key is not valid"
                if presented
                else "an API key is required: send the metadata authorization: Bearer <key>, "
                "or x-api-key: <key>"
            )

    async def serve(
        self,
        behavior: Behavior,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        probe: bool,
    ) -> Any:
        """Run one unary RPC under the rules above, and record it."""
        started = time.perf_counter()
        metadata = context.invocation_metadata() or ()
        request_id = next((str(value) for key, value in metadata if key == REQUEST_ID_KEY), "")
        if not SAFE_REQUEST_ID.match(request_id):
            request_id = new_request_id()
        REQUEST_ID.set(request_id)
        notes = CallNotes()
        NOTES.set(notes)
        trailers: list[tuple[str, str]] = [(REQUEST_ID_KEY, request_id)]
        error: DigitserveError | None = None
        admitted = False
        try:
            self.authenticate(metadata, probe)
            if not probe and self.in_flight >= self.limit:
                trailers.append((RETRY_PUSHBACK_KEY, RETRY_PUSHBACK_MS))
                raise Overloaded(self.overloaded, limit=self.limit)
            admitted = True
            self.in_flight += 1
            self.metrics.in_flight.inc()
            if probe:
                response = await behavior(request, context)
            else:
                async with asyncio.timeout(self.timeout):
                    response = await behavior(request, context)
        except DigitserveError as exc:
            error = exc
        except TimeoutError:
            error = RequestTimeout(self.timed_out, limit_seconds=self.timeout)
        except asyncio.CancelledError:
            # The client went away, or its own deadline passed: nobody is left to answer.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            status = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            self.record(method, probe, status, None, started, notes, context, request)
            raise
        except Exception:
            logger.exception("unhandled error in %s", method)
            error = InternalError("internal error; quote the request id when reporting it")
        finally:
            if admitted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
        if error is None:
            context.set_trailing_metadata(trailers)
            self.record(method, probe, grpc.StatusCode.OK, None, started, notes, context, request)
            return response
        status = status_of(error)
        self.record(method, probe, status, error.code, started, notes, context, request)
        await context.abort(
            status, error.detail, trailing_metadata=(*trailers, (ERROR_CODE_KEY, error.code))
        )

    def record(
        self,
        method: str,
        probe: bool,
        status: grpc.StatusCode,
        code: str | None,
        started: float,
        notes: CallNotes,
        context: grpc.aio.ServicerContext[Any, Any],
        request: Any,
    ) -> None:
        """Count the call in the metrics and write its access line."""
        seconds = time.perf_counter() - started
        status_name = status.name
        self.metrics.observe_request(method, "POST", status_name, seconds, protocol="grpc")
        if code is not None:
            self.metrics.observe_error(code)
        if not self.access_log:
            return
        level = logging.DEBUG if probe else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        model, version = notes.model or (None, None)
        fields = {
            "protocol": "grpc",
            "path": method,
            "route": method,
            "grpc_status": status_name,
            "duration_ms": round(seconds * 1000, 3),
            "model": model,
            "model_version": version,
            "body_bytes": request.ByteSize(),
            "images": notes.images,
            "code": code,
            "client": context.peer(),
        }
        args = (method, status_name, seconds * 1000)
        log_access(access_logger, level, "gRPC %s %s %.1f ms", args, fields)
