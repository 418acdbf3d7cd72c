"""Request and response bodies as documented in OpenAPI ("model" means the classifier here)."""

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from digitserve.errors import (
    PROBLEM_MEDIA_TYPE,
    BlankImage,
    BodyTooLarge,
    DigitserveError,
    ImageTooComplex,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    InvalidInput,
    ModelControlDisabled,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    TooManyElements,
    TooManyImages,
    Unauthorized,
    UnsupportedMediaType,
    VersionNotFound,
    problem,
)

Include = Literal["pixels"]


class Base64Image(BaseModel):
    """An encoded JPEG or PNG image inside JSON (the KServe v1 / TF-Serving `b64` convention)."""

    model_config = ConfigDict(extra="forbid")

    b64: str = Field(
        description="Standard base64 of the JPEG or PNG bytes; line breaks (as `base64` and MIME "
        "wrap it) and a data URL prefix (`data:image/png;base64,`) are read too."
    )


PixelRow = list[int]


class PredictRequest(BaseModel):
    """The JSON request shape: a list of instances, each an image or 64 ready-made features."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"instances": [{"b64": "/9j/4AAQSkZJRgABAQAAAQABAAD..."}]},
                {"instances": [[0, 0, 5, 13, 9, 1, 0, 0] * 8]},
            ]
        },
    )

    instances: list[Base64Image | list[int] | list[PixelRow]] = Field(
        min_length=1,
        description='Each instance is {"b64": ...}, 64 integers 0..16, or an 8x8 list of lists.',
    )


class ModelRef(BaseModel):
    """Which model answered, and which kind of per-class scores it gives."""

    name: str = Field(examples=["digits"])
    version: str = Field(examples=["1.0.0"])
    scores: Literal["probabilities", "decision_scores"] = Field(
        description="`probabilities` (calibrated, sum to 1) when the model has predict_proba; "
        "otherwise `decision_scores` (raw SVC decision function, not probabilities)."
    )


class WarningBody(BaseModel):
    """Something about the image that may have made it hard to read (the answer still stands)."""

    code: str = Field(
        description="Stable code; the model card's `warnings` lists every one with its meaning.",
        examples=["low_contrast"],
    )
    message: str = Field(description="What was found, in words.")


class PredictionBody(BaseModel):
    """One image's answer."""

    label: int | str = Field(description="The class from the model's predict().", examples=[7])
    confidence: float | None = Field(
        description="Probability of `label`; null when the model gives no probabilities.",
        examples=[0.97],
    )
    probabilities: dict[str, float] | None = Field(
        default=None,
        description="Probability per class label (present when model.scores is `probabilities`).",
    )
    decision_scores: dict[str, float] | None = Field(
        default=None,
        description="Decision score per class (present when model.scores is `decision_scores`).",
    )
    pixels: list[list[int]] | None = Field(
        default=None,
        description="With `include=pixels`: the 8x8 grid of 0..16 the model actually saw.",
    )
    warnings: list[WarningBody] = Field(
        default_factory=list,
        description="Why the image may have been read poorly (empty when nothing was noticed): "
        "inverted_input, low_contrast, mostly_empty, low_resolution, touches_border, "
        "several_marks, low_confidence.",
    )


class PredictResponse(BaseModel):
    """Predictions in the order the images were sent."""

    model: ModelRef
    predictions: list[PredictionBody]


class Problem(BaseModel):
    """RFC 9457 problem details: the one error envelope of every 4xx and 5xx."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "/v1/errors#invalid_image",
                    "title": "Invalid image",
                    "status": 400,
                    "detail": "could not decode the image/jpeg image: it is truncated or corrupt",
                    "code": "invalid_image",
                    "request_id": "5f0c7c1a9b2e4a8f",
                    "error": "could not decode the image/jpeg image: it is truncated or corrupt",
                }
            ]
        },
    )

    type: str = Field(description="URI of the error's entry in the catalogue at /v1/errors.")
    title: str
    status: int
    detail: str = Field(description="What went wrong with this request, in words.")
    code: str = Field(description="Stable machine-readable error code.")
    request_id: str | None = Field(description="Echoes X-Request-ID; quote it when reporting.")
    error: str = Field(
        description="Same as detail; the field Open Inference Protocol clients read."
    )


class ErrorEntry(BaseModel):
    """One error a client can receive."""

    code: str
    status: int
    title: str
    description: str


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["alive", "ready"]
    model: dict[str, str] | None = None


class ModelMetadata(BaseModel):
    """The model card: what the model does and exactly how to call it."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    description: str
    sha256: str
    scores: Literal["probabilities", "decision_scores"]
    classes: list[int | str]
    labels: dict[str, str]
    input: dict[str, Any]
    output: dict[str, Any]
    preprocessing: list[str]
    limits: dict[str, int]
    endpoints: dict[str, str]
    warnings: dict[str, str] = Field(
        default_factory=dict, description="Every warning code a prediction can carry, explained."
    )


