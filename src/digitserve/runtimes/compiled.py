"""Compiled runtimes: the fastest checked way to serve a scikit-learn file, chosen once per file.

scikit-learn's public API costs hundreds of microseconds to milliseconds a row (a forest of 200
trees: ~10 ms) in input checks and Python around small numpy calls, and importing scikit-learn
costs every worker ~60 MB. So a child process (this module, run as a script) loads the operator's
file with scikit-learn and builds every runtime that can serve it: ONNX Runtime from skl2onnx's
export, numpy's SVC and k-nearest neighbours (`runtimes.svm`, `runtimes.neighbors`), and
scikit-learn itself with
`digitserve.classifier`'s fast paths. Each is checked against scikit-learn's public API on every
verification row (all of `load_digits` plus seeded random 0..16 grids: labels equal, scores within
1e-4) and timed on one row. The choice, a *plan*, is written to the cache with the chosen runtime's
file, both keyed by the model file's sha256; the worker then opens that file and, when the plan
needs no scikit-learn, never unpickles the model nor imports scikit-learn.

The choice: the fastest runtime that passed, except that one needing no scikit-learn is preferred
unless another is more than `SKLEARN_FREE_PREFERENCE` times faster (tens of microseconds a row,
against a request's ~150 µs, are worth less than 60 MB per worker). A runtime that disagrees on
any label is never used; the plan's `reason` says what each candidate did, and goes in the log and
on the model card.
"""

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digitserve.batching import answers_alike_in_batches
from digitserve.preprocessing import LEVELS, N_FEATURES

logger = logging.getLogger("digitserve")

RANDOM_GRIDS = 512
"""Random 0..16 grids added to `load_digits` to check a runtime on rows unlike any digit."""

CONVERT_SECONDS = 180
"""Longest the child may take before the model is served by scikit-learn instead."""

SKLEARN_FREE_PREFERENCE = 2.0
"""How much faster a runtime needing scikit-learn must be to win over one that does not."""

PLAN_FORMAT = 4
"""Bumped when the plan, the check or the candidates change: older plans are made again."""

SCORE_RTOL, SCORE_ATOL = 1e-3, 1e-4
"""How close a runtime's scores must be to scikit-learn's (ONNX Runtime computes in float32)."""

ALONE_EVERY = 20
"""Every how many check rows one is also asked alone (115 of 2,309)."""

SCIKIT_LEARN = "scikit-learn"
"""The plan's runtime when the worker must load the file with scikit-learn itself."""


def cache_dir() -> Path:
    """Where plans are kept: `DIGITSERVE_ONNX_CACHE`, else a folder in the temp dir."""
    configured = os.environ.get("DIGITSERVE_ONNX_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "digitserve-onnx"


def private_dir(folder: Path) -> bool:
    """Make the cache folder (owner only) and say whether it is safe to trust what it holds.

    A plan decides what code answers, so it must be written by this user alone: a folder owned
    by another user, or writable by group or others (a shared /tmp), is not used.
    """
    try:
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True)
        status = folder.stat()
    except OSError as exc:
        logger.warning("runtime cache %s cannot be used: %s", folder, exc)
        return False
    if status.st_uid != os.getuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        logger.warning(
            "runtime cache %s is not private to this user (owner %d, mode %o); not used",
            folder,
            status.st_uid,
            stat.S_IMODE(status.st_mode),
        )
        return False
    return True


def verification_rows() -> NDArray[np.float64]:
    """Every `load_digits` row and seeded random grids: what a runtime must answer alike."""
    from sklearn.datasets import load_digits

    random = np.random.default_rng(0).integers(0, LEVELS + 1, size=(RANDOM_GRIDS, N_FEATURES))
    rows: NDArray[np.float64] = np.vstack([load_digits().data, random]).astype(np.float64)
    return rows


