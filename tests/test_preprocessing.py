"""Preprocessing, without HTTP or a model: decoding, intensity, area averaging, refusals."""

import io
import struct
import zlib

import numpy as np
import pytest
import simplejpeg
from numpy.typing import NDArray
from PIL import Image, ImageOps

from digitserve.classifier import Classifier
from digitserve.errors import (
    BlankImage,
    ImageTooComplex,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    UnsupportedMediaType,
)
from digitserve.preprocessing import (
    DRAFT_SIDE,
    MAX_JPEG_HEADER_SEGMENTS,
    MAX_JPEG_SCANS,
    MAX_JPEG_STRAY_BYTES,
    MAX_PNG_CHUNKS,
    area_average,
    declared_pixels,
    decode_image,
    draft_scale,
    image_to_features,
    ink_intensity,
    load_pixels,
    luma,
    open_image,
    plain_features,
    preprocess_image,
    read_digit,
    render_digit,
    sniff_media_type,
    to_features,
)
from digitserve.training import Split
from tests.conftest import Renderer, encode
from tests.test_hostile_decode import png_with_chunks, repeated_scan_jpeg

LIMIT = 40_000_000


def features_of(data: bytes) -> NDArray[np.int64]:
    """Shorthand with the default pixel limit."""
    return image_to_features(data, max_pixels=LIMIT)


def test_8x8_jpeg_round_trip_stays_within_one_level(split: Split, render: Renderer) -> None:
    originals = split.x_test[:300].astype(np.int64)
    recovered = np.stack([features_of(render(row)) for row in originals])
    difference = np.abs(recovered - originals)
    assert difference.max() <= 2
    assert (difference <= 1).mean() >= 0.995


@pytest.mark.parametrize("seed", range(5))
def test_32x32_bitmap_gives_exact_4x4_block_counts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bitmap = rng.random((32, 32)) < rng.uniform(0.1, 0.9)
    expected = bitmap.reshape(8, 4, 8, 4).sum(axis=(1, 3)).reshape(64)
    image = Image.fromarray(np.where(bitmap, 0, 255).astype(np.uint8), "L")
    assert features_of(encode(image, "PNG")).tolist() == expected.tolist()
    assert features_of(encode(image.convert("RGB"), "PNG")).tolist() == expected.tolist()


@pytest.mark.parametrize("side", [16, 64, 256])
def test_plain_upscale_gives_back_the_original_features(
    split: Split, render: Renderer, side: int
) -> None:
    original = split.x_test[3].astype(np.int64)
    assert features_of(render(original, side, "PNG")).tolist() == original.tolist()
    assert np.abs(features_of(render(original, side, "JPEG")) - original).max() <= 1


@pytest.mark.parametrize(
    ("side", "fmt", "count"),
    [(8, "JPEG", 899), (16, "PNG", 899), (64, "JPEG", 60), (256, "PNG", 30)],
)
def test_already_framed_input_is_read_unchanged(
    split: Split, render: Renderer, side: int, fmt: str, count: int
) -> None:
    for original in split.x_test[:count].astype(np.int64):
        image = decode_image(render(original, side, fmt), max_pixels=LIMIT)
        result = read_digit(image)
        assert not result.reframed
        assert result.warnings == ()
        assert result.features.tolist() == plain_features(image).tolist()


def test_a_drawing_with_margins_is_reframed(
    seven: NDArray[np.int64], classifier: Classifier
) -> None:
    page = Image.new("L", (200, 150), 255)
    page.paste(render_digit(seven, 64), (100, 40))
    result = read_digit(page)
    assert result.reframed
    # Re-centred and stretched to the training frame: near the original, and read as a 7.
    assert np.abs(result.features - seven).mean() < 2
    assert np.abs(plain_features(page) - seven).mean() > 3
    [prediction] = classifier.predict(result.features.reshape(1, -1))
    assert prediction.label == 7


def test_area_average_weighs_fractional_pixels() -> None:
    ink = np.zeros((12, 12), dtype=np.float32)
    ink[:, :6] = 1.0
    grid = area_average(ink)
    assert grid[:, :4].tolist() == np.ones((8, 4)).tolist()
    assert grid[:, 4:].tolist() == np.zeros((8, 4)).tolist()
    ink = np.zeros((10, 10), dtype=np.float32)
    ink[:, 0] = 1.0
    # Output cell 0 covers 1.25 source columns: all of column 0 and a quarter of column 1.
    assert area_average(ink)[0, 0] == pytest.approx(0.8)


