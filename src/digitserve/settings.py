"""Service settings: one class, read from `DIGITSERVE_*` environment variables and CLI flags."""

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from digitserve.auth import check_keys, read_key_file

MIB = 1024 * 1024

ENV_PREFIX = "DIGITSERVE_"


class Settings(BaseSettings):
    """Everything an operator can set; validated once at start-up, then passed explicitly."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    model_path: Path | None = None
    """One model to host as `model_name`, overriding the repository: a model file (pickle,
    joblib, skops or ONNX; version 1), or a folder holding one (KServe's `/mnt/models`) or its
    version folders. Only operator-supplied files are ever unpickled."""

    model_repository: Path | None = None
    """A model repository folder (`<name>/<version>/model.<ext>`); default: the bundled one."""

    model_control_mode: Literal["none", "explicit", "poll"] = "none"
    """`none`: serve what is found at start-up; `explicit`: the repository load/unload routes
    change it; `poll`: the folder is watched and changes are served on their own."""

    compile_onnx: bool = True
    """Choose each scikit-learn file's runtime in a child process (ONNX Runtime, numpy or
    scikit-learn, each checked against scikit-learn; `runtimes.compiled`), cached in
    `DIGITSERVE_ONNX_CACHE` (default a folder in the temp dir); off: scikit-learn in the worker."""

    model_poll_seconds: float = Field(5.0, gt=0, le=3600)
    """How often the `poll` control mode looks at the repository folder."""

    model_name: str = Field("digits", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The default model: the name of the `model_path` model, and the one the page and the CLI
    use when none is named (`/v1/models/{model_name}`)."""

    host: str = "127.0.0.1"
    """Interface to bind; `0.0.0.0` inside a container."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""

    grpc_port: int | None = Field(None, ge=0, le=65535)
    """TCP port for the Open Inference Protocol over gRPC, on the same interface; unset: no gRPC
    (0 picks a free one, in one process only)."""

    workers: int = Field(1, ge=1, le=64)
    """Worker processes; each loads the model once before serving."""

    max_body_bytes: int = Field(10 * MIB, ge=1024)
    """Largest request body accepted; larger ones get 413 before the body is read."""

    max_buffered_body_bytes: int = Field(128 * MIB, ge=1024)
    """Most body bytes one worker holds at once for requests whose bodies arrive in several reads
    (anything over a few hundred KiB); past it, 503 `overloaded` with Retry-After. At least
    `max_body_bytes`. Bounds the memory of uploads in progress, which hold no in-flight place."""

    max_image_pixels: int = Field(40_000_000, ge=64)
    """Largest image (width x height) accepted, checked from the header before decoding."""

    max_images_per_request: int = Field(64, ge=1)
    """Most images (or feature vectors) one request may carry."""

    access_log: bool = True
    """Log one line per request."""

    log_level: str = Field("info", pattern=r"^(critical|error|warning|info|debug)$")
    """Log level of the server."""

    log_format: Literal["auto", "json", "text"] = "auto"
    """`json` (an object per line), `text`, or `auto`: text when stderr is a terminal, else JSON."""

    batch_max_rows: int = Field(64, ge=1, le=4096)
    """Most feature rows in one model call made for concurrent requests; 1 turns batching off
    (and the reading of small images together, `batching.ImageReadings`)."""

    batch_min_requests: int = Field(2, ge=1, le=100_000)
    """Fewest requests in the worker (admitted, unanswered) for them to be gathered into model
    calls, and their small images into one reading; with fewer, each is read and predicted alone
    at once."""

    batch_wait_ms: float = Field(0.0, ge=0, le=1000)
    """How long the first request of a batch waits for others; 0: only those already in hand."""

    max_concurrent_requests: int = Field(64, ge=1)
    """Requests one worker handles at once; beyond it, 503 `overloaded` with Retry-After. A request
    counts once its body has arrived (uploads still arriving: see `max_buffered_body_bytes`)."""

    request_timeout_seconds: float = Field(30.0, gt=0)
    """Time limit for one request, body upload included; beyond it, 408 `request_timeout`."""

    shutdown_delay_seconds: float = Field(0.0, ge=0)
    """After SIGTERM, keep serving this long with /readyz at 503, so load balancers stop routing
    here before the listener closes (set it to a few seconds on Kubernetes)."""

    shutdown_timeout_seconds: float = Field(30.0, gt=0)
    """Grace period for in-flight requests once the listener has closed; then they are cancelled."""

    @model_validator(mode="after")
    def _one_body_fits_the_buffer(self) -> Self:
        """Refuse a buffer budget that not even one body of the largest size could use."""
        if self.max_buffered_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_buffered_body_bytes ({self.max_buffered_body_bytes}) is below "
                f"max_body_bytes ({self.max_body_bytes})"
            )
        return self

    @field_validator("model_path")
    @classmethod
    def _model_file_exists(cls, path: Path | None) -> Path | None:
        """Fail at start-up, before the port opens, when the model file is not there."""
        if path is not None and not path.exists():
            raise ValueError(f"model file not found: {path}")
        return path

    api_keys: Annotated[list[SecretStr], NoDecode] = []
    """API keys that unlock the service (comma-separated or a JSON list); none: auth is off."""

    api_keys_file: Path | None = None
    """A file of API keys, one a line (# comments allowed), read at start-up; adds to `api_keys`."""

    auth_probes: bool = False
    """With keys set, whether /healthz, /readyz and /metrics need a key too."""

    cors_origins: Annotated[list[str], NoDecode] = []
    """Browser origins allowed to call the API cross-site (comma-separated); none: CORS off."""

    model_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    """The model file's expected SHA-256; any other file is refused before it is deserialised."""

    model_trusted_types: Annotated[list[str], NoDecode] = []
    """For a `.skops` model: types to trust beyond skops' own safe list (comma-separated)."""

    @field_validator("api_keys", "cors_origins", "model_trusted_types", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Read lists from the environment as JSON or as comma-separated text."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_are_long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """Refuse keys short enough to guess."""
        check_keys(key.get_secret_value() for key in keys)
        return keys

    @field_validator("api_keys_file")
    @classmethod
    def _key_file_is_usable(cls, path: Path | None) -> Path | None:
        """Fail at start-up when the key file is missing, unreadable, empty or has short keys."""
        if path is None:
            return None
        try:
            keys = read_key_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the API key file {path}: {exc}") from exc
        if not keys:
            raise ValueError(f"the API key file {path} holds no keys")
        check_keys(keys)
        return path

    @field_validator("model_repository")
    @classmethod
    def _repository_is_a_folder(cls, path: Path | None) -> Path | None:
        """Fail at start-up, before the port opens, when the repository folder is not there."""
        if path is not None and not path.is_dir():
            raise ValueError(f"the model repository {path} is not a folder")
        return path

    @field_validator("model_sha256")
    @classmethod
    def _lower_case(cls, digest: str | None) -> str | None:
        """Compare digests in one case."""
        return None if digest is None else digest.lower()

    def all_api_keys(self) -> list[str]:
        """Every accepted key: from settings, then from the key file."""
        keys = [key.get_secret_value() for key in self.api_keys]
        return keys + (read_key_file(self.api_keys_file) if self.api_keys_file else [])

    preprocess_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    """Most requests decoding large images at once (default: the CPU count); more would only
    multiply memory, each holding its decoded image, without adding throughput."""

    max_header_bytes: int = Field(64 * 1024, ge=4096)
    """Largest request line plus headers, however they arrive; larger ones are refused with 400
    `invalid_input` and the connection closed (httptools alone would buffer heads of any size)."""


def env_name(field: str) -> str:
    """The environment variable that sets a field (`max_body_bytes`: DIGITSERVE_MAX_BODY_BYTES)."""
    if field not in Settings.model_fields:
        raise KeyError(f"no setting {field!r}")
    return ENV_PREFIX + field.upper()
