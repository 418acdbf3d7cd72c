"""Adaptive micro-batching: requests in a worker at the same time share one model call.

With the kernel table (`classifier.KernelTable`) a model call costs a fixed part (libsvm's set-up,
numpy's per-call overhead, the Python around them) and a part per row: in process one row costs
about 100-125 µs, while rows in a batch of 8 cost about 45 µs each and in a batch of 64 about 22.
A busy worker has several small images in hand at once (each read on the event loop in turn), so
each request's rows join a queue and the first request schedules one model call for the whole
queue on the event loop's next turn, after every request already waiting to run has read its image.

Sharing a call has a price too: a request that queues its rows suspends, and resumes once the
call is made. It is smaller than what gathering saves, and not only in the model: the same work
done back to back keeps the processor's caches warm (at 8 connections, gathering from 2 requests
cost 225-256 µs of server CPU a request against 246-322 without, for three models; see
docs/prediction.md), so a worker gathers requests whenever it holds at least `min_requests`
(default 2, admitted and unanswered); a request alone is predicted at once. Once every request
in the worker has queued its rows, the call is made there and then. `batch_wait_ms` may hold the
first request of a batch that much longer for others to join (off by default: under load the
queue fills without waiting). Batching applies only
where the answers are known not to depend on the other rows of the call (`Classifier.batchable`):
libsvm and the kernel table compute each row alone, in exact arithmetic where it matters; other
runtimes are batched when `answers_alike_in_batches` found a batch's answers bit for bit the ones
each row gets alone (ONNX Runtime's tree ensembles do; its matrix products may not). For any other
model the requests are gathered all the same, and then given one call each, one after another:
doing the same work back to back (every image read, then every model call, then every answer)
keeps the processor's caches warm, and cost 207 µs of server CPU a request against 272 when each
request ran its model between its own reading and answering (a logistic regression on ONNX
Runtime, 64 connections, same-run A/B).
"""

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digitserve.classifier import Classifier, Prediction
from digitserve.errors import DigitserveError
from digitserve.metrics import Metrics
from digitserve.preprocessing import (
    Decoded,
    Preprocessed,
    read_digit,
    read_digits,
    reads_together,
)

Rows = NDArray[Any]
"""(n, 64) feature rows of one request."""

BATCH_SIZES_CHECKED = (2, 3, 16, 64)
"""Batch sizes `answers_alike_in_batches` tries: odd and even, small and as large as batches get."""


def answers_alike_in_batches(
    answer: Callable[[NDArray[Any]], tuple[NDArray[Any], NDArray[Any]]], rows: NDArray[Any]
) -> bool:
    """Whether every row gets, to the bit, the same label and scores alone as in batches."""
    try:
        alone = [answer(row[np.newaxis]) for row in rows]
        for size in BATCH_SIZES_CHECKED:
            for start in range(0, len(rows), size):
                labels, scores = answer(rows[start : start + size])
                for offset, (their_labels, their_scores) in enumerate(alone[start : start + size]):
                    if not (
                        np.array_equal(labels[offset : offset + 1], their_labels)
                        and np.array_equal(scores[offset : offset + 1], their_scores)
                    ):
                        return False
    except Exception:  # a runtime that fails on a batch is not batched
        return False
    return True


