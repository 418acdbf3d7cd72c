"""Service settings: one class, read from `DIGITSERVE_*` environment variables and CLI flags."""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Everything an operator can set; validated once at start-up, then passed explicitly."""

    model_config = SettingsConfigDict(env_prefix="DIGITSERVE_", frozen=True, extra="forbid")

    model_path: Path = Path("model/classifier.pickle")
    """The classifier pickle to host. Only this operator-supplied file is ever unpickled."""

    model_name: str = Field("digits", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The name clients use in URLs (`/v1/models/{model_name}`)."""

    host: str = "127.0.0.1"
    """Interface to bind; `0.0.0.0` inside a container."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""

    workers: int = Field(1, ge=1, le=64)
    """Worker processes; each loads the model once before serving."""

    max_body_bytes: int = Field(10 * MIB, ge=1024)
    """Largest request body accepted; larger ones get 413 before the body is read."""

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

    max_concurrent_requests: int = Field(64, ge=1)
    """Requests one worker handles at once; beyond it, 503 `overloaded` with Retry-After."""

    request_timeout_seconds: float = Field(30.0, gt=0)
    """Time limit for one request, body upload included; beyond it, 408 `request_timeout`."""

    shutdown_delay_seconds: float = Field(0.0, ge=0)
    """After SIGTERM, keep serving this long with /readyz at 503, so load balancers stop routing
    here before the listener closes (set it to a few seconds on Kubernetes)."""

    shutdown_timeout_seconds: float = Field(30.0, gt=0)
    """Grace period for in-flight requests once the listener has closed; then they are cancelled."""

    @field_validator("model_path")
    @classmethod
    def _model_file_exists(cls, path: Path) -> Path:
        """Fail at start-up, before the port opens, when the model file is not there."""
        if not path.is_file():
            raise ValueError(f"model file not found: {path}")
        return path
