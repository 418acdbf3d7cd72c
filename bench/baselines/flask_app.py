"""The baseline a typical implementation would be: Flask + Pillow under gunicorn, done naively.

It does only what a tutorial does: decode with Pillow, BOX-resize to 8x8, turn each pixel's
darkness into 0..16, `model.predict`, and return the label as JSON. Whatever pickle
`DIGITSERVE_MODEL_PATH` names is loaded (default: the bundled model), so the benchmark's model
matrix serves every model this way too. gunicorn calls `create_app()`.
"""

import io
import os
import pickle

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image


def features(data: bytes) -> np.ndarray:
    """The tutorial's 8x8 grid: each pixel's distance from white, scaled to 0..16."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((8, 8), Image.BOX)
    rgb = np.asarray(image, dtype=np.float64)
    ink = np.sqrt((((255 - rgb) / 255) ** 2).sum(axis=2)) / np.sqrt(3)
    return np.round(ink * 16).reshape(1, 64)


def create_app() -> Flask:
    app = Flask(__name__)
    path = os.environ.get("DIGITSERVE_MODEL_PATH", "src/digitserve/models/digits/1/model.pickle")
    with open(path, "rb") as handle:
        model = pickle.load(handle)

    @app.post("/predict")
    def predict():
        label = model.predict(features(request.get_data()))[0]
        return jsonify({"label": int(label)})

    return app
