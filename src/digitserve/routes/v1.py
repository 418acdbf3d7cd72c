"""The native REST API: `/v1/models/{name}` metadata and `:predict` with three request shapes."""

import functools
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_args

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response

from digitserve import __version__
from digitserve.classifier import Classifier, Prediction
from digitserve.dataplane import DataPlane, ServedModel, decode_base64, each_item, pixel_list
from digitserve.dependencies import DataPlaneDep, get_dataplane, get_model
from digitserve.diagnostics import WARNING_CODES, confidence_warnings
from digitserve.errors import (
    InvalidInput,
    MethodNotAllowed,
    TooManyImages,
    UnsupportedMediaType,
    catalogue,
)
from digitserve.middleware import BODY_BYTES_KEY, IMAGES_KEY, MODEL_KEY
from digitserve.preprocessing import (
    ACCEPTED_MEDIA_TYPES,
    GRID,
    INLINE_PIXELS,
    LEVELS,
    N_FEATURES,
    OpenedImage,
    Preprocessed,
    declared_pixels,
    sniff_media_type,
)
from digitserve.routes.bodies import media_type_of, parse_multipart, read_body
from digitserve.schemas import (
    ErrorEntry,
    Include,
    ModelList,
    ModelMetadata,
    PredictResponse,
    problem_responses,
)
from digitserve.settings import env_name

router = APIRouter(prefix="/v1", tags=["v1"])

Item = TypeVar("Item")

INCLUDE_VALUES = get_args(Include)
"""What `?include=` may ask for."""

REQUEST_MEDIA_TYPES = (*ACCEPTED_MEDIA_TYPES, "multipart/form-data", "application/json")
"""The Content-Types `:predict` names; a body labelled otherwise is read by its bytes."""

RAW_IMAGE = "image/*"
"""A body read as one image, whatever its label said (`body_media_type`)."""

_JSON_OBJECT = re.compile(rb"[ \t\r\n]*\{")
"""JSON whitespace, then an object: what an unlabelled JSON request starts with."""

MULTIPART_FIELD = "image"
"""The form field name of each image in a multipart request."""

B64_FORM = '{"b64": "<base64 of the JPEG or PNG>"}'
"""How an image goes into a JSON instance, as error messages show it."""

INLINE_JSON_BYTES = 64 * 1024
"""JSON of ready-made pixels up to this size is read inline; JSON carrying images never is."""

PREPROCESSING_STEPS = [
    "Decode the JPEG or PNG (EXIF orientation applied, transparency composited onto white).",
    "Levels (on a grey copy of at most 128 pixels a side): estimate the paper tone (border "
    "median, then a plane through the paper pixels for uneven light) and which side the ink is "
    "on; ink is how far a pixel is from the paper under it, stretched so the ink reads 1 and the "
    "paper 0. Light ink on a dark ground is read the same way (and flagged inverted_input).",
    "Marks: connected ink marks; specks dropped, the largest mark and those close to it kept, "
    "others ignored (several_marks).",
    "Already framed like the training data (ink touching top and bottom, as in every load_digits "
    "digit)? Read plainly: per pixel ink = sqrt(((255-r)/255)^2 + ((255-g)/255)^2 + "
    "((255-b)/255)^2) / sqrt(3) on clean white paper, else the stretched ink.",
    "Otherwise frame it: cut out the ink box, remove slant beyond what training digits show, map "
    "the box to the full height of a 64x64 frame and at most 20/32 of its width (centred), and "
    "thicken or thin strokes toward the training ink share (26-36% of the frame).",
    "Reduce to an 8x8 grid by area averaging (each training value counts the inked pixels of a "
    "4x4 block of a 32x32 bitmap), map each cell to an integer 0..16 and read the grid row by row "
    "into 64 features.",
]


