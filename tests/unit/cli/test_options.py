"""Where the writing commands write, and the flags optimize and distill share."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from forwardpass.cli.main import _register, cli
from forwardpass.config import DEFAULT_REPOSITORY as EMBEDDED

_register()


def _embedded_listing() -> list[str]:
    return sorted(str(p.relative_to(EMBEDDED)) for p in EMBEDDED.rglob("*"))


@pytest.mark.parametrize(
    "command",
    [
        ["optimize", "digits", "--no-isolate", "--iterations", "5", "--seconds", "0.1",
         "--methods", "int8-dynamic", "--target", "edge", "--min-gain", "0"],
        ["distill", "digits", "--student", "mlp:8", "--epochs", "1"],
    ],
)  # fmt: skip
def test_optimize_and_distill_never_write_into_the_package(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((16, 1, 8, 8), np.float32))
    if command[0] == "distill":
        command = [*command, "--data", str(tmp_path / "x.npy")]
    before = _embedded_listing()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORWARDPASS_MODEL_REPOSITORY", raising=False)
    # Without a repository: the writable default (./model_repository), which lacks digits.
    result = CliRunner().invoke(cli, command)
    assert result.exit_code != 0
    assert "not in model_repository" in result.output
    assert "forwardpass zoo add digits --model-repository model_repository" in result.output
    # The embedded repository named outright, by flag or environment: refused too.
    named = CliRunner().invoke(cli, [*command, "--model-repository", str(EMBEDDED)])
    assert named.exit_code != 0 and "inside the installed forwardpass package" in named.output
    env = CliRunner().invoke(cli, command, env={"FORWARDPASS_MODEL_REPOSITORY": str(EMBEDDED)})
    assert env.exit_code != 0 and "not in model_repository" in env.output
    inside = CliRunner().invoke(cli, [*command, "--model-repository", str(EMBEDDED / "digits")])
    assert inside.exit_code != 0 and "inside the installed forwardpass package" in inside.output
    assert _embedded_listing() == before


def test_the_copy_in_the_default_folder_is_what_optimize_writes_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORWARDPASS_MODEL_REPOSITORY", raising=False)
    added = CliRunner().invoke(cli, ["zoo", "add", "digits"])
    assert added.exit_code == 0, added.output
    args = ["optimize", "digits", "--no-isolate", "--iterations", "5", "--seconds", "0.1",
            "--rounds", "1", "--methods", "int8-dynamic", "--target", "edge"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model_repository" / "digits" / "2" / "model.onnx").is_file()
    assert not (EMBEDDED / "digits" / "2").exists()


def test_import_refuses_the_package_too(tmp_path: Path) -> None:
    model = EMBEDDED / "digits" / "1" / "model.onnx"
    args = ["import", "onnx", str(model), "--name", "x", "--model-repository", str(EMBEDDED)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "inside the installed forwardpass package" in result.output
    assert not (EMBEDDED / "x").exists()


def test_flag_defaults_come_from_the_dataclasses() -> None:
    from forwardpass.optimize.distill import DistillOptions
    from forwardpass.optimize.measure import MeasureSettings
    from forwardpass.optimize.optimizer import OptimizeOptions

    runner = CliRunner()
    optimize = " ".join(runner.invoke(cli, ["optimize", "--help"]).output.split())
    distill = " ".join(runner.invoke(cli, ["distill", "--help"]).output.split())
    optimize_options = OptimizeOptions(model="m", repository=Path())
    distill_options = DistillOptions(teacher="t", repository=Path(), student="s", data=Path())
    assert f"[default: {optimize_options.max_accuracy_drop}]" in optimize
    assert f"[default: {distill_options.max_accuracy_drop}]" in distill
    assert optimize_options.max_accuracy_drop != distill_options.max_accuracy_drop
    assert f"Training epochs. [x>=1] [default: {distill_options.fit.epochs}]" in distill
    assert f"[default: {MeasureSettings().rounds}]" in optimize
    assert "[default: 1,8,32]" in optimize


def test_unset_flags_leave_the_dataclass_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options object the command builds equals the dataclass's, field by field."""
    import forwardpass.optimize.optimizer as optimizer
    from forwardpass.optimize.measure import MeasureSettings
    from forwardpass.optimize.optimizer import OptimizeOptions

    shutil.copytree(EMBEDDED / "digits", tmp_path / "digits")
    seen: list[OptimizeOptions] = []

    def capture(options: OptimizeOptions, progress: object = None) -> None:
        seen.append(options)
        raise SystemExit(0)

    monkeypatch.setattr(optimizer, "optimize", capture)
    CliRunner().invoke(cli, ["optimize", "digits", "--model-repository", str(tmp_path)])
    (options,) = seen
    assert options == OptimizeOptions(
        model="digits", repository=tmp_path, measure=MeasureSettings()
    )
