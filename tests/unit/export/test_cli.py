"""``forwardpass export`` on the command line: it writes, refuses, and names what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import forwardpass
from forwardpass.cli.main import _register, cli
from forwardpass.export import target as target_module

EMBEDDED = Path(forwardpass.__file__).parent / "models"


@pytest.fixture(scope="module", autouse=True)
def commands() -> None:
    if "export" not in cli.commands:
        _register()


def test_export_writes_then_refuses_without_force(tmp_path: Path) -> None:
    out = tmp_path / "digits-edge"
    args = ["export", "digits", "--edge", "--model-repository", str(EMBEDDED)]
    args += ["--output", str(out), "--repeat", "2", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["optimization_style"] == "Runtime" and (out / "runner.py").is_file()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "already exists; pass --force" in again.output


def test_a_missing_runtime_gives_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target_module, "find_spec", lambda name: None)
    out = tmp_path / "b"
    result = CliRunner().invoke(
        cli,
        ["export", "digits", "--edge", "--target", "arm64", "--model-repository", str(EMBEDDED),
         "--output", str(out)],
    )  # fmt: skip
    assert result.exit_code == 1 and "pip install onnxruntime" in result.output
    assert not out.exists()


def test_output_inside_the_package_is_refused() -> None:
    result = CliRunner().invoke(
        cli, ["export", "digits", "--edge", "--output", str(EMBEDDED / "digits" / "edge")]
    )
    assert result.exit_code == 1 and "inside the installed forwardpass package" in result.output
