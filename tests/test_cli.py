"""The command line: predict without a server, and clean refusals to serve a bad model."""

import argparse
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from digitserve.cli import Progress, _parser, main
from digitserve.settings import Settings, env_name
from tests.conftest import DATA_DIR, MODEL_PATH, ROOT


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m digitserve` as a separate process, with `stdin` as its input."""
    result = subprocess.run(
        [sys.executable, "-m", "digitserve", *args],
        capture_output=True,
        input=stdin if stdin is not None else b"",
        timeout=120,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
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
    assert captured.err == ""  # no progress bar off a terminal
    assert len((tmp_path / "manifest.csv").read_text().splitlines()) == 3
    status = main(["make-evalset", str(tmp_path), "--group", "watercolour"])
    assert status == 2
    assert "unknown group(s): watercolour" in capsys.readouterr().err


def test_predict_reads_standard_input() -> None:
    result = run_cli(
        "predict", "--model", str(MODEL_PATH), "-", stdin=(DATA_DIR / "7_64px.jpg").read_bytes()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:2] == ["-", "7"]
    empty = run_cli("predict", "--json", "--model", str(MODEL_PATH), "-")
    assert empty.returncode == 1
    assert json.loads(empty.stdout) == {
        "file": "-",
        "error": "standard input is empty",
        "code": "invalid_image",
    }


def test_predict_opens_folders_and_walks_them_with_recursive(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "deeper").mkdir()
    (tmp_path / "empty").mkdir()
    shutil.copy(DATA_DIR / "2_64px.jpg", tmp_path / "2.JPG")
    shutil.copy(DATA_DIR / "5_64px.jpg", tmp_path / "deeper" / "5.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")

    def labels(*args: str) -> list[tuple[str, object]]:
        main(["predict", "--json", "--model", str(MODEL_PATH), *args])
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return [(line["file"], line.get("label", line.get("error"))) for line in lines]

    assert labels(str(tmp_path)) == [(str(tmp_path / "2.JPG"), 2)]
    assert labels("--recursive", str(tmp_path)) == [
        (str(tmp_path / "2.JPG"), 2),
        (str(tmp_path / "deeper" / "5.jpeg"), 5),
    ]
    assert labels(str(tmp_path / "empty")) == [
        (
            str(tmp_path / "empty"),
            "a folder with no .jpg, .jpeg or .png file in it (--recursive reads sub-folders)",
        )
    ]


def test_predict_refuses_urls_without_mangling_them(capsys: pytest.CaptureFixture[str]) -> None:
    url = "https://example.com/digit.jpg"
    status = main(["predict", "--json", "--model", str(MODEL_PATH), url])
    assert status == 1
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["file"] == url
    assert line["code"] == "not_a_file"
    assert line["error"].startswith("predict reads local files only; download it first")


def test_predict_speaks_of_files_not_bodies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"junk")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert main(["predict", "--model", str(MODEL_PATH), str(junk), str(empty)]) == 1
    err = capsys.readouterr().err
    assert "body" not in err
    assert f"{junk!s:40} error: not a JPEG or PNG image (unrecognised or corrupt data)" in err
    assert f"{empty!s:40} error: the file is empty" in err


def test_predict_prints_the_grid_the_model_saw(capsys: pytest.CaptureFixture[str]) -> None:
    image = str(DATA_DIR / "1_8px.jpg")
    assert main(["predict", "--grid", "--json", "--model", str(MODEL_PATH), image]) == 0
    pixels = json.loads(capsys.readouterr().out)["pixels"]
    assert [len(row) for row in pixels] == [8] * 8
    assert main(["predict", "--grid", "--model", str(MODEL_PATH), image]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 8
    for row, line in zip(pixels, lines[2:], strict=True):
        numbers, shades = line.split("|")[0], line.split("|")[1]
        assert [int(n) for n in numbers.split()] == row
        assert len(shades) == 16
        assert [shades[2 * i] == " " for i in range(8)] == [value == 0 for value in row]
        assert all(shades[2 * i] == "@" for i in range(8) if row[i] == 16)


def test_train_refuses_to_overwrite_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digitserve import training

    model = tmp_path / "model.pickle"
    examples = tmp_path / "data"
    examples.mkdir()
    (examples / "labels.csv").write_text("file,label\n")
    model.write_bytes(b"the model already there")
    calls: list[tuple[Path, Path | None]] = []

    def fake_train(model_path: Path, examples_dir: Path | None) -> dict[str, object]:
        calls.append((model_path, examples_dir))
        training = {"train_accuracy": 1.0, "test_accuracy": 1.0}
        return {"sha256": "0" * 64, "training": training}

    monkeypatch.setattr(training, "train", fake_train)
    args = ["train", "--model", str(model), "--examples", str(examples)]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"digitserve: {model} and {examples}/ already there; pass --force to overwrite them, "
        "or --model / --examples to write elsewhere\n"
    )
    assert main([*args[:3], "--no-examples"]) == 2
    assert capsys.readouterr().err.startswith(f"digitserve: {model} already there; pass --force")
    assert calls == []
    assert main([*args, "--force"]) == 0
    assert calls == [(model, examples)]
    assert model.read_bytes() == b"the model already there"  # only the stand-in ran
    model.unlink()
    assert main([*args[:3], "--examples", str(tmp_path / "fresh")]) == 0


def test_every_option_has_help_with_its_default_and_variable() -> None:
    parser = _parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name in ("serve", "predict", "train", "make-evalset", "evaluate"):
        command = commands.choices[name]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, where
            if action.nargs != 0 and action.option_strings:
                assert "(default" in action.help, where
            if action.dest in Settings.model_fields:
                assert f"[{env_name(action.dest)}" in action.help, where
    help_text = " ".join(commands.choices["predict"].format_help().split())
    assert "(default: digits) [DIGITSERVE_MODEL_NAME]" in help_text
    assert "[DIGITSERVE_MODEL_PATH]" in help_text


def test_progress_draws_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        with Progress("evaluating") as progress:
            for done in range(1, 301):
                progress(done, 300)
        text = stream.getvalue()
        assert bool(text) is drawn
        if drawn:
            final = text.split("\r")[-1]
            assert final.startswith("evaluating: 100%")
            assert "300/300" in final
            assert "image/s" in final


def test_interrupts_and_closed_pipes_end_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from digitserve import cli

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_predict", interrupted)
    assert main(["predict", "x.jpg"]) == 130
    assert capsys.readouterr().err == "digitserve: interrupted\n"
    # `digitserve predict data/ | head -1`, with a reader gone before anything is written.
    process = subprocess.Popen(
        [sys.executable, "-m", "digitserve", "predict", "--model", str(MODEL_PATH), str(DATA_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr == b""


def test_compile_chooses_and_caches_each_runtime_ahead_of_serving(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.linear_model import LogisticRegression

    from digitserve.training import split_digits

    split = split_digits()
    model = tmp_path / "logistic.pickle"
    fitted = LogisticRegression(max_iter=3000).fit(split.x_train, split.y_train)
    model.write_bytes(pickle.dumps(fitted))
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIGITSERVE_ONNX_CACHE", str(cache))
    assert main(["compile", "--model", str(model), "--model-name", "logistic"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("logistic 1: onnxruntime (onnxruntime: labels equal scikit-learn's")
    assert len(list(cache.glob("*.json"))) == 1  # the plan serve will read
    assert main(["compile"]) == 0  # the bundled repository: both models
    assert [out.split(":")[0] for out in capsys.readouterr().out.splitlines()] == [
        "digits 1",
        "digits-robust 1",
    ]


def test_listing_a_folder_of_images_does_not_import_scikit_learn(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    code = (
        "import sys; from digitserve.cli import _sources; "
        f"print(len(_sources([{str(tmp_path)!r}], recursive=False)), "
        "any(m.startswith(('sklearn', 'scipy')) for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.split() == ["1", "False"]
