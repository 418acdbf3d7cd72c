"""The data plane: the one place every front end goes through, whatever protocol it speaks.

It finds a model by name and version, reads images (base64 in its common forms, header limits,
where the work runs, stage metrics, per-image warnings, naming the failing item of a batch), checks
ready-made pixel features (one rule for every protocol), and predicts through each version's
micro-batcher. It also loads, unloads and polls the model repository. /v1, /v2, the CLI and the
page parse a request and encode an answer; nothing else. No HTTP here: errors are
`DigitserveError`s that front ends encode.
"""

import asyncio
import binascii
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import numpy as np
from numpy.typing import NDArray

from digitserve import offload
from digitserve.batching import ImageReadings, MicroBatcher
from digitserve.classifier import Classifier, Prediction
from digitserve.errors import (
    DigitserveError,
    ImageTooLarge,
    InvalidInput,
    ModelControlDisabled,
    ModelLoadError,
    TooManyImages,
)
from digitserve.metrics import Metrics
from digitserve.preprocessing import (
    GRID,
    LEVELS,
    N_FEATURES,
    Decoded,
    OpenedImage,
    Pixels,
    Preprocessed,
    load_pixels,
    open_image,
    read_digit,
    read_digits,
    reads_together,
)
from digitserve.repository import ModelConfig, ModelRepository, State, VersionStatus
from digitserve.settings import Settings, env_name

logger = logging.getLogger("digitserve")

Item = TypeVar("Item")
Result = TypeVar("Result")


class ControlMode(StrEnum):
    """How the repository may change while serving, with Triton's meaning."""

    NONE = "none"
    """Everything found at start-up is served; load and unload are refused."""
    EXPLICIT = "explicit"
    """`POST /v2/repository/models/{name}/load` and `/unload` change what is served."""
    POLL = "poll"
    """The folder is watched; changes are loaded (and removed models unloaded) on their own."""