@dataclass(frozen=True, slots=True)
class Plan:
    """The child's choice for one model file, as the worker reads it back from the cache."""

    source_sha256: str
    runtime: str
    """`onnxruntime` or `neighbors` (no scikit-learn in the worker), or `scikit-learn`."""
    reason: str
    classes: list[int | str]
    score_kind: str
    artefact: str | None = None
    """The chosen runtime's file in the cache (`<sha256>.onnx` or `.npz`), if it has one."""
    artefact_sha256: str | None = None
    timings_us: dict[str, float] = field(default_factory=dict)
    batchable: bool = False
    """Whether the runtime answered every sampled row alike alone and in batches (`batching`)."""
    format: int = PLAN_FORMAT

    @property
    def needs_scikit_learn(self) -> bool:
        """Whether the worker must unpickle the model (and import scikit-learn) to serve it."""
        return self.runtime == SCIKIT_LEARN


def read_plan(folder: Path, sha256: str) -> Plan | None:
    """The cached plan for a file, if there is a current one whose artefact is intact."""
    path = folder / f"{sha256}.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        plan = Plan(**document)
    except (OSError, ValueError, TypeError):
        return None
    if plan.format != PLAN_FORMAT or plan.source_sha256 != sha256:
        return None
    if plan.artefact is not None:
        try:
            data = (folder / plan.artefact).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != plan.artefact_sha256:
            return None
    return plan


def plan_for(
    path: Path, sha256: str, trusted_types: Sequence[str] = ()
) -> tuple[Plan | None, Path, str]:
    """The plan for a model file (cached, else made by the child), its folder, and what happened.

    A private temporary folder stands in for a cache that cannot be trusted or written (a plan
    baked into a read-only image is still read); its plan is made again at the next start.
    """
    folder = cache_dir()
    trusted = private_dir(folder)
    plan = read_plan(folder, sha256) if trusted else None
    if plan is not None:
        return plan, folder, "cached"
    if not trusted or not os.access(folder, os.W_OK):  # e.g. baked into a read-only image
        folder = Path(tempfile.mkdtemp(prefix="digitserve-runtime-"))
    try:
        _run_child(path, sha256, folder, trusted_types)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        return None, folder, f"not compiled ({type(exc).__name__}: {exc})"[:300]
    plan = read_plan(folder, sha256)
    return plan, folder, "compiled" if plan else "not compiled (the child wrote no plan)"


