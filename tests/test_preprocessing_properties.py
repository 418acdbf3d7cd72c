"""Property tests: any image or bytes give 64 levels 0..16 or the service's own error."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image

from digitserve.errors import DigitserveError
from digitserve.preprocessing import LEVELS, N_FEATURES, image_to_features, to_features

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_PIXELS = 1_000_000

IN_MEMORY_MODES = (
    "1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA",
    "RGBa", "I", "I;16", "I;16B", "F",
)  # fmt: skip
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")
JPEG_MODES = ("L", "RGB", "CMYK")


def check_features(features: NDArray[np.int64]) -> None:
    """The model's input contract."""
    assert features.shape == (N_FEATURES,)
    assert features.dtype == np.int64
    assert features.min() >= 0
    assert features.max() <= LEVELS


@st.composite
def images(draw: st.DrawFn, modes: tuple[str, ...]) -> Image.Image:
    """An image of any listed mode, 1..80 pixels a side, of random or flat content."""
    mode = draw(st.sampled_from(modes))
    width = draw(st.integers(1, 80))
    height = draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    flat = draw(st.booleans())
    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    raw_size = len(Image.new(mode, (width, height)).tobytes())
    if flat:
        value = rng.integers(0, 256, dtype=np.uint8)
        raw = bytes([int(value)]) * raw_size
    else:
        raw = rng.integers(0, 256, raw_size, dtype=np.uint8).tobytes()
    image = Image.frombytes(mode, (width, height), raw)
    if mode == "P":
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    assert len(image.getbands()) == channels
    return image


@PROPERTY
@given(images(IN_MEMORY_MODES))
def test_any_image_in_memory_gives_64_levels_or_a_service_error(image: Image.Image) -> None:
    try:
        features = to_features(image)
    except DigitserveError:
        return
    check_features(features)


@PROPERTY
@given(images(PNG_MODES + JPEG_MODES), st.sampled_from(["PNG", "JPEG"]))
def test_any_encoded_image_gives_64_levels_or_a_service_error(image: Image.Image, fmt: str) -> None:
    if fmt == "JPEG" and image.mode not in JPEG_MODES:
        image = image.convert("RGB")
    if fmt == "PNG" and image.mode not in PNG_MODES:
        image = image.convert("RGB")
    if fmt == "PNG" and image.mode == "I":
        image = Image.fromarray(np.asarray(image).astype(np.uint16))  # PNG stores 16 bits at most
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    try:
        features = image_to_features(buffer.getvalue(), max_pixels=MAX_PIXELS)
    except DigitserveError:
        return
    check_features(features)


def seed_images() -> list[bytes]:
    """Small valid JPEGs and PNGs of several modes, for byte-level mutation."""
    seeds = []
    for mode, fmt in [("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"),
                      ("RGBA", "PNG"), ("I;16", "PNG"), ("1", "PNG")]:  # fmt: skip
        gradient = Image.linear_gradient("L").resize((24, 24)).convert(mode)
        buffer = io.BytesIO()
        gradient.save(buffer, fmt, **({"progressive": True} if mode == "RGB" else {}))
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = seed_images()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid image with bytes flipped, cut short, or spliced with junk."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(max_size=64))
    return bytes(data)


@PROPERTY
@given(st.one_of(mutated(), st.binary(max_size=2048)))
@example(b"")
@example(b"\xff\xd8\xff")
@example(b"\x89PNG\r\n\x1a\n")
def test_any_bytes_give_64_levels_or_a_service_error(data: bytes) -> None:
    try:
        features = image_to_features(data, max_pixels=MAX_PIXELS)
    except DigitserveError:
        return
    check_features(features)


@pytest.mark.parametrize("mode", IN_MEMORY_MODES)
def test_every_mode_of_a_drawn_digit_reads_as_ink(mode: str) -> None:
    digit = Image.new("L", (32, 32), 255)
    digit.paste(0, (12, 4, 20, 28))
    via = {"La": "LA", "RGBa": "RGBA", "I;16B": "I"}
    image = digit.convert(via.get(mode, mode)).convert(mode) if mode != "I;16B" else digit
    if mode == "I;16B":
        image = Image.frombytes(mode, digit.size, (np.asarray(digit, ">u2") * 257).tobytes())
    features = to_features(image)
    check_features(features)
    assert features.reshape(8, 8)[1:7, 3:5].min() >= 8
