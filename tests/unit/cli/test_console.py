"""The commands' tables at 80 columns, on a terminal and through a pipe."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from forwardpass.cli.main import _register, cli
from forwardpass.config import DEFAULT_REPOSITORY as EMBEDDED

_register()

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX = re.compile("[─━│┃┏┓┗┛┡┩└┘┌┐├┤┬┴┼╇╈]")
#: A pipe: no terminal. A terminal: rich's own switch (FORCE_COLOR) on a CliRunner stream.
PIPED = {"COLUMNS": "80", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
TERMINAL = {"COLUMNS": "80", "FORCE_COLOR": "1"}


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    shutil.copytree(EMBEDDED / "digits", tmp_path / "repo" / "digits")
    repo = str(tmp_path / "repo")
    sample = str(EMBEDDED / "digits" / "samples" / "digit_3_0.png")
    return {
        "models": ["models", "--model-repository", repo],
        "zoo": ["zoo", "list"],
        "inspect": ["inspect", str(EMBEDDED / "digits" / "1" / "model.onnx")],
        "predict": ["predict", "digits", sample, "--model-repository", repo],
    }


@pytest.mark.parametrize("name", ["models", "zoo", "inspect", "predict"])
def test_piped_output_is_plain_text_within_80_columns(name: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _commands(tmp_path)[name], env=PIPED)
    assert result.exit_code == 0, result.output
    assert not ANSI.search(result.output) and not BOX.search(result.output), result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
    if name == "models":
        assert re.search(r"^digits +1 +OK ", result.output, re.M), result.output
    if name == "predict":
        assert re.search(r"^3 +\d\.\d{4}$", result.output, re.M), result.output


@pytest.mark.parametrize("name", ["models", "zoo", "inspect", "predict"])
def test_terminal_output_fits_80_columns(name: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _commands(tmp_path)[name], env=TERMINAL)
    assert result.exit_code == 0, result.output
    assert ANSI.search(result.output), "expected a styled terminal rendering"
    plain = ANSI.sub("", result.output)
    assert max(len(line) for line in plain.splitlines()) <= 80, plain


def test_install_hints_are_whole_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    import forwardpass.zoo as zoo

    monkeypatch.setattr(zoo, "missing_modules", lambda recipe: ["torch"])
    result = CliRunner().invoke(cli, ["zoo", "list"], env=PIPED)
    assert result.exit_code == 0, result.output
    for recipe in zoo.recipes().values():
        # One line each, the command complete at its end, so it can be copied as it is.
        assert f"to build {recipe.name}: {recipe.pip}\n" in result.output, result.output
