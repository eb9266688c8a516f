"""``forwardpass predict`` on a model whose processing takes raw image bytes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from model_builders import write_model
from test_engine_processing import channel_means_model, config, png

from forwardpass.cli.commands import register
from forwardpass.cli.main import cli

register(cli)


def test_predict_sends_the_image_file_as_bytes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "colours",
        config=config(),
        model=channel_means_model(),
        files={"labels.txt": "red\ngreen\nblue\n"},
    )
    picture = tmp_path / "sky.png"
    picture.write_bytes(png((10, 20, 240), size=(30, 40)))
    result = CliRunner().invoke(
        cli, ["predict", "colours", str(picture), "--model-repository", str(repo), "--json"]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)[str(picture)]
    assert answer["colour"] == {"shape": [1, 1], "data": ["blue"]}
    assert answer["top"][0]["label"] == "blue"
