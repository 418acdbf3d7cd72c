"""Settings come from DIGITSERVE_* variables and are checked before anything starts."""

import pytest
from pydantic import ValidationError

from digitserve.app import settings_to_environment
from digitserve.settings import Settings
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


def test_settings_survive_the_trip_to_worker_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(model_path=MODEL_PATH, port=9001, access_log=False, max_body_bytes=4096)
    for name, value in settings_to_environment(original).items():
        monkeypatch.setenv(name, value)
    assert Settings() == original
