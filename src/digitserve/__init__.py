"""digitserve: a small, fast model server for a scikit-learn hand-written digit classifier."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("digitserve")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
