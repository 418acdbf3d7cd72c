"""The Open Inference Protocol v2 (KServe v2, Triton HTTP): health, metadata and inference.

The hosted model takes `image` (BYTES: encoded JPEG/PNG, preprocessed exactly like /v1) or
`pixels` (64 features 0..16 per row) and gives `label` and `probabilities`. The wire format lives
in `inference_protocol`; this module maps tensors to features and predictions back to tensors.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from numpy.typing import NDArray

from digitserve import __version__
from digitserve.classifier import Classifier, Prediction
from digitserve.dataplane import (
    DataPlane,
    ServedModel,
    decode_base64,
    named_error,
    pixel_rows,
)
from digitserve.dependencies import DataPlaneDep, get_dataplane, get_model
from digitserve.diagnostics import Diagnostic
from digitserve.errors import DigitserveError, InvalidInput, ModelNotReady
from digitserve.inference_protocol import (
    BYTES,
    NUMERIC_DTYPES,
    DecodedRequest,
    Tensor,
    bytes_tensor,
    classification_count,
    classify,
    compress,
    decompress,
    encode_response,
    header_length,
    parse_request,
    response_encoding,
)
from digitserve.middleware import BODY_BYTES_KEY, IMAGES_KEY, MODEL_KEY
from digitserve.preprocessing import (
    GRID,
    INLINE_PIXELS,
    LEVELS,
    N_FEATURES,
    declared_pixels,
)
from digitserve.routes.bodies import read_body
from digitserve.schemas import (
    InferenceResponse,
    ModelMetadataV2,
    ModelReady,
    ServerLive,
    ServerMetadataV2,
    ServerReady,
    problem_responses,
)
from digitserve.settings import env_name

WantedOutput = tuple[str, bool, int | None]
"""An output a request asks for: its name, whether binary, and any top-k count."""

INLINE_BYTES = 64 * 1024
"""Small uncompressed requests are parsed on the event loop, and answered there when they carry
pixels or one image whose header declares at most `INLINE_PIXELS` (as /v1 does); anything else
(many images, a large image, a compressed body) goes to a worker thread, under the same bound as
/v1 (`preprocess_threads`)."""

router = APIRouter(prefix="/v2", tags=["v2"])

EXTENSIONS = ["binary_tensor_data", "classification"]
"""Protocol extensions implemented, as Triton names them in its server metadata."""


def platform_of(classifier: Classifier) -> str:
    """The framework of the model's file, for the metadata's `platform` (as Triton names them).

    A scikit-learn file stays `scikit-learn` when ONNX Runtime or numpy answers for it: the
    runtime is an implementation detail, reported as `runtime` in the metadata's parameters.
    """
    return "onnxruntime_onnx" if classifier.model_format == "onnx" else "scikit-learn"


IMAGE, PIXELS = "image", "pixels"
"""The model's inputs; a request carries exactly one of them."""

LABEL, SCORES = "label", "probabilities"
"""The model's outputs, in the order they are returned when none are named."""

WARNINGS = "warnings"
"""An output returned only when named: each image's preprocessing warnings."""

OUTPUTS = (LABEL, SCORES, WARNINGS)

PIXEL_DATATYPES = tuple(name for name in NUMERIC_DTYPES if name != "BOOL")
"""Features may come as any integer or float type; they are values 0..16 either way."""

IHCL = "Inference-Header-Content-Length"
"""The binary data extension's header: where the JSON ends and the binary tensors begin."""

