"""The prediction routes, served without the framework's per-request machinery.

For every request FastAPI matches the path against each route in turn, solves the route's
dependencies and validates its parameters, and passes through two more middleware layers. For a
prediction that is about 150 µs (measured on our 2-core VM), more than the model's own predict
call. The prediction handlers need none of it: they take the request and their path parameters
and read everything else themselves. `DirectRoutes` matches their paths and calls them straight
away; FastAPI still declares the same routes (OpenAPI, /docs), and serves them when this layer is
not installed. Tests check that both give the same answers.

The layer sits inside the service's own middleware (request id, load bound, time limit, metrics,
access log, security headers, API keys, CORS), so a prediction goes through all of those as before.
"""

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from digitserve.errors import PROBLEM_MEDIA_TYPE, DigitserveError, problem
from digitserve.middleware import ERROR_CODE_KEY

Handler = Callable[..., Awaitable[Response]]
"""A handler takes the request and its path parameters as keyword arguments."""


def problem_response(request: Request, error: DigitserveError) -> Response:
    """Render any error in the one envelope, and leave its code for the access log and metrics.

    The error is answered, so its traceback (and its causes') is dropped: the frames in it hold
    the request's body, parsed JSON and decoded images, in a reference cycle whenever the error
    came from a worker thread (the frame that awaited it holds the future that holds it), which
    only the garbage collector frees, often much later (hundreds of MB under a flood of them).
    """
    request_id = getattr(request.state, "request_id", None)
    setattr(request.state, ERROR_CODE_KEY, error.code)
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        cause.__traceback__ = None
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return Response(
        orjson.dumps(problem(error, request_id)),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers,
    )


@dataclass(frozen=True)
class DirectRoute:
    """One POST route: its path template (FastAPI's syntax) and its handler."""

    path: str
    handler: Handler

    def pattern(self) -> re.Pattern[str]:
        """The template as a regular expression: each `{name}` is one non-empty path segment."""
        parts = re.split(r"\{(\w+)\}", self.path)
        regex = "".join(
            re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/]+)"
            for index, part in enumerate(parts)
        )
        return re.compile(f"^{regex}$")


class DirectRoutes:
    """Serve POSTs to the given routes by calling their handlers; pass everything else on."""

    def __init__(self, app: ASGIApp, routes: Sequence[DirectRoute]) -> None:
        self.app = app
        self.routes = [(route.pattern(), route) for route in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a matching POST here; anything else goes to the framework."""
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for pattern, route in self.routes:
                match = pattern.match(path)
                if match is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, route: DirectRoute, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        # What the router would have left in the scope: the route (its template labels the
        # request's metrics and access line) and the path parameters.
        scope["route"] = route
        scope["path_params"] = params
        request = Request(scope, receive, send)
        try:
            response = await route.handler(request, **params)
        except DigitserveError as error:
            response = problem_response(request, error)
        await response(scope, receive, send)
