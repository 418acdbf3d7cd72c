"""The baseline a typical implementation would be: Flask + Pillow under gunicorn, done naively.

It does the same job (decode, 8x8 intensity grid, SVC probabilities) the way most tutorials do.
"""

import io
import os
import pickle

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

app = Flask(__name__)
with open(
    os.environ.get("DIGITSERVE_MODEL_PATH", "src/digitserve/models/digits/1/model.pickle"), "rb"
) as handle:
    model = pickle.load(handle)


@app.post("/predict")
def predict():
    image = Image.open(io.BytesIO(request.get_data())).convert("RGB").resize((8, 8), Image.BOX)
    rgb = np.asarray(image, dtype=np.float64)
    ink = np.sqrt((((255 - rgb) / 255) ** 2).sum(axis=2)) / np.sqrt(3)
    features = np.round(ink * 16).reshape(1, 64)
    probabilities = model.predict_proba(features)[0]
    label = int(model.predict(features)[0])
    return jsonify(
        {
            "label": label,
            "confidence": float(probabilities[label]),
            "probabilities": {str(i): float(p) for i, p in enumerate(probabilities)},
        }
    )