_STATUS_DESCRIPTIONS = {
    400: "Malformed request or tensor, the message naming the tensor (`invalid_input`), or an "
    "undecodable image (`invalid_image`).",
    404: "No model of that name or version (`model_not_found`).",
    413: "Over a limit: body bytes, inflated body bytes, image pixels, images per request, or "
    "tensor elements per request (`body_too_large`, `image_too_large`, `too_many_images`, "
    "`too_many_elements`).",
    415: "A Content-Encoding other than gzip/deflate/identity, or an image that is not JPEG/PNG.",
    422: "A valid image that cannot be a digit (`image_too_small`, `blank_image`).",
    503: "Model not ready (`model_not_ready`).",
}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with."""
    return problem_responses(_STATUS_DESCRIPTIONS, *statuses)


_BINARY_SCHEMA = {"type": "string", "format": "binary"}
INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON (`InferenceRequest`); or, with Inference-Header-Content-Length, that "
        "many bytes of JSON followed by the binary tensors; or, with the header set to 0, one "
        "raw JPEG/PNG image. Content-Type is not needed; Content-Encoding gzip/deflate is read.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {"schema": _BINARY_SCHEMA},
        },
    },
    "parameters": [
        {
            "name": IHCL,
            "in": "header",
            "required": False,
            "description": "Length of the JSON header before binary tensor data (0: raw image).",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "description": "JSON, or (when any output is binary) a JSON header of "
        "Inference-Header-Content-Length bytes followed by the binary outputs.",
        "content": {"application/octet-stream": {"schema": _BINARY_SCHEMA}},
        "headers": {
            IHCL: {
                "description": "Length of the JSON header, present when outputs are binary.",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    },
    **_problems(400, 404, 413, 415, 422, 503),
}


@router.get("", response_model=ServerMetadataV2, summary="Server metadata")
@router.get("/", response_model=ServerMetadataV2, include_in_schema=False)
async def server_metadata() -> ServerMetadataV2:
    """Name the server, its version and the protocol extensions it implements."""
    return ServerMetadataV2(name="digitserve", version=__version__, extensions=EXTENSIONS)


@router.get("/health/live", response_model=ServerLive, summary="Server liveness")
async def live() -> ServerLive:
    """Answer while the process can serve HTTP at all."""
    return ServerLive(live=True)


@router.get(
    "/health/ready",
    response_model=ServerReady,
    summary="Server readiness",
    responses=_problems(503),
)
async def ready(request: Request, dataplane: DataPlaneDep) -> ServerReady:
    """200 once every model the repository should serve is loaded and warmed up; else 503."""
    if request.app.state.draining or not dataplane.ready():
        raise ModelNotReady("not every model is loaded yet, or the server is shutting down")
    return ServerReady(ready=True)


@router.get(
    "/models/{model_name}",
    response_model=ModelMetadataV2,
    summary="Model metadata",
    responses=_problems(404, 503),
)
async def model_metadata(request: Request, model_name: str) -> dict[str, Any]:
    """Describe the model's inputs and outputs."""
    dataplane = get_dataplane(request)
    return describe_model(dataplane.model(model_name), dataplane)


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadataV2,
    summary="Model metadata (versioned)",
    responses=_problems(404, 503),
)
async def model_version_metadata(
    request: Request, model_name: str, model_version: str
) -> dict[str, Any]:
    """Describe one version of the model (only the served version exists)."""
    dataplane = get_dataplane(request)
    return describe_model(dataplane.model(model_name, model_version), dataplane)


@router.get(
    "/models/{model_name}/ready",
    response_model=ModelReady,
    summary="Model readiness",
    responses=_problems(404, 503),
)
async def model_ready(request: Request, model_name: str) -> ModelReady:
    """200 when the model can serve; 503 (never 200 with false) when it cannot."""
    return ModelReady(name=get_model(request, model_name).name, ready=True)


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=ModelReady,
    summary="Model readiness (versioned)",
    responses=_problems(404, 503),
)
async def model_version_ready(request: Request, model_name: str, model_version: str) -> ModelReady:
    """200 when this version of the model can serve."""
    return ModelReady(name=get_model(request, model_name, model_version).name, ready=True)


@router.post(
    "/models/{model_name}/infer",
    response_model=None,
    summary="Inference",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
)
async def infer(request: Request, model_name: str) -> Response:
    """Run the model on an `image` or `pixels` tensor."""
    return await _infer(request, get_model(request, model_name))


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    response_model=None,
    summary="Inference (versioned)",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
)
async def infer_version(request: Request, model_name: str, model_version: str) -> Response:
    """Run one version of the model (only the served version exists)."""
    return await _infer(request, get_model(request, model_name, model_version))


