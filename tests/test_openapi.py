"""The OpenAPI document: what the service answers, with an example of each error it documents."""

import json
import re
from typing import Any

import pytest
from pydantic import SecretStr

from digitserve.app import create_app
from digitserve.errors import PROBLEM_MEDIA_TYPE, catalogue
from digitserve.schemas import Problem
from digitserve.settings import Settings
from tests.conftest import MODEL_PATH


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document of an app with API keys on (so that the 401s are declared too)."""
    settings = Settings(model_path=MODEL_PATH, api_keys=[SecretStr("openapi-key-0123456789abc")])
    return create_app(settings).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (path, method, operation) of a document."""
    return [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_no_framework_leftovers(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    assert "HTTPValidationError" not in text
    assert "ValidationError" not in document["components"]["schemas"]
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert set(response["content"]) == {PROBLEM_MEDIA_TYPE}, (path, method, status)
        if "422" in operation["responses"]:
            assert path.endswith((":predict", "/infer")), (path, method)


def test_each_error_status_has_examples_of_its_own_codes(document: dict[str, Any]) -> None:
    statuses = {entry["code"]: entry["status"] for entry in catalogue()}
    checked = set()
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            examples = response["content"][PROBLEM_MEDIA_TYPE]["examples"]
            assert examples, (path, method, status)
            for code, example in examples.items():
                value = example["value"]
                Problem.model_validate(value)
                assert value["status"] == int(status) == statuses[code]
                assert value["code"] == code
                assert value["type"] == f"/v1/errors#{code}"
                checked.add(int(status))
            named = set(re.findall(r"`([a-z_]+)`", response["description"])) & set(statuses)
            assert named <= set(examples), (path, method, status)
    assert checked == {400, 401, 403, 404, 413, 415, 422, 503}


def test_the_predict_route_shows_one_example_per_documented_code(
    document: dict[str, Any],
) -> None:
    responses = document["paths"]["/v1/models/{model_name}:predict"]["post"]["responses"]
    codes = {
        status: list(response["content"][PROBLEM_MEDIA_TYPE]["examples"])
        for status, response in responses.items()
        if status != "200"
    }
    assert codes == {
        "400": ["invalid_image", "invalid_input"],
        "401": ["unauthorized"],
        "404": ["model_not_found", "version_not_found"],
        "413": ["body_too_large", "image_too_large", "image_too_complex", "too_many_images"],
        "415": ["unsupported_media_type"],
        "422": ["image_too_small", "blank_image"],
        "503": ["model_not_ready", "overloaded"],
    }
    too_large = responses["413"]["content"][PROBLEM_MEDIA_TYPE]["examples"]["body_too_large"]
    assert "MiB" in too_large["value"]["detail"]
    assert "DIGITSERVE_MAX_BODY_BYTES" in too_large["value"]["detail"]


def test_path_parameters_start_filled_in(document: dict[str, Any]) -> None:
    seen = set()
    for _, _, operation in operations(document):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                expected = {"model_name": "digits", "model_version": "1"}[parameter["name"]]
                assert parameter["example"] == expected
                seen.add(parameter["name"])
    assert seen == {"model_name", "model_version"}


def test_the_model_name_example_is_the_default_model() -> None:
    document = create_app(Settings(model_path=MODEL_PATH, model_name="sevens")).openapi()
    [parameter] = document["paths"]["/v1/models/{model_name}"]["get"]["parameters"]
    assert parameter["example"] == "sevens"
