"""The micro-batcher: one model call for concurrent requests, answers as if each were alone."""

import asyncio
import dataclasses
import itertools
import sys
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from digitserve import batching
from digitserve.batching import ImageReadings, MicroBatcher
from digitserve.classifier import Classifier, Prediction
from digitserve.errors import BlankImage
from digitserve.metrics import Metrics
from digitserve.preprocessing import Preprocessed, read_digit, render_digit
from digitserve.training import Split


def batcher(
    classifier: Classifier,
    *,
    max_rows: int = 64,
    min_requests: int = 2,
    wait_seconds: float = 0.0,
    admitted: int = sys.maxsize,
) -> MicroBatcher:
    """A batcher with its own metrics, told how many requests are in the worker (default: many)."""
    return MicroBatcher(
        classifier,
        Metrics(),
        max_rows=max_rows,
        min_requests=min_requests,
        wait_seconds=wait_seconds,
        admitted=lambda: admitted,
    )


def model_calls(target: MicroBatcher) -> list[float]:
    """How many model calls the batcher made, and how many rows in all: from its metrics."""
    registry = target.metrics.registry
    return [
        registry.get_sample_value("digitserve_batch_size_count") or 0.0,
        registry.get_sample_value("digitserve_batch_size_sum") or 0.0,
    ]


def rows_of(split: Split, *sizes: int) -> list[np.ndarray]:
    """Consecutive held-out rows, cut into requests of the given sizes."""
    features = split.x_test.astype(np.int64)
    edges = np.cumsum((0, *sizes))
    return [features[start:end] for start, end in itertools.pairwise(edges)]


async def gather(target: MicroBatcher, requests: list[np.ndarray]) -> list[list[Prediction]]:
    """Every request's predictions, the requests made at once."""
    return list(await asyncio.gather(*(target.predict(rows) for rows in requests)))


def test_concurrent_requests_share_one_call_and_get_their_own_answers(
    classifier: Classifier, split: Split
) -> None:
    requests = rows_of(split, 1, 3, 1, 2)
    target = batcher(classifier)
    answers = asyncio.run(gather(target, requests))
    assert model_calls(target) == [1, 7]
    for rows, answer in zip(requests, answers, strict=True):
        # Bit for bit what the request gets alone: labels, confidences and every score.
        assert answer == classifier.predict(rows)


def test_a_request_alone_is_predicted_at_once(classifier: Classifier, split: Split) -> None:
    [rows] = rows_of(split, 1)
    target = batcher(classifier, admitted=1)
    call: Coroutine[Any, Any, list[Prediction]] = target.predict(rows)
    # No loop turn: the coroutine finishes on its first step, without suspending.
    with pytest.raises(StopIteration) as finished:
        call.send(None)
    assert finished.value.value == classifier.predict(rows)
    assert model_calls(target) == [1, 1]


@pytest.mark.parametrize(("admitted", "shared"), [(15, False), (16, True)])
def test_requests_share_calls_only_from_min_requests_in_the_worker(
    classifier: Classifier, split: Split, admitted: int, shared: bool
) -> None:
    requests = rows_of(split, 1, 2, 1)
    target = batcher(classifier, min_requests=16, admitted=admitted)
    answers = asyncio.run(gather(target, requests))
    assert model_calls(target) == ([1, 4] if shared else [3, 4])
    assert answers == [classifier.predict(rows) for rows in requests]
    if not shared:  # below the threshold a request does not wait a loop turn
        call: Coroutine[Any, Any, list[Prediction]] = target.predict(requests[0])
        with pytest.raises(StopIteration):
            call.send(None)


def test_a_request_alone_in_the_queue_is_still_answered(
    classifier: Classifier, split: Split
) -> None:
    [rows] = rows_of(split, 2)
    target = batcher(classifier)
    assert asyncio.run(gather(target, [rows])) == [classifier.predict(rows)]
    assert model_calls(target) == [1, 2]


def test_the_last_request_in_the_worker_to_queue_makes_the_call_at_once(
    classifier: Classifier, split: Split
) -> None:
    first, last = rows_of(split, 2, 1)
    target = batcher(classifier, admitted=2)

    async def scenario() -> None:
        early = asyncio.ensure_future(target.predict(first))
        await asyncio.sleep(0)  # the first has queued its rows; its call is still to come
        assert not early.done()
        call: Coroutine[Any, Any, list[Prediction]] = target.predict(last)
        with pytest.raises(StopIteration) as finished:  # no one left to wait for: no loop turn
            call.send(None)
        assert finished.value.value == classifier.predict(last)
        assert await early == classifier.predict(first)

    asyncio.run(scenario())
    assert model_calls(target) == [1, 3]


