"""The data plane's shared readers: base64 images, one rule for every protocol."""

import base64

import pytest

from digitserve.dataplane import decode_base64, pixel_list
from digitserve.errors import InvalidInput

DATA = bytes(range(256)) * 3
"""Bytes long enough to wrap over several lines."""

TEXT = base64.b64encode(DATA).decode()


@pytest.mark.parametrize(
    "text",
    [
        TEXT,
        base64.encodebytes(DATA).decode(),  # `base64` and MIME: LF every 76 columns
        base64.encodebytes(DATA).decode().replace("\n", "\r\n"),  # MIME on the wire: CRLF
        "\n".join(TEXT[i : i + 64] for i in range(0, len(TEXT), 64)),  # OpenSSL: 64 columns
        "data:image/png;base64," + TEXT,
        "DATA:image/jpeg;name=x.jpg;BASE64," + TEXT,
        "data:;base64," + base64.encodebytes(DATA).decode(),
    ],
    ids=["plain", "lf-76", "crlf-76", "lf-64", "data-url", "data-url-upper", "data-url-wrapped"],
)
def test_base64_is_read_in_its_common_forms(text: str) -> None:
    assert decode_base64(text, "b64") == DATA


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("QUJD QUJD", "b64 is not valid base64 (only base64 data is allowed); line breaks and"),
        ("QUJD\tQUJD", "b64 is not valid base64 (only base64 data is allowed)"),
        ("QUJD-_", "b64 is not valid base64 (only base64 data is allowed)"),
        ("QQ==QQ==", "b64 is not valid base64 (excess data after padding)"),
        ("QUJ", "b64 is not valid base64 (incorrect padding)"),
        ("é", "b64 is not valid base64 (string argument should contain only ASCII characters)"),
        ("é\n", "b64 is not valid base64"),
        ("data:image/png,abc", "b64 is a data URL without base64; send data:image/png;base64,"),
        ("data:image/png;base64", "b64 is a data URL without base64"),
    ],
)
def test_anything_else_is_refused_saying_what_is_read(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_base64(text, "b64")
    assert caught.value.detail.startswith(message), caught.value.detail


def test_pixels_flat_and_grid() -> None:
    flat = list(range(16)) * 4
    assert pixel_list(flat, "pixels").tolist() == flat
    grid = [flat[row * 8 : row * 8 + 8] for row in range(8)]
    assert pixel_list(grid, "pixels").tolist() == flat


@pytest.mark.parametrize(
    "bad",
    [
        [0] * 63,
        [0] * 63 + [17],
        [0] * 63 + [-1],
        [0.5] * 64,
        [True] * 64,
        "0" * 64,
        [[0] * 8] * 7 + [[0] * 7],
        {"pixels": [0] * 64},
        None,
    ],
)
def test_bad_pixels_are_invalid(bad: object) -> None:
    with pytest.raises(InvalidInput):
        pixel_list(bad, "pixels")
