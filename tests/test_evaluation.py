"""`digitserve evaluate` and the evaluation module: reading labelled folders, scoring, reporting."""

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitserve.cli import main
from digitserve.dataplane import DataPlane
from digitserve.evalset import FRAMED_GROUPS, GROUPS
from digitserve.evaluation import (
    Outcome,
    Sample,
    draw_confusion,
    evaluate,
    format_summary,
    local_reader,
    matrix_table,
    read_samples,
    summarise,
    write_report,
)
from tests.conftest import DATA_DIR, EVALSET_PER_GROUP, MODEL_PATH, encode

FLOOR_FRAMED = 1.0
"""Held-out digits already framed like the training data: the model reads these 4 right."""

FLOOR_OVERALL = 0.75
"""Every group together, through digitserve's pipeline (it measures about 0.95)."""


def parse_groups(output: str) -> dict[str, tuple[int, float]]:
    """The per-group table of `digitserve evaluate`: group -> (images, accuracy)."""
    table = {}
    for line in output.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)\s+(\d\.\d{4})\s+(\d+)\s+(\d+\.\d\d)", line)
        if match:
            table[match[1]] = (int(match[2]), float(match[3]))
    return table


def run_evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in process and return its status, stdout and stderr."""
    status = main(["evaluate", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_evaluate_prints_accuracy_groups_confusion_slowest_and_worst(
    small_evalset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.md"
    status, out, err = run_evaluate(
        capsys, str(small_evalset), "--model", str(MODEL_PATH), "--report", str(report)
    )
    assert status == 0
    lines = out.splitlines()
    first = re.fullmatch(
        r"accuracy (\d\.\d{4}) \((\d+)/(\d+)\) on .*digitserve pipeline.*", lines[0]
    )
    assert first, lines[0]
    assert int(first[3]) == EVALSET_PER_GROUP * len(GROUPS)
    assert float(first[1]) >= FLOOR_OVERALL
    groups = parse_groups(out)
    assert list(groups) == list(GROUPS)
    assert all(images == EVALSET_PER_GROUP for images, _ in groups.values())
    for name in FRAMED_GROUPS:
        assert groups[name][1] >= FLOOR_FRAMED, name
    header = lines.index("confusion matrix (rows: true digit; columns: predicted, x = refused)")
    assert lines[header + 1].split() == [*map(str, range(10)), "x"]
    matrix = np.array([list(map(int, line.split())) for line in lines[header + 2 : header + 12]])
    assert matrix[:, 0].tolist() == list(range(10))
    assert matrix[:, 1:].sum() == int(first[3])
    assert np.trace(matrix[:, 1:11]) == int(first[2])
    slowest = lines.index("slowest images")
    assert re.fullmatch(r"\s+\d+\.\d\d ms  \w+/\d{4}_\d\.(png|jpg)", lines[slowest + 1])
    assert "worst images (refused, then lowest score for the true digit)" in lines
    assert err == ""  # no progress bar off a terminal
    assert f"wrote {report}" in out
    text = report.read_text()
    assert "| group | images | accuracy | refused | mean ms |" in text
    assert "| true \\ predicted | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | x |" in text
    table = [line for line in text.splitlines() if line.startswith("| **")]
    assert [cells.split(" | ")[0] for cells in table] == [f"| **{d}**" for d in range(10)]
    assert "![confusion matrix: true digit down, predicted digit across]" in text
    with Image.open(tmp_path / "report-confusion.png") as picture:
        assert picture.format == "PNG"
        assert picture.size == (18 + 36 * 12 + 1, 18 + 36 * 11 + 1)


def test_the_plain_pipeline_is_measurably_worse(
    small_evalset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ours, _ = run_evaluate(capsys, str(small_evalset), "--model", str(MODEL_PATH))
    _, plain, _ = run_evaluate(capsys, str(small_evalset), "--model", str(MODEL_PATH), "--plain")
    assert "plain pipeline" in plain.splitlines()[0]
    ours_groups, plain_groups = parse_groups(ours), parse_groups(plain)
    for name in FRAMED_GROUPS:
        assert plain_groups[name] == ours_groups[name]
    accuracy = [float(text.split()[1]) for text in (ours, plain)]
    assert accuracy[1] < accuracy[0] - 0.3


def test_evaluate_reads_data_labels_csv(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_evaluate(capsys, str(DATA_DIR), "--model", str(MODEL_PATH))
    assert status == 0
    assert out.startswith("accuracy 1.0000 (30/30)")
    assert "  (none: every image was read right)" in out


def test_evaluate_refuses_a_folder_without_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "photo.png").write_bytes(encode(Image.new("L", (9, 9)), "PNG"))
    status, out, err = run_evaluate(capsys, str(tmp_path), "--model", str(MODEL_PATH))
    assert status == 2
    assert out == ""
    reason = "holds no labelled images (no manifest, no 7_*.png, no 7/*.png)"
    assert err == f"digitserve: {tmp_path} {reason}\n"
    status, _, err = run_evaluate(capsys, str(tmp_path / "absent"))
    assert status == 2
    assert "is neither a folder nor a manifest file" in err


def test_plain_is_refused_with_a_url(
    small_evalset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_evaluate(capsys, str(small_evalset), "--url", "http://x", "--plain")
    assert status == 2
    assert "--plain is for local runs" in err


def test_labels_from_file_names_and_folders(tmp_path: Path) -> None:
    for name in ("3_a.png", "7/b.jpg", "7/c.png", "notes.txt", "x_d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    samples = read_samples(tmp_path)
    assert [(s.name, s.label, s.group) for s in samples] == [
        ("3_a.png", 3, tmp_path.name),
        ("7/b.jpg", 7, "7"),
        ("7/c.png", 7, "7"),
    ]


def test_a_manifest_needs_file_and_label_columns(tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,digit\na.png,3\n")
    with pytest.raises(ValueError, match="needs columns file and label"):
        read_samples(manifest)
    manifest.write_text("file,label\na.png,3\n")
    [sample] = read_samples(manifest)
    assert sample == Sample(tmp_path / "a.png", "a.png", 3, tmp_path.name)


def test_refused_images_are_counted_not_crashed(tmp_path: Path, dataplane: DataPlane) -> None:
    shutil.copy(DATA_DIR / "4_64px.jpg", tmp_path / "4_good.jpg")
    (tmp_path / "5_blank.png").write_bytes(encode(Image.new("L", (64, 64), 255), "PNG"))
    outcomes = evaluate(
        read_samples(tmp_path), local_reader(dataplane, dataplane.default_model(), "digitserve")
    )
    summary = summarise(outcomes, worst_count=5)
    assert summary.accuracy == 0.5
    assert summary.confusion[5, 10] == 1
    assert summary.confusion[4, 4] == 1
    [worst] = summary.worst()
    assert worst.error is not None
    assert worst.error.startswith("blank_image: ")
    assert [g.refused for g in summary.groups] == [1]
    assert "  refused   5_blank.png (true 5): blank_image: " in format_summary(summary)


def test_report_without_mistakes(tmp_path: Path) -> None:
    sample = Sample(tmp_path / "1.png", "1.png", 1, "g")
    summary = summarise([Outcome(sample, 1, 0.9, 0.9, 0.001)], "here")
    picture = write_report(summary, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "Accuracy **1.0000**" in text
    assert "| (none) | | | | |" in text
    assert picture.is_file()


def test_confusion_picture_shades_rows_by_share() -> None:
    confusion = np.zeros((10, 11), dtype=np.int64)
    confusion[3, 3] = 9
    confusion[3, 8] = 1
    picture = draw_confusion(confusion, cell=20)
    assert picture.size == (10 + 20 * 12 + 1, 10 + 20 * 11 + 1)
    pixels = np.asarray(picture)
    row = 30 + 3 * 20 + 2
    diagonal, wrong, empty = (pixels[row, 30 + column * 20 + 2] for column in (3, 8, 5))
    assert diagonal[2] == 255
    assert diagonal[0] < 60
    assert wrong[0] == 255
    assert 200 < wrong[1] < 240
    assert empty.tolist() == [255, 255, 255]


def test_confusion_picture_titles_its_axes() -> None:
    picture = np.asarray(draw_confusion(np.zeros((10, 11), dtype=np.int64)).convert("L"))
    top, left = picture[:18, 54:], picture[54:, :18]  # the title bands, past the corner
    assert top.min() < 128  # "predicted", written across the top
    assert left.min() < 128  # "true", written down the left
    ink_rows = np.flatnonzero(left.min(axis=1) < 128)
    ink_columns = np.flatnonzero(top.min(axis=0) < 128)
    assert np.ptp(ink_rows) > np.ptp(np.flatnonzero(left.min(axis=0) < 128))  # turned upright
    assert np.ptp(ink_columns) > np.ptp(ink_rows)  # "predicted" is the longer word


def test_the_matrix_table_puts_true_down_and_predicted_across() -> None:
    confusion = np.zeros((10, 11), dtype=np.int64)
    confusion[3, 8] = 2
    confusion[7, 10] = 1
    lines = matrix_table(confusion).splitlines()
    assert len(lines) == 12
    assert lines[1] == "| ---: |" + " ---: |" * 11
    assert lines[2 + 3] == "| **3** | 0 | 0 | 0 | **0** | 0 | 0 | 0 | 0 | 2 | 0 | 0 |"
    assert lines[2 + 7].endswith("| **0** | 0 | 0 | 1 |")


def test_the_report_folder_is_made_and_a_folder_gets_report_md(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "not" / "there" / "eval.md"
    status, out, err = run_evaluate(
        capsys, str(DATA_DIR), "--model", str(MODEL_PATH), "--report", str(deep)
    )
    assert (status, err) == (0, "")
    assert out.endswith(f"wrote {deep} and {deep.with_name('eval-confusion.png')}\n")
    folder = tmp_path / "reports"
    status, out, _ = run_evaluate(
        capsys, str(DATA_DIR), "--model", str(MODEL_PATH), "--report", f"{folder}/"
    )
    assert status == 0
    assert (folder / "report.md").is_file()
    assert (folder / "report-confusion.png").is_file()


def test_an_unwritable_report_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    report = blocker / "report.md"
    status, out, err = run_evaluate(capsys, str(DATA_DIR), "--report", str(report))
    assert (status, out) == (2, "")
    assert err.startswith(f"digitserve: cannot write the report to {report}: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("localhost:8000", 2, "digitserve: --url must start with http:// or https:// (got "),
        ("http://127.0.0.1:1", 1, "digitserve: cannot reach http://127.0.0.1:1: "),
    ],
)
def test_a_bad_url_ends_in_one_line(
    url: str, status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_evaluate(capsys, str(DATA_DIR), "--url", url)
    assert (code, out) == (status, "")
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_manifest_rows_match_the_files(small_evalset: Path) -> None:
    with (small_evalset / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    samples = read_samples(small_evalset)
    assert [(s.name, s.label, s.group) for s in samples] == [
        (row["file"], int(row["label"]), row["group"]) for row in rows
    ]
