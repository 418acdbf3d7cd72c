"""libsvm's prediction for an RBF `SVC` without probabilities, in numpy, to the bit.

An SVC's label is a vote over every pair of classes, each pair's decision value a sum over its
support vectors. libsvm adds those terms one after another in C; numpy adds them in the same order
when it reduces the first axis of a C-contiguous array (a running sum per element, unlike the
pairwise sum it takes along the innermost axis), so each sum is the very number libsvm computes,
for a row alone or in a batch, and the votes, the labels and (through
`classifier.ovr_scores`) the one-vs-rest scores are scikit-learn's own. The kernel comes, as in
`classifier.KernelTable`, from a table of `math.exp` for integer rows 0..16 (exact), and for any
other rows from libsvm's formula (equal to ~1e-15: the order of float additions differs).

Saved as plain arrays by the compiling child, this serves a classic `SVC(gamma=0.001)` without
scikit-learn in the worker. SVCs with probabilities are left to ONNX Runtime and the kernel table:
libsvm's probability coupling is an iteration per row that numpy cannot run fast.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from digitserve.classifier import (
    Answers,
    RbfTable,
    Rows,
    _decision_matrix,
    _digit_levels,
    ovr_scores,
    pair_votes,
)
from digitserve.preprocessing import N_FEATURES

BLOCK_PRODUCTS = 1 << 16
"""Products (rows x pairs x terms) computed at once: 512 KB, so that they stay in the processor's
cache. Past it the multiplication slowed tenfold (16 rows of the classic SVC took 79 µs, 21 rows
755 µs, each row a 5,805 products); in blocks, 64 rows cost ~13 µs a row instead of ~40."""


@dataclass(frozen=True, slots=True)
class SvmModel:
    """An RBF SVC's support vectors and coefficients, laid out in libsvm's summation order."""

    KIND: ClassVar[str] = "svm"

    vectors: Rows
    """The support vectors, grouped by class as libsvm keeps them."""
    gamma: float
    terms: NDArray[np.intp]
    """(pairs, terms): for each pair of classes, its support vectors in the order libsvm sums."""
    coefficients: Rows
    """(pairs, terms): each term's dual coefficient (0 where a pair has fewer terms)."""
    rho: Rows
    classes: tuple[int | str, ...]
    shape: str
    """scikit-learn's `decision_function_shape`: "ovr" or "ovo"."""
    table: RbfTable | None
    """The kernel's table when every support vector is integers 0..16, else None."""
    terms_by_position: NDArray[np.intp]
    """`terms` transposed, (terms, pairs): the layout `decision_values` sums over."""
    coefficients_by_position: Rows

    @classmethod
    def from_estimator(cls, estimator: Any) -> "SvmModel | None":
        """The model for a dense RBF SVC without probabilities, or None (in the child)."""
        from sklearn.svm import SVC

        if type(estimator) is not SVC or estimator.kernel != "rbf" or estimator.break_ties:
            return None
        if getattr(estimator, "_sparse", True) or np.size(getattr(estimator, "_probA", ())) > 0:
            return None  # sparse support vectors, or probabilities (`probability` is deprecated)
        classes = np.asarray(estimator.classes_)
        if classes.dtype.kind not in "iuU":
            return None
        vectors = np.ascontiguousarray(estimator.support_vectors_, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != N_FEATURES:
            return None
        terms, coefficients = _layout(
            np.asarray(estimator._n_support, dtype=np.intp),
            np.asarray(estimator._dual_coef_, dtype=np.float64),
        )
        return cls.build(
            vectors=vectors,
            gamma=float(estimator._gamma),
            terms=terms,
            coefficients=coefficients,
            rho=-np.asarray(estimator._intercept_, dtype=np.float64),
            classes=tuple(classes.tolist()),
            shape=str(estimator.decision_function_shape),
        )

    @classmethod
    def build(
        cls,
        *,
        vectors: Rows,
        gamma: float,
        terms: NDArray[np.intp],
        coefficients: Rows,
        rho: Rows,
        classes: tuple[int | str, ...],
        shape: str,
    ) -> "SvmModel":
        """Check the parts fit together and make the kernel table (from `math.exp`, as libsvm)."""
        pairs = len(classes) * (len(classes) - 1) // 2
        if len(classes) < 2 or shape not in ("ovr", "ovo") or not math.isfinite(gamma):
            raise ValueError("an SVC needs two classes or more, a shape and a finite gamma")
        if vectors.ndim != 2 or vectors.shape[1] != N_FEATURES or not np.isfinite(vectors).all():
            raise ValueError(f"support vectors must be finite (n, {N_FEATURES})")
        if terms.shape != coefficients.shape or terms.ndim != 2 or len(terms) != pairs:
            raise ValueError("terms and coefficients must be (pairs, terms) alike")
        if terms.size and (terms.min() < 0 or terms.max() >= len(vectors)):
            raise ValueError("a term names a support vector that does not exist")
        if rho.shape != (pairs,):
            raise ValueError("rho must hold one value per pair of classes")
        return cls(
            vectors=vectors,
            gamma=gamma,
            terms=terms,
            coefficients=coefficients,
            rho=rho,
            classes=classes,
            shape=shape,
            table=RbfTable.of(vectors, gamma) if _digit_levels(vectors) else None,
            terms_by_position=np.ascontiguousarray(terms.T),
            coefficients_by_position=np.ascontiguousarray(coefficients.T),
        )

    def arrays(self) -> dict[str, NDArray[Any]]:
        """What the cache keeps: numbers and unicode only, read back without pickle."""
        return {
            "vectors": self.vectors,
            "gamma": np.array(self.gamma),
            "terms": self.terms,
            "coefficients": self.coefficients,
            "rho": self.rho,
            "classes": np.asarray(self.classes),
            "shape": np.array(self.shape),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, NDArray[Any]]) -> "SvmModel":
        """The model back from `arrays()`; ValueError for anything that does not fit."""
        try:
            classes = arrays["classes"]
            if classes.ndim != 1 or classes.dtype.kind not in "iuU":
                raise ValueError("classes must be integers or strings")
            return cls.build(
                vectors=np.ascontiguousarray(arrays["vectors"], dtype=np.float64),
                gamma=float(arrays["gamma"]),
                terms=np.asarray(arrays["terms"], dtype=np.intp),
                coefficients=np.asarray(arrays["coefficients"], dtype=np.float64),
                rho=np.asarray(arrays["rho"], dtype=np.float64),
                classes=tuple(classes.tolist()),
                shape=str(arrays["shape"]),
            )
        except KeyError as exc:
            raise ValueError(f"missing array {exc}") from exc

    def answer(self, features: NDArray[Any]) -> Answers:
        """Labels and decision scores (one per class) for (n, 64) rows."""
        rows = np.ascontiguousarray(features, dtype=np.float64).reshape(-1, N_FEATURES)
        block = max(1, BLOCK_PRODUCTS // self.terms.size)
        values = np.concatenate(
            [
                self.decision_values(rows[start : start + block])
                for start in range(0, len(rows), block)
            ]
            or [np.empty((0, len(self.rho)))]
        )
        return self._labels(values), self._scores(values)

    def kernel(self, rows: Rows) -> Rows:
        """The RBF kernel of each row with each support vector, as libsvm computes it."""
        if self.table is not None and _digit_levels(rows):
            return self.table.kernel(rows)
        # Other numbers: libsvm's formula (squared differences added feature after feature, then
        # exp), a few rows at a time to bound the (rows, features, vectors) differences.
        blocks = []
        for start in range(0, len(rows), 4):
            differences = rows[start : start + 4, :, np.newaxis] - self.vectors.T[np.newaxis]
            blocks.append((differences * differences).sum(axis=1))
        squared = np.concatenate(blocks)
        kernel: Rows = np.vectorize(math.exp, otypes=[np.float64])(-self.gamma * squared)
        return kernel

    def decision_values(self, rows: Rows) -> Rows:
        """The one-vs-one decision values: each pair's terms summed in libsvm's order."""
        width, pairs = self.terms_by_position.shape
        kernel = np.ascontiguousarray(self.kernel(rows).T)  # (vectors, rows)
        products = kernel[self.terms_by_position] * self.coefficients_by_position[..., np.newaxis]
        flat = products.reshape(width, -1)  # (terms, pairs x rows), C-contiguous
        if flat.shape[1] == 1:  # numpy would sum a lone column pairwise: give it a second one
            flat = np.hstack([flat, np.zeros_like(flat)])
        # Reducing the first axis of a C-contiguous array, numpy adds row after row into the
        # result (the pairwise sum is only taken along the innermost axis): libsvm's order.
        sums = np.add.reduce(flat, axis=0)[: pairs * len(rows)]
        values: Rows = sums.reshape(pairs, len(rows)).T - self.rho
        return values

    def _labels(self, values: Rows) -> NDArray[Any]:
        """The labels by libsvm's vote: a pair's first class wins above 0; the first most votes."""
        # libsvm's vote: a pair's first class wins above 0, the second otherwise (NaN included).
        votes = pair_votes(~(values > 0), len(self.classes))
        labels: NDArray[Any] = np.asarray(self.classes).take(votes.argmax(axis=1))
        return labels

    def _scores(self, values: Rows) -> Rows:
        """`SVC.decision_function`'s one-vs-rest scores (one column each way for two classes)."""
        n_classes = len(self.classes)
        if n_classes == 2:
            return _decision_matrix(-values.ravel())
        # "ovo" SVCs too: the service reports one score per class (`classifier._public_predictors`).
        return _decision_matrix(ovr_scores(values, n_classes))


def _layout(n_support: NDArray[np.intp], dual: Rows) -> tuple[NDArray[np.intp], Rows]:
    """Each pair's support vectors and coefficients in libsvm's order, padded with zeros.

    For classes i < j, libsvm adds class i's vectors with `dual[j - 1]`, then class j's with
    `dual[i]`. A zero coefficient times a kernel value adds exactly 0 at the end of the sum.
    """
    starts = np.concatenate([[0], np.cumsum(n_support)])
    n_classes = len(n_support)
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    width = max(int(n_support[i] + n_support[j]) for i, j in pairs)
    terms = np.zeros((len(pairs), width), dtype=np.intp)
    coefficients = np.zeros((len(pairs), width), dtype=np.float64)
    for p, (i, j) in enumerate(pairs):
        first = np.arange(starts[i], starts[i + 1])
        second = np.arange(starts[j], starts[j + 1])
        columns = np.concatenate([first, second])
        terms[p, : len(columns)] = columns
        coefficients[p, : len(first)] = dual[j - 1, first]
        coefficients[p, len(first) : len(columns)] = dual[i, second]
    return terms, coefficients
