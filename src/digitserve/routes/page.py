"""The draw-a-digit web page: `/` and its assets, served from the package under a strict CSP."""

import os

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_PACKAGE = ("digitserve", "static")
"""The page ships inside the package (package-data), so every install serves the same files."""

PAGE_FILE = "index.html"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "base-uri 'none'",
        "object-src 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""Only the service's own origin, no inline script or style: the page talks to nothing else."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""On the page and every asset; `no-cache` revalidates by ETag, so an upgrade shows at once."""


class PageAssets(StaticFiles):
    """Static files that carry the page's security headers (also on 304 answers)."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        """Serve one file as Starlette would, plus the security headers."""
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def page_router() -> APIRouter:
    """`GET /` (the page) and `/static/*` (its assets); built by the app factory, not at import."""
    assets = PageAssets(packages=[STATIC_PACKAGE])
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    async def page(request: Request) -> Response:
        """The draw-a-digit page; the JSON index of the API is at `/v1`."""
        return await assets.get_response(PAGE_FILE, request.scope)

    router.mount("/static", assets, name="static")
    return router
