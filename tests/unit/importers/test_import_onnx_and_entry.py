"""ONNX files, and how entries are written: versions, refusals, nothing half-written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from model_builders import ADD_BIAS, add_model, square_model

from forwardpass.errors import InvalidArgument
from forwardpass.importers import import_onnx
from forwardpass.importers.entry import EntryPlan, build_config, write_entry
from forwardpass.importers.verification import compare, load_samples


@pytest.fixture
def add_file(tmp_path: Path) -> Path:
    """The engine tests' ``add`` model (y = x + bias, x f32 [batch, 3])."""
    path = tmp_path / "src" / "add.onnx"
    path.parent.mkdir()
    onnx.save(add_model(), str(path))
    return path


def test_onnx_file_is_checked_copied_and_served(tmp_path: Path, add_file: Path, serve: Any) -> None:
    result = import_onnx(add_file, repository=tmp_path / "repo", name="add", labels=["a", "b", "c"])
    assert result.verification.ok
    assert result.verification.samples == 2  # batch vs row-by-row
    assert result.config.max_batch_size == 64
    assert result.config.output("y").label_filename == "labels.txt"  # type: ignore[union-attr]
    copied = tmp_path / "repo" / "add" / "1" / "model.onnx"
    assert onnx.load(str(copied)).graph == onnx.load(str(add_file)).graph
    x = np.array([[1, 2, 3]], np.float32)
    np.testing.assert_allclose(serve(tmp_path / "repo", "add", {"x": x})["y"], x + ADD_BIAS)


def test_invalid_onnx_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidArgument, match="not a valid ONNX model"):
        import_onnx(bad, repository=tmp_path / "repo", name="bad")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_versions_are_never_overwritten(tmp_path: Path, add_file: Path) -> None:
    repo = tmp_path / "repo"
    assert import_onnx(add_file, repository=repo, name="add").entry.version == 1
    assert import_onnx(add_file, repository=repo, name="add", version=5).entry.version == 5
    assert import_onnx(add_file, repository=repo, name="add").entry.version == 6
    with pytest.raises(InvalidArgument, match="already has version 5"):
        import_onnx(add_file, repository=repo, name="add", version=5)
    # Nothing half-written: no staging folders left behind, in the repository or the model.
    assert sorted(p.name for p in (repo / "add").iterdir()) == ["1", "5", "6", "config.pbtxt"]
    assert [p.name for p in repo.iterdir()] == ["add"]


def test_a_config_that_does_not_fit_the_new_model_is_refused(
    tmp_path: Path, add_file: Path
) -> None:
    repo = tmp_path / "repo"
    import_onnx(add_file, repository=repo, name="m")
    other = tmp_path / "other.onnx"
    onnx.save(square_model(), str(other))
    with pytest.raises(InvalidArgument, match="does not fit the new model"):
        import_onnx(other, repository=repo, name="m")
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt"]


def test_different_labels_are_refused(tmp_path: Path, add_file: Path) -> None:
    repo = tmp_path / "repo"
    import_onnx(add_file, repository=repo, name="m", labels=["a", "b", "c"])
    with pytest.raises(InvalidArgument, match=r"different labels\.txt"):
        import_onnx(add_file, repository=repo, name="m", labels=["x", "y", "z"])


def test_a_failed_write_leaves_no_model(
    tmp_path: Path, add_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    plan = EntryPlan("m", add_file, build_config("m", add_file), {"labels.txt": b"a\n"})

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # an interrupted import

    monkeypatch.setattr("forwardpass.importers.entry.os.rename", crash)
    with pytest.raises(KeyboardInterrupt):
        write_entry(repo, plan)
    assert list(repo.iterdir()) == []


def test_bad_names_are_refused(tmp_path: Path, add_file: Path) -> None:
    for name in ("../escape", ".hidden", "a/b"):
        with pytest.raises(InvalidArgument):
            import_onnx(add_file, repository=tmp_path, name=name)


def test_compare_reports_exact_and_float_differences() -> None:
    check = compare(
        {"p": np.array([[0.5, 0.5]]), "label": np.array([1])},
        {"p": np.array([[0.5, 0.52]], np.float32), "label": np.array([2])},
        atol=0.01,
    )
    assert not check.ok
    by_name = {c.name: c for c in check.outputs}
    assert by_name["p"].max_abs_diff == pytest.approx(0.02, abs=1e-6)
    assert by_name["label"].exact and by_name["label"].max_abs_diff == 1.0
    with pytest.raises(InvalidArgument, match="p: max"):
        check.raise_if_failed()


def test_sample_files(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    np.savez(tmp_path / "all.npz", a=np.ones(2), b=np.zeros(2))
    assert load_samples([str(tmp_path / "x.npy")], ["x"])["x"].shape == (2, 3)
    assert set(load_samples([str(tmp_path / "all.npz")], ["a", "b"])) == {"a", "b"}
    with pytest.raises(InvalidArgument, match="name the input"):
        load_samples([str(tmp_path / "x.npy")], ["a", "b"])
    with pytest.raises(InvalidArgument, match="not inputs"):
        load_samples([f"z={tmp_path / 'x.npy'}"], ["x"])
