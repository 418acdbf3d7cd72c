"""Plain ASGI middleware for response hardening, paths and API keys (no web framework imported).

`create_app` stacks them: security headers outermost, so every response carries them, the 500
envelope and the 401 included; then trailing slashes, so every later layer sees one path; the key
check innermost, after the request id is known.
"""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from digitserve.auth import KeyRing, challenge, presented_keys
from digitserve.errors import PROBLEM_MEDIA_TYPE, Unauthorized, problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

NOSNIFF = (b"x-content-type-options", b"nosniff")
STRICT_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
"""For everything that is not an HTML page: nothing a browser fetches here may run or frame."""


class SecurityHeadersMiddleware:
    """Add `X-Content-Type-Options: nosniff` to every response, and a strict CSP to non-HTML."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Decorate the response head of HTTP requests; pass anything else through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if NOSNIFF[0] not in names:
                    headers.append(NOSNIFF)
                content_type = next(
                    (value for name, value in headers if name.lower() == b"content-type"), b""
                )
                if STRICT_CSP[0] not in names and not content_type.startswith(b"text/html"):
                    headers.append(STRICT_CSP)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_hardened)


class TrailingSlashMiddleware:
    """Answer `/v1/` as `/v1`: a path's trailing slashes are dropped before anything routes it.

    The framework's own answer is a redirect to the other form, built from the request's Host
    header: `GET /v1/` with `Host: evil.example` was sent to `http://evil.example/v1`, an open
    redirect (and a POST's 307 hands its body to that host). `create_app` turns those redirects off;
    this serves the slashed form of every route instead, with the same answer and status.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route an HTTP path without its trailing slashes (the root `/` stays as it is)."""
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/" or not path.endswith("/"):
            await self.app(scope, receive, send)
            return
        scope = dict(scope, path=path.rstrip("/") or "/")
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes):
            scope["raw_path"] = raw_path.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


class ApiKeyMiddleware:
    """Answer 401 in the error envelope to a guarded path without a valid API key."""

    def __init__(self, app: ASGIApp, ring: KeyRing) -> None:
        self.app = app
        self.ring = ring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let a request through only with a key the ring accepts, or to an unguarded path."""
        if scope["type"] != "http" or not self.ring.guards(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = presented_keys(scope["headers"])
        if self.ring.admits(presented):
            await self.app(scope, receive, send)
            return
        error = Unauthorized(
            "the API key is not valid"
            if presented
            else "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
        )
        body = orjson.dumps(problem(error, scope.get("state", {}).get("request_id")))
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", challenge(presented).encode("latin-1")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
