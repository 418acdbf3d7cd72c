"""k-nearest neighbours from arrays: a `KNeighborsClassifier`'s answers from numpy alone.

scikit-learn spends ~330 µs on a one-row `predict` + `predict_proba`, mostly checking input and
dispatching; the search itself is one small matrix product. With training rows and features that
are integers 0..16, |x - t|^2 = |x|^2 + |t|^2 - 2 x.t is an exact integer in float64 however it
is summed, so one product gives the very squared distances scikit-learn works with. What is left
is keeping the same k neighbours when distances tie, and adding weights in the same order:

- a model fitted on C-ordered float64 rows is searched by `ArgKmin`: a max-heap of k, filled in
  training order, that takes a row only if it is strictly nearer than the farthest kept, then
  sorted by scikit-learn's introsort. Which of several rows at the k-th distance it keeps follows
  from the heap's shape, not from their indices; where that choice, or the order of equally near
  neighbours of different classes (which `weighted_mode`'s rounding can feel), could change an
  answer, the row is replayed push by push (`_heap_scan`, `_simultaneous_sort`); every other row
  is read off `argpartition`. These are scikit-learn's answers whenever it splits the work by
  rows: for a batch with more rows than the model has training rows, or more than 1,024 per
  OpenMP thread. For smaller batches it splits the training rows between threads and merges
  their heaps: on one thread it keeps the same neighbours (same probabilities, and the same
  labels unless two classes' weighted sums agree to rounding); on several, which tied rows it
  keeps depends on the thread count and the batch size, so its own answers disagree.
- any other model (fitted on integers, say) sends scikit-learn to a distance matrix,
  `np.argpartition` and `np.argsort`: the same numpy calls on the same numbers here.

Only rows of integers 0..16 are answered (`answer` raises ValueError otherwise), as the data
plane sends them: other values would make distances depend on BLAS's rounding. `from_estimator`
runs where scikit-learn is installed; a serving worker needs only `from_arrays` and numpy.
"""

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import numpy as np
from numpy.typing import NDArray

from digitserve.preprocessing import LEVELS, N_FEATURES

Answers = tuple[NDArray[Any], NDArray[np.float64]]
Rows = NDArray[np.float64]
Weights = Literal["uniform", "distance"]
Search = Literal["argkmin", "argpartition"]
"""How scikit-learn finds the neighbours: its `ArgKmin` heap, or a matrix and `argpartition`."""

BLOCK_DISTANCES = 1 << 16
"""Distances computed at once: 512 KiB of float64 stays in cache (twice as fast on 1,411 rows as
2 MiB); rows per block shrink as training sets grow."""

_ARRAYS = frozenset({"training", "targets", "classes", "n_neighbors", "weights", "search"})

_DBL_MAX = sys.float_info.max
"""What `ArgKmin` fills an empty heap with."""

_INSERTION_SORT_MAX = 15
"""scikit-learn's introsort sorts this many values or fewer by insertion."""


