"""Prometheus metrics on a registry the app owns, correct with several worker processes.

Each app builds its own `Metrics`, so test apps never share counts. When `PROMETHEUS_MULTIPROC_DIR`
is set before prometheus-client is imported (`digitserve serve --workers N` does it), every worker
writes its values to files in that directory and `render()` adds them up across workers.
"""

import importlib.metadata
import os
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus-client's multiprocess mode keeps one value file per worker and metric."""

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Prometheus text exposition format."""

UNMATCHED_ROUTE = "unmatched"
"""The route label of requests no route matched: raw paths would make the label set unbounded."""

SKLEARN_VERSION = importlib.metadata.version("scikit-learn")
"""The scikit-learn release model pickles are checked against, read without importing it."""

STAGES = ("decode", "preprocess", "predict")
"""Where a prediction's time goes: image bytes -> pixels, pixels -> 64 features, the model."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BYTE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def multiprocess_dir() -> str | None:
    """The multiprocess value directory, when this process writes its metrics there."""
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


def forget_process(pid: int) -> None:
    """Drop a dead worker's live gauges, so requests it held stop counting as in flight.

    Its counters and histograms stay: what it answered was answered. Without this, a worker killed
    while it held a request left `digitserve_requests_in_flight` one too high forever.
    """
    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # untyped upstream


class Metrics:
    """Every metric the service exports, with the labelled children of hot paths cached.

    `labels()` validates and locks on each call; the caches make a request cost one dict lookup per
    metric instead.
    """

    def __init__(self) -> None:
        # `_created` series would double every scrape for no use here, and multiprocess mode
        # never exports them: without them, one worker and several scrape alike.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "digitserve_requests_total",
            "Requests answered, by protocol (http, grpc), route template (the gRPC method's "
            "path), method and status (the gRPC status code's name).",
            ["protocol", "route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "digitserve_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by protocol and route.",
            ["protocol", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "digitserve_requests_in_flight",
            "Requests being handled now (summed over live workers).",
            registry=registry,
            # A dead worker's value is dropped (`forget_process`), not summed for ever.
            multiprocess_mode="livesum",
        )
        self.stage_seconds = Histogram(
            "digitserve_stage_duration_seconds",
            "Time per stage: decode and preprocess per image, predict per model call.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "digitserve_predictions_total",
            "Predictions made, by model, version and predicted label (a drift signal).",
            ["model", "version", "label"],
            registry=registry,
        )
        self.errors = Counter(
            "digitserve_errors_total",
            "Error responses by code; the 4xx codes are rejected inputs.",
            ["code"],
            registry=registry,
        )
        self.image_bytes = Histogram(
            "digitserve_image_size_bytes",
            "Size of each encoded image received.",
            buckets=_BYTE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "digitserve_batch_size",
            "Images or feature vectors per model call.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.read_batch_size = Histogram(
            "digitserve_read_batch_size",
            "Images per reading call (levels, framing, features): small images of concurrent "
            "requests, read on the event loop, are read together.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "digitserve_model_info",
            "The model being served (always 1; the labels carry the information).",
            ["name", "version", "sha256", "sklearn_version"],
            registry=registry,
            multiprocess_mode="max",
        )
        decode, preprocess, predict = (self.stage_seconds.labels(stage) for stage in STAGES)
        self.decode_seconds = decode
        self.preprocess_seconds = preprocess
        self.predict_seconds = predict
        self._request_children: dict[tuple[str, str, object, str], tuple[Counter, Histogram]] = {}
        self._label_children: dict[object, Counter] = {}
        self._error_children: dict[str, Counter] = {}

    def describe_model(self, name: str, version: str, sha256: str) -> None:
        """Publish which model (and which scikit-learn) this worker serves."""
        self.model_info.labels(name, version, sha256, SKLEARN_VERSION).set(1)

    def observe_request(
        self, route: str, method: str, status: int | str, seconds: float, protocol: str = "http"
    ) -> None:
        """Count one answered request and its latency."""
        key = (route, method, status, protocol)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(protocol, route, method, str(status)),
                self.latency.labels(protocol, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_error(self, code: str) -> None:
        """Count one error response by its code."""
        child = self._error_children.get(code)
        if child is None:
            child = self._error_children[code] = self.errors.labels(code)
        child.inc()

    def observe_predictions(
        self, model: tuple[str, str], labels: Iterable[object], seconds: float, batch: int
    ) -> None:
        """Count the predicted labels of one call to a model (name, version), its time and size."""
        self.predict_seconds.observe(seconds)
        self.batch_size.observe(batch)
        children = self._label_children
        for label in labels:
            key = (model, label)
            child = children.get(key)
            if child is None:
                child = children[key] = self.predictions.labels(*model, str(label))
            child.inc()

    def render(self) -> bytes:
        """The exposition text of this app, or of every worker in multiprocess mode."""
        if multiprocess_dir() is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_latest(registry)
