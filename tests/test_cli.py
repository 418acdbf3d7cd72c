"""The command line: predict without a server, and clean refusals to serve a bad model."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from digitserve.cli import main
from tests.conftest import DATA_DIR, MODEL_PATH


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m digitserve` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "digitserve", *args], capture_output=True, text=True, timeout=120
    )


def test_predict_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["predict", "--model", str(MODEL_PATH), str(DATA_DIR / "4_64px.jpg")])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "label", "confidence", "warnings"]
    assert lines[1].split()[1] == "4"


def test_predict_json_lines_and_bad_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"junk")
    files = [DATA_DIR / "0_8px.jpg", DATA_DIR / "9_256px.jpg", junk, tmp_path / "missing.jpg"]
    status = main(["predict", "--json", "--model", str(MODEL_PATH), *map(str, files)])
    assert status == 1
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("label") for r in results] == [0, 9, None, None]
    assert results[2]["code"] == "invalid_image"
    assert results[3]["code"] == "unreadable_file"
    assert results[0]["probabilities"]["0"] == results[0]["confidence"]


def test_serve_refuses_a_missing_model_before_opening_the_port(tmp_path: Path) -> None:
    result = run_cli("serve", "--model", str(tmp_path / "absent.pickle"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"digitserve: invalid settings: model_path: Value error, model file not found: "
        f"{tmp_path / 'absent.pickle'}"
    )


def test_serve_refuses_a_non_classifier_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "dict.pickle"
    path.write_bytes(pickle.dumps({"not": "a model"}))
    result = run_cli("serve", "--model", str(path), "--port", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"digitserve: cannot serve the model: {path} holds a dict, not a scikit-learn classifier"
    )
    assert "Traceback" not in result.stderr


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("digitserve ")
