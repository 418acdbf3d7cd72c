"""The web page's routes: `/` and `/static/*`, their headers, and the files the package ships."""

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from fastapi.testclient import TestClient

from digitserve.routes.page import CONTENT_SECURITY_POLICY
from tests.conftest import ROOT

STATIC_DIR = ROOT / "src" / "digitserve" / "static"


def assert_page_headers(headers: Mapping[str, str]) -> None:
    assert headers.get("content-security-policy") == CONTENT_SECURITY_POLICY
    assert headers.get("x-content-type-options") == "nosniff"


def test_policy_allows_only_the_service_itself() -> None:
    directives = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_root_serves_the_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert_page_headers(response.headers)
    html = response.text
    assert '<canvas id="sketch"' in html
    assert '<a href="v1">API index (JSON)</a>' in html
    assert '<script type="module" src="static/app.js"></script>' in html


def test_page_has_no_inline_script_or_style() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html
    assert " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None
    assert re.search(r"(https?:)?//", html) is None


def test_head_of_root(client: TestClient) -> None:
    response = client.head("/")
    assert response.status_code == 200
    assert response.content == b""
    assert_page_headers(response.headers)


def referenced_assets() -> set[str]:
    """Every file the page loads: links and scripts in the HTML, imports between the modules."""
    html = (STATIC_DIR / "index.html").read_text()
    names = set(re.findall(r'(?:href|src)="static/([^"]+)"', html))
    for script in STATIC_DIR.glob("*.js"):
        names |= set(re.findall(r'from "\./([^"]+)"', script.read_text()))
    return names


def test_every_asset_the_page_loads_is_served_with_its_type(client: TestClient) -> None:
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    assets = referenced_assets()
    assert {"app.js", "sketch.js", "api.js", "view.js", "page.css", "favicon.svg"} <= assets
    for name in assets:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] == types[Path(name).suffix], name
        assert_page_headers(response.headers)
        assert response.headers["cache-control"] == "no-cache"


def test_assets_revalidate_by_etag(client: TestClient) -> None:
    first = client.get("/static/app.js")
    again = client.get("/static/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert_page_headers(again.headers)


def test_unknown_or_escaping_asset_is_a_404_problem(client: TestClient) -> None:
    for path in ("/static/nope.js", "/static/%2e%2e/app.py", "/static/..%2f__init__.py"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "not_found"


def test_page_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not any(path.startswith("/static") for path in paths)
    assert "/v1" in paths


def test_every_static_file_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["digitserve"]
    files = [p.relative_to(STATIC_DIR.parent) for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert files
    for name in files:
        path = PurePosixPath(name.as_posix())
        assert any(
            path.match(pattern) and len(path.parts) == len(PurePosixPath(pattern).parts)
            for pattern in patterns
        ), f"{path} is not covered by package-data (setuptools globs do not cross folders)"