class VersionEntry(BaseModel):
    """One version of a model and its state."""

    version: str = Field(examples=["1"])
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str = Field("", description="Why the version is not ready, when it is not.")


class ModelEntry(BaseModel):
    """One model of the repository: its versions, its default version and that version's card."""

    name: str = Field(examples=["digits"])
    default_version: str | None = Field(
        description="The version that answers unversioned requests (null: none ready)."
    )
    versions: list[VersionEntry]
    card: ModelMetadata | None = None


class ModelList(BaseModel):
    """Every model this server hosts, with every version and its state."""

    models: list[ModelEntry]


class RepositoryIndexRequest(BaseModel):
    """The repository extension's index request: optionally only ready versions."""

    model_config = ConfigDict(extra="forbid")

    ready: bool = False


class RepositoryIndexEntry(BaseModel):
    """One line of the repository index, as Triton's repository extension gives it."""

    name: str = Field(examples=["digits"])
    version: str = Field(examples=["1"], description="Empty when the model has no version.")
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str = ""


# Open Inference Protocol v2 (KServe v2, Triton HTTP), field for field as the protocol has them.

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
"""The protocol's tensor element types (Triton's BF16 is not part of it)."""

Parameters = dict[str, str | int | float | bool]
"""Protocol parameters: string, number or boolean values only."""

MAX_TENSORS = 16
"""Most inputs, and most outputs, one inference request may list (the model has two of each)."""

MAX_DIMENSIONS = 8
"""Most dimensions in a request tensor's shape: the model's have one to three, numpy allows 64."""

MAX_PARAMETERS = 64
"""Most parameters one request, input or output may carry (clients send a handful)."""

MAX_NAME_LENGTH = 256
"""Longest tensor name in a request (names are echoed in error messages)."""


def _few_parameters(value: Any) -> Any:
    """Count parameters before validating them: a million bad ones would take seconds to list."""
    if isinstance(value, dict) and len(value) > MAX_PARAMETERS:
        raise PydanticCustomError(
            "too_many_parameters",
            "at most {limit} parameters are accepted, got {count}",
            {"limit": MAX_PARAMETERS, "count": len(value)},
        )
    return value


RequestParameters = Annotated[
    Parameters, Field(max_length=MAX_PARAMETERS), BeforeValidator(_few_parameters)
]
"""Parameters of a request, an input or an output: at most `MAX_PARAMETERS` of them (`max_length`
puts the bound in OpenAPI; the validator checks it before any value is)."""

TensorName = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]
"""A tensor name in a request."""

Shape = Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_DIMENSIONS)]
"""A request tensor's shape. Pydantic checks a list's length before its items, so a million
dimensions are refused at once; each dimension is checked against the body's size when the
request is decoded (integers past 2**64 - 1 never get there: orjson reads them as floats, which
strict validation refuses)."""

TensorData = Annotated[
    list[Any],
    WithJsonSchema(
        {
            "type": "array",
            "items": {
                "anyOf": [
                    {"type": "number"},
                    {"type": "string"},
                    {"type": "boolean"},
                    {"type": "array", "description": "a nested row (row-major)"},
                ]
            },
        }
    ),
]
"""Tensor elements, flat or nested. Elements are checked against the datatype when decoded, so
the (deep) recursion of the protocol's schema is documented one level deep only."""

_STRICT = ConfigDict(strict=True)
"""Requests are read by hand and validated strictly: the documented schema is the enforced one."""


class InferenceRequestInput(BaseModel):
    """One input tensor: `data` in JSON, or `parameters.binary_data_size` bytes after the header."""

    model_config = _STRICT

    name: TensorName
    shape: Shape
    datatype: Datatype
    parameters: RequestParameters | None = Field(
        default=None, description="`binary_data_size`: bytes of this tensor after the JSON header."
    )
    data: TensorData | None = Field(
        default=None,
        description="Row-major elements, flat or nested; BYTES elements of `image` are base64.",
    )


class InferenceRequestOutput(BaseModel):
    """An output the client wants back, and how."""

    model_config = _STRICT

    name: TensorName
    parameters: RequestParameters | None = Field(
        default=None,
        description="`binary_data` (bool): return it as binary; `classification` (int k): "
        "return the top k as BYTES `score:index:label` strings instead.",
    )


