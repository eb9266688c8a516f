"""ModelRepository: listing, reading configs and versions, labels, overrides, safe writes."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from forwardpass.datatypes import DataType
from forwardpass.errors import ForwardpassError, InvalidArgument, InvalidModelConfig, NotFound
from forwardpass.repository import ModelEntry, ModelRepository, config_to_dict
from forwardpass.repository.upload import stage_upload

NULL_CONFIG = """
backend: "null"
max_batch_size: 4
input { name: "in" data_type: TYPE_FP32 dims: [ 2 ] }
output { name: "out" data_type: TYPE_FP32 dims: [ 2 ] }
"""


def test_list_models_skips_hidden_and_files(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("b", mlp_model())
    make_model("a", mlp_model())
    (repo / ".git").mkdir()
    (repo / ".hidden_model").mkdir()
    (repo / "README.md").write_text("not a model")
    assert ModelRepository(repo).list_models() == ["a", "b"]


def test_missing_repository(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path / "nowhere")
    with pytest.raises(NotFound, match="does not exist"):
        repository.list_models()
    with pytest.raises(NotFound):
        repository.read("m")


def test_model_without_config_is_completed_from_onnx(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model())
    entry = ModelRepository(repo).read("mlp")
    assert isinstance(entry, ModelEntry)
    assert entry.name == "mlp" and entry.path == repo / "mlp"
    assert entry.config_file is None
    assert entry.versions == (1,)
    assert entry.config.max_batch_size == 4  # Triton's onnxruntime default-max-batch-size
    assert entry.config.inputs[0].dims == (4,)
    assert entry.version_dir(1) == repo / "mlp" / "1"
    with pytest.raises(NotFound, match=r"has no version 2 \(served versions: \[1\]\)"):
        entry.version_dir(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.versions = (2,)  # type: ignore[misc]


def test_default_max_batch_size_is_configurable(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model())
    assert ModelRepository(repo, default_max_batch_size=8).read("mlp").config.max_batch_size == 8


@pytest.mark.parametrize("filename", ["config.pbtxt", "config.yaml", "config.yml"])
def test_config_files(make_model: Any, mlp_model: Any, filename: str) -> None:
    text = (
        "max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 10 }\n"
        if filename.endswith("pbtxt")
        else "max_batch_size: 4\ndynamic_batching: {max_queue_delay_microseconds: 10}\n"
    )
    repo = make_model("mlp", mlp_model(), config=text, config_name=filename)
    entry = ModelRepository(repo).read("mlp")
    assert entry.config_file == repo / "mlp" / filename
    assert entry.config.max_batch_size == 4
    assert entry.config.dynamic_batching is not None
    assert entry.config.dynamic_batching.max_queue_delay_microseconds == 10


def test_pbtxt_wins_over_yaml(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model(), config="max_batch_size: 2")
    (repo / "mlp" / "config.yaml").write_text("max_batch_size: 3")
    assert ModelRepository(repo).read("mlp").config.max_batch_size == 2


def test_config_errors_carry_file_positions(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("bad_pbtxt", mlp_model(), config="max_batch_size: 4\ninput {")
    make_model("bad_yaml", mlp_model(), config="a: [1\n", config_name="config.yaml")
    make_model("list_yaml", mlp_model(), config="- 1\n", config_name="config.yaml")
    repository = ModelRepository(repo)
    with pytest.raises(InvalidModelConfig, match=r"^config\.pbtxt:2:8: expected a field name"):
        repository.read("bad_pbtxt")
    with pytest.raises(InvalidModelConfig, match=r"^config\.yaml:2:1: "):
        repository.read("bad_yaml")
    with pytest.raises(InvalidModelConfig, match="must hold a mapping"):
        repository.read("list_yaml")


def test_unreadable_onnx_file(make_model: Any) -> None:
    repo = make_model("junk", files={"1/model.onnx": b"not an onnx file"})
    with pytest.raises(InvalidModelConfig, match=r"cannot read ONNX model model\.onnx"):
        ModelRepository(repo).read("junk")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", (3,)),
        ("version_policy { latest { num_versions: 2 } }", (2, 3)),
        ("version_policy { latest { num_versions: 9 } }", (1, 2, 3)),
        ("version_policy { all { } }", (1, 2, 3)),
        ("version_policy { specific { versions: [ 3, 1 ] } }", (1, 3)),
    ],
)
def test_version_policies(
    make_model: Any, mlp_model: Any, policy: str, expected: tuple[int, ...]
) -> None:
    repo = make_model("mlp", mlp_model(), versions=(1, 2, 3), config=policy)
    assert ModelRepository(repo).read("mlp").versions == expected


def test_version_folders_must_be_positive_integers_holding_the_model(
    make_model: Any, mlp_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    repo = make_model("mlp", mlp_model(), versions=(2, 10))
    folder = repo / "mlp"
    for name in ("0", "01", "abc", ".3", "-1"):
        (folder / name).mkdir()
        (folder / name / "model.onnx").write_bytes((folder / "2" / "model.onnx").read_bytes())
    (folder / "11").mkdir()  # no model file: skipped with a warning
    (folder / "12").write_text("a file, not a folder")
    with caplog.at_level(logging.WARNING, logger="forwardpass.repository"):
        entry = ModelRepository(repo).read("mlp")
    assert entry.versions == (10,)  # numeric order, not string order
    assert "version folder(s) [11] have no model.onnx" in caplog.text
    all_versions = ModelRepository(repo).read("mlp", {"version_policy": {"all": {}}})
    assert all_versions.versions == (2, 10)


def test_specific_versions_must_exist(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model(), versions=(1, 2))
    (repo / "mlp" / "3").mkdir()
    repository = ModelRepository(repo)
    with pytest.raises(InvalidModelConfig, match=r"version\(s\) \[4\], which do not exist"):
        repository.read("mlp", {"version_policy": {"specific": {"versions": [1, 4]}}})
    with pytest.raises(InvalidModelConfig, match=r"\[3\], which have no model.onnx"):
        repository.read("mlp", {"version_policy": {"specific": {"versions": [3]}}})


def test_no_versions(make_model: Any) -> None:
    repo = make_model("empty", versions=(1,))
    with pytest.raises(InvalidModelConfig, match=r"no version folder holding model\.onnx"):
        ModelRepository(repo).read("empty")


def test_completion_reads_the_highest_selected_version(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model(features=4), versions=(1,))
    make_model("mlp", mlp_model(features=5), versions=(2,))
    repository = ModelRepository(repo)
    assert repository.read("mlp").config.inputs[0].dims == (5,)
    pinned = repository.read("mlp", {"version_policy": {"specific": {"versions": [1]}}})
    assert pinned.config.inputs[0].dims == (4,)


def test_custom_model_filename(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model(), config='default_model_filename: "net.onnx"')
    (repo / "mlp" / "1" / "model.onnx").rename(repo / "mlp" / "1" / "net.onnx")
    assert ModelRepository(repo).read("mlp").config.default_model_filename == "net.onnx"
    make_model("evil", mlp_model(), config='default_model_filename: "../../x.onnx"')
    with pytest.raises(InvalidArgument, match="not a safe relative path"):
        ModelRepository(repo).read("evil")


def test_null_backend_needs_no_model_file(make_model: Any) -> None:
    repo = make_model("echo", config=NULL_CONFIG, versions=(1, 2))
    entry = ModelRepository(repo).read("echo")
    assert entry.config.backend == "null"
    assert entry.versions == (2,)
    assert entry.config.inputs[0].datatype is DataType.FP32
    make_model("no_io", config='backend: "null"')
    with pytest.raises(InvalidModelConfig, match="must declare its inputs and outputs"):
        ModelRepository(repo).read("no_io")
    make_model("no_versions", config=NULL_CONFIG, versions=())
    with pytest.raises(InvalidModelConfig, match="no version folder"):
        ModelRepository(repo).read("no_versions")


def test_autocomplete_off_requires_a_complete_config(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model())
    with pytest.raises(InvalidModelConfig, match="input 'x' has no data_type"):
        ModelRepository(repo, autocomplete=False).read("mlp", {"input": [{"name": "x"}]})
    entry = ModelRepository(repo, autocomplete=False).read("mlp")
    assert entry.config.inputs == ()  # nothing declared, nothing read from the file


def test_name_in_config_must_match_folder(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model(), config='name: "other"')
    with pytest.raises(InvalidModelConfig, match="config name 'other' does not match"):
        ModelRepository(repo).read("mlp")


def test_labels(make_model: Any, mlp_model: Any) -> None:
    config = 'output { name: "y" label_filename: "labels.txt" }'
    repo = make_model("mlp", mlp_model(), config=config, files={"labels.txt": "cat\ndog\r\nbird\n"})
    entry = ModelRepository(repo).read("mlp")
    assert dict(entry.labels) == {"y": ("cat", "dog", "bird")}

    make_model("missing", mlp_model(), config=config)
    make_model("empty", mlp_model(), config=config, files={"labels.txt": "\n"})
    make_model(
        "escape", mlp_model(), config='output { name: "y" label_filename: "../mlp/labels.txt" }'
    )
    repository = ModelRepository(repo)
    with pytest.raises(InvalidModelConfig, match=r"labels\.txt does not exist"):
        repository.read("missing")
    with pytest.raises(InvalidModelConfig, match=r"labels\.txt is empty"):
        repository.read("empty")
    with pytest.raises(InvalidModelConfig, match="not a safe relative path"):
        repository.read("escape")


def test_broken_model_does_not_stop_the_others(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("good", mlp_model())
    make_model("broken", mlp_model(), config="max_batch_size: [")
    make_model("contradicts", mlp_model(), config="input { name: 'nope' }")
    make_model("echo", config=NULL_CONFIG)
    repository = ModelRepository(repo)
    assert repository.list_models() == ["broken", "contradicts", "echo", "good"]
    result = repository.read_all()
    assert isinstance(result["good"], ModelEntry)
    assert isinstance(result["echo"], ModelEntry)
    assert isinstance(result["broken"], InvalidModelConfig)
    assert "config.pbtxt:1:18" in str(result["broken"])
    assert isinstance(result["contradicts"], InvalidModelConfig)
    assert "'nope' is not an input of the model" in str(result["contradicts"])
    assert all(isinstance(v, ModelEntry | ForwardpassError) for v in result.values())


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/etc",
        "a\\b",
        "a\x00b",
        ".hidden",
        "x\n",
        "a" * 256,
        "é" * 200,
        "\ud800",
    ],
)
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    repository = ModelRepository(tmp_path)
    with pytest.raises(InvalidArgument):
        repository.resolve_name(name)
    with pytest.raises(InvalidArgument):
        repository.read(name)
    with pytest.raises(InvalidArgument):
        stage_upload(repository, name, {"config.pbtxt": b""})
    assert list(tmp_path.iterdir()) == []  # nothing staged for a refused name


def test_resolve_name_and_unknown_model(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    assert repository.resolve_name("resnet-50_v1.5") == tmp_path / "resnet-50_v1.5"
    with pytest.raises(NotFound, match="'absent' is not in the repository"):
        repository.read("absent")


def test_config_override_replaces_the_file(make_model: Any, mlp_model: Any) -> None:
    repo = make_model("mlp", mlp_model(), config="max_batch_size: 4")
    repository = ModelRepository(repo)
    from_file = repository.read("mlp")
    override = config_to_dict(from_file.config) | {"max_batch_size": 8}
    entry = repository.read("mlp", override)
    assert entry.config.max_batch_size == 8
    assert entry.config_file is None
    assert repository.read("mlp", json.dumps({"max_batch_size": 2})).config.max_batch_size == 2
    with pytest.raises(InvalidModelConfig, match="not valid JSON"):
        repository.read("mlp", "{not json")
    with pytest.raises(InvalidModelConfig, match="must be a JSON object"):
        repository.read("mlp", "[1, 2]")
    with pytest.raises(InvalidModelConfig, match="does not match the model's folder name"):
        repository.read("mlp", {"name": "other"})
