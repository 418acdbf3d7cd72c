"""ONNX Runtime: classifiers exported to ONNX (as skl2onnx writes them), run without scikit-learn.

The graph takes float rows `[N, 64]` and gives a label per row plus a score per class, either as
a plain `[N, classes]` tensor or as ZipMap's list of {class: score}. Whether the scores are
probabilities is read off the warm-up rows (each row in 0..1 and summing to 1), since an exported
SVC without probabilities gives decision scores in the same output.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digitserve.errors import ModelLoadError

Answers = tuple[NDArray[Any], NDArray[np.float64]]

_CLASS_ATTRIBUTES = ("classlabels_int64s", "classlabels_strings", "classlabels_ints")
"""Node attributes in which ONNX-ML classifier and ZipMap nodes list the classes, in order."""


@dataclass(frozen=True, slots=True)
class OnnxModel:
    """A loaded ONNX classifier: its session, where rows go in and answers come out."""

    session: Any
    input_name: str
    label_output: str
    score_output: str
    zipmap: bool
    classes: tuple[int | str, ...]

    def answer(self, features: NDArray[Any]) -> Answers:
        """Labels and per-class scores for (n, 64) feature rows."""
        rows = np.ascontiguousarray(features, dtype=np.float32)
        labels, scores = self.session.run(
            [self.label_output, self.score_output], {self.input_name: rows}
        )
        if self.zipmap:
            matrix = np.array(
                [[row[label] for label in self.classes] for row in scores], dtype=np.float64
            )
        else:
            matrix = np.asarray(scores, dtype=np.float64).reshape(len(rows), -1)
        return np.asarray(labels).reshape(-1), matrix


def load_onnx(path: str, data: bytes, classes: tuple[int | str, ...] | None = None) -> OnnxModel:
    """Open an ONNX classifier with one thread, and find its input, outputs and classes.

    `classes` is for an export whose graph does not list them (skl2onnx's k-nearest neighbours),
    from the estimator it was exported from.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # one core per worker; workers scale out (--workers)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a model ONNX Runtime can open: {exc}") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1 or "float" not in inputs[0].type:
        described = ", ".join(f"{item.name} {item.type}" for item in inputs)
        raise ModelLoadError(f"{path} must take one float input [N, 64]; it takes {described}")
    width = inputs[0].shape[-1] if inputs[0].shape else None
    if isinstance(width, int) and width != 64:
        raise ModelLoadError(f"{path} expects {width} features; digitserve feeds 64 (an 8x8 grid)")
    label_output, score_output, zipmap = _outputs(path, session.get_outputs())
    classes = classes or _classes(data)
    if classes is None and zipmap:
        probe = session.run([score_output], {inputs[0].name: np.zeros((1, 64), np.float32)})[0]
        classes = tuple(probe[0].keys())
    if not classes:
        raise ModelLoadError(
            f"{path} does not say its classes (no classlabels attribute, no ZipMap output)"
        )
    return OnnxModel(session, inputs[0].name, label_output, score_output, zipmap, classes)


def _outputs(path: str, outputs: list[Any]) -> tuple[str, str, bool]:
    """The label output (a 1-D tensor) and the score output (a 2-D tensor, or ZipMap's maps)."""
    label = next(
        (item.name for item in outputs if item.type.startswith("tensor") and len(item.shape) == 1),
        None,
    )
    scores = next(
        (
            item.name
            for item in outputs
            if item.name != label
            and (item.type.startswith("seq(map(") or item.type == "tensor(float)")
        ),
        None,
    )
    if label is None or scores is None:
        described = ", ".join(f"{item.name} {item.type}" for item in outputs)
        raise ModelLoadError(
            f"{path} must give a label and a score per class (as skl2onnx exports a "
            f"classifier); it gives {described}"
        )
    zipmap = next(item for item in outputs if item.name == scores).type.startswith("seq(")
    return label, scores, zipmap


def _classes(data: bytes) -> tuple[int | str, ...] | None:
    """The class labels the graph lists (read with the `onnx` package), if any."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load_model_from_string(data)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name in _CLASS_ATTRIBUTES:
                values = onnx.helper.get_attribute_value(attribute)
                return tuple(
                    value.decode() if isinstance(value, bytes) else int(value) for value in values
                )
    return None


def looks_like_probabilities(scores: NDArray[np.float64]) -> bool:
    """Whether every row is a distribution: each score in 0..1, each row summing to 1."""
    if not scores.size:
        return False
    in_range = bool(scores.min() >= -1e-6 and scores.max() <= 1 + 1e-6)
    return in_range and bool(np.allclose(scores.sum(axis=1), 1.0, atol=1e-4))
