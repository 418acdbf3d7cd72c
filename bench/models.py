"""The benchmark's model matrix: one classifier of each common kind, rebuilt the same way every time.

Each is fitted on the project's training half of `load_digits` (`training.split_digits`: stratified,
50/50, random_state=0), so the benchmark's bodies, drawn from the held-out half, are unseen by every
model, as they are by the bundled one. `random_state=0` wherever an estimator takes one: the same
scikit-learn release writes the same bytes. Each pickle (protocol 5) goes into a model-repository
folder, `<dir>/<name>/1/model.pickle`, which `digitserve serve --model-repository <dir>` serves as
it is. A rebuild of all of them takes a few seconds, so nothing is cached.

    python -m bench.models DIR [--models logreg forest ...]
"""

import argparse
import pickle
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "digitserve" / "models" / "digits" / "1" / "model.pickle"
"""The bundled `digits` model, SVC(C=5, gamma=0.001, probability=True): copied, not refitted."""

SEED = 0


def _svc_classic() -> Any:
    from sklearn.svm import SVC

    return SVC(gamma=0.001)  # scikit-learn's own digits example: no probabilities


def _svc_calibrated() -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    return CalibratedClassifierCV(SVC(gamma=0.001), ensemble=False)


def _logreg() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, random_state=SEED)


def _knn() -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(3)


def _mlp() -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=SEED),
    )


FITTED: dict[str, Callable[[], Any]] = {
    "svc-classic": _svc_classic,
    "svc-calibrated": _svc_calibrated,
    "logreg": _logreg,
    "forest": _forest,
    "knn": _knn,
    "mlp": _mlp,
}
"""The models fitted here, by name: each factory returns the estimator unfitted."""

NAMES = (*FITTED, "bundled")
"""Every model of the matrix, in the order the benchmark takes them."""


def model_path(folder: Path, name: str) -> Path:
    """Where the repository layout puts a model's one version."""
    return folder / name / "1" / "model.pickle"


def build_models(folder: Path, names: Iterable[str] = NAMES) -> dict[str, Path]:
    """Fit (or copy) each named model into `folder`'s repository layout; return the pickles."""
    from digitserve.training import split_digits

    wanted = list(names)
    unknown = sorted(set(wanted) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {', '.join(NAMES)}")
    split = split_digits()
    paths = {}
    for name in wanted:
        target = model_path(folder, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == "bundled":
            shutil.copyfile(BUNDLED, target)
        else:
            estimator = FITTED[name]()
            estimator.fit(split.x_train, split.y_train)
            target.write_bytes(pickle.dumps(estimator, protocol=5))
        paths[name] = target
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="the model repository folder to write")
    parser.add_argument("--models", nargs="+", choices=NAMES, default=list(NAMES))
    args = parser.parse_args(argv)
    for name, path in build_models(args.folder, args.models).items():
        print(f"{name:15} {path}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
