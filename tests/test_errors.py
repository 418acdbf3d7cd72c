"""The error catalogue and envelope."""

import pytest

from digitserve.errors import (
    DigitserveError,
    ImageTooLarge,
    byte_limit,
    byte_size,
    catalogue,
    problem,
)


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


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (2048, "2 KiB"),
        (4002, "3.9 KiB"),
        (10 * 1024 * 1024, "10 MiB"),
        (10_844_757, "10.3 MiB"),
    ],
)
def test_byte_sizes_read_as_people_read_them(count: int, text: str) -> None:
    assert byte_size(count) == text


def test_a_byte_limit_names_its_setting() -> None:
    assert byte_limit(10_485_760, "DIGITSERVE_MAX_BODY_BYTES") == (
        "10 MiB, set by DIGITSERVE_MAX_BODY_BYTES=10485760"
    )
    assert byte_limit(65536, None) == "64 KiB"