def test_intensity_follows_the_rgb_distance_formula() -> None:
    colours = Image.new("RGB", (2, 1))
    colours.putpixel((0, 0), (255, 0, 0))
    colours.putpixel((1, 0), (128, 128, 128))
    red, grey = ink_intensity(colours)[0]
    assert red == pytest.approx(np.sqrt(2) / np.sqrt(3), abs=1e-6)
    assert grey == pytest.approx(127 / 255, abs=1e-6)
    assert plain_features(Image.new("RGB", (8, 8), (255, 0, 0))).tolist() == [13] * 64


def test_luma_is_pillows_grey_conversion_for_every_colour() -> None:
    code = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([code >> 16, (code >> 8) & 255, code & 255], axis=-1).astype(np.uint8)
    rgb = rgb.reshape(4096, 4096, 3)
    pillow = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    assert np.array_equal(luma(rgb), pillow)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_plain_features_from_the_pixels_read_already_are_the_same(mode: str) -> None:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).convert(mode)
    expected = plain_features(image)
    assert plain_features(image, np.asarray(image)).tolist() == expected.tolist()


def test_greyscale_progressive_and_cmyk_jpegs_read_like_rgb(seven: NDArray[np.int64]) -> None:
    image = render_digit(seven, 64)
    baseline = features_of(encode(image.convert("RGB"), "JPEG", quality=95))
    variants = {
        "greyscale": encode(image, "JPEG", quality=95),
        "progressive": encode(image.convert("RGB"), "JPEG", quality=95, progressive=True),
        "cmyk": encode(image.convert("CMYK"), "JPEG", quality=95),
    }
    for name, data in variants.items():
        assert np.abs(features_of(data) - baseline).max() <= 1, name


