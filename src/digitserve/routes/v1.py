"""The native REST API: `/v1/models/{name}` metadata and `:predict` with three request shapes."""

import binascii
import functools
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_args

import anyio.to_thread
import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response

from digitserve import __version__
from digitserve.classifier import Classifier, Prediction
from digitserve.dependencies import (
    ClassifierDep,
    SettingsDep,
    get_batcher,
    get_classifier,
    get_metrics,
    get_preprocess_limiter,
    get_settings,
)
from digitserve.diagnostics import WARNING_CODES, confidence_warnings
from digitserve.errors import (
    DigitserveError,
    InvalidInput,
    MethodNotAllowed,
    ModelNotFound,
    TooManyImages,
    UnsupportedMediaType,
    catalogue,
)
from digitserve.metrics import Metrics
from digitserve.middleware import BODY_BYTES_KEY, IMAGES_KEY
from digitserve.preprocessing import (
    ACCEPTED_MEDIA_TYPES,
    GRID,
    INLINE_PIXELS,
    LEVELS,
    N_FEATURES,
    OpenedImage,
    Preprocessed,
    declared_pixels,
    load_pixels,
    open_image,
    pixels_to_features,
    read_digit,
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
from digitserve.settings import Settings

router = APIRouter(prefix="/v1", tags=["v1"])

Item = TypeVar("Item")

INCLUDE_VALUES = get_args(Include)
"""What `?include=` may ask for."""

REQUEST_MEDIA_TYPES = (*ACCEPTED_MEDIA_TYPES, "multipart/form-data", "application/json")
"""What `:predict` reads; anything else is 415 before the body is read."""

MULTIPART_FIELD = "image"
"""The form field name of each image in a multipart request."""

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
    404: "No model of that name (`model_not_found`).",
    413: "Over a limit: body bytes (refused before reading), image pixels (from the header), or "
    "images per request (`body_too_large`, `image_too_large`, `too_many_images`).",
    415: "Body media type not accepted; `accepted` lists those that are.",
    422: "A valid image that cannot be a digit: smaller than 8x8 or blank "
    "(`image_too_small`, `blank_image`).",
    503: "Model not ready (`model_not_ready`).",
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "One path, three request shapes chosen by Content-Type.",
    "content": {
        "image/jpeg": _BINARY,
        "image/png": _BINARY,
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


def describe_model(classifier: Classifier, settings: Settings) -> dict[str, Any]:
    """The model card plus how to call it: everything a consumer needs, from the API itself."""
    card = classifier.card
    base = f"/v1/models/{classifier.name}"
    return {
        **{key: value for key, value in card.items() if key not in ("name", "version", "input")},
        "name": classifier.name,
        "version": classifier.version,
        "description": card.get(
            "description", "A scikit-learn classifier of 8x8 digit images (operator-supplied)."
        ),
        "sha256": classifier.sha256,
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
            "metadata": f"GET {base}",
            "errors": "GET /v1/errors",
            "openapi": "GET /openapi.json",
            "docs": "GET /docs",
        },
    }


@router.get("", summary="API index")
async def index(classifier: ClassifierDep) -> dict[str, Any]:
    """Say what this server is and where everything lives."""
    return {
        "name": "digitserve",
        "version": __version__,
        "models": [{"name": classifier.name, "version": classifier.version}],
        "links": {
            "models": "/v1/models",
            "model": f"/v1/models/{classifier.name}",
            "predict": f"/v1/models/{classifier.name}:predict",
            "errors": "/v1/errors",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "live": "/healthz",
            "ready": "/readyz",
            "metrics": "/metrics",
            "inference_protocol": "/v2",
        },
    }


@router.get("/errors", response_model=list[ErrorEntry], summary="Every error code, explained")
async def errors() -> list[dict[str, Any]]:
    """List each error code with its HTTP status and meaning (problem `type` URIs point here)."""
    return catalogue()


@router.get(
    "/models", response_model=ModelList, summary="List models", responses=_problem_responses(503)
)
async def list_models(classifier: ClassifierDep, settings: SettingsDep) -> dict[str, Any]:
    """Every model this server hosts, with its card."""
    return {"models": [describe_model(classifier, settings)]}


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


async def predict_request(request: Request, model_name: str) -> Response:
    """`predict`, reading its query and the app's state itself (see `routes.direct`)."""
    with_pixels = _with_pixels(request)
    classifier = get_classifier(request)
    settings = get_settings(request)
    metrics = get_metrics(request)
    _check_model_name(model_name, classifier)
    media_type, options = media_type_of(request.headers.get("content-type"))
    if media_type not in REQUEST_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {media_type or '(none)'} is not accepted; send one of: "
            f"{', '.join(REQUEST_MEDIA_TYPES)}",
            accepted=list(REQUEST_MEDIA_TYPES),
        )
    body = await read_body(request, settings.max_body_bytes)
    state = request.state
    setattr(state, BODY_BYTES_KEY, len(body))
    decode: Callable[[], list[Preprocessed]]
    if media_type in ACCEPTED_MEDIA_TYPES:
        # Opened once, here: the header's size says where to decode, and a bad header is
        # answered at once.
        image = _opened(body, settings.max_image_pixels, metrics)
        quick = image.width * image.height <= INLINE_PIXELS
        decode = functools.partial(_read_all, [image], metrics)
    else:
        quick = decodes_quickly(media_type, body)
        decode = _request_decoder(media_type, options, body, settings, metrics)
    items = (
        decode()
        if quick
        else await anyio.to_thread.run_sync(decode, limiter=get_preprocess_limiter(request))
    )
    setattr(state, IMAGES_KEY, len(items))
    batch = np.array([item.features for item in items])  # np.stack costs 10 µs more
    predictions = await get_batcher(request).predict(batch)
    content = {
        "model": {
            "name": classifier.name,
            "version": classifier.version,
            "scores": classifier.score_kind,
        },
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
async def model_metadata(
    model_name: str, classifier: ClassifierDep, settings: SettingsDep
) -> dict[str, Any]:
    """Describe the model: classes, input contract, outputs, preprocessing, limits, versions."""
    if model_name.endswith(":predict"):
        raise MethodNotAllowed("use POST for :predict", headers={"Allow": "POST"})
    _check_model_name(model_name, classifier)
    return describe_model(classifier, settings)


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


def _check_model_name(model_name: str, classifier: Classifier) -> None:
    """404 for any name but the hosted model's."""
    if model_name != classifier.name:
        raise ModelNotFound(f"no model named {model_name!r}; this server hosts {classifier.name!r}")


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
    media_type: str, options: dict[bytes, bytes], body: bytes, settings: Settings, metrics: Metrics
) -> Callable[[], list[Preprocessed]]:
    """Pick how to turn a multipart or JSON body into feature rows; the call does the CPU work."""
    max_pixels = settings.max_image_pixels
    limit = settings.max_images_per_request
    if media_type == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise InvalidInput("multipart/form-data needs a boundary parameter in Content-Type")
        return lambda: _multipart_features(body, boundary, max_pixels, limit, metrics)
    return lambda: _json_features(body, max_pixels, limit, metrics)


