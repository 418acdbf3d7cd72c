"""The model repository: layout, versions, policies, settings, states, load/unload and polling."""

import json
import os
from pathlib import Path

import pytest

from digitserve.errors import ModelLoadError, ModelNotFound, ModelNotReady, VersionNotFound
from digitserve.repository import (
    ModelConfig,
    ModelRepository,
    State,
    model_format,
    parse_config,
)


def loader(name: str, version: int, path: Path, config: ModelConfig) -> str:
    """Load a fake model: the file's text, refusing files that say 'broken'."""
    text = path.read_text()
    if text == "broken":
        raise ModelLoadError(f"{path} is broken")
    return f"{name}/{version}:{text}"


def put(root: Path, name: str, version: int, text: str = "ok", suffix: str = ".pickle") -> Path:
    """Write a model file into the repository folder."""
    path = root / name / str(version) / f"model{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A repository with two models: digits (versions 1 and 2) and forest (1)."""
    put(tmp_path, "digits", 1, "one")
    put(tmp_path, "digits", 2, "two", ".joblib")
    put(tmp_path, "forest", 1, "tree", ".onnx")
    return tmp_path


def test_loads_every_model_and_answers_unversioned_with_the_highest(root: Path) -> None:
    repository = ModelRepository(root, loader)
    index = repository.load_all()
    assert [(line.name, line.version, line.state) for line in index] == [
        ("digits", "1", State.READY),
        ("digits", "2", State.READY),
        ("forest", "1", State.READY),
    ]
    assert repository.get("digits") == (2, "digits/2:two")
    assert repository.get("digits", "1") == (1, "digits/1:one")
    assert repository.all_ready()


def test_unknown_model_and_version_are_not_found(root: Path) -> None:
    repository = ModelRepository(root, loader)
    repository.load_all()
    with pytest.raises(ModelNotFound, match="'nope'"):
        repository.get("nope")
    with pytest.raises(VersionNotFound, match="versions: 1, 2"):
        repository.get("digits", "3")
    with pytest.raises(VersionNotFound):
        repository.get("digits", "01")
    with pytest.raises(VersionNotFound):
        repository.get("digits", "9" * 5000)


def test_a_broken_version_is_unavailable_while_the_others_serve(root: Path) -> None:
    put(root, "digits", 3, "broken")
    (root / "empty" / "1").mkdir(parents=True)
    repository = ModelRepository(root, loader)
    index = {(line.name, line.version): line for line in repository.load_all()}
    assert index["digits", "3"].state is State.UNAVAILABLE
    assert "broken" in index["digits", "3"].reason
    assert index["empty", "1"].state is State.UNAVAILABLE
    assert "no model file" in index["empty", "1"].reason
    assert repository.get("digits") == (2, "digits/2:two")
    with pytest.raises(ModelNotReady, match="broken"):
        repository.get("digits", "3")
    with pytest.raises(ModelNotReady):
        repository.get("empty")
    assert not repository.all_ready()
    assert repository.any_ready()


def test_load_picks_up_new_versions_and_drops_removed_ones(root: Path) -> None:
    repository = ModelRepository(root, loader)
    repository.load_all()
    before = repository.get("digits", "1")[1]
    put(root, "digits", 3, "three")
    (root / "digits" / "2" / "model.joblib").unlink()
    (root / "digits" / "2").rmdir()
    repository.load("digits")
    assert repository.get("digits") == (3, "digits/3:three")
    assert repository.get("digits", "1")[1] is before  # unchanged versions are not reloaded
    with pytest.raises(VersionNotFound):
        repository.get("digits", "2")


def test_unload_then_load(root: Path) -> None:
    repository = ModelRepository(root, loader)
    repository.load_all()
    held = repository.get("forest")
    assert [line.state for line in repository.unload("forest")] == [State.UNAVAILABLE]
    with pytest.raises(ModelNotReady):
        repository.get("forest")
    assert held == (1, "forest/1:tree")  # a request holding it still has it
    assert repository.all_ready()  # unloaded on purpose
    repository.load("forest")
    assert repository.get("forest") == (1, "forest/1:tree")
    with pytest.raises(ModelNotFound):
        repository.unload("nope")


