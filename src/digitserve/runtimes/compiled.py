"""ONNX Runtime for scikit-learn models that have no faster way: converted, checked, cached.

scikit-learn's public API costs hundreds of microseconds to milliseconds a row (a forest of 200
trees: ~12 ms) in input checks and Python around small numpy calls; the same model exported by
skl2onnx and run by ONNX Runtime takes ~10-100 µs. A model is only served this way when the
export gives exactly scikit-learn's labels on every verification row (all of `load_digits` plus
random 0..16 grids) and is faster than the public API; otherwise the reason is logged and put on
the card, and scikit-learn serves it. The export runs in a child process (skl2onnx and its
imports never enter the worker) and is cached under the source file's sha256.
"""

import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digitserve.preprocessing import LEVELS, N_FEATURES

logger = logging.getLogger("digitserve")

RANDOM_GRIDS = 512
"""Random 0..16 grids added to `load_digits` to check an export on rows unlike any digit."""

CONVERT_SECONDS = 120
"""Longest a conversion may take before the model is served by scikit-learn instead."""


def cache_dir() -> Path:
    """Where exports are kept: `DIGITSERVE_ONNX_CACHE`, else a folder in the temp dir."""
    configured = os.environ.get("DIGITSERVE_ONNX_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "digitserve-onnx"


def verification_rows() -> NDArray[np.float64]:
    """Every `load_digits` row and seeded random grids: what an export must answer alike."""
    from sklearn.datasets import load_digits

    random = np.random.default_rng(0).integers(0, LEVELS + 1, size=(RANDOM_GRIDS, N_FEATURES))
    rows: NDArray[np.float64] = np.vstack([load_digits().data, random]).astype(np.float64)
    return rows


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an export serves a model, and the sentence saying why (for the log and card)."""

    model: Any | None
    reason: str


def export(estimator: Any) -> bytes:
    """skl2onnx's export of a fitted classifier: float rows [N, 64], plain score tensor."""
    import warnings

    from skl2onnx import to_onnx

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations skl2onnx triggers reading attributes
        graph = to_onnx(
            estimator,
            np.zeros((1, N_FEATURES), dtype=np.float32),
            options={id(final): {"zipmap": False}},
            target_opset=None,
        )
    data: bytes = graph.SerializeToString()
    return data


def _export_in_child(estimator: Any) -> bytes:
    """Run `export` in a fresh interpreter, so the worker never imports skl2onnx.

    The estimator goes over a pipe as a pickle: the service's own object, already loaded from
    the operator's file, never a client's bytes.
    """
    result = subprocess.run(  # noqa: S603 - this interpreter, this module, no shell
        [sys.executable, "-m", __name__],
        input=pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL),
        capture_output=True,
        timeout=CONVERT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {result.returncode}")
    return result.stdout


def compiled(estimator: Any, sha256: str, public: Any) -> Verdict:
    """The ONNX Runtime model for `estimator` if it is exact and faster, with the reason.

    `public` answers through scikit-learn's API: labels must be the same on every check row,
    scores the same to float32's precision, and one row must be faster.
    """
    from digitserve.runtimes.onnx import load_onnx

    target = cache_dir() / f"{sha256}.onnx"
    try:
        if target.is_file():
            data = target.read_bytes()
        else:
            data = _export_in_child(estimator)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(data)
            partial.replace(target)  # whole or not at all, for other workers and restarts
        model = load_onnx(str(target), data, tuple(np.asarray(estimator.classes_).tolist()))
    except (Exception, subprocess.TimeoutExpired) as exc:
        return Verdict(None, f"not converted to ONNX ({type(exc).__name__}: {exc})"[:300])
    if tuple(model.classes) != tuple(np.asarray(estimator.classes_).tolist()):
        return Verdict(None, "the ONNX export lists other classes than scikit-learn")
    rows = verification_rows()
    try:
        their_labels, their_scores = public(rows)
        our_labels, our_scores = model.answer(rows)
    except Exception as exc:
        return Verdict(None, f"the ONNX export failed on the check rows ({exc})"[:300])
    disagree = int(np.count_nonzero(np.asarray(our_labels) != np.asarray(their_labels)))
    if disagree:
        return Verdict(
            None,
            f"the ONNX export's labels differ from scikit-learn's on {disagree} of {len(rows)}",
        )
    if our_scores.shape != their_scores.shape or not np.allclose(
        our_scores, their_scores, rtol=1e-3, atol=1e-4
    ):
        return Verdict(None, "the ONNX export's scores differ from scikit-learn's")
    onnx_seconds, public_seconds = _per_row(model.answer), _per_row(public)
    check = f"ONNX labels equal scikit-learn's on all {len(rows)} check rows"
    timing = f"{onnx_seconds * 1e6:.0f} µs a row against scikit-learn's {public_seconds * 1e6:.0f}"
    if onnx_seconds >= public_seconds:
        return Verdict(None, f"{check}, but it is not faster ({timing})")
    return Verdict(model, f"{check}; {timing}")


def _per_row(answer: Any) -> float:
    """The best time of a one-row call, over a few tries."""
    row = np.full((1, N_FEATURES), 8, dtype=np.int64)
    answer(row)
    best = float("inf")
    for _ in range(20):
        started = time.perf_counter()
        answer(row)
        best = min(best, time.perf_counter() - started)
    return best


if __name__ == "__main__":
    # The child of `_export_in_child`: a pickled estimator in, its ONNX export out.
    sys.stdout.buffer.write(export(pickle.loads(sys.stdin.buffer.read())))  # noqa: S301
