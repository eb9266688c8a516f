"""The zoo registry and :func:`forwardpass.zoo.add`: naming, refusing, replacing, cleaning up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forwardpass.config import DEFAULT_REPOSITORY
from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.repository import ModelRepository
from forwardpass.zoo import PROVENANCE_FILE, Built, Recipe, add, get_recipe, recipes
from forwardpass.zoo import registry as registry_module


def test_every_recipe_is_listed_with_an_install_command() -> None:
    known = recipes()
    assert list(known) == [
        "efficientnet-lite0",
        "all-minilm-l6-v2",
        "ppocr",
        "mtcnn",
        "silero-vad",
        "speech-digits",
        "breast-cancer",
        "digits",
        "movielens-recommender",
        "smollm2-135m-instruct",
    ]
    for name, recipe in known.items():
        assert recipe.name == name
        assert recipe.pip.startswith("pip install")
        assert recipe.license and recipe.source and recipe.task
    assert "torch==2.13.0" in known["efficientnet-lite0"].pip
    assert "torch==2.13.0" in known["all-minilm-l6-v2"].pip


def test_an_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="choose one of efficientnet-lite0"):
        add("resnet-9000", tmp_path)


def fake(name: str, build: object, modules: tuple[str, ...] = ()) -> Recipe:
    return Recipe(
        name=name,
        task="test",
        summary="test",
        source="test",
        license="test",
        modules=modules,
        pip="pip install not-a-real-package==1.0",
        build=build,  # type: ignore[arg-type]
    )


def test_missing_packages_name_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = fake("needy", lambda repo, name: Built(), ("forwardpass_no_such_module",))
    monkeypatch.setattr(registry_module, "recipes", lambda: {"needy": recipe})
    with pytest.raises(Unsupported) as caught:
        add("needy", tmp_path / "repo")
    assert "forwardpass_no_such_module" in caught.value.message
    assert "pip install not-a-real-package==1.0" in caught.value.message
    assert not (tmp_path / "repo").exists()


def test_a_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(repository: Path, name: str) -> Built:
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "model.onnx").write_bytes(b"half")
        raise InvalidArgument("export failed")

    monkeypatch.setattr(registry_module, "recipes", lambda: {"broken": fake("broken", broken)})
    with pytest.raises(InvalidArgument, match="export failed"):
        add("broken", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_digits_is_copied_and_an_existing_model_is_never_overwritten_silently(
    tmp_path: Path,
) -> None:
    added = add("digits", tmp_path)
    assert added.folder == tmp_path / "digits" and not added.replaced
    assert added.model_bytes == (DEFAULT_REPOSITORY / "digits/1/model.onnx").stat().st_size
    assert ModelRepository(tmp_path).read("digits").config.max_batch_size == 64
    record = json.loads((tmp_path / "digits" / PROVENANCE_FILE).read_text())
    assert record["zoo_recipe"] == "digits"

    marker = tmp_path / "digits" / "1" / "mine.txt"
    marker.write_text("a user's file")
    with pytest.raises(InvalidArgument, match=r"already exists .*versions: 1.*--force"):
        add("digits", tmp_path)
    assert marker.exists()

    replaced = add("digits", tmp_path, force=True)
    assert replaced.replaced and not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no staging left


def test_the_embedded_repository_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="embedded"):
        add("digits", DEFAULT_REPOSITORY)


def test_get_recipe_returns_the_registered_object() -> None:
    assert get_recipe("breast-cancer") is recipes()["breast-cancer"]
