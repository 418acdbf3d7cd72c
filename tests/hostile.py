"""A corpus of hostile requests, generated in memory (no binaries in git), each with its answer.

Every entry says what a public endpoint may be sent and exactly what digitserve must answer: the
status and error `code` of its documented 4xx, or, for inputs that are odd but valid, the label.
`tests/test_hostile.py` sends the whole corpus through the ASGI app and to a real server process.
"""

import base64
import functools
import io
import json
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tests.conftest import DATA_DIR

PREDICT = "/v1/models/digits:predict"
GOOD_FILE = "7_64px.jpg"
GOOD_LABEL = 7
MIB = 1024 * 1024

Body = bytes | Callable[[], Iterator[bytes]]

JPEG, PNG, JSON = "image/jpeg", "image/png", "application/json"
BAD_INPUT, BAD_IMAGE = "invalid_input", "invalid_image"


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the answer it must get."""

    name: str
    body: Body
    content_type: str | None
    status: int
    code: str | None = None
    """The error code in the envelope; None for a 2xx."""
    label: int | None = None
    """For a 2xx: the digit the image holds."""
    method: str = "POST"
    path: str = PREDICT
    headers: dict[str, str] = field(default_factory=dict)

    def request_headers(self) -> dict[str, str]:
        """Content-Type (when there is one) plus any extra headers."""
        typed = {"Content-Type": self.content_type} if self.content_type else {}
        return {**typed, **self.headers}


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a server process from /proc (VmRSS now, VmHWM the peak), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def good_jpeg() -> bytes:
    """A real digit the model reads as GOOD_LABEL: the request every hostile one is followed by."""
    return (DATA_DIR / GOOD_FILE).read_bytes()


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode a PIL image."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_of_rows(width: int, height: int, row: bytes, *, bit_depth: int, colour: int) -> bytes:
    """A real PNG whose every scanline is `row`, compressed as it is made (cheap at any size)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    compressor = zlib.compressobj(9)
    line = b"\x00" + row
    data = b"".join(compressor.compress(line) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size, followed by a token of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is patched to claim another size."""
    data = bytearray(good_jpeg())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_with_garbage_scan(seed: int = 0) -> bytes:
    """Every header of a real JPEG intact, then random bytes where the scan data belongs."""
    data = good_jpeg()
    scan = data.index(b"\xff\xda")
    (length,) = struct.unpack(">H", data[scan + 2 : scan + 4])
    noise = random.Random(seed).randbytes(4000)  # noqa: S311 - repeatable noise, not secrets
    return data[: scan + 2 + length] + noise + b"\xff\xd9"


def png_with_chunk_before_pixels(image_png: bytes, chunk: bytes) -> bytes:
    """Insert a chunk (ancillary, usually) just before the first IDAT."""
    position = image_png.index(b"IDAT") - 4
    return image_png[:position] + chunk + image_png[position:]


@functools.cache
def real_jpeg_10000() -> bytes:
    """A genuine 10000x10000 JPEG (about a megabyte: one white, highly compressible page)."""
    return _encode(Image.new("L", (10_000, 10_000), 255), "JPEG", quality=1)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostile") -> bytes:
    """A multipart/form-data body from (field name, filename or None, data) parts."""
    out = io.BytesIO()
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def streamed(total: int, piece: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    """A body sent in pieces with no Content-Length (chunked), `total` bytes in all."""

    def pieces() -> Iterator[bytes]:
        block = b"\xff\xd8\xff" + b"\0" * (piece - 3)
        sent = 0
        while sent < total:
            size = min(piece, total - sent)
            yield block[:size]
            sent += size

    return pieces


def _json(document: object) -> bytes:
    """Serialise a JSON document."""
    return json.dumps(document).encode()


@functools.cache
def corpus() -> tuple[Hostile, ...]:
    """Every hostile request; built on first call (a few seconds), never at import."""
    good = good_jpeg()
    digit_png = _encode(Image.open(io.BytesIO(good)).convert("L"), "PNG")
    seven_pixels = [0, 0, 7, 16, 16, 16, 16, 2] + [0, 0, 0, 0, 0, 16, 9, 0] * 7
    form = "multipart/form-data; boundary=hostile"
    rng = random.Random(8)  # noqa: S311 - repeatable noise, not secrets
    return (
        Hostile("empty body", b"", JPEG, 400, BAD_IMAGE),
        Hostile("random bytes", rng.randbytes(4096), JPEG, 400, BAD_IMAGE),
        Hostile("truncated JPEG", good[: len(good) // 2], JPEG, 400, BAD_IMAGE),
        Hostile("JPEG headers only", good[: good.index(b"\xff\xda")], JPEG, 400, BAD_IMAGE),
        Hostile("valid header, garbage scan data", jpeg_with_garbage_scan(), JPEG, 400, BAD_IMAGE),
        Hostile(
            "JPEG header claiming 30000x30000",
            jpeg_header_claiming(30_000, 30_000),
            JPEG,
            413,
            "image_too_large",
        ),
        Hostile(
            "PNG header claiming 30000x30000",
            png_header_claiming(30_000, 30_000),
            PNG,
            413,
            "image_too_large",
        ),
        Hostile(
            "real 10000x10000 PNG (1-bit, 25 KB)",
            png_of_rows(10_000, 10_000, b"\xff" * 1250, bit_depth=1, colour=0),
            PNG,
            413,
            "image_too_large",
        ),
        Hostile("real 10000x10000 JPEG", real_jpeg_10000(), JPEG, 413, "image_too_large"),
        Hostile(
            "real 39-megapixel blank PNG, under the pixel limit",
            png_of_rows(6_200, 6_200, b"\xff" * 6_200, bit_depth=8, colour=0),
            PNG,
            422,
            "blank_image",
        ),
        Hostile(
            "1-pixel image", _encode(Image.new("L", (1, 1)), "PNG"), PNG, 422, "image_too_small"
        ),
        Hostile(
            "blank page",
            _encode(Image.new("RGB", (200, 280), "white"), "JPEG"),
            JPEG,
            422,
            "blank_image",
        ),
        Hostile(
            "40 MB upload, streamed without Content-Length",
            streamed(40 * MIB),
            JPEG,
            413,
            "body_too_large",
        ),
        Hostile(
            "40 MB declared in Content-Length", b"\0" * (40 * MIB), JPEG, 413, "body_too_large"
        ),
        Hostile(
            "text labelled image/jpeg",
            b"just some words, not a picture\n" * 20,
            JPEG,
            400,
            BAD_IMAGE,
        ),
        Hostile(
            "SVG labelled image/jpeg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
            b'<text y="50" font-size="60">7</text></svg>',
            JPEG,
            415,
            "unsupported_media_type",
        ),
        Hostile("animated GIF", _animated_gif(), JPEG, 415, "unsupported_media_type"),
        Hostile(
            "PNG with a zTXt decompression bomb",
            png_with_chunk_before_pixels(
                digit_png, _chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * (16 * MIB), 9))
            ),
            PNG,
            400,
            BAD_IMAGE,
        ),
        Hostile(
            "PNG with an iCCP decompression bomb",
            png_with_chunk_before_pixels(
                digit_png, _chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"a" * (16 * MIB), 9))
            ),
            PNG,
            400,
            BAD_IMAGE,
        ),
        Hostile(
            "PNG with 12 MB of private chunks (over the body limit)",
            png_with_chunk_before_pixels(digit_png, _chunk(b"prVt", b"\0" * MIB) * 12),
            PNG,
            413,
            "body_too_large",
        ),
        Hostile(
            "PNG with 8 MB of private and text chunks (skipped: still a 7)",
            png_with_chunk_before_pixels(
                digit_png,
                _chunk(b"prVt", b"\0" * (6 * MIB)) + _chunk(b"tEXt", b"k\x00" + b"a" * (2 * MIB)),
            ),
            PNG,
            200,
            label=GOOD_LABEL,
        ),
        Hostile("JPEG labelled image/png (sniffed: still a 7)", good, PNG, 200, label=GOOD_LABEL),
        Hostile("JPEG labelled text/plain", good, "text/plain", 415, "unsupported_media_type"),
        Hostile("JPEG with no Content-Type", good, None, 415, "unsupported_media_type"),
        Hostile(
            "JPEG labelled as a urlencoded form",
            good,
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
        ),
        Hostile("JPEG labelled application/json", good, JSON, 400, BAD_INPUT),
        Hostile(
            "multipart with no file", multipart([("comment", None, b"hello")]), form, 400, BAD_INPUT
        ),
        Hostile("multipart with no parts at all", b"--hostile--\r\n", form, 400, BAD_INPUT),
        Hostile(
            "multipart without a boundary",
            multipart([("image", "a.jpg", good)]),
            "multipart/form-data",
            400,
            BAD_INPUT,
        ),
        Hostile(
            "multipart with 5000 tiny parts",
            multipart([("image", f"{i}.jpg", b"x") for i in range(5000)]),
            form,
            413,
            "too_many_images",
        ),
        Hostile(
            "multipart cut off inside a part",
            multipart([("image", "a.jpg", good)])[:-40],
            form,
            400,
            BAD_INPUT,
        ),
        Hostile(
            "multipart with an invalid UTF-8 filename and junk bytes",
            multipart([("image", "XX.jpg", b"junk")]).replace(b"XX", b"\xff\xfe"),
            form,
            400,
            BAD_IMAGE,
        ),
        Hostile(
            "multipart with a 2 MB part header",
            b'--hostile\r\nContent-Disposition: form-data; name="image"\r\nX-Pad: '
            + b"a" * (2 * MIB)
            + b"\r\n\r\n"
            + good
            + b"\r\n--hostile--\r\n",
            form,
            400,
            BAD_INPUT,
        ),
        Hostile("JSON: instances is a number", _json({"instances": 5}), JSON, 400, BAD_INPUT),
        Hostile("JSON: b64 is a number", _json({"instances": [{"b64": 5}]}), JSON, 400, BAD_INPUT),
        Hostile(
            "JSON: pixels scaled to 0..1", _json({"instances": [[0.5] * 64]}), JSON, 400, BAD_INPUT
        ),
        Hostile(
            "JSON: booleans for pixels", _json({"instances": [[True] * 64]}), JSON, 400, BAD_INPUT
        ),
        Hostile(
            "JSON: pixel values out of range",
            _json({"instances": [[17] * 64]}),
            JSON,
            400,
            BAD_INPUT,
        ),
        Hostile(
            "JSON: huge integers for pixels",
            b'{"instances": [[' + b",".join([b"99999999999999999999999999"] * 64) + b"]]}",
            JSON,
            400,
            BAD_INPUT,
        ),
        Hostile("JSON: null instance", _json({"instances": [None]}), JSON, 400, BAD_INPUT),
        Hostile("JSON: a bare list", _json([seven_pixels]), JSON, 400, BAD_INPUT),
        Hostile("JSON: a bare string", _json("instances"), JSON, 400, BAD_INPUT),
        Hostile(
            "JSON: an extra key",
            _json({"instances": [seven_pixels], "debug": True}),
            JSON,
            400,
            BAD_INPUT,
        ),
        Hostile(
            "JSON: 10000 instances",
            _json({"instances": [seven_pixels] * 10_000}),
            JSON,
            413,
            "too_many_images",
        ),
        Hostile(
            "JSON: gigantic base64 of random bytes (7 MB)",
            _json({"instances": [{"b64": base64.b64encode(rng.randbytes(7 * MIB)).decode()}]}),
            JSON,
            400,
            BAD_IMAGE,
        ),
        Hostile(
            "JSON: base64 over the body limit (12 MB)",
            _json({"instances": [{"b64": "A" * (12 * MIB)}]}),
            JSON,
            413,
            "body_too_large",
        ),
        Hostile(
            "JSON: base64 with whitespace and junk",
            _json({"instances": [{"b64": "/9j/ *"}]}),
            JSON,
            400,
            BAD_INPUT,
        ),
        Hostile("JSON: nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, JSON, 400, BAD_INPUT),
        Hostile(
            "JSON: an instance nested 1000 deep",
            b'{"instances": [' + b"[" * 1000 + b"]" * 1000 + b"]}",
            JSON,
            400,
            BAD_INPUT,
        ),
        Hostile(
            "JSON: invalid UTF-8", b'{"instances": [{"b64": "\xff\xfe\xfd"}]}', JSON, 400, BAD_INPUT
        ),
        Hostile(
            "JSON: lone surrogate escape",
            b'{"instances": [{"b64": "\\udc00"}]}',
            JSON,
            400,
            BAD_INPUT,
        ),
        Hostile(
            "bad query parameter", good, JPEG, 400, BAD_INPUT, path=PREDICT + "?include=%FF%FE"
        ),
        Hostile(
            "invalid UTF-8 in the model name",
            good,
            JPEG,
            404,
            "model_not_found",
            path="/v1/models/%FF%FE:predict",
        ),
        Hostile(
            "path traversal in the model name",
            good,
            JPEG,
            404,
            "not_found",
            path="/v1/models/..%2F..%2Fetc%2Fpasswd:predict",
        ),
        Hostile(
            "path traversal in the path",
            b"",
            None,
            404,
            "not_found",
            method="GET",
            path="/v1/../../etc/passwd",
        ),
        Hostile("unknown method on predict", good, JPEG, 405, "method_not_allowed", method="PATCH"),
        Hostile(
            "a 4 KB X-Request-ID (replaced, not echoed)",
            good,
            JPEG,
            200,
            label=GOOD_LABEL,
            headers={"X-Request-ID": "r" * 4096},
        ),
        *_lying_inference_headers(),
        *_round_two(),
    )


INFER = "/v2/models/digits/infer"


def _lying_inference_headers() -> tuple[Hostile, ...]:
    """Open Inference Protocol binary requests whose sizes do not add up: each a 400."""
    header = _json(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 64],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    )
    whole = header + b"\0" * 256

    def lying(name: str, body: bytes, length: str) -> Hostile:
        return Hostile(
            f"inference header {name}",
            body,
            None,
            400,
            BAD_INPUT,
            path=INFER,
            headers={"Inference-Header-Content-Length": length},
        )

    return (
        lying("length past the body", whole, "999999"),
        lying("length inside the JSON", whole, "10"),
        lying("length not a number", whole, "abc"),
        lying("length negative", whole, "-5"),
        lying("binary_data_size past the body", header + b"\0" * 100, str(len(header))),
        Hostile(
            "inference image tensor with a bomb PNG",
            _json(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": [base64.b64encode(png_header_claiming(30000, 30000)).decode()],
                        }
                    ]
                }
            ),
            JSON,
            413,
            "image_too_large",
            path=INFER,
        ),
    )


def _animated_gif() -> bytes:
    """A two-frame animated GIF of a digit."""
    frames = [Image.open(io.BytesIO(good_jpeg())).convert("P"), Image.new("P", (64, 64), 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _infer_json(inputs: list[dict[str, object]]) -> bytes:
    """An inference request body of these inputs."""
    return json.dumps({"inputs": inputs}).encode()


def _round_two() -> tuple[Hostile, ...]:
    """Round 2 of hostile input: sizes trusted too early, work multipliers, parsing blow-ups.

    Each is small enough for the soak's mix; the large ones (10 MB bodies, slow uploads, decoder
    work at full size) run against real servers in test_hostile_protocol, test_hostile_decode and
    test_hostile_load, which also check that the server is idle and its memory back afterwards.
    """
    from tests.test_hostile_decode import png_with_chunks, repeated_scan_jpeg

    pixels = {"name": "pixels", "datatype": "INT64"}
    gzip_member = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    empty_member = gzip_member.compress(b"") + gzip_member.flush()
    return (
        Hostile(
            "/v2 shape [2**63-1, 0] with no data",
            _infer_json([{**pixels, "shape": [2**63 - 1, 0], "data": []}]),
            JSON,
            400,
            BAD_INPUT,
            path=INFER,
        ),
        Hostile(
            "/v2 shape of 65 zero dimensions",
            _infer_json([{**pixels, "shape": [0] * 65, "data": []}]),
            JSON,
            400,
            BAD_INPUT,
            path=INFER,
        ),
        Hostile(
            "/v2 shape [2**64-1] x 300",
            _infer_json([{**pixels, "shape": [2**64 - 1] * 300, "data": []}]),
            JSON,
            400,
            BAD_INPUT,
            path=INFER,
        ),
        Hostile(
            "/v2 Inference-Header-Content-Length of 5,000 digits",
            _infer_json([{**pixels, "shape": [1, 64], "data": [0] * 64}]),
            "application/octet-stream",
            400,
            BAD_INPUT,
            path=INFER,
            headers={"Inference-Header-Content-Length": "9" * 5000},
        ),
        Hostile(
            "/v2 1,000 inputs of one name",
            _infer_json([{**pixels, "shape": [1], "data": [0]}] * 1000),
            JSON,
            400,
            BAD_INPUT,
            path=INFER,
        ),
        Hostile(
            "/v2 65 empty gzip members",
            empty_member * 65,
            JSON,
            400,
            BAD_INPUT,
            path=INFER,
            headers={"Content-Encoding": "gzip"},
        ),
        Hostile(
            "/v1 JSON with more values than 64 instances hold",
            json.dumps({"instances": [[0] * 64] * 65}).encode(),
            JSON,
            413,
            "too_many_images",
        ),
        Hostile(
            "/v1 pixels scaled to 0..1",
            json.dumps({"instances": [[0.25] * 64]}).encode(),
            JSON,
            400,
            BAD_INPUT,
        ),
        Hostile(
            "progressive JPEG of 300 scans",
            repeated_scan_jpeg(64, 300),
            JPEG,
            413,
            "image_too_complex",
        ),
        Hostile(
            "PNG of 5,000 empty chunks before its pixels",
            png_with_chunks(before_pixels=5000),
            PNG,
            413,
            "image_too_complex",
        ),
        Hostile(
            "trailing slash with a foreign Host (answered, never redirected)",
            good_jpeg(),
            JPEG,
            200,
            label=GOOD_LABEL,
            path=PREDICT + "/",
            headers={"Host": "evil.example"},
        ),
        Hostile(
            "unknown model version",
            good_jpeg(),
            JPEG,
            404,
            "version_not_found",
            path="/v1/models/digits/versions/9:predict",
        ),
    )
