"""schemathesis against the service's own OpenAPI document: every operation, valid and invalid
requests, bounded examples. No 5xx, no response that breaks the declared schema, status codes,
content types or headers, and (with keys set) nothing served without a key.

The apps are built at collection time because schemathesis makes one test per operation there
(`from_fixture`, its lazy alternative, does not work with this pytest release); each loads the
model once, in its lifespan, which schemathesis keeps running for the session.
"""

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr

from digitserve.app import create_app
from digitserve.settings import Settings
from tests.conftest import MODEL_PATH

EXAMPLES = 40
"""Examples per operation and mode: enough to find mismatches, bounded to keep CI quick."""

KEY = "fuzz-key-0123456789abcdef"
OPEN = Settings(model_path=MODEL_PATH)
KEYED = OPEN.model_copy(update={"api_keys": [SecretStr(KEY)]})

OPEN_APP = create_app(OPEN)
KEYED_APP = create_app(KEYED)
open_schema = schemathesis.openapi.from_asgi("/openapi.json", OPEN_APP)
keyed_schema = schemathesis.openapi.from_asgi("/openapi.json", KEYED_APP)
keyed_schema.config.update(headers={"X-API-Key": KEY})
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def test_the_fuzzed_documents_declare_what_they_should() -> None:
    assert open_schema.raw_schema == OPEN_APP.openapi()
    assert "securitySchemes" not in open_schema.raw_schema["components"]
    assert keyed_schema.raw_schema["paths"]["/v1/models"]["get"]["security"]
    assert len(list(open_schema.get_all_operations())) >= 7


def call_and_validate(case: schemathesis.Case[Any]) -> None:
    """Call an operation and check its answer against the document.

    Bodies that match the schema of the prediction routes (any bytes for an image, any string for
    base64) are mostly no image of a digit, and rightly refused with 400, 413, 415 or 422: a schema
    cannot say "a JPEG of a digit", so those routes are not held to accepting every one of them.
    """
    operation = case.operation
    if operation.method.upper() == "POST" and operation.path.endswith((":predict", "/infer")):
        case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])
    else:
        case.call_and_validate()


@open_schema.parametrize()
@FUZZ
def test_every_operation_keeps_its_contract(case: schemathesis.Case[Any]) -> None:
    call_and_validate(case)


@keyed_schema.parametrize()
@FUZZ
def test_every_operation_keeps_its_contract_with_a_key(case: schemathesis.Case[Any]) -> None:
    call_and_validate(case)