def test_exif_orientation_is_applied(seven: NDArray[np.int64]) -> None:
    upright = render_digit(seven, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    data = encode(stored, "PNG", exif=exif.tobytes())
    assert features_of(data).tolist() == seven.tolist()


def pillow_decode(data: bytes) -> Image.Image:
    """How the service decoded every JPEG before libjpeg-turbo was called directly."""
    image = Image.open(io.BytesIO(data), formats=["JPEG"])
    image.draft(None, (DRAFT_SIDE, DRAFT_SIDE))
    image.load()
    return ImageOps.exif_transpose(image)


def noisy_jpeg(width: int, height: int, mode: str, seed: int, **options: object) -> bytes:
    """A JPEG with detail in every block, so any difference between decoders would show."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    pixels = (rng.integers(0, 256, shape) // 48 * 48).astype(np.uint8)
    return encode(Image.fromarray(pixels, mode), "JPEG", **options)


@pytest.mark.parametrize(
    ("width", "height", "mode", "options"),
    [
        (8, 8, "RGB", {}),
        (63, 200, "RGB", {"subsampling": 0}),
        (130, 100, "RGB", {"subsampling": 1, "progressive": True}),
        (257, 511, "L", {}),
        (1000, 700, "RGB", {"subsampling": 2, "quality": 60}),
        (700, 1000, "L", {"progressive": True}),
    ],
)
def test_libjpeg_turbo_decodes_exactly_as_pillow(
    width: int, height: int, mode: str, options: dict[str, object]
) -> None:
    data = noisy_jpeg(width, height, mode, seed=width, **options)
    opened = open_image(data, max_pixels=LIMIT)
    assert opened.turbo_colourspace is not None
    assert opened.pillow is None  # no header read in Python
    decoded, reference = decode_image(data, max_pixels=LIMIT), pillow_decode(data)
    assert (decoded.mode, decoded.size) == (reference.mode, reference.size)
    assert np.array_equal(np.asarray(decoded), np.asarray(reference))
    # The service reads libjpeg-turbo's array itself, never a Pillow copy: the same reading.
    pixels = load_pixels(opened)
    assert isinstance(pixels, np.ndarray)
    assert np.array_equal(pixels, np.asarray(reference))
    from_pixels, from_image = read_digit(pixels), read_digit(reference)
    assert from_pixels.features.tolist() == from_image.features.tolist()
    assert (from_pixels.warnings, from_pixels.reframed) == (
        from_image.warnings,
        from_image.reframed,
    )


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_banded_reduction_of_pixels_equals_the_images(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(11)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).convert(mode)
    whole = plain_features(image)
    monkeypatch.setattr("digitserve.preprocessing.BAND_PIXELS", 56 * 3)
    assert plain_features(np.asarray(image)).tolist() == whole.tolist()


@pytest.mark.parametrize("side", [8, 63, 64, 127, 128, 255, 256, 511, 512, 1000])
def test_draft_scale_is_pillows(side: int) -> None:
    image = Image.open(io.BytesIO(noisy_jpeg(side, 3 * side, "L", seed=side)))
    image.draft(None, (DRAFT_SIDE, DRAFT_SIDE))
    assert image.size == (
        -(-side // draft_scale(side, 3 * side)),
        -(-3 * side // draft_scale(side, 3 * side)),
    )


def test_exif_and_xmp_orientation_of_a_jpeg_are_applied(seven: NDArray[np.int64]) -> None:
    stored = render_digit(seven, 64).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    for data in (encode(stored, "JPEG", exif=exif.tobytes()), encode(stored, "JPEG", xmp=xmp)):
        opened = open_image(data, max_pixels=LIMIT)
        assert opened.pillow is not None  # Pillow reads the metadata
        assert isinstance(load_pixels(opened), Image.Image)  # turned upright by Pillow
        decoded = decode_image(data, max_pixels=LIMIT)
        assert np.array_equal(np.asarray(decoded), np.asarray(pillow_decode(data)))
        assert np.abs(to_features(decoded) - seven).max() <= 1


def test_a_jpeg_libjpeg_turbo_is_strict_about_is_decoded_by_pillow() -> None:
    data = noisy_jpeg(64, 64, "RGB", seed=1)
    scan = data.index(b"\xff\xda")
    stray = data[:scan] + b"\x00\x00" + data[scan:]  # "extraneous bytes before marker": a warning
    with pytest.raises(ValueError, match="extraneous"):
        simplejpeg.decode_jpeg(stray)
    assert decode_image(stray, max_pixels=LIMIT).tobytes() == pillow_decode(stray).tobytes()


def test_jpeg_segments_are_walked_past_fill_bytes() -> None:
    data = noisy_jpeg(16, 16, "RGB", seed=2)
    filled = data[:2] + b"\xff\xff" + data[2:]  # fill bytes may precede any marker
    assert open_image(filled, max_pixels=LIMIT).pillow is None
    assert decode_image(filled, max_pixels=LIMIT).tobytes() == pillow_decode(data).tobytes()


def test_jpeg_scans_are_counted_before_decoding() -> None:
    at_limit = repeated_scan_jpeg(64, MAX_JPEG_SCANS)
    with pytest.raises(BlankImage):  # decoded: a blank page
        preprocess_image(at_limit, max_pixels=LIMIT)
    over = repeated_scan_jpeg(64, MAX_JPEG_SCANS + 1)
    with pytest.raises(ImageTooComplex, match=f"more than {MAX_JPEG_SCANS} scans") as refused:
        open_image(over, max_pixels=LIMIT)
    assert refused.value.extra == {"limit": MAX_JPEG_SCANS}
    assert refused.value.status == 413


def header_segments(data: bytes) -> int:
    """Marker segments of a plain JPEG from after its SOI to its first scan's, both included."""
    position, count = 2, 1
    while data[position + 1] != 0xDA:
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        count += 1
    return count


def test_jpeg_header_segments_and_stray_bytes_are_bounded() -> None:
    data = noisy_jpeg(16, 16, "RGB", seed=2)
    scan = data.index(b"\xff\xda")
    own = header_segments(data)
    comments = data[:2] + b"\xff\xfe\x00\x02" * (MAX_JPEG_HEADER_SEGMENTS - own) + data[2:]
    assert open_image(comments, max_pixels=LIMIT).pillow is None  # comments are no metadata
    with pytest.raises(ImageTooComplex, match="segments before its first scan"):
        open_image(comments[:2] + b"\xff\xfe\x00\x02" + comments[2:], max_pixels=LIMIT)
    filled = data[:2] + b"\xff" * MAX_JPEG_STRAY_BYTES + data[2:]
    assert decode_image(filled, max_pixels=LIMIT).tobytes() == pillow_decode(data).tobytes()
    with pytest.raises(ImageTooComplex, match="fill bytes"):
        open_image(filled[:2] + b"\xff" + filled[2:], max_pixels=LIMIT)
    trailing_fill = data[:scan] + b"\xff" * (MAX_JPEG_STRAY_BYTES + 2)  # no marker ever comes
    with pytest.raises(ImageTooComplex, match="fill bytes"):
        open_image(trailing_fill, max_pixels=LIMIT)
    junk = data[:scan] + bytes(MAX_JPEG_STRAY_BYTES) + data[scan:]
    assert decode_image(junk, max_pixels=LIMIT).tobytes() == pillow_decode(junk).tobytes()
    with pytest.raises(InvalidImage, match="junk"):  # garbage, as far as the service goes
        open_image(data[:scan] + bytes(MAX_JPEG_STRAY_BYTES + 1) + data[scan:], max_pixels=LIMIT)


@pytest.mark.parametrize("odd", [b"\xff\x00", b"\xff\xd0", b"\xff\xd9"])
def test_odd_markers_in_a_jpeg_header_are_left_to_pillow(odd: bytes) -> None:
    data = noisy_jpeg(16, 16, "RGB", seed=3)
    scan = data.index(b"\xff\xda")
    odd_data = data[:scan] + odd + data[scan:]
    try:
        expected = pillow_decode(odd_data).tobytes()
    except (OSError, SyntaxError):
        with pytest.raises(InvalidImage):
            decode_image(odd_data, max_pixels=LIMIT)
        return
    assert open_image(odd_data, max_pixels=LIMIT).pillow is not None
    assert decode_image(odd_data, max_pixels=LIMIT).tobytes() == expected


def test_png_chunks_are_bounded_before_pillow_reads_them() -> None:
    plain = png_with_chunks()
    assert plain.count(b"IDAT") == 1  # IHDR, IDAT, IEND: three chunks
    at_limit = png_with_chunks(before_pixels=MAX_PNG_CHUNKS - 3)
    with pytest.raises(BlankImage):  # decoded: a blank page
        preprocess_image(at_limit, max_pixels=LIMIT)
    for over in (
        png_with_chunks(before_pixels=MAX_PNG_CHUNKS - 2),
        png_with_chunks(empty_idats=MAX_PNG_CHUNKS - 2),
    ):
        with pytest.raises(ImageTooComplex, match=f"more than {MAX_PNG_CHUNKS} chunks"):
            open_image(over, max_pixels=LIMIT)
        assert declared_pixels(over) is None  # refused at once, wherever it runs
    assert declared_pixels(at_limit) == 64 * 64


def test_cmyk_jpeg_is_left_to_pillow(seven: NDArray[np.int64]) -> None:
    data = encode(render_digit(seven, 64).convert("CMYK"), "JPEG", quality=95)
    opened = open_image(data, max_pixels=LIMIT)
    assert opened.turbo_colourspace is None
    assert opened.pillow is not None


def test_transparency_is_composited_onto_white(seven: NDArray[np.int64]) -> None:
    ink = render_digit(seven, 32)
    alpha = Image.eval(ink, lambda value: 255 - value)
    black_with_alpha = Image.merge("RGBA", (*Image.new("RGB", (32, 32)).split(), alpha))
    assert features_of(encode(black_with_alpha, "PNG")).tolist() == seven.tolist()
    with_alpha = Image.merge("LA", (Image.new("L", (32, 32)), alpha))
    assert features_of(encode(with_alpha, "PNG")).tolist() == seven.tolist()


def test_palette_and_sixteen_bit_pngs(seven: NDArray[np.int64]) -> None:
    image = render_digit(seven, 32)
    palette = image.convert("RGB").quantize(colors=17)
    assert np.abs(features_of(encode(palette, "PNG")) - seven).max() <= 1
    wide = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)
    assert features_of(encode(wide, "PNG")).tolist() == seven.tolist()
    bilevel = Image.fromarray(np.asarray(image) > 127).convert("1")
    assert features_of(encode(bilevel, "PNG")).max() == 16


