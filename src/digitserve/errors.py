"""Every error the service reports, and the one envelope they are reported in.

The hierarchy (HTTP status in brackets; `code` is the stable machine name clients match on)::

    DigitserveError                      base: status, code, title, detail
    ├── BadRequest [400]
    │   ├── InvalidImage         invalid_image       bytes no decoder accepts (truncated, garbage)
    │   └── InvalidInput         invalid_input       malformed JSON, multipart, features or query
    ├── Unauthorized [401]       unauthorized        no valid API key (only when keys are set)
    ├── ModelControlDisabled [403] model_control_disabled  load/unload outside explicit mode
    ├── NotFound [404]
    │   ├── ModelNotFound        model_not_found     no model of that name
    │   ├── VersionNotFound      version_not_found   the model has no such version
    │   └── RouteNotFound        not_found           no such path
    ├── MethodNotAllowed [405]   method_not_allowed
    ├── RequestTimeout [408]     request_timeout     not answered within `request_timeout_seconds`
    ├── PayloadTooLarge [413]
    │   ├── BodyTooLarge         body_too_large      over `max_body_bytes`, refused before reading
    │   ├── ImageTooLarge        image_too_large     over `max_image_pixels`, read from the header
    │   ├── ImageTooComplex      image_too_complex   too many JPEG scans or segments, or PNG chunks
    │   ├── TooManyImages        too_many_images     more than `max_images_per_request`
    │   └── TooManyElements      too_many_elements   (/v2) tensor elements past what
    │                                                `max_images_per_request` rows could need
    ├── UnsupportedMediaType [415]
    │   └── (one class)          unsupported_media_type  lists the accepted types
    ├── NotADigit [422]
    │   ├── ImageTooSmall        image_too_small     smaller than 8x8 pixels
    │   └── BlankImage           blank_image         no ink at all
    ├── ModelNotReady [503]      model_not_ready
    ├── Overloaded [503]         overloaded          at `max_concurrent_requests`; Retry-After
    └── InternalError [500]      internal_error      never shows internals

`ModelLoadError` is not an HTTP error: it stops the service from starting (an unreadable or
untrusted model file, or one whose sha256 is not the expected one).
The envelope is RFC 9457 `application/problem+json`, plus `code`, `request_id` and `error` (the same
text as `detail`, which Open Inference Protocol clients read).
"""

from typing import Any, ClassVar

PROBLEM_MEDIA_TYPE = "application/problem+json"
ERROR_TYPE_BASE = "/v1/errors#"
"""Problem `type` URIs point into the error catalogue the service itself serves."""


class DigitserveError(Exception):
    """Base class: an error the client caused or may retry, reported with a stable code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class BadRequest(DigitserveError):
    """The request could not be understood."""

    status = 400
    code = "bad_request"
    title = "Bad request"


class InvalidImage(BadRequest):
    """The bytes are not a decodable image."""

    code = "invalid_image"
    title = "Invalid image"


class InvalidInput(BadRequest):
    """The request body or query is malformed."""

    code = "invalid_input"
    title = "Invalid input"


class Unauthorized(DigitserveError):
    """An API key is required and none, or a wrong one, was sent."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class ModelControlDisabled(DigitserveError):
    """Loading and unloading models is switched off (`--model-control-mode` is not explicit)."""

    status = 403
    code = "model_control_disabled"
    title = "Model control disabled"


class NotFound(DigitserveError):
    """Nothing lives at this address."""

    status = 404
    code = "not_found"
    title = "Not found"


class ModelNotFound(NotFound):
    """No model is served under that name."""

    code = "model_not_found"
    title = "Model not found"


class VersionNotFound(NotFound):
    """The model is served, but has no such version."""

    code = "version_not_found"
    title = "Model version not found"


class RouteNotFound(NotFound):
    """No route matches the path."""


class MethodNotAllowed(DigitserveError):
    """The route exists but not for this HTTP method."""

    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class PayloadTooLarge(DigitserveError):
    """The request is over one of the service's size limits."""

    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class BodyTooLarge(PayloadTooLarge):
    """The body is over the byte limit."""

    code = "body_too_large"
    title = "Request body too large"


class ImageTooLarge(PayloadTooLarge):
    """The image has more pixels than allowed: a decompression bomb is refused unread."""

    code = "image_too_large"
    title = "Image too large"


class ImageTooComplex(PayloadTooLarge):
    """The image's layout asks its decoder for far more work than its size: refused undecoded."""

    code = "image_too_complex"
    title = "Image too complex"


class TooManyImages(PayloadTooLarge):
    """The request carries more images than allowed."""

    code = "too_many_images"
    title = "Too many images"


class TooManyElements(PayloadTooLarge):
    """The request's tensors hold more elements than the model could take in one request."""

    code = "too_many_elements"
    title = "Too many tensor elements"


class UnsupportedMediaType(DigitserveError):
    """The body's media type is not one the endpoint accepts."""

    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class NotADigit(DigitserveError):
    """A valid image that cannot hold a digit."""

    status = 422
    code = "not_a_digit"
    title = "Image cannot be a digit"


class ImageTooSmall(NotADigit):
    """Smaller than the model's 8x8 grid."""

    code = "image_too_small"
    title = "Image too small"


class BlankImage(NotADigit):
    """No ink anywhere."""

    code = "blank_image"
    title = "Blank image"


class ModelNotReady(DigitserveError):
    """The model is not loaded yet, or the service is shutting down."""

    status = 503
    code = "model_not_ready"
    title = "Model not ready"


class RequestTimeout(DigitserveError):
    """The request was not received and answered in time (a slow or stalled upload, say)."""

    status = 408
    code = "request_timeout"
    title = "Request timeout"


class Overloaded(DigitserveError):
    """The worker is at its bound of requests in flight; retry after the `Retry-After` seconds."""

    status = 503
    code = "overloaded"
    title = "Server overloaded"


class InternalError(DigitserveError):
    """A fault of the service; the client sees no details."""


class ModelLoadError(Exception):
    """The model file cannot be served; the service refuses to start."""


def byte_size(count: int) -> str:
    """A byte count as people read it: `10 MiB`, `10.3 MiB`, `3.9 KiB`, `512 bytes`."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} bytes"


def byte_limit(limit: int, setting: str | None) -> str:
    """A byte limit as people read it, and the setting that raises it (with its value in bytes)."""
    return byte_size(limit) + ("" if setting is None else f", set by {setting}={limit}")


def problem(error: DigitserveError, request_id: str | None) -> dict[str, Any]:
    """Render an error as the RFC 9457 problem document every 4xx/5xx uses."""
    body: dict[str, Any] = {
        "type": ERROR_TYPE_BASE + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        "request_id": request_id,
        "error": error.detail,
    }
    body.update(error.extra)
    return body


def catalogue() -> list[dict[str, Any]]:
    """List every error a client can receive, for the self-describing `/v1/errors` endpoint."""
    seen: dict[str, dict[str, Any]] = {}
    pending: list[type[DigitserveError]] = [DigitserveError]
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        seen[cls.code] = {
            "code": cls.code,
            "status": cls.status,
            "title": cls.title,
            "description": (cls.__doc__ or "").strip(),
        }
    return sorted(seen.values(), key=lambda entry: (entry["status"], entry["code"]))