def test_batches_stop_at_max_rows(classifier: Classifier, split: Split) -> None:
    requests = rows_of(split, 1, 1, 1, 1, 1, 1)
    target = batcher(classifier, max_rows=4)
    answers = asyncio.run(gather(target, requests))
    assert model_calls(target) == [2, 6]
    assert answers == [classifier.predict(rows) for rows in requests]


def test_a_request_of_max_rows_or_more_goes_alone(classifier: Classifier, split: Split) -> None:
    requests = rows_of(split, 1, 5, 1)
    target = batcher(classifier, max_rows=4)
    answers = asyncio.run(gather(target, requests))
    assert model_calls(target) == [2, 7]  # the five rows alone, the two single rows together
    assert answers == [classifier.predict(rows) for rows in requests]


@pytest.mark.parametrize(("wait_seconds", "calls"), [(0.0, 2), (5.0, 1)], ids=["no wait", "wait"])
def test_batch_wait_lets_a_later_request_join(
    classifier: Classifier, split: Split, wait_seconds: float, calls: int
) -> None:
    first, second = rows_of(split, 1, 1)
    target = batcher(classifier, wait_seconds=wait_seconds)

    async def staggered() -> None:
        early = asyncio.ensure_future(target.predict(first))
        await asyncio.sleep(0.01)  # several loop turns: a batch without wait has gone by now
        late = asyncio.ensure_future(target.predict(second))
        await asyncio.sleep(0)
        if wait_seconds:
            target.flush()  # what the timer does when it fires, without waiting seconds for it
        assert await early == classifier.predict(first)
        assert await late == classifier.predict(second)

    asyncio.run(staggered())
    assert model_calls(target) == [calls, 2]


def test_a_cancelled_request_leaves_the_batch(classifier: Classifier, split: Split) -> None:
    gone, kept = rows_of(split, 3, 1)
    target = batcher(classifier)

    async def cancel_one() -> list[Prediction]:
        doomed = asyncio.ensure_future(target.predict(gone))
        survivor = asyncio.ensure_future(target.predict(kept))
        await asyncio.sleep(0)  # both queued, the model call not yet made
        doomed.cancel()
        return await survivor

    assert asyncio.run(cancel_one()) == classifier.predict(kept)
    assert model_calls(target) == [1, 1]


def test_a_failing_request_fails_alone(classifier: Classifier, split: Split) -> None:
    [good] = rows_of(split, 1)
    bad = np.zeros((1, 32), dtype=np.int64)  # the model cannot take it, nor a batch holding it
    target = batcher(classifier)

    async def both() -> list[object]:
        return list(
            await asyncio.gather(target.predict(good), target.predict(bad), return_exceptions=True)
        )

    answer, error = asyncio.run(both())
    assert answer == classifier.predict(good)
    assert isinstance(error, ValueError)


def test_batching_is_off_with_one_row(classifier: Classifier, split: Split) -> None:
    target = batcher(classifier, max_rows=1)
    assert not target.enabled
    requests = rows_of(split, 1, 1, 1)
    assert asyncio.run(gather(target, requests)) == [classifier.predict(r) for r in requests]
    assert model_calls(target) == [3, 3]


def test_a_model_whose_batches_answer_otherwise_gets_a_call_per_request_made_together(
    classifier: Classifier, split: Split
) -> None:
    calls: list[int] = []

    def answer(rows: np.ndarray[Any, Any]) -> Any:
        calls.append(len(rows))
        return classifier.answer(rows)

    model = dataclasses.replace(classifier, batchable=False, answer=answer)
    target = batcher(model)
    assert target.enabled  # the requests are gathered, as for any model...
    requests = rows_of(split, 1, 3, 2)
    assert asyncio.run(gather(target, requests)) == [classifier.predict(r) for r in requests]
    assert calls == [1, 3, 2]  # ...but each is its own call: its answer is the one made alone
    assert model_calls(target) == [3, 6]


def test_a_runtime_is_batched_only_when_batches_answer_to_the_bit_as_rows_alone() -> None:
    from digitserve.batching import answers_alike_in_batches

    rows = np.random.default_rng(0).integers(0, 17, size=(70, 64)).astype(np.float64)
    weights = np.random.default_rng(1).normal(size=(64, 10))

    def per_row(batch: np.ndarray[Any, Any]) -> tuple[Any, Any]:
        scores = np.vstack([row @ weights for row in batch])
        return scores.argmax(axis=1), scores

    def shifted_by_the_batch(batch: np.ndarray[Any, Any]) -> tuple[Any, Any]:
        scores = batch @ weights + len(batch) * 1e-12  # answers depend on who else is in it
        return scores.argmax(axis=1), scores

    assert answers_alike_in_batches(per_row, rows)
    assert not answers_alike_in_batches(shifted_by_the_batch, rows)


def readings(*, enabled: bool = True, admitted: int = sys.maxsize) -> ImageReadings:
    """An image gatherer with its own metrics, told how many requests are in the worker."""
    return ImageReadings(Metrics(), enabled=enabled, min_requests=2, admitted=lambda: admitted)