def test_large_jpeg_is_decoded_at_a_reduced_dct_scale(seven: NDArray[np.int64]) -> None:
    data = encode(render_digit(seven, 2048).convert("RGB"), "JPEG", quality=90)
    decoded = decode_image(data, max_pixels=LIMIT)
    assert 64 <= decoded.width <= 2048 // 8
    assert np.abs(to_features(decoded) - seven).max() <= 1


def test_random_bytes_are_invalid() -> None:
    with pytest.raises(InvalidImage):
        features_of(np.random.default_rng(0).bytes(500))


def test_truncated_jpeg_is_invalid(seven: NDArray[np.int64]) -> None:
    data = encode(render_digit(seven, 64).convert("RGB"), "JPEG")
    with pytest.raises(InvalidImage):
        features_of(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("GIF", "image/gif"), ("BMP", "image/bmp"), ("WEBP", "image/webp")]
)
def test_other_image_formats_are_unsupported(fmt: str, media_type: str) -> None:
    data = encode(Image.new("RGB", (16, 16)), fmt)
    assert sniff_media_type(data) == media_type
    with pytest.raises(UnsupportedMediaType, match=media_type):
        features_of(data)


def test_svg_is_recognised_and_unsupported() -> None:
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>'
    assert sniff_media_type(svg) == "image/svg+xml"
    with pytest.raises(UnsupportedMediaType):
        features_of(svg)