def _problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with."""
    return problem_responses(_STATUS_DESCRIPTIONS, *statuses)


_STATUS_DESCRIPTIONS = {
    400: "Undecodable image or malformed request (`invalid_image`, `invalid_input`).",
    404: "No model of that name, or no such version of it (`model_not_found`, "
    "`version_not_found`).",
    413: "Over a limit: body bytes (refused before reading), image pixels (from the header), "
    "decoding work (JPEG scans and segments, PNG chunks), or images per request "
    "(`body_too_large`, `image_too_large`, `image_too_complex`, `too_many_images`); the message "
    "names the setting that raises it.",
    415: "An image format other than JPEG or PNG, or a body that is no image (nor JSON) under a "
    "Content-Type not accepted; `accepted` lists the types that are (`unsupported_media_type`).",
    422: "A valid image that cannot be a digit: smaller than 8x8 or blank "
    "(`image_too_small`, `blank_image`).",
    503: "Model not ready (`model_not_ready`), or this worker at its bound of requests in flight "
    "(`overloaded`, with Retry-After).",
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "One path, three request shapes: multipart/form-data and application/json "
    "as labelled; any other body (image/jpeg, image/png, application/octet-stream, no "
    "Content-Type, or curl's default application/x-www-form-urlencoded) is read by its bytes: a "
    "JPEG or PNG image (the format is sniffed, never taken from the label), or JSON when it "
    "starts with `{`.",
    "content": {
        "image/jpeg": _BINARY,
        "image/png": _BINARY,
        "application/octet-stream": _BINARY,
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [MULTIPART_FIELD],
                "properties": {
                    MULTIPART_FIELD: {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "One or more image files; predictions come back in order.",
                    }
                },
            }
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
    },
}


def describe_model(served: ServedModel, dataplane: DataPlane) -> dict[str, Any]:
    """The model card plus how to call it: everything a consumer needs, from the API itself."""
    classifier = served.classifier
    settings = dataplane.settings
    card = classifier.card
    base = f"/v1/models/{served.name}"
    versioned = f"{base}/versions/{served.version}"
    release = card.get("version")
    return {
        **{key: value for key, value in card.items() if key not in ("name", "version", "input")},
        "name": served.name,
        "version": served.version,
        **({"release": str(release)} if release is not None else {}),
        "description": card.get(
            "description", "A classifier of 8x8 digit images (operator-supplied)."
        ),
        "sha256": classifier.sha256,
        "runtime": classifier.path,
        "scores": classifier.score_kind,
        "classes": list(classifier.classes),
        "labels": card.get("labels", {key: key for key in classifier.class_keys}),
        "input": {
            "media_types": list(REQUEST_MEDIA_TYPES),
            "images": "JPEG or PNG of a dark digit on a light background, at least 8x8 pixels.",
            "multipart_field": MULTIPART_FIELD,
            "json": '{"instances": [{"b64": "<base64 image>"} | [64 ints 0..16] | 8x8 ints]}',
            "features": {
                "shape": [GRID * GRID],
                "range": [0, LEVELS],
                "order": "8x8 grid read row by row, 0 = white paper, 16 = solid ink",
            },
        },
        "output": {
            "label": "the class from the model's predict()",
            "confidence": "probability of label (null when scores are decision_scores)",
            classifier.score_kind: "one score per class, keyed by class label",
            "pixels": "with ?include=pixels, the 8x8 grid the model saw",
            "warnings": "list of {code, message}: what may have made the image hard to read",
        },
        "warnings": dict(WARNING_CODES),
        "preprocessing": PREPROCESSING_STEPS,
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_images_per_request": settings.max_images_per_request,
            "min_image_side": GRID,
        },
        "endpoints": {
            "predict": f"POST {base}:predict",
            "predict_this_version": f"POST {versioned}:predict",
            "metadata": f"GET {base}",
            "errors": "GET /v1/errors",
            "openapi": "GET /openapi.json",
            "docs": "GET /docs",
        },
    }


def model_entry(dataplane: DataPlane, name: str) -> dict[str, Any]:
    """One model of the repository: its versions and states, and its default version's card."""
    repository = dataplane.repository
    default = repository.default_version(name)
    versions = [
        {"version": line.version, "state": line.state.value, "reason": line.reason}
        for line in repository.index(name)
        if line.version
    ]
    card = None
    if default is not None:
        card = describe_model(dataplane.model(name, str(default)), dataplane)
    return {
        "name": name,
        "default_version": None if default is None else str(default),
        "versions": versions,
        "card": card,
    }


