"""The model repository: a folder of models and versions, what is loaded, and in what state.

The layout is the one Triton and MLServer users know::

    DIR/<model name>/<version>/model.<ext>      version: a positive integer; ext: see MODEL_SUFFIXES
    DIR/<model name>/model-settings.json         optional (see `ModelConfig`)

The repository knows folders, files, versions and states; loading one file is the loader's job
(`digitserve.runtimes`), and HTTP is the front ends'. Versions are swapped in only once they
loaded and passed their warm-up, and a request that already holds a version finishes on it:
readers take one reference to an immutable table, which a load replaces whole.
"""

import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from digitserve.errors import (
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    VersionNotFound,
)

ModelFormat = Literal["skops", "pickle", "joblib", "onnx"]

MODEL_SUFFIXES: dict[str, ModelFormat] = {
    ".skops": "skops",
    ".pickle": "pickle",
    ".pkl": "pickle",
    ".joblib": "joblib",
    ".onnx": "onnx",
}
"""How a model file is loaded, by its suffix in lower case: `evil.SKOPS` is a skops file too, so
it is never unpickled. skops refuses types it was not told to trust; pickle and joblib run
whatever the file says; ONNX is a graph. Any other suffix is refused rather than guessed at."""

SETTINGS_FILE = "model-settings.json"
"""The optional per-model settings file, in the model's folder beside its version folders."""

MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""Names that are safe in a URL path segment and a metric label."""

_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")


class State(StrEnum):
    """A version's state, as the repository extension of the Open Inference Protocol names it."""

    READY = "READY"
    LOADING = "LOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions of a model are served: TF Serving's and Triton's `latest`/`all`/`specific`."""

    kind: str = "all"
    count: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions to serve, of those in the folder."""
        ordered = sorted(set(available))
        if self.kind == "latest":
            return ordered[-self.count :]
        if self.kind == "specific":
            return [version for version in ordered if version in self.versions]
        return ordered


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A model's settings (`model-settings.json`), every field optional.

    ```json
    {"description": "...", "labels": {"0": "zero"}, "default_version": 2,
     "version_policy": {"latest": 1} | {"all": {}} | {"specific": [1, 3]},
     "sha256": {"1": "<64 hex>"}, "trusted_types": ["module.Type"]}
    ```
    """

    description: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    version_policy: VersionPolicy = VersionPolicy()
    default_version: int | None = None
    """Answers unversioned requests; by default the highest version served."""
    sha256: dict[str, str] = field(default_factory=dict)
    """Pins per version: a file whose hash differs is refused before it is read."""
    trusted_types: tuple[str, ...] = ()
    """Types a `.skops` file may hold beyond skops' safe ones."""


@dataclass(frozen=True, slots=True)
class VersionFile:
    """One version folder and the model file found in it (or why none could be used)."""

    version: int
    path: Path | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One line of the repository index."""

    name: str
    version: str
    state: State
    reason: str = ""


Loaded = TypeVar("Loaded")


@dataclass(frozen=True, slots=True)
class _Model(Generic[Loaded]):
    """What is served of one model: its ready versions and the states of all of them."""

    ready: dict[int, Loaded]
    status: dict[int, VersionStatus]
    default: int | None
    config: ModelConfig
    stamps: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    """Each version's file as last tried (path, size, mtime): a changed one is loaded again."""


Loader = Callable[[str, int, Path, ModelConfig], Loaded]
"""Load (and warm up) one version's file; raises `ModelLoadError` with the reason."""


