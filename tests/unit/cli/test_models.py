"""``forwardpass models`` and the command group (``serve --help``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from click.testing import CliRunner

from forwardpass.cli.main import _register, cli
from forwardpass.cli.models import models


def test_embedded_repository_lists_digits_as_ok() -> None:
    result = CliRunner().invoke(models, ["--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["name"] for row in rows] == ["digits"]
    [digits] = rows
    assert digits["state"] == "OK"
    assert digits["versions"] == "1"
    assert "image:FP32[-1, 1, 8, 8]" in digits["detail"]
    assert "probabilities:FP32[-1, 10]" in digits["detail"]


def test_table_output() -> None:
    result = CliRunner().invoke(models, [])
    assert result.exit_code == 0, result.output
    assert "digits" in result.output
    assert "OK" in result.output


def test_broken_model_is_unavailable_with_its_reason(repo: Path) -> None:
    result = CliRunner().invoke(models, ["--model-repository", str(repo), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert sorted(rows) == ["add", "broken", "echo", "square"]
    assert rows["broken"]["state"] == "UNAVAILABLE"
    assert rows["broken"]["versions"] == ""
    assert "config.pbtxt:2" in rows["broken"]["detail"]
    assert rows["add"]["state"] == "OK"
    assert rows["add"]["detail"].startswith("onnxruntime, max_batch_size 8;")
    assert rows["echo"]["versions"] == "1,2,3"
    assert rows["echo"]["detail"].startswith("null, max_batch_size 4;")


def test_missing_repository_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(models, ["--model-repository", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "does not exist" in result.output


def test_unreachable_url_is_a_clean_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = CliRunner().invoke(models, ["--url", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"cannot reach http://127.0.0.1:{port}" in result.output


def test_group_registers_every_command_and_serve_help() -> None:
    _register()
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("serve", "predict", "models", "inspect", "bench"):
        assert command in result.output
    result = runner.invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--model-repository", "--host", "--http-port", "--model", "--log-level"):
        assert option in result.output
    assert "Open Inference Protocol" in result.output


def test_serve_rejects_a_missing_repository(tmp_path: Path) -> None:
    _register()
    result = CliRunner().invoke(cli, ["serve", "--model-repository", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "is not a folder" in result.output
    assert "Traceback" not in result.output


def test_serve_rejects_a_bad_environment_value() -> None:
    _register()
    result = CliRunner().invoke(
        cli, ["serve", "--http-port", "0"], env={"FORWARDPASS_MAX_REQUEST_BYTES": "lots"}
    )
    assert result.exit_code == 1
    assert "FORWARDPASS_MAX_REQUEST_BYTES='lots' is not a valid value" in result.output


def test_unknown_backend_is_unavailable_as_on_the_server(repo: Path) -> None:
    """The same check as the server's load: `models` must not call OK what `serve` refuses."""
    folder = repo / "torchy"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.savedmodel").write_bytes(b"weights")
    (folder / "config.pbtxt").write_text(
        'backend: "tensorflow"\nmax_batch_size: 2\n'
        'input [ { name: "a" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "b" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
    )
    result = CliRunner().invoke(models, ["--model-repository", str(repo), "--json"])
    assert result.exit_code == 0, result.output
    row = {row["name"]: row for row in json.loads(result.output)}["torchy"]
    assert row["state"] == "UNAVAILABLE"
    assert "unknown backend 'tensorflow'" in row["detail"]