async def _infer(request: Request, served: ServedModel) -> Response:
    """Read the body within the limits, run the CPU work (off the loop when big), and answer."""
    dataplane = get_dataplane(request)
    settings = dataplane.settings
    body = await read_body(request, settings.max_body_bytes, setting=env_name("max_body_bytes"))
    setattr(request.state, BODY_BYTES_KEY, len(body))
    setattr(request.state, MODEL_KEY, (served.name, served.version))
    encoding = request.headers.get("content-encoding")
    length = request.headers.get(IHCL)
    # What the model takes at most: that many images, or pixel rows of 64 features.
    max_elements = settings.max_images_per_request * N_FEATURES

    call: DecodedRequest
    if encoding is None and len(body) <= INLINE_BYTES:
        # Parsed here (cheap at this size, and errors come back at once); read here too when
        # the images it carries are surely cheap to decode.
        call = parse_request(
            body, header_length(length, len(body)), raw_input=IMAGE, max_elements=max_elements
        )
        wanted, rows = await prepare_soon(call, dataplane)
    else:

        def work() -> tuple[DecodedRequest, list[WantedOutput], Rows]:
            plain = decompress(
                body, encoding, limit=settings.max_body_bytes, setting=env_name("max_body_bytes")
            )
            parsed = parse_request(
                plain, header_length(length, len(plain)), raw_input=IMAGE, max_elements=max_elements
            )
            return parsed, *prepare(parsed, dataplane)

        call, wanted, rows = await dataplane.off_loop(work, quick=False)
    setattr(request.state, IMAGES_KEY, len(rows.features))
    predictions = await dataplane.predict(served, rows.features)
    content, json_length = respond(call, wanted, predictions, served, rows.warnings)
    headers = {"Vary": "Accept-Encoding"}
    if json_length is not None:
        headers[IHCL] = str(json_length)
    coding = response_encoding(request.headers.get("accept-encoding"))
    if coding is not None:
        content = compress(content, coding)
        headers["Content-Encoding"] = coding
    media_type = "application/json" if json_length is None else "application/octet-stream"
    return Response(content, media_type=media_type, headers=headers)


def decodes_quickly(call: DecodedRequest) -> bool:
    """Whether a parsed request is surely cheap enough to answer on the event loop.

    Ready-made pixels are; so is one image whose header declares few pixels (a small PNG can
    declare 40 megapixels). Its header is read twice (here and to decode), which costs less than
    the thread hop it saves.
    """
    images = [tensor for tensor in call.inputs if tensor.name == IMAGE]
    if not images:
        return True
    elements = images[0].data.ravel().tolist() if len(images) == 1 else []
    if len(elements) != 1 or not isinstance(elements[0], bytes | str):
        return False
    try:
        data = _image_bytes(elements[0])
    except InvalidInput:
        return True  # refused at once, wherever it runs
    return (declared_pixels(data) or 0) <= INLINE_PIXELS


@dataclass(frozen=True, slots=True)
class Rows:
    """A request's (n, 64) feature rows and, per row, what preprocessing warned of its image."""

    features: NDArray[Any]
    warnings: list[tuple[Diagnostic, ...]]


def prepare(call: DecodedRequest, dataplane: DataPlane) -> tuple[list[WantedOutput], Rows]:
    """The outputs a parsed request wants, and its feature rows for the model."""
    return _requested_outputs(call), _features(call.inputs, dataplane)


async def prepare_soon(
    call: DecodedRequest, dataplane: DataPlane
) -> tuple[list[WantedOutput], Rows]:
    """`prepare`, on the event loop when it is quick, off it when not (`decodes_quickly`).

    A request of one small image has it read with other requests' (`DataPlane.read_inline`);
    its errors are the ones `prepare` gives, named alike.
    """
    quick = decodes_quickly(call)
    image = _lone_image(call) if quick else None
    if image is None:
        return await dataplane.off_loop(lambda: prepare(call, dataplane), quick=quick)
    wanted = _requested_outputs(call)
    try:
        opened = dataplane.open(_image_bytes(image))
        item = await dataplane.read_inline(opened)
    except DigitserveError as exc:
        raise named_error(exc, f"input {IMAGE!r} element 0") from exc
    return wanted, Rows(item.features[np.newaxis], [item.warnings])


def _lone_image(call: DecodedRequest) -> bytes | str | None:
    """The one encoded image of a request whose only input is an `image` tensor of one, if so."""
    if len(call.inputs) != 1:
        return None
    [tensor] = call.inputs
    if tensor.name != IMAGE or tensor.datatype != BYTES or tensor.data.shape != (1,):
        return None
    element = tensor.data[0]
    return element if isinstance(element, bytes | str) else None