@router.get("", summary="API index")
async def index(dataplane: DataPlaneDep) -> dict[str, Any]:
    """Say what this server is, which models it hosts and where everything lives."""
    default = dataplane.default_name
    return {
        "name": "digitserve",
        "version": __version__,
        "models": [
            {"name": name, "default_version": _text(dataplane.repository.default_version(name))}
            for name in dataplane.repository.names()
        ],
        "default_model": default,
        "links": {
            "models": "/v1/models",
            "model": f"/v1/models/{default}",
            "predict": f"/v1/models/{default}:predict",
            "errors": "/v1/errors",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "live": "/healthz",
            "ready": "/readyz",
            "metrics": "/metrics",
            "inference_protocol": "/v2",
            "repository_index": "POST /v2/repository/index",
        },
    }


def _text(version: int | None) -> str | None:
    """A version number as the API writes it."""
    return None if version is None else str(version)


@router.get("/errors", response_model=list[ErrorEntry], summary="Every error code, explained")
async def errors() -> list[dict[str, Any]]:
    """List each error code with its HTTP status and meaning (problem `type` URIs point here)."""
    return catalogue()


@router.get(
    "/models", response_model=ModelList, summary="List models", responses=_problem_responses(503)
)
async def list_models(dataplane: DataPlaneDep) -> dict[str, Any]:
    """Every model this server hosts, with every version, its state and the default's card."""
    return {"models": [model_entry(dataplane, name) for name in dataplane.repository.names()]}


@router.post(
    "/models/{model_name}:predict",
    summary="Predict the digit in one or more images",
    response_model=PredictResponse,
    responses=_problem_responses(400, 404, 413, 415, 422, 503),
    openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
)
async def predict(
    request: Request,
    model_name: str,
    include: Annotated[
        list[Include] | None,
        Query(description="`pixels` adds the 8x8 grid the model saw to each prediction."),
    ] = None,
) -> Response:
    """Classify a raw image body, multipart files, or JSON instances; answers keep request order."""
    return await predict_request(request, model_name)


@router.post(
    "/models/{model_name}/versions/{model_version}:predict",
    summary="Predict with one version of a model",
    response_model=PredictResponse,
    responses=_problem_responses(400, 404, 413, 415, 422, 503),
    openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
)
async def predict_with_version(
    request: Request,
    model_name: str,
    model_version: str,
    include: Annotated[
        list[Include] | None,
        Query(description="`pixels` adds the 8x8 grid the model saw to each prediction."),
    ] = None,
) -> Response:
    """As `:predict`, answered by the version named (TF Serving's versioned form)."""
    return await predict_version(request, model_name, model_version)


async def predict_request(request: Request, model_name: str) -> Response:
    """`predict`, reading its query and the app's state itself (see `routes.direct`)."""
    return await _predict(request, get_model(request, model_name))


async def predict_version(request: Request, model_name: str, model_version: str) -> Response:
    """`predict_with_version`, likewise."""
    return await _predict(request, get_model(request, model_name, model_version))


async def _predict(request: Request, served: ServedModel) -> Response:
    """Read the body, preprocess it (off the loop when big), predict, and answer in order."""
    with_pixels = _with_pixels(request)
    dataplane = get_dataplane(request)
    settings = dataplane.settings
    body = await read_body(request, settings.max_body_bytes, setting=env_name("max_body_bytes"))
    state = request.state
    setattr(state, BODY_BYTES_KEY, len(body))
    setattr(state, MODEL_KEY, (served.name, served.version))
    media_type, options = media_type_of(request.headers.get("content-type"))
    media_type = body_media_type(media_type, body)
    items: list[Preprocessed]
    if media_type == RAW_IMAGE:
        # Opened once, here: the header's size says where to decode, and a bad header is
        # answered at once. A small image is read on the loop, with other requests' images.
        image = dataplane.open(body)
        if image.width * image.height <= INLINE_PIXELS:
            items = [await dataplane.read_inline(image)]
        else:
            items = await dataplane.off_loop(
                functools.partial(_read_all, [image], dataplane), quick=False
            )
    else:
        quick = decodes_quickly(media_type, body)
        decode = _request_decoder(media_type, options, body, dataplane)
        items = await dataplane.off_loop(decode, quick=quick)
    setattr(state, IMAGES_KEY, len(items))
    batch = np.array([item.features for item in items])  # np.stack costs 10 µs more
    predictions = await dataplane.predict(served, batch)
    classifier = served.classifier
    content = {
        "model": {"name": served.name, "version": served.version, "scores": classifier.score_kind},
        "predictions": [
            _prediction_body(prediction, item, classifier, with_pixels=with_pixels)
            for prediction, item in zip(predictions, items, strict=True)
        ],
    }
    return Response(orjson.dumps(content), media_type="application/json")