def bundled_repository() -> Path:
    """The repository shipped inside the package: the bundled `digits` model."""
    return Path(str(files("digitserve") / "models"))


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One loaded version of a model: its classifier and the batcher that makes its calls."""

    name: str
    version: str
    classifier: Classifier
    batcher: MicroBatcher
    config: ModelConfig


class DataPlane:
    """Models by name and version, and the steps every prediction takes (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        admitted: Callable[[], int],
        classifier: Classifier | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.admitted = admitted
        self.control_mode = ControlMode(settings.model_control_mode)
        self.default_name = settings.model_name
        self.limiter = anyio.CapacityLimiter(settings.preprocess_threads)
        self.readings = ImageReadings(
            metrics,
            enabled=settings.batch_max_rows > 1,
            min_requests=settings.batch_min_requests,
            admitted=lambda: self.admitted(),  # the server's count, handed in once it exists
        )
        if classifier is not None:
            given = classifier
            self.repository = ModelRepository[ServedModel](
                None,
                lambda name, version, path, config: self.serve(
                    replace(given, name=name, version=str(version)), str(version), config
                ),
                files={settings.model_name: Path("(given)")},
            )
        elif settings.model_path is not None:
            self.repository = ModelRepository(
                None, self._load_file, files={settings.model_name: settings.model_path}
            )
        else:
            root = settings.model_repository or bundled_repository()
            self.repository = ModelRepository(root, self._load_file)

    def start(self) -> list[VersionStatus]:
        """Load everything the repository holds; refuse to start if nothing can serve.

        A model that fails while others load is UNAVAILABLE, with its reason in the index.
        """
        index = self.repository.load_all()
        if not self.repository.any_ready():
            failed = [line for line in index if line.reason]
            if len(failed) == 1:
                raise ModelLoadError(failed[0].reason)
            reasons = "; ".join(
                f"{line.name}/{line.version or '-'}: {line.reason}" for line in failed
            )
            raise ModelLoadError(f"no model can serve: {reasons or 'the repository is empty'}")
        names = self.repository.names()
        if self.default_name not in names:
            self.default_name = names[0]
        return index

    def log_index(self, lines: Sequence[VersionStatus]) -> None:
        """One log line per version: what serves, and why what does not."""
        for line in lines:
            if line.state is State.READY:
                logger.info("model %s version %s: READY", line.name, line.version)
            else:
                logger.warning(
                    "model %s version %s: %s (%s)", line.name, line.version, line.state, line.reason
                )

    def serve(self, classifier: Classifier, version: str, config: ModelConfig) -> ServedModel:
        """Wrap a loaded classifier with its own batcher."""
        settings = self.settings
        batcher = MicroBatcher(
            classifier,
            self.metrics,
            max_rows=settings.batch_max_rows,
            min_requests=settings.batch_min_requests,
            wait_seconds=settings.batch_wait_ms / 1000,
            admitted=lambda: self.admitted(),  # the server's count, handed in once it exists
        )
        self.metrics.describe_model(classifier.name, version, classifier.sha256)
        return ServedModel(classifier.name, version, classifier, batcher, config)

    def _load_file(self, name: str, version: int, path: Path, config: ModelConfig) -> ServedModel:
        """The repository's loader: one file, checked, warmed up and wrapped."""
        from digitserve.runtimes import load_model

        settings = self.settings
        single = settings.model_path is not None
        pin = settings.model_sha256 if single else config.sha256.get(str(version))
        classifier = load_model(
            path,
            name,
            version=str(version),
            expected_sha256=pin,
            trusted_types=[*settings.model_trusted_types, *config.trusted_types],
            compile_onnx=settings.compile_onnx,
        )
        card = dict(classifier.card)
        if config.description:
            card["description"] = config.description
        if config.labels:
            card["labels"] = config.labels
        return self.serve(replace(classifier, card=card), str(version), config)

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The version that answers: 404 for an unknown name or version, 503 while not ready."""
        return self.repository.get(name, version)[1]

    def default_model(self) -> ServedModel:
        """The model that unnamed front ends (the page, the CLI) use."""
        return self.model(self.default_name)

    def ready(self) -> bool:
        """Whether every model the repository should serve is loaded and warmed up."""
        return self.repository.all_ready()

    async def load(self, name: str) -> list[VersionStatus]:
        """Load (or reload) one model off the event loop; refused unless control is explicit."""
        self._check_control("load")
        lines = await anyio.to_thread.run_sync(self.repository.load, name)
        self.log_index(lines)
        return lines

    async def unload(self, name: str) -> list[VersionStatus]:
        """Stop serving one model; refused unless control is explicit."""
        self._check_control("unload")
        lines = self.repository.unload(name)
        self.log_index(lines)
        return lines

    def _check_control(self, action: str) -> None:
        if self.control_mode is not ControlMode.EXPLICIT:
            raise ModelControlDisabled(
                f"explicit model {action} is not allowed in model control mode "
                f"{self.control_mode.value!r}; start the server with --model-control-mode explicit"
            )

    async def poll_forever(self, interval: float) -> None:
        """The `poll` control mode: reload models whose folder changed, drop vanished ones."""
        while True:
            await asyncio.sleep(interval)
            try:
                changed = await anyio.to_thread.run_sync(self.repository.changed)
                for name in changed:
                    if name in self.repository.names() and self._folder_exists(name):
                        self.log_index(await anyio.to_thread.run_sync(self.repository.load, name))
                    else:
                        self.repository.forget(name)
                        logger.info("model %s: its folder is gone; no longer served", name)
            except Exception:  # a bad folder must not stop the watch
                logger.exception("polling the model repository failed")

    def _folder_exists(self, name: str) -> bool:
        root = self.repository.root
        return root is None or (root / name).is_dir()

    # Reading images and features.

    def open(self, data: bytes) -> OpenedImage:
        """An image's header read and checked against the limits, its size recorded."""
        self.metrics.image_bytes.observe(len(data))
        try:
            return open_image(data, max_pixels=self.settings.max_image_pixels)
        except ImageTooLarge as exc:
            # Its message ends with the limit; the operator also needs the setting that sets it.
            raise ImageTooLarge(
                f"{exc.detail}, set by {env_name('max_image_pixels')}", **exc.extra
            ) from exc

    def read(self, image: OpenedImage) -> Preprocessed:
        """Decode and read an opened image, recording the decode and preprocess times."""
        return self._read_alone(self._decode(image))

    def _decode(self, image: OpenedImage) -> Decoded:
        """An opened image's pixels, the decode time recorded."""
        started = time.perf_counter()
        pixels = load_pixels(image)
        self.metrics.decode_seconds.observe(time.perf_counter() - started)
        return pixels

    def _read_alone(self, pixels: Decoded) -> Preprocessed:
        """`read_digit`, the preprocess time recorded."""
        started = time.perf_counter()
        item = read_digit(pixels)
        self.metrics.preprocess_seconds.observe(time.perf_counter() - started)
        return item

    async def read_inline(self, image: OpenedImage) -> Preprocessed:
        """Decode and read a small opened image on the event loop, with other requests' images.

        For an image of at most `INLINE_PIXELS` pixels; see `ImageReadings`.
        """
        return await self.readings.read(self._decode(image))

    def read_each(
        self,
        items: Sequence[Item],
        image_of: Callable[[Item], bytes],
        names: Sequence[str | None] | None = None,
        *,
        noun: str = "item",
    ) -> list[Preprocessed]:
        """`read_bytes` of each item's image, in order, naming a failing one as `each_item` does.

        The small images of the request (`reads_together`) are read together at the end
        (`read_digits`, each as alone); any other is read as soon as it is decoded, so a request
        never holds more than one large decoded image. The error is the one reading them one by
        one would raise: the first item's to fail, and nothing after it is decoded.
        """
        readings: list[Preprocessed | DigitserveError | None] = []
        small: list[tuple[int, Pixels]] = []
        stopped: tuple[int, DigitserveError] | None = None
        for index, item in enumerate(items):
            try:
                pixels = self._decode(self.open(image_of(item)))
                if isinstance(pixels, np.ndarray) and reads_together(pixels):
                    small.append((index, pixels))
                    readings.append(None)
                else:
                    readings.append(self._read_alone(pixels))
            except DigitserveError as exc:
                stopped = (index, exc)
                break
        if small:
            started = time.perf_counter()
            together = read_digits([pixels for _, pixels in small])
            each = (time.perf_counter() - started) / len(small)
            self.metrics.read_batch_size.observe(len(small))
            for (index, _), reading in zip(small, together, strict=True):
                readings[index] = reading
                self.metrics.preprocess_seconds.observe(each)
        failures = [
            (index, reading)
            for index, reading in enumerate(readings)
            if isinstance(reading, DigitserveError)
        ]
        if stopped is not None:
            failures.append(stopped)
        if failures:
            index, error = failures[0]
            name = names[index] if names is not None else None
            raise named_error(error, f"{noun} {index}" + (f" ({name})" if name else "")) from error
        return [reading for reading in readings if isinstance(reading, Preprocessed)]

    def read_bytes(self, data: bytes) -> Preprocessed:
        """Open, decode and read one encoded image."""
        return self.read(self.open(data))

    def check_count(self, shape: tuple[int, ...], what: str) -> None:
        """A batch of at least one row and at most `max_images_per_request`."""
        limit = self.settings.max_images_per_request
        if not shape or shape[0] == 0:
            raise InvalidInput(f"{what} is empty: shape {list(shape)}")
        if shape[0] > limit:
            raise TooManyImages(
                f"{what} holds {shape[0]} rows; the limit is {limit}, set by "
                f"{env_name('max_images_per_request')}",
                limit=limit,
            )

    async def off_loop(self, work: Callable[[], Result], *, quick: bool) -> Result:
        """Run CPU work here when it is surely quick, else on a bounded worker thread.

        The thread keeps its slot until it is done, even when the request runs out of time
        (`offload.run_sync`), so no more than `preprocess_threads` threads ever do this work.
        """
        if quick:
            return work()
        return await offload.run_sync(work, limiter=self.limiter)

    async def predict(self, served: ServedModel, rows: NDArray[Any]) -> list[Prediction]:
        """Predict (n, 64) rows with one version, batched with other requests where that pays."""
        return await served.batcher.predict(rows)


def each_item(
    items: Sequence[Item],
    work: Callable[[Item], Result],
    names: Sequence[str | None] | None = None,
    *,
    noun: str = "item",
) -> list[Result]:
    """Run `work` on every item, naming the failing one (its index, and file name) in the error."""
    results = []
    for index, item in enumerate(items):
        try:
            results.append(work(item))
        except DigitserveError as exc:
            name = names[index] if names is not None else None
            raise named_error(exc, f"{noun} {index}" + (f" ({name})" if name else "")) from exc
    return results


def named_error(error: DigitserveError, where: str) -> DigitserveError:
    """The same error, its message saying which item it is about."""
    return type(error)(f"{where}: {error.detail}", headers=error.headers, **error.extra)


def pixel_rows(values: NDArray[Any], where: str) -> NDArray[Any]:
    """Ready-made features, one rule for every protocol: [n, 64] or [n, 8, 8] ink levels 0..16.

    Integers and floats are both read (the Open Inference Protocol sends FP32 too). Fractions
    that never exceed 1 are refused: those are pixels scaled to 0..1, as many pipelines normalise
    them, which the model would read as nearly blank paper and answer with a confident wrong
    digit. Whole numbers 0..1 (a binary grid) are ink levels like any other.
    """
    shape = values.shape
    if (values.ndim == 1 and shape[0] == N_FEATURES) or (
        values.ndim == 2 and shape == (GRID, GRID)
    ):
        values = values.reshape(1, N_FEATURES)
    elif values.ndim not in (2, 3) or shape[1:] not in ((N_FEATURES,), (GRID, GRID)):
        raise InvalidInput(
            f"{where}: shape must be [n, {N_FEATURES}] or [n, {GRID}, {GRID}], got {list(shape)}"
        )
    rows = values.reshape(len(values), N_FEATURES)
    if rows.dtype.kind not in "iuf":
        raise InvalidInput(f"{where}: values must be numbers, ink levels 0..{LEVELS}")
    if rows.dtype.kind == "f":
        floats = rows.astype(np.float64)
        if not np.isfinite(floats).all():
            raise InvalidInput(f"{where}: values must be finite numbers 0..{LEVELS}")
        rows = floats
    else:
        rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() > LEVELS):
        raise InvalidInput(f"{where}: values must lie in 0..{LEVELS}")
    if rows.dtype.kind == "f" and rows.size and rows.max() <= 1 and (rows != np.rint(rows)).any():
        raise InvalidInput(
            f"{where}: values look scaled to 0..1, but the model reads ink levels 0..{LEVELS} "
            f"(0 = paper, {LEVELS} = solid ink, each the inked share of a 4x4 block times "
            f"{LEVELS}): multiply by {LEVELS} and round"
        )
    return rows