def respond(
    call: DecodedRequest,
    wanted: list[WantedOutput],
    predictions: list[Prediction],
    served: ServedModel,
    warnings: list[tuple[Diagnostic, ...]],
) -> tuple[bytes, int | None]:
    """Encode the response body: the wanted outputs of the request's predictions.

    Images that preprocessing warned about are listed in the response's `warnings` parameter
    (a JSON array of each row's warning codes), and in full in the `warnings` output when asked.
    """
    codes = warning_codes(warnings)
    return encode_response(
        model_name=served.name,
        model_version=served.version,
        request_id=call.id,
        outputs=output_tensors(wanted, predictions, served, warnings),
        parameters=None if codes is None else {"warnings": codes},
    )


def output_tensors(
    wanted: list[WantedOutput],
    predictions: list[Prediction],
    served: ServedModel,
    warnings: list[tuple[Diagnostic, ...]],
) -> list[tuple[Tensor, bool]]:
    """The wanted outputs of a request's predictions, each with whether it goes back binary."""
    classifier = served.classifier
    return [
        (_output(name, predictions, classifier, count, warnings), binary)
        for name, binary, count in wanted
    ]


def warning_codes(warnings: list[tuple[Diagnostic, ...]]) -> str | None:
    """The response's `warnings` parameter (each row's warning codes, a JSON array), or None."""
    if not any(warnings):
        return None
    return orjson.dumps([[item.code for item in row] for row in warnings]).decode()


def _requested_outputs(call: DecodedRequest) -> list[WantedOutput]:
    """Which outputs go back, in order, each binary or JSON, and any classification k."""
    if not call.outputs:
        return [(name, call.binary_output(None), None) for name in (LABEL, SCORES)]
    wanted = []
    seen = set()
    for output in call.outputs:
        if output.name not in OUTPUTS:
            raise InvalidInput(
                f"unknown output {output.name!r}; this model gives "
                + ", ".join(repr(name) for name in OUTPUTS)
            )
        if output.name in seen:
            raise InvalidInput(f"output {output.name!r} is requested more than once")
        seen.add(output.name)
        if output.parameters and "shared_memory_region" in output.parameters:
            raise InvalidInput(f"output {output.name!r}: shared memory is not supported")
        count = classification_count(output)
        if count is not None and output.name != SCORES:
            raise InvalidInput(
                f"output {output.name!r}: classification is available on {SCORES!r} only"
            )
        wanted.append((output.name, call.binary_output(output), count))
    return wanted


def _features(inputs: list[Tensor], dataplane: DataPlane) -> Rows:
    """The feature rows from the one input a request carries."""
    unknown = [tensor.name for tensor in inputs if tensor.name not in (IMAGE, PIXELS)]
    if unknown:
        raise InvalidInput(
            f"unknown input {unknown[0]!r}; this model takes {IMAGE!r} or {PIXELS!r}"
        )
    if len(inputs) != 1:
        raise InvalidInput(f"send one input, either {IMAGE!r} or {PIXELS!r}, not both")
    [tensor] = inputs
    if tensor.name == IMAGE:
        return _image_features(tensor, dataplane)
    return _pixel_features(tensor, dataplane)


def _image_features(tensor: Tensor, dataplane: DataPlane) -> Rows:
    """Decode and preprocess each encoded image, naming the element in any error."""
    where = f"input {IMAGE!r}"
    if tensor.datatype != BYTES:
        raise InvalidInput(
            f"{where}: datatype must be BYTES (encoded JPEG/PNG), got {tensor.datatype}"
        )
    if tensor.data.ndim != 1:
        raise InvalidInput(
            f"{where}: shape must be [n], one encoded image per element, "
            f"got {list(tensor.data.shape)}"
        )
    elements = tensor.data.tolist()
    dataplane.check_count(tensor.data.shape, where)
    items = dataplane.read_each(elements, _image_bytes, noun=f"{where} element")
    return Rows(np.stack([item.features for item in items]), [item.warnings for item in items])


def _image_bytes(element: bytes | str) -> bytes:
    """An image element's bytes: as sent in binary, base64-decoded when it came as JSON."""
    if isinstance(element, bytes):
        return element
    return decode_base64(element, "the string (in JSON, image elements are base64)")


def _pixel_features(tensor: Tensor, dataplane: DataPlane) -> Rows:
    """Check ready-made features: [n, 64] or [n, 8, 8] ink levels 0..16, any numeric type."""
    where = f"input {PIXELS!r}"
    if tensor.datatype not in PIXEL_DATATYPES:
        raise InvalidInput(
            f"{where}: datatype must be an integer or float type, got {tensor.datatype}"
        )
    shape = tensor.data.shape
    if len(shape) < 2 or shape[1:] not in ((N_FEATURES,), (GRID, GRID)):
        raise InvalidInput(
            f"{where}: shape must be [n, {N_FEATURES}] or [n, {GRID}, {GRID}], got {list(shape)}"
        )
    dataplane.check_count(shape, where)
    features = pixel_rows(tensor.data, where)
    return Rows(features, [()] * len(features))