@router.get(
    "/models/{model_name}",
    response_model=ModelMetadata,
    summary="Model card: what it does and how to call it",
    responses=_problem_responses(404, 503),
)
async def model_metadata(model_name: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    """Describe the model's default version: classes, input contract, outputs, limits."""
    if model_name.endswith(":predict"):
        raise MethodNotAllowed("use POST for :predict", headers={"Allow": "POST"})
    return describe_model(dataplane.model(model_name), dataplane)


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadata,
    summary="Model card of one version",
    responses=_problem_responses(404, 503),
)
async def model_version_metadata(
    model_name: str, model_version: str, dataplane: DataPlaneDep
) -> dict[str, Any]:
    """Describe one version of a model."""
    if model_version.endswith(":predict"):
        raise MethodNotAllowed("use POST for :predict", headers={"Allow": "POST"})
    return describe_model(dataplane.model(model_name, model_version), dataplane)


def body_media_type(declared: str, body: bytes) -> str:
    """How to read a body: multipart and JSON as labelled, anything else by its bytes.

    Clients label raw uploads loosely: curl's `--data-binary @digit.jpg` says it is a form
    (application/x-www-form-urlencoded), others say application/octet-stream, image/jpg, or
    nothing. The label is not trusted for images anyway (the format is sniffed), so any body that
    is not multipart or JSON is read as an image when its bytes are one, and as JSON when they
    open with `{` (`curl -d @request.json` without `-H`). Bytes that are neither keep the label's
    answer: 415 for a type not accepted, 400 `invalid_image` for one claiming JPEG or PNG.
    """
    if declared in ("multipart/form-data", "application/json"):
        return declared
    if declared in ACCEPTED_MEDIA_TYPES or sniff_media_type(body) is not None:
        return RAW_IMAGE
    if _JSON_OBJECT.match(body):
        return "application/json"
    raise UnsupportedMediaType(
        f"Content-Type {declared or '(none)'} is not accepted, and the body is not an image "
        f"(nor a JSON object); send one of: {', '.join(REQUEST_MEDIA_TYPES)}",
        accepted=list(REQUEST_MEDIA_TYPES),
    )


def decodes_quickly(media_type: str, body: bytes) -> bool:
    """Whether this body is surely cheap enough to preprocess on the event loop."""
    if media_type in ACCEPTED_MEDIA_TYPES:
        return (declared_pixels(body) or 0) <= INLINE_PIXELS
    if media_type == "application/json":
        # Any b64 key, even one spelt with escapes, sends the body to a thread.
        return len(body) <= INLINE_JSON_BYTES and b"b64" not in body and b"\\" not in body
    return False


def _with_pixels(request: Request) -> bool:
    """Whether `?include=pixels` was asked for; any other `include` value is a 400."""
    if not request.scope.get("query_string"):
        return False  # most requests: no query to parse
    values = request.query_params.getlist("include")
    for index, value in enumerate(values):
        if value not in INCLUDE_VALUES:
            expected = " or ".join(repr(choice) for choice in INCLUDE_VALUES)
            raise InvalidInput(
                f"invalid request: query.include.{index}: Input should be {expected}"
            )
    return bool(values)


def _prediction_body(
    prediction: Prediction, item: Preprocessed, classifier: Classifier, *, with_pixels: bool
) -> dict[str, Any]:
    """One prediction as JSON, with the image's warnings and the model's own hesitation."""
    diagnostics = list(item.warnings)
    if classifier.score_kind == "probabilities":
        diagnostics.extend(confidence_warnings(prediction.scores))
    body: dict[str, Any] = {
        "label": prediction.label,
        "confidence": prediction.confidence,
        classifier.score_kind: prediction.scores,
        "warnings": [{"code": d.code, "message": d.message} for d in diagnostics],
    }
    if with_pixels:
        body["pixels"] = item.features.reshape(GRID, GRID).tolist()
    return body


