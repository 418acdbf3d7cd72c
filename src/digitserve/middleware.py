"""What every HTTP request goes through: a bound on work in flight, a time limit, metrics, a log.

Pure ASGI (no framework objects per request), one layer, so the hot path pays for one closure and a
few dict lookups. It sits inside `RequestContextMiddleware`, which has already tagged the request
with its id and turns any unhandled fault into the 500 envelope.
"""

import asyncio
import ctypes
import functools
import gc
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitserve.errors import (
    PROBLEM_MEDIA_TYPE,
    DigitserveError,
    Overloaded,
    RequestTimeout,
    problem,
)
from digitserve.logs import ACCESS_LOGGER, log_access
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
this request under the in-flight bound (True), found the worker full (False), or will decide once
the body has arrived whole (None: the body is still on its way). Absent under other servers, where
the middleware counts the requests it sees itself."""

RELEASE_DELAY_SECONDS = 0.1
"""How long after a request that used much memory it is given back (see `MemoryRelease`)."""

RELEASE_INTERVAL_SECONDS = 1.0
"""Least time between two releases of memory (see `MemoryRelease`)."""

RELEASE_AFTER_BODY_BYTES = 1024 * 1024
"""A request that received a body this large is followed by a `MemoryRelease`."""

_CLOSE = (b"connection", b"close")
_COUNT_HERE: Final = object()
"""`ADMITTED_KEY` absent: no server decided, the middleware counts."""


class TrafficMiddleware:
    """Bound work in flight and time per request; record each request in metrics and the log.

    Work in flight is what the worker has admitted and not yet answered: requests in the app and
    requests queued behind them (see `ADMITTED_KEY`). Past the bound the excess is answered at
    once with 503 `overloaded`, so latency stays bounded instead of growing with the queue; refused
    requests do not count, so the admitted ones keep the worker busy (no collapse into refusals).

    A request whose body is still arriving is not work in flight: it runs (its route reads the
    body) but holds no place until the body is complete, and is refused then if the worker is full
    (`Upload`). What such uploads hold is bounded instead by `max_buffered_body_bytes`, for the
    whole worker. Error answers and large bodies are followed by a `MemoryRelease`.
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics, state: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.state = state
        self.limit = settings.max_concurrent_requests
        self.timeout = settings.request_timeout_seconds
        self.access_log = settings.access_log
        self.in_flight = 0
        self.buffer_limit = settings.max_buffered_body_bytes
        self.buffered = 0
        """Body bytes received so far by requests whose bodies did not arrive whole (`Upload`)."""
        self.release = MemoryRelease(busy=lambda: self.in_flight > 0)
        self.overloaded = f"this worker is at its limit of {self.limit} requests in flight; retry"
        self.buffers_full = (
            f"this worker holds its limit of {self.buffer_limit} bytes of request bodies; retry"
        )
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
        admitted = scope.get(ADMITTED_KEY, _COUNT_HERE)
        full = admitted is False or (admitted is _COUNT_HERE and self.in_flight >= self.limit)
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
        upload = None
        if admitted is None and not operations:
            upload = Upload(self, scope, receive)
            receive = upload.receive
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
            if upload is not None:
                self.buffered -= upload.held
            if status >= 400 or (upload is not None and upload.held >= RELEASE_AFTER_BODY_BYTES):
                self.release.soon()
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
        log_access(
            access_logger,
            level,
            "%s %s %d %.1f ms",
            (method, scope["path"], status, seconds * 1000),
            fields,
        )


class MemoryRelease:
    """Give memory back once a request that used much of it is over: collect, then trim the heap.

    Collect: what a failed request allocated can sit in a reference cycle through an exception's
    traceback, which the collector, left to itself, may not visit for long (a refused 40-megapixel
    image kept 455 MB on an idle worker until later traffic). `routes.direct.problem_response`
    breaks the cycles of the errors it answers; this catches the rest. Trim: glibc keeps freed
    memory inside its heaps; after eight concurrent batches of 64 base64 images a worker stayed
    21 MiB above its baseline until `malloc_trim` handed it back (see also
    `server.fix_malloc_thresholds`).

    Not at once: for a moment after the answer the exception is still referenced (the worker
    thread that raised it lets go only when it next holds the interpreter lock), and collecting
    then would only move the cycle to the oldest generation, which the collector seldom visits.
    So a release comes `RELEASE_DELAY_SECONDS` after the request, and no sooner than
    `RELEASE_INTERVAL_SECONDS` after the last one: a collection took 1-9 ms on the event loop.
    The trim (up to 18 ms) waits for a moment when the worker has no request in hand, rather
    than hold up requests; a busy worker reuses that memory anyway.
    """

    def __init__(self, busy: Callable[[], bool]) -> None:
        self.busy = busy
        self.pending: asyncio.TimerHandle | None = None
        self.last = -RELEASE_INTERVAL_SECONDS
        self.again = False

    def soon(self) -> None:
        """Release memory shortly (or once more after the release already pending)."""
        if self.pending is not None:
            self.again = True
            return
        loop = asyncio.get_running_loop()
        at = max(loop.time() + RELEASE_DELAY_SECONDS, self.last + RELEASE_INTERVAL_SECONDS)
        self.pending = loop.call_at(at, self._release)

    def _release(self) -> None:
        """Collect garbage, and trim the heap if the worker is idle; else try again later."""
        self.pending = None
        self.last = asyncio.get_running_loop().time()
        gc.collect()
        trim = malloc_trim()
        if trim is not None and self.busy():
            self.again = True
        elif trim is not None:
            trim(0)
        if self.again:
            self.again = False
            self.soon()


@functools.cache
def malloc_trim() -> Callable[[int], int] | None:
    """The C library's `malloc_trim` (glibc's: it returns every arena's free memory), or None."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class Upload:
    """`receive` for a request whose body was still arriving when the app started.

    Its bytes count against the worker's `max_buffered_body_bytes` while the request lasts (past
    it: 503 `overloaded`, and the connection is closed, as the rest of the body is unread). When
    the last of the body arrives, the server has decided whether to admit the request (see
    `ADMITTED_KEY`); a request the worker is too full to run is refused then, with 503 `overloaded`.
    Either refusal is raised from `receive`, so the route that reads the body answers it.
    """

    def __init__(self, traffic: TrafficMiddleware, scope: Scope, receive: Receive) -> None:
        self.traffic = traffic
        self.scope = scope
        self.upstream = receive
        self.held = 0
        """Body bytes this request has received, counted in `traffic.buffered`."""

    async def receive(self) -> Message:
        """The next message, counted; refuse the request when a bound says so."""
        message = await self.upstream()
        if message["type"] != "http.request":
            return message
        traffic = self.traffic
        size = len(message.get("body", b""))
        if traffic.buffered + size > traffic.buffer_limit:
            raise Overloaded(
                traffic.buffers_full,
                headers={"Retry-After": RETRY_AFTER_SECONDS, "Connection": "close"},
                limit_bytes=traffic.buffer_limit,
            )
        traffic.buffered += size
        self.held += size
        if not message.get("more_body", False) and self.scope.get(ADMITTED_KEY) is False:
            raise Overloaded(
                traffic.overloaded,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
                limit=traffic.limit,
            )
        return message


def _client(scope: Scope) -> str | None:
    """The peer address as host:port, when the server knows it."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None
