"""digitserve's work and nothing else: the HTTP floor's bare ASGI app plus the same image reading
and model call (`digitserve.preprocessing`, and the runtime `digitserve.runtimes.load_model`
picks, ONNX Runtime included), one request at a time.

No request ids, limits, timers, metrics, logs, batching or error envelope: what a server doing the
job costs at the least, measured exactly as the servers are. Beside the in-process timing (a hot
loop over one image) it shows how much dearer the same work is inside a server. uvicorn calls
`create_app()` (`--factory`); the model is `DIGITSERVE_MODEL_PATH` (default: the bundled one),
compiled into `DIGITSERVE_ONNX_CACHE` as digitserve does it.
"""

import os
from pathlib import Path

import orjson

from digitserve.preprocessing import preprocess_image
from digitserve.runtimes import load_model

MAX_PIXELS = 40_000_000


def create_app():
    path = Path(
        os.environ.get("DIGITSERVE_MODEL_PATH", "src/digitserve/models/digits/1/model.pickle")
    )
    # A repository's layout names the model: <name>/<version>/model.pickle.
    classifier = load_model(path, path.parent.parent.name, compile_onnx=True)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        features = preprocess_image(b"".join(chunks), max_pixels=MAX_PIXELS).features
        [prediction] = classifier.predict(features.reshape(1, -1))
        body = orjson.dumps(
            {
                "label": prediction.label,
                "confidence": prediction.confidence,
                "probabilities": prediction.scores,
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app