def _request_decoder(
    media_type: str, options: dict[bytes, bytes], body: bytes, dataplane: DataPlane
) -> Callable[[], list[Preprocessed]]:
    """Pick how to turn a multipart or JSON body into feature rows; the call does the CPU work."""
    limit = dataplane.settings.max_images_per_request
    if media_type == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise InvalidInput("multipart/form-data needs a boundary parameter in Content-Type")
        return lambda: _multipart_features(body, boundary, limit, dataplane)
    return lambda: _json_features(body, limit, dataplane)


def _multipart_features(
    body: bytes, boundary: bytes, limit: int, dataplane: DataPlane
) -> list[Preprocessed]:
    """Features of every `image` part, in order."""
    parts = parse_multipart(
        body, boundary, max_parts=limit, setting=env_name("max_images_per_request")
    )
    unexpected = sorted({part.name for part in parts if part.name != MULTIPART_FIELD})
    if unexpected:
        raise InvalidInput(
            f"unexpected form field(s) {', '.join(map(repr, unexpected))}; "
            f"send each image in a field named {MULTIPART_FIELD!r}"
        )
    if not parts:
        raise InvalidInput(f"the form has no {MULTIPART_FIELD!r} file part")
    return dataplane.read_each(parts, lambda part: bytes(part.data), [p.filename for p in parts])


def _json_features(body: bytes, limit: int, dataplane: DataPlane) -> list[Preprocessed]:
    """Features of every JSON instance, in order."""
    _check_value_count(body, limit)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or set(document) != {"instances"}:
        raise InvalidInput('the JSON body must be an object with one key, "instances"')
    instances = document["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list')
    if len(instances) > limit:
        raise TooManyImages(
            f"{len(instances)} instances in one request; the limit is {limit}, set by "
            f"{env_name('max_images_per_request')}",
            limit=limit,
        )
    if all(isinstance(instance, dict) for instance in instances):  # images: read together
        return dataplane.read_each(instances, _instance_image)
    return each_item(instances, functools.partial(_instance_features, dataplane=dataplane))


def _check_value_count(body: bytes, limit: int) -> None:
    """Refuse JSON with more values than `limit` instances can hold, before any list is built.

    Parsed, every JSON value is a Python object, all built before anything can be counted: 10 MB
    of `0,0,0,...` (five million list slots, copied once more to check them) cost a worker 140 MB,
    and eight such bodies at once 830 MB. Every comma separates two values, and a valid body has
    few others (base64 has none, a data URL one per image), so one with `limit` x 64 or more (64
    pixels per instance) is refused unparsed. What is left to parse is a few thousand small
    objects plus the strings, which are at most the body's size.
    """
    if body.count(b",") >= limit * N_FEATURES:
        raise TooManyImages(
            f"the JSON body holds more values than {limit} instances of {N_FEATURES} pixels; "
            f"the limit is {limit} instances, set by {env_name('max_images_per_request')}",
            limit=limit,
        )


def _instance_image(instance: object) -> bytes:
    """The image of a JSON instance {"b64": image}."""
    if not isinstance(instance, dict) or set(instance) != {"b64"}:
        raise InvalidInput(f"an image instance must be {B64_FORM}")
    if not isinstance(instance["b64"], str):
        raise InvalidInput(f"an image instance must be {B64_FORM}")
    return decode_base64(instance["b64"], "b64")


def _instance_features(instance: object, dataplane: DataPlane) -> Preprocessed:
    """One JSON instance: {"b64": image} or ready-made pixels (which carry no image warnings)."""
    if isinstance(instance, dict):
        return dataplane.read_bytes(_instance_image(instance))
    if isinstance(instance, str):
        # A string is no instance of its own: TF Serving reads a bare string as text, never as
        # an image, so the one image form is the explicit object.
        raise InvalidInput(f"a bare string is not an instance; send an image as {B64_FORM}")
    return Preprocessed(pixel_list(instance, "pixels"))


def _read_all(images: list[OpenedImage], dataplane: DataPlane) -> list[Preprocessed]:
    """Decode and read opened images."""
    return [dataplane.read(image) for image in images]