class MicroBatcher:
    """Gathers the feature rows of concurrent requests into one model call, and counts each call.

    `admitted` counts the requests in the worker (admitted and not yet answered, this one
    included). With fewer than `min_requests` there (and no batch forming), a request is predicted
    at once; when every one of them has queued its rows, the call is made at once too (there is no
    one left to wait for).
    """

    def __init__(
        self,
        classifier: Classifier,
        metrics: Metrics,
        *,
        max_rows: int,
        min_requests: int,
        wait_seconds: float,
        admitted: Callable[[], int],
    ) -> None:
        self.classifier = classifier
        self.model = (classifier.name, classifier.version)
        self.metrics = metrics
        self.max_rows = max_rows
        self.min_requests = max(min_requests, 2)  # one request alone has no one to share with
        self.wait_seconds = wait_seconds
        self.admitted = admitted
        self.enabled = max_rows > 1
        self.shares_calls = classifier.batchable
        self._queue: list[tuple[Rows, asyncio.Future[list[Prediction]]]] = []
        self._queued_rows = 0
        self._flush_handle: asyncio.Handle | None = None

    async def predict(self, rows: Rows) -> list[Prediction]:
        """The predictions for one request's rows, made alone or in a batch with others'."""
        if (
            not self.enabled
            or len(rows) >= self.max_rows
            or (not self._queue and self.admitted() < self.min_requests)
        ):
            return self.call_model(rows)
        if self._queued_rows + len(rows) > self.max_rows:
            self.flush()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Prediction]] = loop.create_future()
        self._queue.append((rows, future))
        self._queued_rows += len(rows)
        if not self.wait_seconds and len(self._queue) >= self.admitted():
            self.flush()  # answers this request too: awaiting a done future does not suspend
        elif self._flush_handle is None:
            self._flush_handle = (
                loop.call_later(self.wait_seconds, self.flush)
                if self.wait_seconds > 0
                else loop.call_soon(self.flush)
            )
        return await future

    def flush(self) -> None:
        """Make one model call for every queued request still waiting, and hand out the answers."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        queue = [(rows, future) for rows, future in self._queue if not future.done()]
        self._queue = []
        self._queued_rows = 0
        if not queue:
            return
        if not self.shares_calls:
            # A model whose answer for a row depends on the other rows of its call: each request
            # still gets its own call, but the calls are made together, one after another.
            for rows, future in queue:
                _settle(future, functools.partial(self.call_model, rows))
            return
        try:
            predictions = self.call_model(
                queue[0][0] if len(queue) == 1 else np.concatenate([rows for rows, _ in queue])
            )
        except Exception:
            # One request's rows may be what failed: answer each alone, so only its own fails.
            for rows, future in queue:
                _settle(future, functools.partial(self.call_model, rows))
            return
        start = 0
        for rows, future in queue:
            future.set_result(predictions[start : start + len(rows)])
            start += len(rows)

    def call_model(self, rows: Rows) -> list[Prediction]:
        """One model call, recorded in the metrics: its time, its size and the labels."""
        started = time.perf_counter()
        predictions = self.classifier.predict(rows)
        self.metrics.observe_predictions(
            self.model,
            (prediction.label for prediction in predictions),
            time.perf_counter() - started,
            len(rows),
        )
        return predictions


class ImageReadings:
    """Gathers the small images of concurrent requests into one `read_digits` call.

    As `MicroBatcher` gathers their rows: images read on the event loop (`INLINE_PIXELS`).
    An 8x8 image costs some 40 µs to read alone, nearly all of it the overhead of a few dozen numpy
    calls on a few dozen numbers; read together, sixteen cost about 10 µs each (the answers are
    the same to the bit). A request alone in the worker reads its image at once, and so does one
    whose image `read_digits` would read alone anyway (`reads_together`); otherwise the image joins
    the queue, read on the event loop's next turn (or at once when every request in the worker is
    waiting here). The queue holds small images only, so reading it is a short stretch of the
    loop (64 8x8 images: well under a millisecond).
    """

    def __init__(
        self, metrics: Metrics, *, enabled: bool, min_requests: int, admitted: Callable[[], int]
    ) -> None:
        self.metrics = metrics
        self.enabled = enabled
        self.min_requests = max(min_requests, 2)
        self.admitted = admitted
        self._queue: list[tuple[Decoded, asyncio.Future[Preprocessed]]] = []
        self._flush_handle: asyncio.Handle | None = None

    async def read(self, image: Decoded) -> Preprocessed:
        """The reading of one decoded image, alone or with others'."""
        if (
            not self.enabled
            or not (isinstance(image, np.ndarray) and reads_together(image))
            or (not self._queue and self.admitted() < self.min_requests)
        ):
            # Alone, or an image that is read alone anyway: read in this request's own step, so
            # that a queue's reading stays a short stretch of the event loop.
            started = time.perf_counter()
            item = read_digit(image)
            self.metrics.preprocess_seconds.observe(time.perf_counter() - started)
            self.metrics.read_batch_size.observe(1)
            return item
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Preprocessed] = loop.create_future()
        self._queue.append((image, future))
        if len(self._queue) >= self.admitted():
            self.flush()  # everyone is here: awaiting a done future does not suspend
        elif self._flush_handle is None:
            self._flush_handle = loop.call_soon(self.flush)
        return await future

    def flush(self) -> None:
        """Read every queued image whose request still waits, and hand out the readings."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        queue = [(image, future) for image, future in self._queue if not future.done()]
        self._queue = []
        if not queue:
            return
        started = time.perf_counter()
        try:
            readings = read_digits([image for image, _ in queue])
        except Exception:  # a fault reading them together: each is read alone, failing alone
            readings = None
        each = (time.perf_counter() - started) / len(queue)
        self.metrics.read_batch_size.observe(len(queue) if readings is not None else 1)
        for position, (image, future) in enumerate(queue):
            if readings is None:
                _settle(future, functools.partial(read_digit, image))
                continue
            reading = readings[position]
            if isinstance(reading, DigitserveError):
                future.set_exception(reading)
            else:
                future.set_result(reading)
            self.metrics.preprocess_seconds.observe(each)


def _settle(future: asyncio.Future[Any], work: Callable[[], Any]) -> None:
    """Resolve a future with the result of `work`, or with the exception it raised."""
    try:
        future.set_result(work())
    except Exception as exc:
        future.set_exception(exc)