def pixel_list(values: object, where: str) -> NDArray[Any]:
    """One JSON instance of ready-made features (64 numbers or 8 rows of 8), checked as rows are."""
    if not isinstance(values, list):
        raise InvalidInput(
            f"{where} must be a list of {N_FEATURES} ink levels 0..{LEVELS} or an 8x8 list of "
            'lists; an image goes in as {"b64": "<base64 of the JPEG or PNG>"}'
        )
    flat: list[object]
    if len(values) == GRID and all(isinstance(row, list) for row in values):
        if any(len(row) != GRID for row in values):
            raise InvalidInput(f"{where}: an 8x8 grid needs {GRID} rows of {GRID} values")
        flat = [value for row in values for value in row]
    else:
        flat = values
    if len(flat) != N_FEATURES:
        raise InvalidInput(f"{where} must hold {N_FEATURES} values, got {len(flat)}")
    if not all(type(value) in (int, float) for value in flat):
        raise InvalidInput(f"{where} must be numbers, ink levels 0..{LEVELS}")
    if not all(-(2**62) < value < 2**62 for value in flat):  # type: ignore[operator]
        raise InvalidInput(f"{where}: values must lie in 0..{LEVELS}")
    kind = np.int64 if all(type(value) is int for value in flat) else np.float64
    array = np.array(flat, dtype=kind)
    row: NDArray[Any] = pixel_rows(array.reshape(1, N_FEATURES), where)[0]
    return row


