"""``forwardpass bench`` inputs: perf_analyzer's --input-data, and valid data for processing."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from model_builders import write_text_model

from forwardpass.bench_inputs import read_input_data
from forwardpass.cli.main import _register, cli
from forwardpass.config import DEFAULT_REPOSITORY as EMBEDDED
from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument

_register()

IMAGE_PROCESSING = {"inputs": [{"name": "picture", "kind": "image", "to": "image",
                                "resize": {"size": [8, 8]}, "scale": 0.0625}]}  # fmt: skip
TEXT_PROCESSING = {"inputs": [{"name": "text", "kind": "text"}]}


def _processing(declaration: dict[str, object]) -> str:
    text = json.dumps(json.dumps(declaration))
    return f'parameters {{ key: "processing" value: {{ string_value: {text} }} }}\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, start_module_server: Any) -> Any:
    pytest.importorskip("tokenizers")

    root = tmp_path_factory.mktemp("bench") / "repo"
    # The embedded digits model, raw pictures in (its image processing declared).
    shutil.copytree(EMBEDDED / "digits", root / "digits_image")
    config = root / "digits_image" / "config.pbtxt"
    text = config.read_text().replace('name: "digits"', 'name: "digits_image"')
    config.write_text(text + _processing(IMAGE_PROCESSING))
    # A text model that tokenizes with a word-level tokenizer built here.
    write_text_model(root)
    return start_module_server(root)


def _bench(server: Any, model: str, *extra: str) -> dict[str, object]:
    args = ["bench", model, "--url", server.url, "-c", "1", "-d", "0.3", "--warmup", "0",
            "--json", *extra]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.output[result.output.index("{") :])
    return report


@pytest.mark.parametrize("binary", [False, True])
def test_image_and_text_models_get_valid_synthesized_inputs(server: Any, binary: bool) -> None:
    extra = ("--binary",) if binary else ()
    for model in ("digits_image", "words") if binary else ("words",):
        report = _bench(server, model, *extra)
        (level,) = report["results"]  # type: ignore[misc]
        assert level["errors"] == 0 and level["requests"] > 0, (model, level)
    if not binary:  # a picture is not text: JSON cannot carry it, and bench says so
        args = ["bench", "digits_image", "--url", server.url, "-d", "0.2"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0 and "add --binary" in result.output


def test_real_inputs_from_files_a_folder_and_perf_analyzer_json(
    server: Any, tmp_path: Path
) -> None:
    samples = sorted((EMBEDDED / "digits" / "samples").glob("*.png"))
    files = [arg for p in samples[:3] for arg in ("--input-data", str(p))]
    by_files = _bench(server, "digits_image", "--binary", *files)
    assert by_files["results"][0]["errors"] == 0  # type: ignore[index]
    samples_folder = str(EMBEDDED / "digits" / "samples")
    folder = _bench(server, "digits_image", "--binary", "--input-data", samples_folder)
    assert folder["results"][0]["errors"] == 0  # type: ignore[index]
    document = {"data": [{"picture": {"b64": base64.b64encode(p.read_bytes()).decode()}}
                         for p in samples]}  # fmt: skip
    (tmp_path / "pictures.json").write_text(json.dumps(document))
    report = _bench(server, "digits_image", "--binary", "--input-data",
                    str(tmp_path / "pictures.json"))  # fmt: skip
    assert report["results"][0]["errors"] == 0  # type: ignore[index]
    (tmp_path / "sentences.json").write_text(json.dumps(
        {"data": [{"text": ["the quick brown fox"]}, {"text": {"content": ["lazy dog"],
                                                               "shape": [1]}}]}))  # fmt: skip
    assert _bench(server, "words", "--input-data", str(tmp_path / "sentences.json"))


def test_a_rejected_real_input_fails_with_the_servers_reason(server: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"data": [{"picture": ["not a picture"]}]}))
    args = ["bench", "digits_image", "--url", server.url, "-c", "1", "-d", "0.2", "--warmup",
            "0", "--input-data", str(tmp_path / "bad.json")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "rejected the request from --input-data" in result.output
    assert "cannot decode image" in result.output


INPUTS = [("INPUT0", "FP32", (2, 2)), ("TEXT", "BYTES", (1,))]


def test_json_steps_read_lists_content_and_b64(tmp_path: Path) -> None:
    raw = np.arange(4, dtype="<f4").tobytes()
    document = {"data": [
        {"INPUT0": [1, 2, 3, 4], "TEXT": ["hello"]},
        {"INPUT0": {"content": [[5, 6], [7, 8]], "shape": [2, 2]}, "TEXT": {"b64": "aGk="}},
        {"INPUT0": {"b64": base64.b64encode(raw).decode()}, "TEXT": ["x"]},
    ]}  # fmt: skip
    path = tmp_path / "data.json"
    path.write_text(json.dumps(document))
    steps = read_input_data([path], INPUTS, batching=True, batch_size=2)
    assert len(steps) == 3
    datatype, first = steps[0]["INPUT0"]
    assert datatype is DataType.FP32 and first.shape == (2, 2, 2)
    assert first[1].tolist() == [[1, 2], [3, 4]]
    assert steps[1]["TEXT"][1].tolist() == [[b"hi"], [b"hi"]]
    assert steps[2]["INPUT0"][1][0].tolist() == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    ("step", "words"),
    [
        ({"INPUT0": [1, 2, 3]}, "missing input(s) TEXT"),
        ({"INPUT0": [1, 2, 3], "TEXT": ["a"]}, "3 values do not fill shape [2, 2]"),
        ({"INPUT0": {"b64": "!!"}, "TEXT": ["a"]}, "not valid base64"),
        ({"INPUT0": {"b64": "AAAA"}, "TEXT": ["a"]}, "3 bytes do not make FP32 [2, 2]"),
        ({"INPUT0": ["a", "b", "c", "d"], "TEXT": ["a"]}, "values are not numbers"),
        ({"INPUT0": [1, 2, 3, 4], "TEXT": ["a"], "X": [1]}, "unknown input(s) X"),
    ],
)
def test_json_errors_say_which_step_and_what(tmp_path: Path, step: dict, words: str) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": [step]}))
    with pytest.raises(InvalidArgument, match=r"data\[0\]") as caught:
        read_input_data([path], INPUTS, batching=False, batch_size=1)
    assert words in caught.value.message


def test_perf_analyzer_folder_of_raw_files_per_input(tmp_path: Path) -> None:
    (tmp_path / "INPUT0").write_bytes(np.arange(4, dtype="<f4").tobytes())
    (tmp_path / "TEXT").write_bytes(b"raw text")
    (step,) = read_input_data([tmp_path], INPUTS, batching=False, batch_size=1)
    assert step["INPUT0"][1].tolist() == [[0, 1], [2, 3]]
    assert step["TEXT"][1].tolist() == [b"raw text"]
    with pytest.raises(InvalidArgument, match="one BYTES input"):
        read_input_data([tmp_path / "TEXT"], INPUTS, batching=False, batch_size=1)
