"""The command line: predict without a server, and clean refusals to serve a bad model."""

import json
import os
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


def test_serve_refuses_a_model_with_the_wrong_sha256_in_one_line() -> None:
    expected = "f" * 64
    result = subprocess.run(
        [sys.executable, "-m", "digitserve", "serve", "--model", str(MODEL_PATH), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DIGITSERVE_MODEL_SHA256": expected},
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"digitserve: cannot serve the model: {MODEL_PATH} has sha256 ")
    assert line.endswith(f"not the expected {expected}; refusing to load it")


def test_predict_json_carries_warnings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    inverted = tmp_path / "chalk.png"
    with Image.open(DATA_DIR / "3_256px.jpg") as image:
        ImageOps.invert(ImageOps.expand(image.convert("L"), 60, fill=255)).save(inverted)
    status = main(["predict", "--json", "--model", str(MODEL_PATH), str(inverted)])
    assert status == 0
    [result] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert result["label"] == 3
    assert [w["code"] for w in result["warnings"]] == ["inverted_input"]
    main(["predict", "--model", str(MODEL_PATH), str(inverted)])
    assert capsys.readouterr().out.splitlines()[1].endswith("  inverted_input")


def test_make_evalset_writes_a_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = main(["make-evalset", str(tmp_path), "--per-group", "2", "--group", "canvas"])
    assert status == 0
    captured = capsys.readouterr()
    assert captured.out == f"wrote {tmp_path / 'manifest.csv'}\n"
    assert captured.err.rstrip().endswith("2/2")
    assert len((tmp_path / "manifest.csv").read_text().splitlines()) == 3
    status = main(["make-evalset", str(tmp_path), "--group", "watercolour"])
    assert status == 2
    assert "unknown group(s): watercolour" in capsys.readouterr().err