_LINE_BREAKS = b"\r\n"


def decode_base64(text: str, what: str) -> bytes:
    """The bytes of an image sent as base64 text, one rule for every protocol.

    Read as sent by the usual tools: plain, wrapped in lines (`base64` and MIME break every 76
    characters, OpenSSL every 64) or as a data URL (`data:image/png;base64,...`, what a browser's
    `FileReader` and a canvas's `toDataURL` give). Anything else outside the standard alphabet is
    refused (no spaces, no URL-safe alphabet, nothing after the padding), as is a data URL that
    is not base64. The media type a data URL names is not trusted: the bytes are sniffed.
    """
    if text[:5].lower() == "data:":
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise InvalidInput(
                f"{what} is a data URL without base64; send data:image/png;base64,<base64>"
            )
    try:
        if "\n" in text or "\r" in text:
            # Strict mode refuses line breaks: drop them (only them) first.
            return binascii.a2b_base64(
                text.encode("ascii").translate(None, _LINE_BREAKS), strict_mode=True
            )
        # Strict mode decodes the string in place; b64decode would first copy it to bytes.
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        reason = str(exc)
        raise InvalidInput(
            f"{what} is not valid base64 ({reason[:1].lower()}{reason[1:]}); line breaks and a "
            "data:image/...;base64, prefix are read, nothing else outside A-Z a-z 0-9 + / ="
        ) from exc
