"""The data plane's shared readers: base64 images, one rule for every protocol."""

import base64
import io

import numpy as np
import pytest

from digitserve.classifier import Classifier
from digitserve.dataplane import DataPlane, decode_base64, pixel_list
from digitserve.errors import BlankImage, InvalidImage, InvalidInput
from digitserve.metrics import Metrics
from digitserve.preprocessing import render_digit
from digitserve.settings import Settings
from digitserve.training import Split

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


def plane(settings: Settings, classifier: Classifier) -> DataPlane:
    """A data plane serving the bundled model, as a worker holds it."""
    return DataPlane(settings, Metrics(), admitted=lambda: 1, classifier=classifier)


def jpeg(features: np.ndarray, side: int) -> bytes:
    buffer = io.BytesIO()
    render_digit(features, side).convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


BLANK = jpeg(np.zeros(64, dtype=np.int64), 8)


def test_a_requests_images_read_together_read_as_each_alone(
    settings: Settings, classifier: Classifier, split: Split
) -> None:
    rows = split.x_test[:6].astype(np.int64)
    images = [jpeg(rows[0], 8), jpeg(rows[1], 8), jpeg(rows[2], 256), jpeg(rows[3], 8)]
    images += [jpeg(rows[4], 28), jpeg(rows[5], 28)]
    target = plane(settings, classifier)
    together = target.read_each(images, lambda data: data)
    for ours, data in zip(together, images, strict=True):
        alone = target.read_bytes(data)
        assert ours.features.tobytes() == alone.features.tobytes()
        assert (ours.warnings, ours.reframed) == (alone.warnings, alone.reframed)
    registry = target.metrics.registry
    # The four 8x8 and two 28x28 images in one reading; the 256 px one alone.
    assert registry.get_sample_value("digitserve_read_batch_size_count") == 1
    assert registry.get_sample_value("digitserve_read_batch_size_sum") == 5


def test_the_first_image_to_fail_is_named_whatever_is_read_together(
    settings: Settings, classifier: Classifier, split: Split
) -> None:
    good = jpeg(split.x_test[0].astype(np.int64), 8)
    target = plane(settings, classifier)
    # A blank 8x8 image (found when the small ones are read, at the end) before a corrupt one
    # (found when decoded): the blank one is named, as reading them one by one would.
    with pytest.raises(BlankImage, match=r"^image 1 \(blank.jpg\): "):
        target.read_each(
            [good, BLANK, good, b"\xff\xd8\xff\xe0 not a jpeg"],
            lambda data: data,
            [None, "blank.jpg", None, "broken.jpg"],
            noun="image",
        )
    with pytest.raises(InvalidImage, match=r"^image 2: "):
        target.read_each([good, good, b"\xff\xd8\xff\xe0 not a jpeg", BLANK], bytes, noun="image")
