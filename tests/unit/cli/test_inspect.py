"""``forwardpass inspect`` on the embedded digits model and on files it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper

import forwardpass
from forwardpass.cli.inspect import inspect

DIGITS = Path(forwardpass.__file__).parent / "models" / "digits" / "1" / "model.onnx"


def test_json_description_of_digits() -> None:
    result = CliRunner().invoke(inspect, [str(DIGITS), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["batch", 1, 8, 8]}]
    assert info["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": ["batch", 10]}
    ]
    assert info["opsets"] == {"ai.onnx": 17}
    assert info["batches"] is True
    assert info["file_bytes"] == DIGITS.stat().st_size
    assert info["producer"].startswith("forwardpass/scripts/train_digits.py")
    assert info["op_types"]["Conv"] == 2 and info["op_types"]["Softmax"] == 1
    assert info["nodes"] == sum(info["op_types"].values())
    # Conv 1->8 and 8->16 (3x3), Linear 256->32 and 32->10, with biases.
    assert info["parameters"] == (8 * 9 + 8) + (16 * 8 * 9 + 16) + (256 * 32 + 32) + (32 * 10 + 10)
    assert info["parameter_bytes"] == 4 * info["parameters"]


def test_human_output() -> None:
    result = CliRunner().invoke(inspect, [str(DIGITS)])
    assert result.exit_code == 0, result.output
    for text in ("image", "probabilities", "[batch, 1, 8, 8]", "FP32", "9,802 parameters"):
        assert text in result.output
    assert "batches (dynamic leading dimension)" in result.output


def test_fixed_batch_and_protocol_datatypes(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [2, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, None])],
    )
    path = tmp_path / "cast.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    info = json.loads(CliRunner().invoke(inspect, [str(path), "--json"]).output)
    assert info["inputs"][0] == {"name": "x", "datatype": "UINT8", "shape": [2, None]}
    assert info["outputs"][0]["datatype"] == "FP16"
    assert info["batches"] is False and info["parameters"] == 0


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = CliRunner().invoke(inspect, [str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 1
    assert "no such file" in missing.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\x00 definitely not protobuf \xff" * 10)
    unreadable = CliRunner().invoke(inspect, [str(junk)])
    assert unreadable.exit_code == 1
    assert "not a readable ONNX model" in unreadable.output
