"""Hardening on every response, API keys when configured, and CORS only when configured."""

import dataclasses
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from digitserve.app import create_app
from digitserve.classifier import Classifier
from digitserve.settings import Settings
from tests.live import LiveServer, start_server, stop_server
from tests.routes.test_v1 import PREDICT, assert_problem

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
PIXELS = {"instances": [[0, 0, 10, 16, 16, 10, 0, 0] * 8]}
PIXELS_V2 = {
    "inputs": [
        {"name": "pixels", "shape": [1, 64], "datatype": "INT64", "data": PIXELS["instances"][0]}
    ]
}


@pytest.fixture
def guarded(settings: Settings, classifier: Classifier) -> Iterator[TestClient]:
    """A client of an app that requires an API key."""
    keyed = settings.model_copy(update={"api_keys": [SecretStr(KEY)]})
    with TestClient(create_app(keyed, classifier)) as client:
        yield client


def test_every_response_says_nosniff_and_non_html_gets_a_strict_csp(
    client: TestClient, settings: Settings, classifier: Classifier
) -> None:
    for response in (
        client.get("/v1/models"),
        client.get("/healthz"),
        client.get("/nowhere"),
        client.post(PREDICT, content=b"x", headers={"content-type": "text/plain"}),
        client.get("/openapi.json"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == (
            "default-src 'none'; frame-ancestors 'none'"
        )
    page = client.get("/docs")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in page.headers  # the page's own policy, if any, rules


def test_the_500_envelope_is_hardened_too(settings: Settings, classifier: Classifier) -> None:
    def fail(rows: Any) -> Any:
        raise RuntimeError("/srv/secret")

    broken = dataclasses.replace(classifier, answer=fail)
    with TestClient(create_app(settings, broken), raise_server_exceptions=False) as client:
        response = client.post(PREDICT, json=PIXELS)
    assert_problem(response, 500, "internal_error")
    assert response.headers["x-content-type-options"] == "nosniff"


def test_no_keys_configured_means_no_authentication(client: TestClient) -> None:
    assert client.post(PREDICT, json=PIXELS).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json()["components"]


def test_a_guarded_path_without_a_key_is_401(guarded: TestClient) -> None:
    for response in (guarded.post(PREDICT, json=PIXELS), guarded.get("/v1/models/digits")):
        body = assert_problem(response, 401, "unauthorized")
        assert "Authorization: Bearer" in body["detail"]
        assert response.headers["www-authenticate"] == 'Bearer realm="digitserve"'
        assert response.headers["x-content-type-options"] == "nosniff"
    assert_problem(guarded.get("/v1/no-such-route"), 401, "unauthorized")


def test_a_good_key_beside_a_bad_credential_is_401(guarded: TestClient) -> None:
    for headers in (
        {"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": KEY},
        {"Authorization": f"Bearer {KEY}", "X-API-Key": "wrong-key-123456789"},
    ):
        assert_problem(guarded.get("/v1/models", headers=headers), 401, "unauthorized")


REPEATED_CREDENTIALS = {
    "x-api-key bad then good": [("X-API-Key", "bad"), ("X-API-Key", KEY)],
    "x-api-key good then bad": [("X-API-Key", KEY), ("X-API-Key", "bad")],
    "x-api-key good then empty": [("X-API-Key", KEY), ("X-API-Key", "")],
    "bearer bad then good": [("Authorization", "Bearer bad"), ("Authorization", f"Bearer {KEY}")],
    "bearer good then basic": [("Authorization", f"Bearer {KEY}"), ("Authorization", "Basic eA==")],
    "good bearer, good and bad x-api-key": [
        ("Authorization", f"Bearer {KEY}"),
        ("X-API-Key", KEY),
        ("X-API-Key", "bad"),
    ],
}
"""Several credentials, one of them bad: SECURITY.md says every credential sent must be valid."""


@pytest.mark.parametrize("headers", REPEATED_CREDENTIALS.values(), ids=REPEATED_CREDENTIALS)
def test_a_repeated_credential_header_with_a_bad_key_is_401(
    guarded: TestClient, headers: list[tuple[str, str]]
) -> None:
    assert_problem(guarded.get("/v1/models", headers=headers), 401, "unauthorized")


def test_several_credentials_that_are_all_good_pass(
    settings: Settings, classifier: Classifier
) -> None:
    keyed = settings.model_copy(update={"api_keys": [SecretStr(KEY), SecretStr(OTHER_KEY)]})
    with TestClient(create_app(keyed, classifier)) as client:
        for headers in (
            [("X-API-Key", KEY), ("X-API-Key", KEY)],
            [("X-API-Key", KEY), ("Authorization", f"Bearer {OTHER_KEY}")],
        ):
            assert client.get("/v1/models", headers=headers).status_code == 200


def test_a_wrong_key_is_401_and_is_not_echoed(guarded: TestClient) -> None:
    response = guarded.get("/v1/models", headers={"Authorization": "Bearer wrong-key-123456789"})
    body = assert_problem(response, 401, "unauthorized")
    assert body["detail"] == "the API key is not valid"
    assert "wrong-key" not in response.text
    assert response.headers["www-authenticate"].endswith('error="invalid_token"')


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}], ids=["bearer", "x-api-key"]
)
def test_either_header_carries_the_key(guarded: TestClient, headers: dict[str, str]) -> None:
    response = guarded.post(PREDICT, json=PIXELS, headers=headers)
    assert response.status_code == 200
    assert guarded.get("/v1/models/digits", headers=headers).json()["name"] == "digits"


