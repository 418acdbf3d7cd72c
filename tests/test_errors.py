"""The error catalogue and envelope."""

from digitserve.errors import DigitserveError, ImageTooLarge, catalogue, problem


def test_every_error_class_is_in_the_catalogue_once() -> None:
    entries = catalogue()
    codes = [entry["code"] for entry in entries]
    assert len(codes) == len(set(codes))
    assert {
        "invalid_image",
        "model_not_found",
        "body_too_large",
        "image_too_large",
        "too_many_images",
        "unsupported_media_type",
        "image_too_small",
        "blank_image",
        "model_not_ready",
        "internal_error",
        "method_not_allowed",
    } <= set(codes)
    assert all(entry["description"] for entry in entries)
    assert entries == sorted(entries, key=lambda entry: (entry["status"], entry["code"]))


def test_problem_document_has_rfc9457_fields_and_extras() -> None:
    body = problem(ImageTooLarge("too big", limit=10), "abc")
    assert body == {
        "type": "/v1/errors#image_too_large",
        "title": "Image too large",
        "status": 413,
        "detail": "too big",
        "code": "image_too_large",
        "request_id": "abc",
        "error": "too big",
        "limit": 10,
    }
    assert issubclass(ImageTooLarge, DigitserveError)
