"""Property tests: any image or bytes give 64 levels 0..16 or the service's own error."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image

from digitserve import framing
from digitserve.errors import DigitserveError
from digitserve.preprocessing import (
    LEVELS,
    N_FEATURES,
    Preprocessed,
    image_to_features,
    luma,
    read_digit,
    read_digits,
    reads_together,
    render_digit,
    to_features,
)

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


@st.composite
def digit_like_crowds(draw: st.DrawFn) -> list[NDArray[np.uint8]]:
    """Small grey or RGB pixel arrays, several of one size, as concurrent uploads would be.

    Each is a load_digits digit drawn at the crowd's size (dark or light ink, faint or bold,
    framed or with margins, noisy), a flat page, or noise: every branch of reading an image.
    """
    from sklearn.datasets import load_digits

    digits = load_digits().data.astype(np.int64)
    height = draw(st.integers(8, 70))
    width = draw(st.integers(8, 70))
    colour = draw(st.booleans())
    count = draw(st.integers(2, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    crowd = []
    for _ in range(count):
        kind = draw(
            st.sampled_from(["digit", "inverted", "faint", "margin", "noisy", "flat", "noise"])
        )
        grid = render_digit(digits[rng.integers(len(digits))], 8)
        grey = np.asarray(grid.resize((width, height), Image.Resampling.BILINEAR)).astype(np.int64)
        if kind == "inverted":
            grey = 255 - grey
        elif kind == "faint":
            grey = 150 + grey // 4
        elif kind == "margin":
            small = np.asarray(grid.resize((max(4, width // 2), max(4, height // 2))))
            grey = np.full((height, width), 255)
            grey[: small.shape[0], : small.shape[1]] = small
        elif kind == "noisy":
            grey = grey + rng.integers(-40, 40, grey.shape)
        elif kind == "flat":
            grey = np.full((height, width), rng.integers(0, 256))
        elif kind == "noise":
            grey = rng.integers(0, 256, (height, width))
        pixels = np.clip(grey, 0, 255).astype(np.uint8)
        if colour:
            tint = rng.integers(0, 60, 3)
            pixels = np.clip(pixels[:, :, None].astype(np.int64) + tint, 0, 255).astype(np.uint8)
        crowd.append(np.ascontiguousarray(pixels))
    return crowd


def same_reading(ours: object, alone: object) -> bool:
    """Two readings (or errors) alike: the same features to the bit, warnings and framing."""
    if isinstance(alone, Exception):
        return type(ours) is type(alone) and str(ours) == str(alone)
    assert isinstance(ours, Preprocessed)
    assert isinstance(alone, Preprocessed)
    return (
        ours.features.dtype == alone.features.dtype
        and ours.features.tobytes() == alone.features.tobytes()
        and ours.warnings == alone.warnings
        and ours.reframed == alone.reframed
    )


@PROPERTY
@given(digit_like_crowds())
def test_images_read_together_read_as_each_alone(crowd: list[NDArray[np.uint8]]) -> None:
    alone: list[object] = []
    for image in crowd:
        try:
            alone.append(read_digit(image))
        except DigitserveError as exc:
            alone.append(exc)
    together = read_digits([*crowd, *crowd[:1]])  # the first twice: a crowd may repeat itself
    assert len(together) == len(crowd) + 1
    for ours, theirs in zip(together, [*alone, alone[0]], strict=True):
        assert same_reading(ours, theirs)


@PROPERTY
@given(digit_like_crowds())
def test_levels_measured_together_are_each_images_own_to_the_bit(
    crowd: list[NDArray[np.uint8]],
) -> None:
    greys = [image if image.ndim == 2 else luma(image) for image in crowd]
    if not framing.measures_together(greys[0].shape):
        with pytest.raises(ValueError, match="one at a time"):
            framing.measure_grey_levels(np.stack(greys).astype(np.float32) / np.float32(255.0))
        return
    together = framing.measure_grey_levels(np.stack(greys).astype(np.float32) / np.float32(255.0))
    for grey, ours in zip(greys, together, strict=True):
        alone = framing.measure_levels(framing.to_array(grey))
        assert ours.ink.tobytes() == alone.ink.tobytes()
        assert (ours.contrast, ours.inverted, ours.clean) == (
            alone.contrast,
            alone.inverted,
            alone.clean,
        )


def test_images_of_other_sizes_and_pillow_images_are_read_alone_among_a_crowd() -> None:
    rng = np.random.default_rng(5)
    crowd: list[Image.Image | NDArray[np.uint8]] = [
        rng.integers(0, 256, (12, 12), dtype=np.uint8),
        np.asarray(render_digit(np.arange(64) % 17, 8)),
        Image.fromarray(np.asarray(render_digit(np.arange(64) % 17, 8))),
        np.asarray(render_digit(np.arange(64) % 17, 8).resize((200, 160))),  # reduced first
        np.asarray(render_digit(np.arange(64) % 17, 8)),
    ]
    together = read_digits(crowd)
    for image, ours in zip(crowd, together, strict=True):
        try:
            alone: object = read_digit(image)
        except DigitserveError as exc:
            alone = exc
        assert same_reading(ours, alone)
    assert reads_together(np.zeros((8, 8), np.uint8))
    assert not reads_together(np.zeros((200, 160), np.uint8))  # reduced before it is measured
    assert not reads_together(np.zeros((64, 64), np.uint8))  # statistics on every other pixel
    assert not reads_together(np.zeros((8, 8, 4), np.uint8))
