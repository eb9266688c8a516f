"""Uploaded files are checked before anything is created, staged apart, and kept only on commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forwardpass.errors import InvalidArgument
from forwardpass.repository import ModelRepository
from forwardpass.repository.upload import STAGING_PREFIX, stage_upload


def _hidden(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.startswith(".")]


def test_stage_then_commit_then_read(tmp_path: Path, mlp_model: Any) -> None:
    repository = ModelRepository(tmp_path)
    model = mlp_model().SerializeToString()
    upload = stage_upload(repository, "uploaded", {"file:1/model.onnx": model})
    assert upload.folder.parent.name.startswith(STAGING_PREFIX)
    assert repository.list_models() == []  # the staging folder is never a model
    assert not (tmp_path / "uploaded").exists()  # nothing in the repository yet
    override = {"max_batch_size": 2}
    entry = repository.read("uploaded", override, folder=upload.folder)
    upload.commit(entry.config, override)
    assert (tmp_path / "uploaded" / "1" / "model.onnx").read_bytes() == model
    # The override travelled with the files: the model reads back the same without it.
    assert repository.read("uploaded").config.max_batch_size == 2
    assert _hidden(tmp_path) == []  # no staging folder or temporary file left behind


def test_commit_keeps_a_yaml_config_yaml(tmp_path: Path, mlp_model: Any) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_text("max_batch_size: 4\n")
    repository = ModelRepository(tmp_path)
    upload = stage_upload(repository, "m", {"1/model.onnx": mlp_model().SerializeToString()})
    entry = repository.read("m", json.dumps({"max_batch_size": 3}), folder=upload.folder)
    upload.commit(entry.config, {"max_batch_size": 3})
    assert not (tmp_path / "m" / "config.pbtxt").exists()
    assert repository.read("m").config.max_batch_size == 3


def test_discard_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"good")
    upload = stage_upload(ModelRepository(tmp_path), "m", {"1/model.onnx": b"garbage"})
    upload.discard()
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"good"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize(
    "path",
    ["../evil", "/abs/path", "1/../../evil", "a//b", "./x", "", ".hidden", "1/.x", "a\\b", "x\x00"],
)
def test_unsafe_paths_are_refused_before_anything_is_created(tmp_path: Path, path: str) -> None:
    with pytest.raises(InvalidArgument):
        stage_upload(ModelRepository(tmp_path), "m", {"config.pbtxt": b"ok", path: b"evil"})
    assert list(tmp_path.iterdir()) == []


def test_symlinked_version_folder_out_of_the_repository_creates_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    outside = tmp_path / "outside"
    (repo / "m").mkdir(parents=True)
    outside.mkdir()
    (repo / "m" / "1").symlink_to(outside, target_is_directory=True)
    for key in ("1/model.onnx", "1/sub/model.onnx"):
        with pytest.raises(InvalidArgument, match="leads outside"):
            stage_upload(ModelRepository(repo), "m", {key: b"evil"})
    assert list(outside.iterdir()) == []  # the refused upload made no folder out there
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # and no staging folder


def test_symlinked_file_is_not_written_through(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "elsewhere").write_bytes(b"keep")
    (tmp_path / "m" / "config.pbtxt").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidArgument, match="leads outside"):
        stage_upload(ModelRepository(tmp_path), "m", {"config.pbtxt": b"x"})
    assert (tmp_path / "elsewhere").read_bytes() == b"keep"


def test_contents_must_be_bytes(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="must be bytes"):
        stage_upload(ModelRepository(tmp_path), "m", {"a": "text"})  # type: ignore[dict-item]