def reading_calls(target: ImageReadings) -> list[float]:
    """How many reading calls the gatherer made, and how many images in all: from its metrics."""
    registry = target.metrics.registry
    return [
        registry.get_sample_value("digitserve_read_batch_size_count") or 0.0,
        registry.get_sample_value("digitserve_read_batch_size_sum") or 0.0,
    ]


def drawn(split: Split, *indices: int) -> list[np.ndarray]:
    """Held-out digits drawn as 8x8 RGB pixels, as an 8x8 JPEG decodes."""
    rows = split.x_test.astype(np.int64)
    return [np.asarray(render_digit(rows[index], 8).convert("RGB")) for index in indices]


def same_readings(ours: Preprocessed, alone: Preprocessed) -> bool:
    return ours.features.tobytes() == alone.features.tobytes() and ours.warnings == alone.warnings


def test_concurrent_images_are_read_in_one_call_each_as_alone(split: Split) -> None:
    images = drawn(split, 0, 1, 2, 3, 4)
    target = readings()

    async def together() -> list[Preprocessed]:
        return list(await asyncio.gather(*(target.read(image) for image in images)))

    for ours, image in zip(asyncio.run(together()), images, strict=True):
        assert same_readings(ours, read_digit(image))
    assert reading_calls(target) == [1, 5]


def test_an_image_alone_in_the_worker_is_read_at_once(split: Split) -> None:
    [image] = drawn(split, 0)
    target = readings(admitted=1)
    call: Coroutine[Any, Any, Preprocessed] = target.read(image)
    with pytest.raises(StopIteration) as finished:
        call.send(None)  # no loop turn: read on the first step
    assert same_readings(finished.value.value, read_digit(image))
    assert reading_calls(target) == [1, 1]


def test_the_last_request_in_the_worker_to_queue_reads_every_image_at_once(split: Split) -> None:
    images = drawn(split, 0, 1, 2)
    target = readings(admitted=3)

    async def three() -> tuple[bool, list[Preprocessed]]:
        first = [asyncio.ensure_future(target.read(image)) for image in images[:2]]
        await asyncio.sleep(0)  # both queued: they wait for the next turn or a third request
        last = target.read(images[2])
        with pytest.raises(StopIteration) as finished:
            last.send(None)  # the third completes the worker: the call is made there and then
        read_before_next_turn = reading_calls(target) == [1, 3]
        return read_before_next_turn, [*(await asyncio.gather(*first)), finished.value.value]

    read_at_once, answers = asyncio.run(three())
    assert read_at_once
    assert reading_calls(target) == [1, 3]
    for ours, image in zip(answers, images, strict=True):
        assert same_readings(ours, read_digit(image))


def test_a_blank_image_fails_alone_among_images_read_together(split: Split) -> None:
    good = drawn(split, 0, 1)
    blank = np.full((8, 8, 3), 255, dtype=np.uint8)
    target = readings()

    async def crowd() -> list[object]:
        reads = [target.read(good[0]), target.read(blank), target.read(good[1])]
        return list(await asyncio.gather(*reads, return_exceptions=True))

    first, error, second = asyncio.run(crowd())
    assert isinstance(error, BlankImage)
    assert isinstance(first, Preprocessed)
    assert isinstance(second, Preprocessed)
    assert same_readings(first, read_digit(good[0]))
    assert same_readings(second, read_digit(good[1]))


def test_a_fault_reading_together_reads_each_image_alone(
    split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = drawn(split, 0, 1, 2)

    def broken(_: object) -> list[object]:
        raise RuntimeError("a fault in the reading together")

    monkeypatch.setattr(batching, "read_digits", broken)
    target = readings()

    async def together() -> list[Preprocessed]:
        return list(await asyncio.gather(*(target.read(image) for image in images)))

    for ours, image in zip(asyncio.run(together()), images, strict=True):
        assert same_readings(ours, read_digit(image))


def test_reading_together_is_off_with_batching(split: Split) -> None:
    images = drawn(split, 0, 1)
    target = readings(enabled=False)

    async def together() -> list[Preprocessed]:
        return list(await asyncio.gather(*(target.read(image) for image in images)))

    asyncio.run(together())
    assert reading_calls(target) == [2, 2]


def test_an_image_read_alone_anyway_is_read_at_once_in_a_busy_worker(split: Split) -> None:
    rows = split.x_test.astype(np.int64)
    large = np.asarray(render_digit(rows[0], 200).convert("RGB"))  # reduced, then read alone
    target = readings()  # many requests in the worker
    call: Coroutine[Any, Any, Preprocessed] = target.read(large)
    with pytest.raises(StopIteration) as finished:
        call.send(None)  # not queued: the queue holds only images read together
    assert same_readings(finished.value.value, read_digit(large))
    assert reading_calls(target) == [1, 1]