@dataclass(frozen=True, slots=True, eq=False)
class NeighborsModel:
    """A fitted k-nearest-neighbours classifier as plain arrays, answering as scikit-learn does."""

    KIND: ClassVar[str] = "neighbors"

    training: Rows
    """The (n, 64) training rows, integers 0..16 held as float64."""
    targets: NDArray[np.intp]
    """Each training row's class, as a position in `classes` (scikit-learn's `_y`)."""
    classes: tuple[int | str, ...]
    n_neighbors: int
    weights: Weights
    search: Search
    _minus_twice_t: Rows = field(init=False, repr=False)
    """-2 * the training rows, transposed: one product gives -2 x.t for every pair."""
    _squared_norms: Rows = field(init=False, repr=False)
    _labels: NDArray[Any] = field(init=False, repr=False)
    """`classes` as an array, for taking labels by position."""

    def __post_init__(self) -> None:
        """Check everything `answer` relies on: the arrays may come from a cache directory."""
        training, targets, classes = self.training, self.targets, self.classes
        if training.dtype != np.float64 or training.ndim != 2 or training.shape[1] != N_FEATURES:
            raise ValueError(
                f"training rows must be float64 (n, {N_FEATURES}), not "
                f"{training.dtype} {training.shape}"
            )
        if not len(training) or not _digit_levels(training):
            raise ValueError(f"training rows must be integers 0..{LEVELS}, and at least one")
        if targets.dtype != np.intp or targets.shape != (len(training),):
            raise ValueError(f"targets must be {len(training)} intp class positions")
        if not classes or len(set(classes)) != len(classes):
            raise ValueError("classes must be distinct, and at least one")
        if not (
            all(type(label) is int for label in classes)
            or all(type(label) is str for label in classes)
        ):
            raise ValueError("classes must be all int or all str")
        if targets.min() < 0 or targets.max() >= len(classes):
            raise ValueError(f"targets must be positions in the {len(classes)} classes")
        if type(self.n_neighbors) is not int or not 1 <= self.n_neighbors <= len(training):
            raise ValueError(f"n_neighbors must be an int from 1 to {len(training)}")
        if self.weights not in ("uniform", "distance"):
            raise ValueError(f"weights must be 'uniform' or 'distance', not {self.weights!r}")
        if self.search not in ("argkmin", "argpartition"):
            raise ValueError(f"search must be 'argkmin' or 'argpartition', not {self.search!r}")
        labels = np.asarray(classes)
        if labels.dtype.kind not in "iuU":
            raise ValueError(f"classes must be ints (within int64) or strings, not {labels.dtype}")
        object.__setattr__(self, "_minus_twice_t", np.ascontiguousarray(-2.0 * training.T))
        object.__setattr__(self, "_squared_norms", np.einsum("ij,ij->i", training, training))
        object.__setattr__(self, "_labels", labels)

    @property
    def score_kind(self) -> Literal["probabilities"]:
        """The scores are `predict_proba`'s probabilities."""
        return "probabilities"

    @classmethod
    def from_estimator(cls, estimator: Any) -> "NeighborsModel | None":
        """The arrays of a `KNeighborsClassifier` this runtime answers exactly, else None.

        That is a plain (not subclassed, not in a pipeline) classifier with the euclidean metric,
        uniform or distance weights, brute-force search, one output, and dense training rows of
        integers 0..16. Trees (kd_tree, ball_tree) break distance ties their own way.
        """
        try:
            from sklearn.neighbors import KNeighborsClassifier
        except ImportError:
            return None
        if type(estimator) is not KNeighborsClassifier:
            return None
        fit_x = getattr(estimator, "_fit_X", None)
        targets = getattr(estimator, "_y", None)
        classes = getattr(estimator, "classes_", None)
        n_neighbors = getattr(estimator, "n_neighbors", None)
        weights = getattr(estimator, "weights", None)
        params = getattr(estimator, "effective_metric_params_", None)
        if (
            getattr(estimator, "effective_metric_", None) != "euclidean"
            or not isinstance(params, dict)
            or params
            or getattr(estimator, "_fit_method", None) != "brute"
            or getattr(estimator, "outputs_2d_", None) is not False
            or not isinstance(weights, str)
            or weights not in ("uniform", "distance")
            or not isinstance(fit_x, np.ndarray)
            or not isinstance(targets, np.ndarray)
            or not isinstance(classes, np.ndarray)
            or isinstance(n_neighbors, bool)
            or not isinstance(n_neighbors, int | np.integer)
        ):
            return None
        if fit_x.ndim != 2 or fit_x.shape[1] != N_FEATURES or not _digit_levels(fit_x):
            return None
        if targets.dtype.kind not in "iu" or targets.shape != (len(fit_x),):
            return None
        labels = _class_labels(classes)
        if labels is None:
            return None
        # scikit-learn's `ArgKmin` takes C-ordered float64 rows (what digitserve sends) only when
        # the training rows are the same; any other dtype or order sends it to `argpartition`.
        exact = fit_x.dtype == np.float64 and fit_x.flags.c_contiguous
        try:
            return cls(
                training=np.array(fit_x, dtype=np.float64, order="C"),
                targets=np.asarray(targets, dtype=np.intp),
                classes=labels,
                n_neighbors=int(n_neighbors),
                weights="uniform" if weights == "uniform" else "distance",
                search="argkmin" if exact else "argpartition",
            )
        except ValueError:
            return None  # k larger than the training set, a target outside the classes, ...

    def arrays(self) -> dict[str, NDArray[Any]]:
        """Everything `from_arrays` needs, for `np.savez`: no object arrays, no pickles."""
        return {
            "training": self.training.astype(np.uint8),
            "targets": self.targets.astype(np.int64),
            "classes": self._labels.copy(),
            "n_neighbors": np.array(self.n_neighbors, dtype=np.int64),
            "weights": np.array(self.weights),
            "search": np.array(self.search),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, NDArray[Any]]) -> "NeighborsModel":
        """The model `arrays()` described (as `np.load` gives it back); ValueError if malformed."""
        names = set(arrays)
        if names != _ARRAYS:
            raise ValueError(
                f"neighbors arrays must be {sorted(_ARRAYS)}; missing {sorted(_ARRAYS - names)}, "
                f"unexpected {sorted(names - _ARRAYS)}"
            )
        training, targets, classes = arrays["training"], arrays["targets"], arrays["classes"]
        if training.dtype != np.uint8 or training.ndim != 2:
            raise ValueError(f"training must be 2-D uint8, not {training.dtype} {training.shape}")
        if targets.dtype.kind not in "iu" or targets.ndim != 1:
            raise ValueError(f"targets must be 1-D integers, not {targets.dtype} {targets.shape}")
        if classes.dtype.kind not in "iuU" or classes.ndim != 1:
            raise ValueError(f"classes must be 1-D ints or strings, not {classes.dtype}")
        return cls(
            training=training.astype(np.float64),
            targets=targets.astype(np.intp),
            classes=tuple(classes.tolist()),
            n_neighbors=int(_scalar(arrays, "n_neighbors", "iu")),
            weights=cast(Weights, _scalar(arrays, "weights", "U")),  # checked on construction
            search=cast(Search, _scalar(arrays, "search", "U")),
        )

    def answer(self, features: NDArray[Any]) -> Answers:
        """Labels as `predict` gives them and `predict_proba`'s probabilities, for (n, 64) rows.

        Raises ValueError unless every feature is an integer 0..16.
        """
        rows = _digit_rows(features)
        block = max(1, BLOCK_DISTANCES // len(self.training))
        if len(rows) <= block:
            return self._answer_block(rows)
        answers = [
            self._answer_block(rows[start : start + block]) for start in range(0, len(rows), block)
        ]
        return (
            np.concatenate([labels for labels, _ in answers]),
            np.concatenate([scores for _, scores in answers]),
        )

    def _answer_block(self, rows: Rows) -> Answers:
        squared = rows @ self._minus_twice_t
        squared += self._squared_norms
        squared += np.einsum("ij,ij->i", rows, rows)[:, np.newaxis]
        if self.search == "argpartition":
            neighbors, replayed = self._argpartition(squared), None
        else:
            neighbors, replayed = self._argkmin(squared)
        near, classes, votes = self._ranked(squared, neighbors)
        scores = np.zeros((len(rows), len(self.classes)))
        everyone = np.arange(len(rows))
        for rank in range(self.n_neighbors):  # as predict_proba adds them: rank by rank
            scores[everyone, classes[:, rank]] += votes[:, rank]
        if self.weights == "uniform":
            winners = scores.argmax(axis=1)  # the first class of the most votes
        else:
            sums = _weighted_sums(classes, votes, len(self.classes))
            winners = sums.argmax(axis=1)
            if replayed is not None:
                # Summed in another order, equal-looking sums may round the other way round:
                # where that could change the winner, rank equally near neighbours as ArgKmin.
                doubtful = _mixed_ties(near, classes) & _close_call(sums, self.n_neighbors)
                for row in np.flatnonzero(doubtful & ~replayed).tolist():
                    ranked = self._replay(squared[row])[np.newaxis]
                    _, row_classes, row_votes = self._ranked(squared[row : row + 1], ranked)
                    row_sums = _weighted_sums(row_classes, row_votes, len(self.classes))
                    winners[row] = row_sums.argmax(axis=1)[0]
        scores /= scores.sum(axis=1)[:, np.newaxis]
        return self._labels.take(winners), scores

    def _ranked(
        self, squared: Rows, neighbors: NDArray[np.intp]
    ) -> tuple[Rows, NDArray[np.intp], Rows]:
        """The neighbours' squared distances, classes and votes, nearest first."""
        near = squared[_each_row(squared), neighbors]
        classes = self.targets[neighbors]
        if self.weights == "uniform":
            votes: Rows = np.ones(neighbors.shape)
        else:
            votes = _distance_weights(np.sqrt(near))
        return near, classes, votes

    def _argpartition(self, squared: Rows) -> NDArray[np.intp]:
        """The neighbours, nearest first, as scikit-learn finds them with a distance matrix."""
        each = _each_row(squared)
        chosen = np.argpartition(squared, self.n_neighbors - 1, axis=1)[:, : self.n_neighbors]
        order = np.argsort(squared[each, chosen])  # both as `_kneighbors_reduce_func` calls them
        nearest: NDArray[np.intp] = chosen[each, order]
        return nearest

    def _argkmin(self, squared: Rows) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
        """The neighbours `ArgKmin` keeps, nearest first, and which rows were replayed for it.

        `argpartition` finds the same neighbours unless more rows than fit lie at the k-th
        distance and they are of different classes: those rows are replayed.
        """
        k = self.n_neighbors
        each = _each_row(squared)
        chosen = np.argpartition(squared, k - 1, axis=1)[:, :k]
        near = squared[each, chosen]
        nearest: NDArray[np.intp] = chosen[each, np.argsort(near, axis=1)]
        kth = near.max(axis=1, keepdims=True)
        replayed = np.count_nonzero(squared <= kth, axis=1) > k
        for row in np.flatnonzero(replayed).tolist():
            classes = self.targets[squared[row] == kth[row, 0]]
            if (classes == classes[0]).all():
                replayed[row] = False  # whichever of them are kept, the answers are the same
            else:
                nearest[row] = self._replay(squared[row])
        return nearest, replayed

    def _replay(self, squared: Rows) -> NDArray[np.intp]:
        """One row's neighbours as `ArgKmin` finds and orders them, push by push."""
        values, indices = _heap_scan(squared, self.n_neighbors)
        _simultaneous_sort(values, indices)
        return np.array(indices, dtype=np.intp)


def _each_row(matrix: NDArray[Any]) -> NDArray[np.intp]:
    """A column of row numbers, to pick one value per row with fancy indexing."""
    return np.arange(len(matrix))[:, np.newaxis]


def _class_labels(classes: NDArray[Any]) -> tuple[int | str, ...] | None:
    """scikit-learn's `classes_` as Python ints or strings, if they are one or the other."""
    if classes.ndim != 1 or not len(classes):
        return None
    if classes.dtype.kind in "iu":
        return tuple(int(label) for label in classes.tolist())
    values = classes.tolist()
    if classes.dtype.kind in "UO" and all(isinstance(label, str) for label in values):
        return tuple(str(label) for label in values)
    return None


def _scalar(arrays: Mapping[str, NDArray[Any]], name: str, kinds: str) -> int | str:
    """A 0-d array's value, if it is of one of the dtype `kinds`."""
    value = arrays[name]
    if value.shape != () or value.dtype.kind not in kinds:
        raise ValueError(f"{name} must be a 0-d array of kind {kinds!r}, not {value.dtype}")
    scalar: int | str = value.item()
    return scalar


def _digit_levels(values: NDArray[Any]) -> bool:
    """Whether every value is an integer 0..16, as the features are (NaN is not)."""
    if values.dtype.kind not in "iuf":
        return False
    if values.dtype.kind == "f" and not np.array_equal(values, np.rint(values)):
        return False
    return not values.size or bool(values.min() >= 0 and values.max() <= LEVELS)


def _digit_rows(features: NDArray[Any]) -> Rows:
    """C-ordered float64 rows of ink levels 0..16, or ValueError.

    Integer rows give exactly scikit-learn's distances. Rows with fractions (the Open Inference
    Protocol may send them) are answered the same way, but their squared distances may round
    otherwise than scikit-learn's BLAS rounds them, so a near tie may go the other way.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != N_FEATURES:
        raise ValueError(f"features must be (n, {N_FEATURES}), not {features.shape}")
    if features.size and (features.dtype.kind not in "iuf" or not _in_levels(features)):
        raise ValueError(f"features must be ink levels 0..{LEVELS}")
    return np.ascontiguousarray(features, dtype=np.float64)


def _in_levels(features: NDArray[Any]) -> bool:
    """Whether every value is a finite number from 0 to 16."""
    return bool(np.isfinite(features).all() and features.min() >= 0 and features.max() <= LEVELS)


def _distance_weights(distances: Rows) -> Rows:
    """scikit-learn's `_get_weights`: 1 / distance, or only the rows at distance 0 if any are."""
    with np.errstate(divide="ignore"):
        weights: Rows = 1.0 / distances
    infinite = np.isinf(weights)
    touching = infinite.any(axis=1)
    weights[touching] = infinite[touching]
    return weights


def _weighted_sums(classes: NDArray[np.intp], weights: Rows, n_classes: int) -> Rows:
    """`weighted_mode`'s sum of each class's weights, for `predict` with distance weights.

    scikit-learn sums each class's weights along the ranks with zeros at the other classes'
    ranks; summing the same arrays the same way rounds the same. Its class is the first of the
    largest sums.
    """
    wanted = classes[:, np.newaxis, :] == np.arange(n_classes)[np.newaxis, :, np.newaxis]
    template = np.where(wanted, weights[:, np.newaxis, :], 0.0)
    sums: Rows = np.sum(template, axis=2)
    return sums


def _mixed_ties(near: Rows, classes: NDArray[np.intp]) -> NDArray[np.bool_]:
    """Rows with equally near neighbours of different classes (ranked next to each other)."""
    tied = (near[:, 1:] == near[:, :-1]) & (classes[:, 1:] != classes[:, :-1])
    mixed: NDArray[np.bool_] = tied.any(axis=1)
    return mixed


def _close_call(sums: Rows, n_neighbors: int) -> NDArray[np.bool_]:
    """Rows whose two largest sums are so close that summing in another order could swap them.

    k positive terms summed in any order differ from their exact sum by less than k-1 units in
    the last place of the total; four times k leaves room to spare.
    """
    if sums.shape[1] < 2:
        return np.zeros(len(sums), dtype=bool)
    top_two = -np.partition(-sums, 1, axis=1)[:, :2]
    margin = 4 * n_neighbors * np.finfo(np.float64).eps * top_two[:, 0]
    close: NDArray[np.bool_] = top_two[:, 0] - top_two[:, 1] <= margin
    return close


def _heap_scan(squared: Rows, k: int) -> tuple[list[float], list[int]]:
    """The k-heap `ArgKmin` builds for one row on one thread: rows pushed in training order."""
    values, indices = [_DBL_MAX] * k, [-1] * k
    for index in range(k):  # each replaces a placeholder, the largest value there is
        _heap_push(values, indices, float(squared[index]), index)
    # The root only ever shrinks: rows not nearer than it now are never pushed.
    for index in (np.flatnonzero(squared[k:] < values[0]) + k).tolist():
        value = float(squared[index])
        if value < values[0]:
            _heap_push(values, indices, value, index)
    return values, indices


def _heap_push(values: list[float], indices: list[int], value: float, index: int) -> None:
    """scikit-learn's `heap_push` (utils/_heap.pxd), line by line, for a value below the root.

    (`heap_push` first returns if the value is not below the root; `_heap_scan` checks that.)
    """
    size = len(values)
    current = 0
    while True:
        left = 2 * current + 1
        right = left + 1
        if left >= size:
            break
        if right >= size:
            if values[left] > value:
                swap = left
            else:
                break
        elif values[left] >= values[right]:
            if value < values[left]:
                swap = left
            else:
                break
        elif value < values[right]:
            swap = right
        else:
            break
        values[current], indices[current] = values[swap], indices[swap]
        current = swap
    values[current], indices[current] = value, index


def _simultaneous_sort(values: list[float], indices: list[int]) -> None:
    """scikit-learn's `simultaneous_sort` (utils/_sorting.pyx) of k >= 1 values: not stable."""
    _introsort(values, indices, 0, len(values), 2 * int(math.log2(len(values))))


def _introsort(values: list[float], indices: list[int], start: int, n: int, depth: int) -> None:
    """`introsort_2way`: quicksort on a median of three, insertion sort for short runs."""
    while n > _INSERTION_SORT_MAX:
        if depth <= 0:
            _heapsort(values, indices, start, n)
            return
        depth -= 1
        pivot = _median3(values, indices, start, n)
        i, j = 1, n - 2
        while True:
            while i <= j and values[start + i] < pivot:
                i += 1
            while i <= j and values[start + j] > pivot:
                j -= 1
            if i >= j:
                break
            _swap(values, indices, start + i, start + j)
            i += 1
            j -= 1
        _swap(values, indices, start + i, start + n - 1)
        _introsort(values, indices, start, i, depth)
        start += i + 1
        n -= i + 1
    for i in range(start + 1, start + n):  # insertion_sort
        value, index = values[i], indices[i]
        j = i
        while j > start and values[j - 1] > value:
            values[j], indices[j] = values[j - 1], indices[j - 1]
            j -= 1
        values[j], indices[j] = value, index


def _median3(values: list[float], indices: list[int], start: int, n: int) -> float:
    """`inplace_median3`: order the first, middle and last values; the pivot goes last."""
    middle, last = start + n // 2, start + n - 1
    if values[start] > values[last]:
        _swap(values, indices, start, last)
    if values[last] > values[middle]:
        _swap(values, indices, last, middle)
        if values[start] > values[last]:
            _swap(values, indices, start, last)
    return values[last]


def _heapsort(values: list[float], indices: list[int], start: int, n: int) -> None:
    """The introsort's way out when quicksort goes too deep."""
    first = (n - 2) // 2
    while True:
        _sift_down(values, indices, start, first, n)
        if first == 0:
            break
        first -= 1
    for end in range(n - 1, 0, -1):
        _swap(values, indices, start, start + end)
        _sift_down(values, indices, start, 0, end)


def _sift_down(values: list[float], indices: list[int], start: int, root: int, end: int) -> None:
    """Move `root` down a max-heap of `end` values that begins at `start`."""
    while True:
        child = 2 * root + 1
        largest = root
        if child < end and values[start + largest] < values[start + child]:
            largest = child
        if child + 1 < end and values[start + largest] < values[start + child + 1]:
            largest = child + 1
        if largest == root:
            return
        _swap(values, indices, start + root, start + largest)
        root = largest


def _swap(values: list[float], indices: list[int], i: int, j: int) -> None:
    values[i], values[j] = values[j], values[i]
    indices[i], indices[j] = indices[j], indices[i]