def _run_child(path: Path, sha256: str, folder: Path, trusted_types: Sequence[str]) -> None:
    """Run this module in a fresh interpreter: scikit-learn and skl2onnx never enter the worker."""
    result = subprocess.run(  # noqa: S603 - this interpreter, this module, no shell
        [sys.executable, "-m", __name__, str(path), sha256, str(folder)],
        input=json.dumps(list(trusted_types)).encode(),
        capture_output=True,
        timeout=CONVERT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {result.returncode}")


# What follows runs in the child, where scikit-learn is imported.

Answer = Callable[[NDArray[Any]], tuple[NDArray[Any], NDArray[Any]]]


@dataclass(slots=True)
class Candidate:
    """One way to serve the model, with what the check and the timing found."""

    runtime: str
    answer: Answer | None
    needs_scikit_learn: bool
    artefact: bytes | None = None
    suffix: str = ""
    verdict: str = ""
    microseconds: float = float("inf")

    @property
    def passed(self) -> bool:
        return self.answer is not None and not self.verdict


def export(estimator: Any) -> bytes:
    """skl2onnx's export of a fitted classifier: float rows [N, 64], plain score tensor."""
    import warnings

    from skl2onnx import to_onnx

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    rows = np.zeros((1, N_FEATURES), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations skl2onnx triggers reading attributes
        try:
            graph = to_onnx(estimator, rows, options={id(final): {"zipmap": False}})
        except NameError:  # no ZipMap to turn off: a classifier without probabilities
            graph = to_onnx(estimator, rows)
    data: bytes = graph.SerializeToString()
    return data


def _onnx_candidate(estimator: Any, classes: tuple[Any, ...]) -> Candidate:
    from digitserve.runtimes.onnx import load_onnx

    try:
        data = export(estimator)
        model = load_onnx("export.onnx", data, classes)
    except Exception as exc:  # skl2onnx has no converter, or the export does not open
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"not converted ({type(exc).__name__}: {first_line})"[:200]
        return Candidate("onnxruntime", None, False, verdict=reason)
    if tuple(model.classes) != classes:
        return Candidate("onnxruntime", None, False, verdict="lists other classes")
    return Candidate("onnxruntime", model.answer, False, data, ".onnx")


def _array_candidates(estimator: Any) -> list[Candidate]:
    """The numpy runtimes that can take this estimator (`runtimes.neighbors`, ...)."""
    import io

    from digitserve.runtimes import ARRAY_RUNTIMES

    found = []
    for kind, runtime in ARRAY_RUNTIMES.items():
        model = runtime.from_estimator(estimator)
        if model is None:
            continue
        buffer = io.BytesIO()
        arrays: dict[str, Any] = model.arrays()
        np.savez(buffer, **arrays)
        found.append(Candidate(kind, model.answer, False, buffer.getvalue(), ".npz"))
    return found


@dataclass(frozen=True, slots=True)
class Reference:
    """scikit-learn's public answers on the check rows: all at once, and a sample one at a time.

    A few rows get another label from scikit-learn alone than in a batch (k-nearest neighbours
    break ties between equally near rows by how the search was split); either label is then
    scikit-learn's, and a runtime may give either, with either's scores.
    """

    labels: NDArray[Any]
    scores: NDArray[Any]
    alone_labels: NDArray[Any]
    alone_scores: NDArray[Any]

    @classmethod
    def of(cls, public: Answer, rows: NDArray[np.float64]) -> "Reference":
        labels, scores = public(rows)
        alone = [public(row[np.newaxis]) for row in rows[::ALONE_EVERY]]
        return cls(
            np.asarray(labels),
            np.asarray(scores),
            np.concatenate([np.asarray(part[0]) for part in alone]),
            np.concatenate([np.asarray(part[1]) for part in alone]),
        )


def check(candidate: Candidate, rows: NDArray[np.float64], reference: Reference) -> None:
    """Fill in the candidate's verdict: labels equal on every row, scores close, or why not.

    Rows are asked all at once and, a sample of them, one at a time, as requests mostly come: a
    runtime may compute a lone row another way than a batch.
    """
    assert candidate.answer is not None  # noqa: S101 - only built candidates are checked
    try:
        labels, scores = (np.asarray(part) for part in candidate.answer(rows))
        one_by_one = [candidate.answer(row[np.newaxis]) for row in rows[::ALONE_EVERY]]
    except Exception as exc:
        candidate.verdict = f"failed on the check rows ({exc})"[:200]
        return
    alone_labels = np.concatenate([np.asarray(part[0]) for part in one_by_one])
    alone_scores = np.concatenate([np.asarray(part[1]) for part in one_by_one])
    # Where scikit-learn's own label depends on the batch, either of its answers is right.
    other = reference.labels.copy()
    other[::ALONE_EVERY] = reference.alone_labels
    firm = other == reference.labels
    batch_labels = reference.labels[::ALONE_EVERY]
    for mine, mine_scores, theirs, theirs_scores, also, kept, how in (
        (labels, scores, reference.labels, reference.scores, other, firm, ""),
        (
            alone_labels,
            alone_scores,
            reference.alone_labels,
            reference.alone_scores,
            batch_labels,
            firm[::ALONE_EVERY],
            " asked one at a time",
        ),
    ):
        if mine.shape != theirs.shape or np.shape(mine_scores) != np.shape(theirs_scores):
            candidate.verdict = f"answers of another shape than scikit-learn's{how}"
            return
        disagree = int(np.count_nonzero((mine != theirs) & (mine != also)))
        if disagree:
            candidate.verdict = f"labels differ on {disagree} of {len(theirs)} check rows{how}"
            return
        if not np.allclose(
            mine_scores[kept], theirs_scores[kept], rtol=SCORE_RTOL, atol=SCORE_ATOL
        ):
            candidate.verdict = f"scores differ from scikit-learn's{how}"
            return


def per_row_microseconds(answer: Answer) -> float:
    """The best time of a one-row call, over a few tries."""
    row = np.full((1, N_FEATURES), 8, dtype=np.int64)
    answer(row)
    best = float("inf")
    for _ in range(30):
        started = time.perf_counter()
        answer(row)
        best = min(best, time.perf_counter() - started)
    return best * 1e6


def choose(candidates: Sequence[Candidate]) -> Candidate | None:
    """The fastest candidate that passed, unless one without scikit-learn is nearly as fast."""
    passed = [c for c in candidates if c.passed]
    if not passed:
        return None
    fastest = min(passed, key=lambda c: c.microseconds)
    free = [c for c in passed if not c.needs_scikit_learn]
    if free:
        best_free = min(free, key=lambda c: c.microseconds)
        if best_free.microseconds <= SKLEARN_FREE_PREFERENCE * fastest.microseconds:
            return best_free
    return fastest


def describe(chosen: Candidate, candidates: Sequence[Candidate], rows: int) -> str:
    """The sentence for the log and the card: what serves, and what every candidate did."""
    parts = []
    for c in candidates:
        if c.passed:
            parts.append(f"{c.runtime} {c.microseconds:.0f} µs a row")
        else:
            parts.append(f"{c.runtime} not used: {c.verdict}")
    return f"{chosen.runtime}: labels equal scikit-learn's on all {rows} check rows; " + "; ".join(
        parts
    )


def make_plan(path: Path, sha256: str, folder: Path, trusted_types: Sequence[str]) -> Plan:
    """Load the file with scikit-learn, try every runtime, and write the plan (in the child)."""
    from digitserve.classifier import _public_predictors, answerer, load_classifier

    classifier = load_classifier(path, "model", expected_sha256=sha256, trusted_types=trusted_types)
    estimator = classifier.estimator
    classes = tuple(classifier.classes)
    rows = verification_rows()
    reference = Reference.of(answerer(_public_predictors(estimator, classifier.score_kind)), rows)
    candidates = [
        Candidate(classifier.path, classifier.answer, True),
        *_array_candidates(estimator),
        _onnx_candidate(estimator, classes),
    ]
    for candidate in candidates:
        if candidate.answer is not None and not candidate.verdict:
            check(candidate, rows, reference)
        if candidate.passed:
            assert candidate.answer is not None  # noqa: S101 - passed means built
            candidate.microseconds = per_row_microseconds(candidate.answer)
    chosen = choose(candidates)
    if chosen is None:  # even scikit-learn's own fast path failed the check: the public API
        chosen = Candidate(SCIKIT_LEARN, None, True)
        reason = "scikit-learn's public API: no faster way matched it on the check rows"
    else:
        reason = describe(chosen, candidates, len(rows))
    plan = Plan(
        source_sha256=sha256,
        runtime=chosen.runtime if not chosen.needs_scikit_learn else SCIKIT_LEARN,
        reason=reason,
        classes=list(classes),
        score_kind=classifier.score_kind,
        timings_us={c.runtime: round(c.microseconds, 1) for c in candidates if c.passed},
        batchable=chosen.answer is not None
        and answers_alike_in_batches(chosen.answer, rows[::ALONE_EVERY]),
    )
    if chosen.artefact is not None:
        name = f"{sha256}{chosen.suffix}"
        _write_whole(folder / name, chosen.artefact)
        plan = Plan(
            **{
                **asdict(plan),
                "artefact": name,
                "artefact_sha256": hashlib.sha256(chosen.artefact).hexdigest(),
            }
        )
    _write_whole(folder / f"{sha256}.json", json.dumps(asdict(plan), indent=1).encode())
    return plan


def _write_whole(target: Path, data: bytes) -> None:
    """Write a file whole or not at all, for other workers and restarts reading the cache."""
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(target)


if __name__ == "__main__":
    # The child of `_run_child`: model file, its sha256 and the cache folder on the command line,
    # the trusted skops types as JSON on stdin.
    made = make_plan(
        Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), json.loads(sys.stdin.read() or "[]")
    )
    print(made.reason)