def test_probes_and_docs_stay_open_unless_probes_are_guarded(
    guarded: TestClient, settings: Settings, classifier: Classifier
) -> None:
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert guarded.get(path).status_code == 200, path
    strict = settings.model_copy(update={"api_keys": [SecretStr(KEY)], "auth_probes": True})
    with TestClient(create_app(strict, classifier)) as client:
        assert_problem(client.get("/healthz"), 401, "unauthorized")
        assert client.get("/readyz", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/docs").status_code == 200


def test_keys_from_a_file(tmp_path: Path, settings: Settings, classifier: Classifier) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"# one key a line\n{KEY}\n")
    with TestClient(
        create_app(settings.model_copy(update={"api_keys_file": path}), classifier)
    ) as c:
        assert_problem(c.get("/v1/models"), 401, "unauthorized")
        assert c.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200


def test_openapi_declares_the_keys_and_the_401(guarded: TestClient) -> None:
    spec = guarded.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    predict = spec["paths"]["/v1/models/{model_name}:predict"]["post"]
    assert predict["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "401" in predict["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "401" not in spec["paths"]["/healthz"]["get"]["responses"]


def test_cors_is_off_by_default(client: TestClient) -> None:
    response = client.get("/v1/models", headers={"Origin": "https://example.org"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        PREDICT,
        headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_configured_origins_even_before_the_key_check(
    settings: Settings, classifier: Classifier
) -> None:
    configured = settings.model_copy(
        update={"cors_origins": ["https://app.example.org"], "api_keys": [SecretStr(KEY)]}
    )
    with TestClient(create_app(configured, classifier)) as client:
        preflight = client.options(
            PREDICT,
            headers={
                "Origin": "https://app.example.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.org"
        refused = client.get("/v1/models", headers={"Origin": "https://app.example.org"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://app.example.org"
        other = client.get(
            "/v1/models", headers={"Origin": "https://evil.example", "X-API-Key": KEY}
        )
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers


def body_for(path: str) -> dict[str, Any]:
    """A good prediction body for the protocol of this path."""
    return PIXELS_V2 if path.startswith("/v2/") else PIXELS


SLASHED = [
    ("GET", "/v1/"),
    ("GET", "/v1//"),
    ("GET", "/v1/models/"),
    ("GET", "/v1/models/digits/"),
    ("GET", "/healthz/"),
    ("GET", "/docs/"),
    ("POST", PREDICT + "/"),
    ("POST", "/v2/models/digits/infer/"),
]
"""Paths with a trailing slash, which the framework used to redirect with the client's Host."""


@pytest.mark.parametrize(("method", "path"), SLASHED)
def test_a_trailing_slash_is_answered_directly_never_redirected(
    client: TestClient, method: str, path: str
) -> None:
    body = body_for(path) if method == "POST" else None
    slashed = client.request(
        method, path, json=body, headers={"Host": "evil.example"}, follow_redirects=False
    )
    plain = client.request(method, path.rstrip("/"), json=body)
    assert "location" not in slashed.headers
    assert "evil.example" not in str(slashed.headers)
    assert slashed.status_code == plain.status_code == 200
    if slashed.headers["content-type"] == "application/json":
        assert slashed.json() == plain.json()


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[LiveServer]:
    """A real server that needs an API key."""
    server = start_server("--no-access-log", env={"DIGITSERVE_API_KEYS": KEY})
    yield server
    assert stop_server(server) == 0


def raw_request(
    server: LiveServer, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send one request with exactly these headers, repeats included, and read the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


@pytest.mark.integration
@pytest.mark.parametrize("headers", REPEATED_CREDENTIALS.values(), ids=REPEATED_CREDENTIALS)
def test_a_real_server_refuses_a_repeated_credential_with_a_bad_key(
    keyed_server: LiveServer, headers: list[tuple[str, str]]
) -> None:
    body = json.dumps(PIXELS).encode()
    status, answer, content = raw_request(
        keyed_server, "POST", PREDICT, [("Host", "127.0.0.1"), *headers], body
    )
    assert status == 401
    assert json.loads(content)["code"] == "unauthorized"
    assert ("www-authenticate", 'Bearer realm="digitserve", error="invalid_token"') in [
        (name.lower(), value) for name, value in answer
    ]
    status, _, _ = raw_request(
        keyed_server, "POST", PREDICT, [("Host", "127.0.0.1"), ("X-API-Key", KEY)], body
    )
    assert status == 200


@pytest.mark.integration
@pytest.mark.parametrize(("method", "path"), SLASHED)
def test_a_real_server_never_redirects_to_the_host_header(
    keyed_server: LiveServer, method: str, path: str
) -> None:
    body = json.dumps(body_for(path)).encode() if method == "POST" else b""
    headers = [("Host", "evil.example"), ("X-API-Key", KEY)]
    status, answer, content = raw_request(keyed_server, method, path, headers, body)
    assert status == 200
    assert all(name.lower() != "location" for name, _ in answer)
    assert b"evil.example" not in b"".join(f"{n}: {v}".encode() for n, v in answer) + content