def _output(
    name: str,
    predictions: list[Prediction],
    classifier: Classifier,
    count: int | None,
    warnings: list[tuple[Diagnostic, ...]],
) -> Tensor:
    """One output tensor for the batch."""
    if name == WARNINGS:
        return bytes_tensor(
            WARNINGS,
            [
                orjson.dumps([{"code": d.code, "message": d.message} for d in row])
                for row in warnings
            ],
        )
    if name == LABEL:
        labels = [prediction.label for prediction in predictions]
        if _label_datatype(classifier) == BYTES:
            return bytes_tensor(LABEL, [str(label) for label in labels])
        return Tensor(LABEL, "INT64", np.asarray(labels, dtype=np.int64))
    keys = classifier.class_keys
    scores = np.asarray(
        [[prediction.scores[key] for key in keys] for prediction in predictions], dtype=np.float32
    )
    if count is not None:
        return Tensor(SCORES, BYTES, classify(scores, count, keys))
    return Tensor(SCORES, "FP32", scores)


def _label_datatype(classifier: Classifier) -> str:
    """INT64 for integer classes (the digits), BYTES for an operator's model with string ones."""
    integers = all(type(label) is int for label in classifier.classes)
    return "INT64" if integers else BYTES


def describe_model(served: ServedModel, dataplane: DataPlane) -> dict[str, Any]:
    """The protocol's model metadata, with parameters saying what each tensor means."""
    classifier = served.classifier
    settings = dataplane.settings
    n_classes = len(classifier.classes)
    versions = sorted(dataplane.repository.ready_versions(served.name))
    return {
        "name": served.name,
        "versions": [str(version) for version in versions] or [served.version],
        "platform": platform_of(classifier),
        "inputs": [
            {
                "name": IMAGE,
                "datatype": BYTES,
                "shape": [-1],
                "parameters": {
                    "content": "encoded JPEG or PNG images, one per element, dark digit on a "
                    f"light background, at least {GRID}x{GRID}; preprocessed like /v1",
                    "json_encoding": "base64",
                    "raw_binary": "a body sent with Inference-Header-Content-Length: 0 is one "
                    "encoded image",
                    "max_image_pixels": settings.max_image_pixels,
                },
            },
            {
                "name": PIXELS,
                "datatype": "INT64",
                "shape": [-1, N_FEATURES],
                "parameters": {
                    "content": f"the {GRID}x{GRID} grid read row by row, 0 = white paper, "
                    f"{LEVELS} = solid ink",
                    "shapes": f"[-1, {N_FEATURES}] or [-1, {GRID}, {GRID}]",
                    "datatypes": ", ".join(PIXEL_DATATYPES),
                    "range": f"0..{LEVELS}",
                },
            },
        ],
        "outputs": [
            {
                "name": LABEL,
                "datatype": _label_datatype(classifier),
                "shape": [-1],
                "parameters": {"content": "the class from the model's predict()"},
            },
            {
                "name": SCORES,
                "datatype": "FP32",
                "shape": [-1, n_classes],
                "parameters": {
                    "content": "calibrated probabilities (rows sum to 1)"
                    if classifier.score_kind == "probabilities"
                    else "decision scores (raw decision function, not probabilities)",
                    "scores": classifier.score_kind,
                    "classes": ",".join(classifier.class_keys),
                    "classification": "parameters.classification = k returns the top k as "
                    "BYTES 'score:index:label'",
                },
            },
            {
                "name": WARNINGS,
                "datatype": BYTES,
                "shape": [-1],
                "parameters": {
                    "content": "only when asked for by name: per image, a JSON array of "
                    "{code, message} saying what may have made it hard to read (as /v1's "
                    "warnings; the response parameter 'warnings' lists the codes)",
                },
            },
        ],
        "parameters": {
            "version": served.version,
            "runtime": classifier.path,
            "scores": classifier.score_kind,
            "sha256": classifier.sha256,
            "max_images_per_request": settings.max_images_per_request,
        },
    }
