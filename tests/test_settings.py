"""Settings come from DIGITSERVE_* variables and are checked before anything starts."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from digitserve.settings import Settings, env_name
from tests.conftest import MODEL_PATH


def test_environment_variables_set_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITSERVE_MODEL_PATH", str(MODEL_PATH))
    monkeypatch.setenv("DIGITSERVE_MAX_IMAGES_PER_REQUEST", "5")
    monkeypatch.setenv("DIGITSERVE_ACCESS_LOG", "false")
    settings = Settings()
    assert settings.max_images_per_request == 5
    assert settings.access_log is False


def test_missing_model_file_fails_validation(tmp_path: object) -> None:
    with pytest.raises(ValidationError, match="model file not found"):
        Settings(model_path=f"{tmp_path}/absent.pickle")


@pytest.mark.parametrize(
    ("field", "value"),
    [("port", 70000), ("workers", 0), ("log_level", "loud"), ("model_name", "a/b")],
)
def test_bad_values_fail_validation(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({"model_path": MODEL_PATH, field: value})


KEY = "settings-key-0123456789"


@pytest.mark.parametrize("text", [f"{KEY}, {KEY}-2", f'["{KEY}", "{KEY}-2"]'])
def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("DIGITSERVE_MODEL_PATH", str(MODEL_PATH))
    monkeypatch.setenv("DIGITSERVE_API_KEYS", text)
    monkeypatch.setenv("DIGITSERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = Settings()
    assert settings.all_api_keys() == [KEY, f"{KEY}-2"]
    assert KEY not in repr(settings)
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_short_api_key_fails_validation() -> None:
    with pytest.raises(ValidationError, match="shorter than 16"):
        Settings(model_path=MODEL_PATH, api_keys=["guessable"])


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read the API key file"), ("# nothing\n\n", "holds no keys"), ("x\n", "16")],
)
def test_unusable_key_file_fails_validation(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValidationError, match=message):
        Settings(model_path=MODEL_PATH, api_keys_file=path)


def test_model_sha256_is_checked_for_shape_and_lower_cased() -> None:
    with pytest.raises(ValidationError):
        Settings(model_path=MODEL_PATH, model_sha256="abc")
    assert Settings(model_path=MODEL_PATH, model_sha256="AB" * 32).model_sha256 == "ab" * 32


def test_preprocess_threads_default_to_the_cpu_count() -> None:
    assert Settings(model_path=MODEL_PATH).preprocess_threads == (os.cpu_count() or 1)
    with pytest.raises(ValidationError):
        Settings(model_path=MODEL_PATH, preprocess_threads=0)


def test_header_limit_is_checked() -> None:
    settings = Settings(model_path=MODEL_PATH)
    assert settings.max_header_bytes == 64 * 1024
    with pytest.raises(ValidationError):
        Settings(model_path=MODEL_PATH, max_header_bytes=100)


def test_env_name_is_the_variable_that_sets_a_field(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_name("max_body_bytes") == "DIGITSERVE_MAX_BODY_BYTES"
    monkeypatch.setenv(env_name("max_body_bytes"), "4096")
    assert Settings().max_body_bytes == 4096
    with pytest.raises(KeyError):
        env_name("max_body_size")