def _multipart_features(
    body: bytes, boundary: bytes, max_pixels: int, limit: int, metrics: Metrics
) -> list[Preprocessed]:
    """Features of every `image` part, in order."""
    parts = parse_multipart(body, boundary, max_parts=limit)
    unexpected = sorted({part.name for part in parts if part.name != MULTIPART_FIELD})
    if unexpected:
        raise InvalidInput(
            f"unexpected form field(s) {', '.join(map(repr, unexpected))}; "
            f"send each image in a field named {MULTIPART_FIELD!r}"
        )
    if not parts:
        raise InvalidInput(f"the form has no {MULTIPART_FIELD!r} file part")
    return [
        _itemised(index, part.filename, _image_features, bytes(part.data), max_pixels, metrics)
        for index, part in enumerate(parts)
    ]


def _json_features(
    body: bytes, max_pixels: int, limit: int, metrics: Metrics
) -> list[Preprocessed]:
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
            f"{len(instances)} instances in one request; the limit is {limit}", limit=limit
        )
    return [
        _itemised(index, None, _instance_features, item, max_pixels, metrics)
        for index, item in enumerate(instances)
    ]


def _check_value_count(body: bytes, limit: int) -> None:
    """Refuse JSON with more values than `limit` instances can hold, before any list is built.

    Parsed, every JSON value is a Python object, all built before anything can be counted: 10 MB
    of `0,0,0,...` (five million list slots, copied once more to check them) cost a worker 140 MB,
    and eight such bodies at once 830 MB. Every comma separates two values, and a valid body has
    no other commas (base64 has none), so one with `limit` x 64 or more (64 pixels per instance)
    is refused unparsed. What is left to parse is a few thousand small objects plus the strings,
    which are at most the body's size.
    """
    if body.count(b",") >= limit * N_FEATURES:
        raise TooManyImages(
            f"the JSON body holds more values than {limit} instances of {N_FEATURES} pixels; "
            f"the limit is {limit} instances",
            limit=limit,
        )


def _instance_features(instance: object, max_pixels: int, metrics: Metrics) -> Preprocessed:
    """One JSON instance: {"b64": image} or ready-made pixels (which carry no image warnings)."""
    if isinstance(instance, dict):
        if set(instance) != {"b64"} or not isinstance(instance["b64"], str):
            raise InvalidInput('an image instance must be {"b64": "<base64 string>"}')
        try:
            # Strict mode accepts exactly what `b64decode(validate=True)` does, and decodes the
            # string in place, where b64decode would first copy it to bytes.
            data = binascii.a2b_base64(instance["b64"], strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("b64 is not valid base64") from exc
        return _image_features(data, max_pixels, metrics)
    return Preprocessed(pixels_to_features(instance))


def _image_features(data: bytes, max_pixels: int, metrics: Metrics) -> Preprocessed:
    """One encoded image, read, recording its size and the decode and preprocess times."""
    return _read_opened(_opened(data, max_pixels, metrics), metrics)


def _opened(data: bytes, max_pixels: int, metrics: Metrics) -> OpenedImage:
    """An image's header read and checked against the limits (see `open_image`)."""
    metrics.image_bytes.observe(len(data))
    return open_image(data, max_pixels=max_pixels)


def _read_all(images: list[OpenedImage], metrics: Metrics) -> list[Preprocessed]:
    """Decode and read opened images."""
    return [_read_opened(image, metrics) for image in images]


def _read_opened(image: OpenedImage, metrics: Metrics) -> Preprocessed:
    """Decode and read an opened image, recording the decode and preprocess times."""
    started = time.perf_counter()
    pixels = load_pixels(image)
    decoded = time.perf_counter()
    item = read_digit(pixels)
    metrics.decode_seconds.observe(decoded - started)
    metrics.preprocess_seconds.observe(time.perf_counter() - decoded)
    return item


def _itemised(
    index: int,
    filename: str | None,
    work: Callable[[Item, int, Metrics], Preprocessed],
    item: Item,
    max_pixels: int,
    metrics: Metrics,
) -> Preprocessed:
    """Run one item's preprocessing, naming the item in any error it raises."""
    try:
        return work(item, max_pixels, metrics)
    except DigitserveError as exc:
        where = f"item {index}" + (f" ({filename})" if filename else "")
        raise type(exc)(f"{where}: {exc.detail}", headers=exc.headers, **exc.extra) from exc
