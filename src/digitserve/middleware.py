"""What every HTTP request goes through: a bound on work in flight, a time limit, metrics, a log.

Pure ASGI (no framework objects per request), one layer, so the hot path pays for one closure and a
few dict lookups. It sits inside `RequestContextMiddleware`, which has already tagged the request
with its id and turns any unhandled fault into the 500 envelope.
"""

import asyncio
import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitserve.errors import (
    PROBLEM_MEDIA_TYPE,
    DigitserveError,
    Overloaded,
    RequestTimeout,
    problem,
)
from digitserve.logs import ACCESS_LOGGER, FIELDS_ATTRIBUTE
from digitserve.metrics import UNMATCHED_ROUTE, Metrics
from digitserve.settings import Settings

access_logger = logging.getLogger(ACCESS_LOGGER)

OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: never refused for load or cut short (a busy worker is still alive), and
logged at debug level so that a probe every few seconds does not drown the access log."""

RETRY_AFTER_SECONDS = "1"
"""What an overloaded worker tells clients to wait: requests here take milliseconds."""

ERROR_CODE_KEY = "error_code"
"""The request-state key under which the error handler leaves the code of an error response."""

BODY_BYTES_KEY = "body_bytes"
"""The request-state key under which a prediction route leaves the size of the body it read."""

IMAGES_KEY = "images"
"""The request-state key under which a prediction route leaves how many images it classified."""

MODEL_KEY = "model"
"""The request-state key under which a prediction route leaves the (name, version) that answered."""

ADMITTED_KEY = "digitserve.admitted"
"""The scope key under which the server (`server.HeaderDeadlineProtocol`) says whether it admitted
this request under the in-flight bound (True) or found the worker full (False). Absent under other
servers, where the middleware counts the requests it sees itself."""

_CLOSE = (b"connection", b"close")


class TrafficMiddleware:
    """Bound work in flight and time per request; record each request in metrics and the log.

    Work in flight is what the worker has admitted and not yet answered: requests in the app and
    requests queued behind them (see `ADMITTED_KEY`). Past the bound the excess is answered at
    once with 503 `overloaded`, so latency stays bounded instead of growing with the queue; refused
    requests do not count, so the admitted ones keep the worker busy (no collapse into refusals).
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics, state: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.state = state
        self.limit = settings.max_concurrent_requests
        self.timeout = settings.request_timeout_seconds
        self.access_log = settings.access_log
        self.in_flight = 0
        self.overloaded = f"this worker is at its limit of {self.limit} requests in flight; retry"
        self.timed_out = f"the request was not received and answered within {self.timeout:g} s"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Guard, time and record one HTTP request; pass anything else through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False
        draining = getattr(self.state, "draining", False)

        async def send_and_watch(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                if draining:
                    message["headers"] = [*message.get("headers", ()), _CLOSE]
            await send(message)

        operations = scope["path"] in OPERATIONS_PATHS
        # Requests answered on the event loop never overlap in the app: those waiting behind one
        # are tasks not yet started, which only the server counts.
        admitted = scope.get(ADMITTED_KEY)
        full = admitted is False or (admitted is None and self.in_flight >= self.limit)
        if not operations and full:
            await self._refuse(
                Overloaded(
                    self.overloaded,
                    headers={"Retry-After": RETRY_AFTER_SECONDS},
                    limit=self.limit,
                ),
                scope,
                send_and_watch,
            )
            self._record(scope, status, started)
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            if operations:
                await self.app(scope, receive, send_and_watch)
            else:
                async with asyncio.timeout(self.timeout):
                    await self.app(scope, receive, send_and_watch)
        except TimeoutError:
            if response_started:
                raise
            await self._refuse(
                RequestTimeout(
                    self.timed_out,
                    headers={"Connection": "close"},
                    limit_seconds=self.timeout,
                ),
                scope,
                send_and_watch,
            )
        except Exception:
            scope.setdefault("state", {})[ERROR_CODE_KEY] = "internal_error"
            raise
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            self._record(scope, status, started)

    async def _refuse(self, error: DigitserveError, scope: Scope, send: Send) -> None:
        """Answer with an error envelope straight from the middleware."""
        state = scope.setdefault("state", {})
        state[ERROR_CODE_KEY] = error.code
        body = orjson.dumps(problem(error, state.get("request_id")))
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
        ]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, started: float) -> None:
        """Count the request in the metrics and write its access line."""
        seconds = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED_ROUTE
        method = scope["method"]
        self.metrics.observe_request(template, method, status, seconds)
        state = scope.get("state") or {}
        code = state.get(ERROR_CODE_KEY)
        if code is not None:
            self.metrics.observe_error(code)
        if not self.access_log:
            return
        level = logging.DEBUG if scope["path"] in OPERATIONS_PATHS else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        fields = {
            "protocol": "http",
            "method": method,
            "path": scope["path"],
            "route": template,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "model": (state.get(MODEL_KEY) or (None, None))[0],
            "model_version": (state.get(MODEL_KEY) or (None, None))[1],
            "body_bytes": state.get(BODY_BYTES_KEY),
            "images": state.get(IMAGES_KEY),
            "code": code,
            "client": _client(scope),
        }
        access_logger.log(
            level,
            "%s %s %d %.1f ms",
            method,
            scope["path"],
            status,
            seconds * 1000,
            extra={FIELDS_ATTRIBUTE: fields},
        )


def _client(scope: Scope) -> str | None:
    """The peer address as host:port, when the server knows it."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None