class ModelRepository(Generic[Loaded]):
    """The models of one repository folder (or of explicitly given files), by name and version.

    Reads are lock-free (one dict lookup on a table that is replaced, never changed, by a load);
    loads and unloads take a lock, so two of them never interleave.
    """

    def __init__(
        self,
        root: Path | None,
        loader: Loader[Loaded],
        *,
        files: dict[str, Path] | None = None,
    ) -> None:
        self.root = root
        self.files = dict(files or {})
        self.loader = loader
        self._models: dict[str, _Model[Loaded]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The models the repository holds (loaded or not), sorted."""
        found = set(self.files)
        if self.root is not None and self.root.is_dir():
            found |= {
                entry.name
                for entry in self.root.iterdir()
                if entry.is_dir() and MODEL_NAME.match(entry.name)
            }
        return sorted(found | set(self._models))

    def load_all(self) -> list[VersionStatus]:
        """Load every model found; a model that fails is UNAVAILABLE while the others serve."""
        for name in self.names():
            try:
                self.load(name)
            except ModelNotFound:
                continue
        return self.index()

    def load(self, name: str) -> list[VersionStatus]:
        """(Re)read one model's folder: new versions load, removed ones go, the rest stay.

        The new table replaces the old only after every new version loaded (or failed): requests
        keep being answered by the versions already served meanwhile.
        """
        with self._lock:
            files = self._version_files(name)
            config = self._config(name)
            old = self._models.get(name)
            wanted = config.version_policy.select(entry.version for entry in files)
            ready: dict[int, Loaded] = {}
            status: dict[int, VersionStatus] = {}
            stamps: dict[int, tuple[str, int, int]] = {}
            by_version = {entry.version: entry for entry in files}
            for version in wanted:
                entry = by_version[version]
                previous = None if old is None else old.ready.get(version)
                if entry.path is None:
                    status[version] = VersionStatus(
                        name, str(version), State.UNAVAILABLE, entry.problem or ""
                    )
                    continue
                stamp = _stamp(entry.path)
                if previous is not None and old is not None and old.stamps.get(version) == stamp:
                    ready[version] = previous
                    status[version] = old.status[version]
                    stamps[version] = stamp
                    continue
                stamps[version] = stamp  # a failed file too: `poll` retries it once it changes
                try:
                    ready[version] = self.loader(name, version, entry.path, config)
                except ModelLoadError as exc:
                    status[version] = VersionStatus(name, str(version), State.UNAVAILABLE, str(exc))
                    continue
                status[version] = VersionStatus(name, str(version), State.READY)
            for entry in files:
                if entry.version not in status:
                    status[entry.version] = VersionStatus(
                        name,
                        str(entry.version),
                        State.UNAVAILABLE,
                        entry.problem or "not served by the model's version policy",
                    )
            default = _default_version(config, ready)
            self._models = {**self._models, name: _Model(ready, status, default, config, stamps)}
            return self.index(name)

    def unload(self, name: str) -> list[VersionStatus]:
        """Stop serving a model; requests already holding it finish on it."""
        with self._lock:
            if name not in self._models:
                raise ModelNotFound(f"model {name!r} is not loaded")
            old = self._models[name]
            status = {
                version: replace(line, state=State.UNAVAILABLE, reason="unloaded")
                for version, line in old.status.items()
            }
            self._models = {**self._models, name: _Model({}, status, None, old.config)}
            return self.index(name)

    def index(self, name: str | None = None) -> list[VersionStatus]:
        """Every model and version known, with its state (one model's with `name`)."""
        models = self._models
        names = [name] if name is not None else self.names()
        lines: list[VersionStatus] = []
        for model_name in names:
            model = models.get(model_name)
            if model is None:
                lines.append(VersionStatus(model_name, "", State.UNAVAILABLE, "not loaded"))
                continue
            lines += [model.status[version] for version in sorted(model.status)]
            if not model.status:
                lines.append(VersionStatus(model_name, "", State.UNAVAILABLE, "no versions"))
        return lines

    def get(self, name: str, version: str | None = None) -> tuple[int, Loaded]:
        """The version that answers a request: the default one, or the one named."""
        model = self._models.get(name)
        if model is None:
            known = ", ".join(repr(known) for known in sorted(self._models)) or "none"
            raise ModelNotFound(f"no model named {name!r}; this server hosts {known}")
        if version is None:
            if model.default is None:
                raise ModelNotReady(f"model {name!r} has no version ready to serve; retry shortly")
            return model.default, model.ready[model.default]
        number = int(version) if _VERSION.match(version) else None
        if number is None or number not in model.status:
            versions = ", ".join(str(known) for known in sorted(model.status)) or "none"
            raise VersionNotFound(
                f"model {name!r} has no version {version[:32]!r}; its versions: {versions}"
            )
        served = model.ready.get(number)
        if served is None:
            reason = model.status[number].reason
            raise ModelNotReady(f"model {name!r} version {number} is not ready: {reason}")
        return number, served

    def ready_versions(self, name: str) -> dict[int, Loaded]:
        """One model's ready versions (empty when it is unknown or unloaded)."""
        model = self._models.get(name)
        return dict(model.ready) if model is not None else {}

    def default_version(self, name: str) -> int | None:
        """The version answering unversioned requests, if one is ready."""
        model = self._models.get(name)
        return None if model is None else model.default

    def all_ready(self) -> bool:
        """Whether every model the repository should serve has a version ready.

        A model unloaded on purpose does not count against readiness; one that failed to load does.
        """
        return bool(self._models) and all(
            model.default is not None or _unloaded(model) for model in self._models.values()
        )

    def changed(self) -> list[str]:
        """The models whose folder differs from what is loaded (for the `poll` control mode)."""
        names = []
        for name in self.names():
            model = self._models.get(name)
            try:
                files = self._version_files(name)
            except ModelNotFound:
                if model is not None and model.ready:
                    names.append(name)
                continue
            if model is None:
                names.append(name)
                continue
            if _unloaded(model):
                continue
            found = {entry.version: _stamp(entry.path) for entry in files if entry.path}
            wanted = model.config.version_policy.select(found)
            if {version: found[version] for version in wanted} != model.stamps or set(
                model.status
            ) != {entry.version for entry in files}:
                names.append(name)
        return names

    def forget(self, name: str) -> None:
        """Drop a model whose folder is gone."""
        with self._lock:
            self._models = {key: value for key, value in self._models.items() if key != name}

    def any_ready(self) -> bool:
        """Whether at least one model version can answer."""
        return any(model.ready for model in self._models.values())

    def _version_files(self, name: str) -> list[VersionFile]:
        """The version folders of one model and their model files."""
        if name in self.files:
            return _single_model(self.files[name])
        if self.root is None or not MODEL_NAME.match(name):
            raise ModelNotFound(f"no model named {name[:64]!r} in the repository")
        folder = self.root / name
        if not folder.is_dir():
            raise ModelNotFound(f"no model named {name!r} in the repository {self.root}")
        found = []
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and _VERSION.match(entry.name):
                found.append(_version_file(int(entry.name), entry))
        return sorted(found, key=lambda item: item.version)

    def _config(self, name: str) -> ModelConfig:
        """Read a model's settings file, if it has one."""
        if self.root is None or name in self.files:
            return ModelConfig()
        path = self.root / name / SETTINGS_FILE
        if not path.is_file():
            return ModelConfig()
        try:
            return parse_config(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc


def _single_model(path: Path) -> list[VersionFile]:
    """One model given by path: a model file (version 1), or a folder of one model.

    A folder holds either its versions (`1/model.pickle`, `2/model.onnx`, ...) or one model file
    (version 1), which is what KServe's storage initializer leaves in `/mnt/models`.
    """
    if not path.is_dir():
        return [VersionFile(1, path)]
    versions = [
        _version_file(int(entry.name), entry)
        for entry in sorted(path.iterdir())
        if entry.is_dir() and _VERSION.match(entry.name)
    ]
    return sorted(versions, key=lambda item: item.version) or [_version_file(1, path)]


def _unloaded(model: "_Model[Any]") -> bool:
    """Whether a model was unloaded on purpose (and so should not be served)."""
    return bool(model.status) and all(line.reason == "unloaded" for line in model.status.values())


def _stamp(path: Path) -> tuple[str, int, int]:
    """What tells a replaced model file from the one loaded: its path, size and mtime."""
    try:
        stat = path.stat()
    except OSError:  # gone since it was listed, or a model handed in rather than read from disk
        return str(path), -1, -1
    return str(path), stat.st_size, stat.st_mtime_ns


def _version_file(version: int, folder: Path) -> VersionFile:
    """The one model file of a version folder, or the reason there is none to use."""
    candidates = [
        entry
        for entry in sorted(folder.iterdir())
        if entry.is_file() and entry.stem == "model" and entry.suffix.lower() in MODEL_SUFFIXES
    ]
    if not candidates:
        suffixes = ", ".join(f"model{suffix}" for suffix in MODEL_SUFFIXES)
        return VersionFile(version, None, f"no model file in {folder} (one of {suffixes})")
    if len(candidates) > 1:
        names = ", ".join(entry.name for entry in candidates)
        return VersionFile(version, None, f"several model files in {folder}: {names}")
    return VersionFile(version, candidates[0])


def model_format(path: Path) -> ModelFormat:
    """The format of a model file from its suffix, case-insensitively (see MODEL_SUFFIXES)."""
    try:
        return MODEL_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ModelLoadError(
            f"{path}: unknown model file suffix {path.suffix!r}; use one of "
            + ", ".join(MODEL_SUFFIXES)
        ) from None


def _default_version(config: ModelConfig, ready: dict[int, Any]) -> int | None:
    """The configured default version if it is ready, else the highest ready one."""
    if config.default_version is not None and config.default_version in ready:
        return config.default_version
    return max(ready) if ready else None


def parse_config(document: Any) -> ModelConfig:
    """Check and read a `model-settings.json` document (see `ModelConfig`)."""
    if not isinstance(document, dict):
        raise ValueError("must be a JSON object")
    unknown = set(document) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    description = document.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError("description must be a string")
    labels = document.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in labels.items()
    ):
        raise ValueError('labels must map class strings to names, e.g. {"0": "zero"}')
    default = document.get("default_version")
    if default is not None and (type(default) is not int or default < 1):
        raise ValueError("default_version must be a positive integer")
    pins = document.get("sha256", {})
    if not isinstance(pins, dict) or not all(
        isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value)
        for value in pins.values()
    ):
        raise ValueError('sha256 must map versions to 64 hex digits, e.g. {"1": "ab12..."}')
    trusted = document.get("trusted_types", [])
    if not isinstance(trusted, list) or not all(isinstance(item, str) for item in trusted):
        raise ValueError("trusted_types must be a list of type names")
    return ModelConfig(
        description=description,
        labels=dict(labels),
        version_policy=_version_policy(document.get("version_policy")),
        default_version=default,
        sha256={str(key): value.lower() for key, value in pins.items()},
        trusted_types=tuple(trusted),
    )


def _version_policy(value: Any) -> VersionPolicy:
    """Read `{"latest": n}`, `{"all": {}}` or `{"specific": [...]}`."""
    if value is None:
        return VersionPolicy()
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError('version_policy must be {"latest": n}, {"all": {}} or {"specific": [...]}')
    ((kind, argument),) = value.items()
    if kind == "all":
        return VersionPolicy("all")
    if kind == "latest":
        if isinstance(argument, dict):  # Triton's {"latest": {"num_versions": n}}
            argument = argument.get("num_versions")
        if type(argument) is not int or argument < 1:
            raise ValueError("version_policy latest needs a positive number of versions")
        return VersionPolicy("latest", count=argument)
    if kind == "specific":
        if isinstance(argument, dict):  # Triton's {"specific": {"versions": [...]}}
            argument = argument.get("versions")
        if not isinstance(argument, list) or not all(
            type(item) is int and item >= 1 for item in argument
        ):
            raise ValueError("version_policy specific needs a list of positive versions")
        return VersionPolicy("specific", versions=tuple(argument))
    raise ValueError(f"unknown version_policy {kind!r}; use latest, all or specific")