class InferenceRequest(BaseModel):
    """The JSON inference request (or the JSON header of a binary one)."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "pixels",
                            "shape": [1, 64],
                            "datatype": "INT64",
                            "data": [0, 0, 5, 13, 9, 1, 0, 0] * 8,
                        }
                    ],
                    "outputs": [{"name": "label"}],
                }
            ]
        },
    )

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: RequestParameters | None = Field(
        default=None, description="`binary_data_output` (bool): every output as binary."
    )
    inputs: list[InferenceRequestInput] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[InferenceRequestOutput] | None = Field(
        default=None,
        max_length=MAX_TENSORS,
        description="What to return; all outputs when omitted.",
    )


class InferenceResponseOutput(BaseModel):
    """One output tensor: `data` in JSON, or `parameters.binary_data_size` bytes after the JSON."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: TensorData | None = None


class InferenceResponse(BaseModel):
    """The inference response (the JSON header of a binary one)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[InferenceResponseOutput]


class MetadataTensor(BaseModel):
    """An input or output the model declares; -1 marks a variable dimension."""

    name: str
    datatype: Datatype
    shape: list[int]
    parameters: Parameters | None = None


class ModelMetadataV2(BaseModel):
    """What the model is and which tensors it takes and gives."""

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: Parameters | None = None


class ServerMetadataV2(BaseModel):
    """What the server is and which protocol extensions it implements."""

    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    """Server liveness."""

    live: bool


class ServerReady(BaseModel):
    """Server readiness (not ready is a 503 problem, never 200 with false)."""

    ready: bool


class ModelReady(BaseModel):
    """Model readiness (not ready is a 503 problem, never 200 with false)."""

    name: str
    ready: bool


EXAMPLE_REQUEST_ID = "5f0c7c1a9b2e4a8f"

EXAMPLE_ERRORS: tuple[DigitserveError, ...] = (
    InvalidImage("could not decode the image/jpeg image: it is truncated or corrupt"),
    InvalidInput(
        'item 0: a bare string is not an instance; send an image as {"b64": "<base64 of the '
        'JPEG or PNG>"}'
    ),
    Unauthorized("an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"),
    ModelControlDisabled(
        "explicit model load is not allowed in model control mode 'none'; start the server with "
        "--model-control-mode explicit"
    ),
    ModelNotFound("no model named 'cats'; this server hosts 'digits'"),
    VersionNotFound("model 'digits' has no version '9'; its versions: 1"),
    BodyTooLarge(
        "request body is 10.3 MiB (10844757 bytes); the limit is 10 MiB, set by "
        "DIGITSERVE_MAX_BODY_BYTES=10485760",
        limit=10485760,
    ),
    ImageTooLarge(
        "image is 8000x6000 = 48000000 pixels; the limit is 40000000, set by "
        "DIGITSERVE_MAX_IMAGE_PIXELS",
        limit=40000000,
    ),
    ImageTooComplex(
        "the JPEG holds more than 256 scans; each scan is another pass over the whole image",
        limit=256,
    ),
    TooManyImages(
        "65 instances in one request; the limit is 64, set by DIGITSERVE_MAX_IMAGES_PER_REQUEST",
        limit=64,
    ),
    TooManyElements(
        "input 'image': shape [100000] holds 100000 BYTES elements; a request may carry at most "
        "4096",
        limit=4096,
    ),
    UnsupportedMediaType(
        "image/gif images are not accepted; send one of: image/jpeg, image/png",
        accepted=["image/jpeg", "image/png"],
    ),
    ImageTooSmall("image is 4x4; a digit needs at least 8x8"),
    BlankImage("the image has no ink: nothing stands out from the paper"),
    ModelNotReady("the models are not ready to serve; retry shortly"),
    Overloaded(
        "this worker is at its limit of 64 requests in flight; retry",
        headers={"Retry-After": "1"},
        limit=64,
    ),
)
"""One real problem document per error code that routes document, shown in Swagger UI."""

_CODE = re.compile(r"`([a-z_]+)`")


def problem_examples(status: int, description: str = "") -> dict[str, dict[str, Any]]:
    """OpenAPI examples of one status: the codes its description names, else all of its codes."""
    named = set(_CODE.findall(description))
    errors = [error for error in EXAMPLE_ERRORS if error.status == status]
    chosen = [error for error in errors if error.code in named] or errors
    return {
        error.code: {"summary": error.title, "value": problem(error, EXAMPLE_REQUEST_ID)}
        for error in chosen
    }


def problem_responses(
    descriptions: dict[int, str], *statuses: int
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with, as problem+json.

    Each comes with examples of its own codes (Swagger UI shows one status's example for every
    status otherwise: the schema's).
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        content = {
            "schema": {"$ref": "#/components/schemas/Problem"},
            "examples": problem_examples(status, descriptions[status]),
        }
        responses[status] = {
            "model": Problem,
            "content": {PROBLEM_MEDIA_TYPE: content},
            "description": descriptions[status],
        }
    return responses


REQUEST_SCHEMAS: tuple[type[BaseModel], ...] = (PredictRequest, InferenceRequest)
"""Bodies read by hand (for speed and exact errors) whose schemas still belong in OpenAPI."""
