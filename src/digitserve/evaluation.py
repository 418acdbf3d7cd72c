"""Accuracy on a labelled folder of images: per group, confusion, slowest and worst images.

A folder is read from its manifest (`file,label[,group]` CSV, as `digitserve make-evalset` and
`data/labels.csv` write them) or, without one, from file names that start with the label
(`7_photo.jpg`) or from sub-folders named for the label (`7/photo.jpg`). Images go through the
model in this process (either pipeline) or through a running service's HTTP API.
"""

import csv
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from digitserve.diagnostics import confidence_warnings
from digitserve.errors import DigitserveError
from digitserve.evalset import MANIFEST
from digitserve.preprocessing import (
    IMAGE_SUFFIXES,
    decode_image,
    plain_features,
    sniff_media_type,
)

if TYPE_CHECKING:
    from digitserve.dataplane import DataPlane, ServedModel

CLASSES = tuple(range(10))
REFUSED = "x"
"""The confusion matrix column for images the service refused (4xx), such as blank ones."""

Pipeline = Literal["digitserve", "plain"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled image."""

    path: Path
    name: str
    label: int
    group: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the model made of one sample, and how long it took."""

    sample: Sample
    predicted: int | None
    confidence: float | None
    true_score: float | None
    seconds: float
    warnings: tuple[str, ...] = ()
    error: str | None = None

    @property
    def correct(self) -> bool:
        """Whether the model gave the sample's label."""
        return self.predicted == self.sample.label


@dataclass(frozen=True, slots=True)
class GroupScore:
    """Accuracy and time for one group."""

    group: str
    images: int
    correct: int
    refused: int
    mean_ms: float

    @property
    def accuracy(self) -> float:
        """Share of the group's images read correctly (refusals count as wrong)."""
        return self.correct / self.images if self.images else 0.0


@dataclass(frozen=True)
class Summary:
    """Everything `digitserve evaluate` reports."""

    outcomes: list[Outcome]
    groups: list[GroupScore]
    confusion: NDArray[np.int64]
    """Rows: true label 0..9; columns: predicted 0..9, then refused."""
    source: str = ""
    worst_count: int = 10
    warning_counts: dict[str, int] = field(default_factory=dict)

    @property
    def correct(self) -> int:
        """Images read correctly."""
        return sum(outcome.correct for outcome in self.outcomes)

    @property
    def accuracy(self) -> float:
        """Share of all images read correctly."""
        return self.correct / len(self.outcomes) if self.outcomes else 0.0

    def slowest(self) -> list[Outcome]:
        """The images that took longest."""
        return sorted(self.outcomes, key=lambda o: -o.seconds)[: self.worst_count]

    def worst(self) -> list[Outcome]:
        """The wrong answers the model was surest of, refusals first."""
        wrong = [outcome for outcome in self.outcomes if not outcome.correct]
        return sorted(wrong, key=lambda o: (o.predicted is not None, o.true_score or 0.0))[
            : self.worst_count
        ]


def read_samples(source: Path) -> list[Sample]:
    """The labelled images of a manifest file or a folder (see the module docstring)."""
    if source.is_file():
        return _manifest_samples(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is neither a folder nor a manifest file")
    for name in (MANIFEST, "labels.csv"):
        if (source / name).is_file():
            return _manifest_samples(source / name)
    samples = []
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(source)
        label_text = relative.parts[0] if len(relative.parts) > 1 else path.name[:1]
        if label_text.isdigit() and len(label_text) == 1:
            group = relative.parts[0] if len(relative.parts) > 1 else source.name
            samples.append(Sample(path, str(relative), int(label_text), group))
    if not samples:
        raise ValueError(f"{source} holds no labelled images (no manifest, no 7_*.png, no 7/*.png)")
    return samples


def _manifest_samples(manifest: Path) -> list[Sample]:
    """Rows of a `file,label[,group]` CSV, paths relative to the CSV's folder."""
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{manifest} needs columns file and label (missing {sorted(missing)})")
        return [
            Sample(
                manifest.parent / row["file"],
                row["file"],
                int(row["label"]),
                row.get("group") or manifest.parent.name,
            )
            for row in reader
        ]


Reader = Callable[[bytes], tuple[int, float | None, dict[str, float], tuple[str, ...]]]
"""Image bytes -> (label, confidence, score per class, warning codes); raises DigitserveError."""


def local_reader(dataplane: "DataPlane", served: "ServedModel", pipeline: Pipeline) -> Reader:
    """Read images in this process: through the data plane, as the service does, or plainly.

    The plain reduction (decode, area-average, the intensity formula, no levels or framing) is the
    baseline the service's pipeline is measured against.
    """
    classifier = served.classifier
    max_pixels = dataplane.settings.max_image_pixels

    def read(data: bytes) -> tuple[int, float | None, dict[str, float], tuple[str, ...]]:
        codes: tuple[str, ...] = ()
        if pipeline == "plain":
            features = plain_features(decode_image(data, max_pixels=max_pixels))
        else:
            result = dataplane.read_bytes(data)
            features, codes = result.features, tuple(w.code for w in result.warnings)
        [prediction] = classifier.predict(features.reshape(1, -1))
        if prediction.confidence is not None:
            codes += tuple(w.code for w in confidence_warnings(prediction.scores))
        return int(prediction.label), prediction.confidence, prediction.scores, codes

    return read


def remote_reader(url: str, model: str = "digits", timeout: float = 60.0) -> Reader:
    """Read images through a running service: one raw-body POST per image."""
    endpoint = f"{url.rstrip('/')}/v1/models/{model}:predict"

    def read(data: bytes) -> tuple[int, float | None, dict[str, float], tuple[str, ...]]:
        request = urllib.request.Request(  # noqa: S310 - the operator's own URL
            endpoint,
            data=data,
            headers={"Content-Type": sniff_media_type(data) or "application/octet-stream"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            problem = _problem_of(exc)
            raise RemoteError(problem.get("detail", str(exc)), code=problem.get("code")) from exc
        try:
            [prediction] = body["predictions"]
            scores = prediction.get("probabilities") or prediction.get("decision_scores") or {}
            codes = tuple(entry["code"] for entry in prediction.get("warnings", []))
            return int(prediction["label"]), prediction.get("confidence"), scores, codes
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # Not a digitserve answer: the whole run stops with one line, as for a wrong URL.
            raise ValueError(f"{endpoint} answered without a prediction: {body!r:.200}") from exc

    return read


class RemoteError(DigitserveError):
    """The service answered an image with an error."""

    def __init__(self, detail: str, *, code: str | None) -> None:
        super().__init__(detail)
        self.remote_code = code or "http_error"


def _problem_of(error: urllib.error.HTTPError) -> dict[str, str]:
    """The problem document of an HTTP error, or a stand-in when the body is not one."""
    try:
        body = json.loads(error.read())
    except ValueError:
        return {"detail": f"HTTP {error.code}"}
    return body if isinstance(body, dict) else {"detail": f"HTTP {error.code}"}


def evaluate(
    samples: Sequence[Sample],
    read: Reader,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Run every sample through a reader, timing each; refusals become outcomes, not crashes."""
    outcomes = []
    for number, sample in enumerate(samples, start=1):
        data = sample.path.read_bytes()
        started = time.perf_counter()
        try:
            label, confidence, scores, codes = read(data)
        except DigitserveError as exc:
            seconds = time.perf_counter() - started
            code = getattr(exc, "remote_code", None) or exc.code
            outcomes.append(Outcome(sample, None, None, None, seconds, (), f"{code}: {exc.detail}"))
        else:
            seconds = time.perf_counter() - started
            true_score = scores.get(str(sample.label))
            outcomes.append(Outcome(sample, label, confidence, true_score, seconds, codes))
        if progress is not None:
            progress(number, len(samples))
    return outcomes


def summarise(outcomes: Sequence[Outcome], source: str = "", worst_count: int = 10) -> Summary:
    """Accuracy per group (in first-seen order), the confusion matrix and warning counts."""
    by_group: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_group.setdefault(outcome.sample.group, []).append(outcome)
    groups = [
        GroupScore(
            group,
            len(members),
            sum(member.correct for member in members),
            sum(member.predicted is None for member in members),
            1000 * float(np.mean([member.seconds for member in members])),
        )
        for group, members in by_group.items()
    ]
    confusion = np.zeros((len(CLASSES), len(CLASSES) + 1), dtype=np.int64)
    warning_counts: dict[str, int] = {}
    for outcome in outcomes:
        column = len(CLASSES) if outcome.predicted is None else outcome.predicted
        confusion[outcome.sample.label, column] += 1
        for code in outcome.warnings:
            warning_counts[code] = warning_counts.get(code, 0) + 1
    return Summary(list(outcomes), groups, confusion, source, worst_count, warning_counts)


def format_summary(summary: Summary) -> str:
    """The plain-text report `digitserve evaluate` prints."""
    lines = [
        f"accuracy {summary.accuracy:.4f} ({summary.correct}/{len(summary.outcomes)})"
        + (f" on {summary.source}" if summary.source else ""),
        "",
        f"{'group':<20} {'images':>6} {'accuracy':>8} {'refused':>7} {'mean ms':>8}",
    ]
    lines += [
        f"{g.group:<20} {g.images:>6} {g.accuracy:>8.4f} {g.refused:>7} {g.mean_ms:>8.2f}"
        for g in summary.groups
    ]
    lines += ["", "confusion matrix (rows: true digit; columns: predicted, x = refused)"]
    lines.append("     " + "".join(f"{c:>5}" for c in [*CLASSES, REFUSED]))
    for digit, row in zip(CLASSES, summary.confusion, strict=True):
        lines.append(f"{digit:>5}" + "".join(f"{value:>5}" for value in row))
    lines += ["", "slowest images"]
    lines += [f"{1000 * o.seconds:>9.2f} ms  {o.sample.name}" for o in summary.slowest()]
    lines += ["", "worst images (refused, then lowest score for the true digit)"]
    lines += [_worst_line(o) for o in summary.worst()] or ["  (none: every image was read right)"]
    if summary.warning_counts:
        lines += ["", "warnings"]
        lines += [f"{count:>9}  {code}" for code, count in sorted(summary.warning_counts.items())]
    return "\n".join(lines) + "\n"


def _worst_line(outcome: Outcome) -> str:
    """One wrong answer, for the worst-images list."""
    if outcome.predicted is None:
        return f"  refused   {outcome.sample.name} (true {outcome.sample.label}): {outcome.error}"
    score = "-" if outcome.true_score is None else f"{outcome.true_score:.3f}"
    confidence = "-" if outcome.confidence is None else f"{outcome.confidence:.3f}"
    codes = f"  [{', '.join(outcome.warnings)}]" if outcome.warnings else ""
    return (
        f"  {score:>7}   {outcome.sample.name} (true {outcome.sample.label}, read "
        f"{outcome.predicted} at {confidence}){codes}"
    )


def write_report(summary: Summary, path: Path) -> Path:
    """Write a markdown report and, beside it, the confusion matrix as a PNG; return the PNG."""
    picture = path.with_name(path.stem + "-confusion.png")
    draw_confusion(summary.confusion).save(picture)
    rows = "\n".join(
        f"| {g.group} | {g.images} | {g.accuracy:.4f} | {g.refused} | {g.mean_ms:.2f} |"
        for g in summary.groups
    )
    slowest = "\n".join(f"| {o.sample.name} | {1000 * o.seconds:.2f} |" for o in summary.slowest())
    worst = "\n".join(_worst_row(o) for o in summary.worst()) or "| (none) | | | | |"
    warnings = "\n".join(f"| `{c}` | {n} |" for c, n in sorted(summary.warning_counts.items()))
    text = f"""# digitserve evaluation

Source: `{summary.source}`. Accuracy **{summary.accuracy:.4f}**
({summary.correct} of {len(summary.outcomes)} images).

| group | images | accuracy | refused | mean ms |
| --- | ---: | ---: | ---: | ---: |
{rows}

## Confusion matrix

Rows are the true digit, columns the digit predicted (`x`: the image was refused).

{matrix_table(summary.confusion)}

![confusion matrix: true digit down, predicted digit across]({picture.name})

## Slowest images

| image | ms |
| --- | ---: |
{slowest}

## Worst images

Refused images first, then the lowest score given to the true digit.

| image | true | read | confidence | score of true digit |
| --- | ---: | ---: | ---: | ---: |
{worst}

## Warnings

| code | images |
| --- | ---: |
{warnings or "| (none) | 0 |"}
"""
    path.write_text(text, encoding="utf-8")
    return picture


def matrix_table(confusion: NDArray[np.int64]) -> str:
    """The confusion matrix as a markdown table: true digit down, predicted digit across."""
    columns = [str(c) for c in CLASSES] + [REFUSED]
    lines = [
        "| true \\ predicted | " + " | ".join(columns) + " |",
        "| ---: |" + " ---: |" * len(columns),
    ]
    for digit, row in zip(CLASSES, confusion, strict=True):
        cells = [f"**{n}**" if column == digit else str(n) for column, n in enumerate(row)]
        lines.append(f"| **{digit}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _worst_row(outcome: Outcome) -> str:
    """One wrong answer as a markdown table row."""
    read = "refused" if outcome.predicted is None else str(outcome.predicted)
    confidence = "" if outcome.confidence is None else f"{outcome.confidence:.3f}"
    score = "" if outcome.true_score is None else f"{outcome.true_score:.3f}"
    return f"| {outcome.sample.name} | {outcome.sample.label} | {read} | {confidence} | {score} |"


def draw_confusion(confusion: NDArray[np.int64], cell: int = 36) -> Image.Image:
    """The confusion matrix as a picture: rows shaded by their shares, counts, axes titled.

    "true" runs down the left, "predicted" across the top.
    """
    rows, columns = confusion.shape
    title = cell // 2  # the band that holds an axis title
    left, top = title + cell, title + cell
    image = Image.new("RGB", (left + columns * cell + 1, top + rows * cell + 1), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    _write(draw, font, "predicted", (left, 0, left + columns * cell, title))
    side = Image.new("RGB", (rows * cell, title), "white")
    _write(ImageDraw.Draw(side), font, "true", (0, 0, rows * cell, title))
    image.paste(side.rotate(90, expand=True), (0, top))
    totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    shares = confusion / totals
    labels = [str(c) for c in CLASSES] + [REFUSED]
    for column, text in enumerate(labels):
        _centred(draw, font, text, (left + column * cell, title), cell, "black")
    for row in range(rows):
        _centred(draw, font, str(row), (title, top + row * cell), cell, "black")
        for column in range(columns):
            share = float(shares[row, column])
            on_diagonal = row == column
            shade = int(255 * (1 - share))
            fill = (shade, shade, 255) if on_diagonal else (255, shade, shade)
            x, y = left + column * cell, top + row * cell
            draw.rectangle((x, y, x + cell, y + cell), fill=fill, outline=(200, 200, 200))
            if confusion[row, column]:
                colour = "white" if share > 0.5 else "black"
                _centred(draw, font, str(confusion[row, column]), (x, y), cell, colour)
    return image


def _write(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    text: str,
    box: tuple[int, int, int, int],
) -> None:
    """Write an axis title centred in a box."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = box[0] + (box[2] - box[0] - (right - left)) / 2 - left
    y = box[1] + (box[3] - box[1] - (bottom - top)) / 2 - top
    draw.text((x, y), text, fill="black", font=font)


def _centred(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    text: str,
    corner: tuple[int, int],
    cell: int,
    colour: str,
) -> None:
    """Write text centred in a square cell."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = corner[0] + (cell - (right - left)) / 2 - left
    y = corner[1] + (cell - (bottom - top)) / 2 - top
    draw.text((x, y), text, fill=colour, font=font)


def groups_of(outcomes: Iterable[Outcome]) -> list[str]:
    """Group names in first-seen order."""
    return list(dict.fromkeys(outcome.sample.group for outcome in outcomes))