def test_too_small_image_is_refused() -> None:
    with pytest.raises(ImageTooSmall, match="7x9"):
        features_of(encode(Image.new("L", (7, 9)), "PNG"))


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        image_to_features(encode(Image.new("L", (100, 100)), "PNG"), max_pixels=9_999)


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; no pixel data follows."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_decompression_bomb_header_is_refused() -> None:
    with pytest.raises(ImageTooLarge):
        features_of(png_header_claiming(30000, 30000))
    with pytest.raises(ImageTooLarge):
        image_to_features(png_header_claiming(5000, 5000), max_pixels=1_000_000)


def test_blank_page_is_refused() -> None:
    with pytest.raises(BlankImage):
        features_of(encode(Image.new("RGB", (64, 64), "white"), "JPEG"))


def test_render_digit_is_the_inverse_of_preprocessing(seven: NDArray[np.int64]) -> None:
    rendered = render_digit(seven, 8)
    assert rendered.size == (8, 8)
    assert to_features(rendered).tolist() == seven.tolist()
    assert io.BytesIO(encode(rendered, "PNG")).getbuffer().nbytes > 0


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I", "P"])
def test_banded_reduction_equals_the_whole_image_reduction(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    if mode == "I":
        wide = rng.integers(0, 255, (40, 56), dtype=np.int32)
        wide[30:] = rng.integers(0, 65535, (10, 56), dtype=np.int32)
        image = Image.fromarray(wide, "I")
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4, "P": 3}[mode]
        array = rng.integers(0, 256, (40, 56, channels), dtype=np.uint8).squeeze()
        image = Image.fromarray(array, "RGB" if mode == "P" else mode)
        if mode == "P":
            image = image.quantize(colors=32)
    whole = to_features(image)
    monkeypatch.setattr("digitserve.preprocessing.BAND_PIXELS", 56 * 3)
    assert to_features(image).tolist() == whole.tolist()


def test_declared_pixels_reads_only_the_header() -> None:
    assert declared_pixels(png_header_claiming(9000, 9000)) == 81_000_000
    assert declared_pixels(png_header_claiming(30000, 30000)) is None  # Pillow refuses it outright
    assert declared_pixels(encode(Image.new("L", (12, 10)), "JPEG")) == 120
    assert declared_pixels(b"not an image") is None
    assert declared_pixels(b"\x89PNG\r\n\x1a\n broken") is None


def test_premultiplied_alpha_is_read() -> None:
    ink = Image.merge("LA", (Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)))
    # Solid ink is blank to the framing pipeline (nothing stands out); the plain reduction reads it.
    assert plain_features(ink.convert("La")).tolist() == [16] * 64
    assert plain_features(ink.convert("RGBA").convert("RGBa")).tolist() == [16] * 64
