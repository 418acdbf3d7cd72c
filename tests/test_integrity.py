"""Model-file integrity: every command loads the model the one checked way, whatever its suffix."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC

from digitserve.classifier import file_sha256, load_classifier
from digitserve.cli import main
from digitserve.errors import ModelLoadError
from digitserve.training import Split
from tests.conftest import DATA_DIR, MODEL_PATH


class Payload:
    """What a tampered model file runs when it is unpickled: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


def tampered_model(path: Path, marker: Path) -> Path:
    """A model file whose unpickling creates `marker`."""
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m digitserve` as a separate process, with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "digitserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


COMMANDS = {
    "evaluate": ("evaluate", str(DATA_DIR)),
    "predict": ("predict", str(DATA_DIR / "4_64px.jpg")),
    "serve": ("serve", "--port", "1"),
}
"""Every command that loads a model, with what it needs besides the model."""


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_refuses_a_model_that_is_not_the_pinned_one_without_running_it(
    command: str, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    model = tampered_model(tmp_path / "classifier.pickle", marker)
    pin = file_sha256(MODEL_PATH)
    result = run_cli(
        *COMMANDS[command], "--model", str(model), env={"DIGITSERVE_MODEL_SHA256": pin}
    )
    assert not marker.exists()
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    verb = "serve" if command == "serve" else "load"
    assert line.startswith(f"digitserve: cannot {verb} the model: {model} has sha256 ")
    assert line.endswith(f"not the expected {pin}; refusing to load it")
    assert result.stdout == ""


def test_the_tampered_model_does_run_when_nothing_stops_it(tmp_path: Path) -> None:
    """The payload is real: without the pin, unpickling it creates the marker (and is refused)."""
    marker = tmp_path / "payload-ran"
    model = tampered_model(tmp_path / "classifier.pickle", marker)
    result = run_cli(*COMMANDS["evaluate"], "--model", str(model))
    assert marker.exists()
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"digitserve: cannot load the model: {model} holds a NoneType, "
        "not a scikit-learn classifier"
    )


def test_evaluate_refuses_untrusted_skops_types_unless_the_operator_trusts_them(
    tmp_path: Path,
    split: Split,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline = make_pipeline(FunctionTransformer(np.round), SVC(gamma=0.001))
    path = tmp_path / "rounded.skops"
    skops.io.dump(pipeline.fit(split.x_train, split.y_train), path)
    assert main(["evaluate", str(DATA_DIR), "--model", str(path)]) == 2
    assert "holds types that are not trusted: numpy.round;" in capsys.readouterr().err
    monkeypatch.setenv("DIGITSERVE_MODEL_TRUSTED_TYPES", "numpy.round")
    assert main(["evaluate", str(DATA_DIR), "--model", str(path)]) == 0
    assert capsys.readouterr().out.startswith("accuracy ")


@pytest.mark.parametrize("name", ["evil.SKOPS", "evil.Skops", "evil.sKoPs"])
def test_a_pickle_named_skops_in_any_case_is_read_as_skops_and_never_unpickled(
    name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    model = tampered_model(tmp_path / name, marker)
    with pytest.raises(ModelLoadError, match="is not a readable skops file"):
        load_classifier(model)
    assert not marker.exists()


def test_serve_refuses_a_pickle_named_skops_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    model = tampered_model(tmp_path / "evil.SKOPS", marker)
    result = run_cli("serve", "--model", str(model), "--port", "1")
    assert not marker.exists()
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"digitserve: cannot serve the model: {model} is not a readable skops")


@pytest.mark.parametrize("name", ["model.bin", "model", "model.skops.", "model.skops ", ".skops"])
def test_a_model_file_of_unknown_suffix_is_refused_before_it_is_read(
    name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    model = tampered_model(tmp_path / name, marker)
    with pytest.raises(ModelLoadError) as refusal:
        load_classifier(model)
    assert "; a model file must end in .skops, .pickle, .pkl, .joblib (in any case)" in str(
        refusal.value
    )
    assert not marker.exists()
