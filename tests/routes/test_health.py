"""Liveness and readiness."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from digitserve.app import create_app
from digitserve.settings import Settings


def test_live(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "alive", "model": None}


def test_ready_after_load_and_warm_up(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model": {"name": "digits", "version": "1"}}


def test_not_ready_before_the_lifespan_loads_the_model(settings: Settings) -> None:
    app: FastAPI = create_app(settings)
    client = TestClient(app)  # not entered: the lifespan has not run
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "model_not_ready"
    assert client.get("/healthz").status_code == 200


def test_lifespan_loads_the_model_itself(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
    # After shutdown the app reports not ready again.
    assert TestClient(client.app).get("/readyz").status_code == 503
