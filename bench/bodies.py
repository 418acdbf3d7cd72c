"""Request bodies for the benchmark: every one a real digit whose label is known."""

import base64
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from digitserve.classifier import load_classifier
from digitserve.preprocessing import render_digit
from digitserve.training import split_digits

MODEL_PATH = Path("src/digitserve/models/digits/1/model.pickle")


@dataclass(frozen=True)
class Body:
    """One benchmark request: bytes, their Content-Type, the path suffix and expected labels."""

    name: str
    data: bytes
    content_type: str
    labels: tuple[int, ...]
    path: str | None = None
    """Where digitserve takes this body, when not its native predict route."""
    pixels: tuple[int, ...] | None = None
    """The one row of pixels the body carries, for the gRPC cell to send the same tensor."""


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def phone_photo(features: np.ndarray) -> bytes:
    """A 12-megapixel 'photo' of a digit: off-white paper, soft ink, sensor noise, 4000x3000."""
    rng = np.random.default_rng(0)
    digit = render_digit(features, 8).resize((2400, 2400), Image.Resampling.BICUBIC)
    digit = digit.filter(ImageFilter.GaussianBlur(12))
    paper = Image.new("L", (4000, 3000), 235)
    paper.paste(digit, (800, 300))
    noisy = np.asarray(paper, dtype=np.int16) + rng.integers(-6, 7, (3000, 4000))
    return _jpeg(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), quality=92)


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with each image in a field named `image`."""
    boundary = uuid.uuid4().hex
    chunks = []
    for index, data in enumerate(images):
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{index}.jpg"'
            f"\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        )
        chunks.append(data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def make_bodies() -> dict[str, Body]:
    """The benchmark's bodies, built from held-out digits the model reads correctly."""
    split = split_digits()
    rows = split.x_test.astype(np.int64)
    labels = split.y_test.astype(int)
    model = load_classifier(MODEL_PATH).estimator
    correct = model.predict(rows.astype(np.float64)) == labels
    seven = int(np.flatnonzero((labels == 7) & correct)[0])
    batch = [int(i) for i in np.flatnonzero(correct)[:16]]
    batch_body, batch_type = multipart([_jpeg(render_digit(rows[i], 8), 95) for i in batch])
    eight_px = _jpeg(render_digit(rows[seven], 8), 95)
    pixels = tuple(int(value) for value in rows[seven])
    return {
        "jpeg-8px": Body("jpeg-8px", eight_px, "image/jpeg", (7,)),
        "jpeg-256px": Body(
            "jpeg-256px", _jpeg(render_digit(rows[seven], 256), 95), "image/jpeg", (7,)
        ),
        "jpeg-12mp": Body("jpeg-12mp", phone_photo(rows[seven]), "image/jpeg", (7,)),
        "multipart-16": Body(
            "multipart-16", batch_body, batch_type, tuple(int(labels[i]) for i in batch)
        ),
        "oip-json-8px": Body(
            "oip-json-8px",
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": [base64.b64encode(eight_px).decode()],
                        }
                    ],
                    "outputs": [{"name": "label"}, {"name": "probabilities"}],
                }
            ).encode(),
            "application/json",
            (7,),
            "/v2/models/digits/infer",
        ),
        # The same tensor goes over gRPC in the `grpc` cell (bench/grpc_load.py).
        "oip-pixels": Body(
            "oip-pixels",
            json.dumps(
                {
                    "inputs": [
                        {"name": "pixels", "shape": [1, 64], "datatype": "INT64", "data": pixels}
                    ],
                    "outputs": [{"name": "label"}, {"name": "probabilities"}],
                }
            ).encode(),
            "application/json",
            (7,),
            "/v2/models/digits/infer",
            pixels,
        ),
    }


def write_bodies(bodies: dict[str, Body], folder: Path) -> dict[str, Path]:
    """Write each body to a file for wrk to read."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, body in bodies.items():
        paths[name] = folder / f"{name}.bin"
        paths[name].write_bytes(body.data)
    return paths
