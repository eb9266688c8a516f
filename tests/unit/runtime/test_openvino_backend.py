"""The OpenVINO backend: Triton's openvino parameters, IR and ONNX files, bad models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from model_builders import ADD_BIAS, add_model, write_model
from onnx import TensorProto, helper

ov = pytest.importorskip("openvino")

from forwardpass.datatypes import DataType  # noqa: E402
from forwardpass.errors import InvalidModelConfig  # noqa: E402
from forwardpass.repository import ModelRepository  # noqa: E402
from forwardpass.runtime import backend_class  # noqa: E402
from forwardpass.runtime.openvino import (  # noqa: E402
    OpenVinoBackend,
    compile_properties,
    describe_openvino,
)


def params_block(params: dict[str, str]) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )


def load(root: Path, name: str = "m") -> OpenVinoBackend:
    entry = ModelRepository(root).read(name)
    backend = backend_class(entry.config)(entry.config, entry.version_dir(entry.versions[-1]))
    assert isinstance(backend, OpenVinoBackend)
    backend.load()
    return backend


def write_ir(folder: Path, model: onnx.ModelProto) -> None:
    """Convert ``model`` to OpenVINO IR ``model.xml``/``model.bin`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "source.onnx"))
    ov.save_model(
        ov.Core().read_model(str(folder / "source.onnx")),
        str(folder / "model.xml"),
        compress_to_fp16=False,
    )
    (folder / "source.onnx").unlink()


def test_properties_follow_tritons_openvino_backend() -> None:
    props = compile_properties(
        {
            "INFERENCE_NUM_THREADS": "2",
            "NUM_STREAMS": "auto",
            "PERFORMANCE_HINT": "throughput",
            "HINT_BF16": "yes",
            "unrelated": "left alone",
        }
    )
    assert props == {
        "INFERENCE_NUM_THREADS": 2,
        "NUM_STREAMS": "AUTO",
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_PRECISION_HINT": "bf16",
    }
    assert compile_properties({"NUM_STREAMS": "3", "INFERENCE_PRECISION_HINT": "FP32"}) == {
        "NUM_STREAMS": 3,
        "INFERENCE_PRECISION_HINT": "f32",
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"INFERENCE_NUM_THREADS": "two"}, "INFERENCE_NUM_THREADS must be an integer >= 0"),
        ({"NUM_STREAMS": "0"}, "NUM_STREAMS must be an integer >= 1"),
        ({"NUM_STREAMS": "many"}, "NUM_STREAMS must be an integer"),
        ({"PERFORMANCE_HINT": "fast"}, "PERFORMANCE_HINT must be one of LATENCY"),
        ({"HINT_BF16": "NO"}, "HINT_BF16 must be YES"),
        ({"INFERENCE_PRECISION_HINT": "int3"}, "must be f32, bf16 or f16"),
        ({"HINT_BF16": "YES", "INFERENCE_PRECISION_HINT": "f32"}, "contradict"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidModelConfig, match=message):
        compile_properties(params)


def test_onnx_file_served_with_autocompleted_config(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = write_model(
        root,
        "m",
        config='backend: "openvino"\ndefault_model_filename: "model.onnx"\n'
        + params_block({"INFERENCE_NUM_THREADS": "1"}),
        model=add_model(),
    )
    assert folder.is_dir()
    entry = ModelRepository(root).read("m")
    assert entry.config.max_batch_size == 4  # batchable: autocomplete as for onnxruntime
    assert [(s.name, s.datatype, s.dims) for s in entry.config.inputs] == [
        ("x", DataType.FP32, (3,))
    ]
    backend = load(root)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(backend.infer({"x": x}, ["y"])["y"], x + ADD_BIAS)
    assert backend.providers == ["openvino:CPU"]
    assert backend.precision == "fp32"


def test_ir_is_the_default_model_file(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_ir(root / "m" / "1", add_model())
    (root / "m" / "config.pbtxt").write_text(
        'backend: "openvino"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n',
        encoding="utf-8",
    )
    backend = load(root)
    out = backend.infer({"x": np.ones((5, 3), np.float32)}, ["y"])["y"]
    np.testing.assert_allclose(out, 1 + np.broadcast_to(ADD_BIAS, (5, 3)))
    # The result is a copy: the next run does not overwrite it.
    backend.infer({"x": np.zeros((5, 3), np.float32)}, ["y"])
    np.testing.assert_allclose(out, 1 + np.broadcast_to(ADD_BIAS, (5, 3)))


def test_bf16_hint_reports_the_precision_actually_used(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(
        root,
        "m",
        config='backend: "openvino"\ndefault_model_filename: "model.onnx"\n'
        + params_block({"INFERENCE_PRECISION_HINT": "bf16"}),
        model=add_model(),
    )
    backend = load(root)
    capable = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert backend.precision == ("bf16" if capable else "fp32")
    assert bool(backend.fallback_warnings) is not capable


def test_missing_ir_weights_and_missing_file(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_ir(root / "m" / "1", add_model())
    (root / "m" / "1" / "model.bin").unlink()
    (root / "m" / "config.pbtxt").write_text('backend: "openvino"\n', encoding="utf-8")
    with pytest.raises(InvalidModelConfig, match=r"has no weights file model\.bin"):
        ModelRepository(root).read("m")
    with pytest.raises(InvalidModelConfig, match="does not exist"):
        describe_openvino(tmp_path / "nothing.xml")


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g", [x], [y]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    root = tmp_path / "models"
    write_model(
        root,
        "m",
        config='backend: "openvino"\ndefault_model_filename: "model.onnx"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n',
        model=model,
    )
    with pytest.raises(
        InvalidModelConfig,
        match=r"no conversion for operator\(s\) com\.example"
        r"\.Frobnicate",
    ):
        ModelRepository(root).read("m")


def test_gpu_instances_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(
        root,
        "m",
        config='backend: "openvino"\ndefault_model_filename: "model.onnx"\n'
        "instance_group [ { kind: KIND_GPU } ]\n",
        model=add_model(),
    )
    with pytest.raises(InvalidModelConfig, match="CPU only"):
        load(root)


def test_missing_runtime_is_a_config_error_with_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    root = tmp_path / "models"
    write_model(
        root,
        "m",
        config='backend: "openvino"\ndefault_model_filename: "model.onnx"\n',
        model=add_model(),
    )
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(InvalidModelConfig, match=r"pip install 'forwardpass\[openvino\]'"):
        ModelRepository(root).read("m")