def test_settings_choose_versions_default_and_pins(root: Path) -> None:
    put(root, "digits", 3, "three")
    settings = {"version_policy": {"specific": [1, 3]}, "default_version": 1}
    (root / "digits" / "model-settings.json").write_text(json.dumps(settings))
    repository = ModelRepository(root, loader)
    index = {(line.name, line.version): line for line in repository.load_all()}
    assert index["digits", "2"].state is State.UNAVAILABLE
    assert "version policy" in index["digits", "2"].reason
    assert repository.get("digits") == (1, "digits/1:one")
    (root / "digits" / "model-settings.json").write_text(
        json.dumps({"version_policy": {"latest": 1}})
    )
    repository.load("digits")
    assert repository.get("digits") == (3, "digits/3:three")
    assert repository.all_ready()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({"colour": "red"}, "unknown settings: colour"),
        ({"version_policy": {"newest": 1}}, "unknown version_policy"),
        ({"version_policy": {"latest": 0}}, "positive number"),
        ({"default_version": "2"}, "positive integer"),
        ({"sha256": {"1": "abc"}}, "64 hex"),
        ({"labels": {"0": 0}}, "labels"),
        ({"trusted_types": "x"}, "list"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(document: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(document)


def test_triton_style_policies_are_read() -> None:
    assert (
        parse_config({"version_policy": {"latest": {"num_versions": 2}}}).version_policy.count == 2
    )
    policy = parse_config({"version_policy": {"specific": {"versions": [4]}}}).version_policy
    assert policy.select([1, 4, 5]) == [4]


def test_poll_sees_new_changed_and_removed_models(root: Path) -> None:
    repository = ModelRepository(root, loader)
    repository.load_all()
    assert repository.changed() == []
    put(root, "digits", 3, "three")
    path = root / "forest" / "1" / "model.onnx"
    path.write_text("tree, retrained")
    os.utime(path, ns=(1, 1))
    put(root, "newcomer", 1)
    assert repository.changed() == ["digits", "forest", "newcomer"]


def test_suffixes_are_compared_case_insensitively(tmp_path: Path) -> None:
    assert model_format(Path("evil.SKOPS")) == "skops"
    assert model_format(Path("m.Pkl")) == "pickle"
    with pytest.raises(ModelLoadError, match="unknown model file suffix"):
        model_format(Path("m.h5"))
    put(tmp_path, "upper", 1, "x", ".SKOPS")
    repository = ModelRepository(tmp_path, loader)
    assert repository.load_all()[0].state is State.READY


def test_several_model_files_in_one_version_are_refused(tmp_path: Path) -> None:
    put(tmp_path, "digits", 1, "a", ".pickle")
    put(tmp_path, "digits", 1, "b", ".onnx")
    line = ModelRepository(tmp_path, loader).load_all()[0]
    assert line.state is State.UNAVAILABLE
    assert "several model files" in line.reason


def test_a_single_file_is_a_model_with_version_1(tmp_path: Path) -> None:
    path = tmp_path / "anything.pickle"
    path.write_text("solo")
    repository = ModelRepository(None, loader, files={"digits": path})
    repository.load_all()
    assert repository.get("digits") == (1, "digits/1:solo")


def test_a_single_model_folder_holds_one_file_or_its_versions(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    put(tmp_path, "flat", 0, "solo")  # writes flat/0/model.pickle: move it up a level
    (flat / "0" / "model.pickle").rename(flat / "model.pickle")
    (flat / "0").rmdir()
    repository = ModelRepository(None, loader, files={"mnist": flat})
    repository.load_all()
    assert repository.get("mnist") == (1, "mnist/1:solo")
    put(tmp_path, "versioned", 1, "one")
    put(tmp_path, "versioned", 4, "four")
    repository = ModelRepository(None, loader, files={"kserve": tmp_path / "versioned"})
    repository.load_all()
    assert repository.get("kserve") == (4, "kserve/4:four")
