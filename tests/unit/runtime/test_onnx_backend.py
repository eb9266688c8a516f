"""The ONNX Runtime backend: session options, provider selection and error translation."""

from __future__ import annotations

import logging
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from model_builders import ADD_BIAS, add_model, write_model
from onnx import TensorProto, helper

from forwardpass.datatypes import DataType
from forwardpass.errors import (
    ForwardpassError,
    InternalError,
    InvalidArgument,
    InvalidModelConfig,
)
from forwardpass.model_config import (
    ExecutionAccelerator,
    InstanceGroup,
    ModelConfig,
    Optimization,
    TensorSpec,
)
from forwardpass.repository import ModelRepository
from forwardpass.runtime import backend_class
from forwardpass.runtime.null import NullBackend
from forwardpass.runtime.onnx import OnnxRuntimeBackend, describe_onnx, select_providers

CPU = ["CPUExecutionProvider"]
GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def params_block(params: dict[str, str]) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )


def load_backend(
    tmp_path: Path, config: str = "", model: onnx.ModelProto | None = None
) -> OnnxRuntimeBackend:
    """Read model ``m`` (``add`` by default) through the repository and load one instance."""
    root = tmp_path / "models"
    write_model(root, "m", config="max_batch_size: 8\n" + config, model=model or add_model())
    entry = ModelRepository(root).read("m")
    backend = OnnxRuntimeBackend(entry.config, entry.version_dir(1))
    backend.load()
    return backend


def config(
    kind: str = "KIND_CPU",
    gpus: tuple[int, ...] = (),
    gpu_acc: tuple[ExecutionAccelerator, ...] = (),
    cpu_acc: tuple[ExecutionAccelerator, ...] = (),
    **params: str,
) -> ModelConfig:
    return ModelConfig(
        name="m",
        instance_group=(InstanceGroup(kind=kind, gpus=gpus),),  # type: ignore[arg-type]
        parameters=MappingProxyType(params),
        optimization=Optimization(
            gpu_execution_accelerator=gpu_acc, cpu_execution_accelerator=cpu_acc
        ),
    )


def accelerator(name: str, **params: str) -> ExecutionAccelerator:
    return ExecutionAccelerator(name, MappingProxyType(params))


# ------------------------------------------------------------------------------ session options


def test_default_backend_runs_the_model(tmp_path: Path) -> None:
    backend = load_backend(tmp_path)
    assert backend.providers == ["CPUExecutionProvider"]
    assert backend.fallback_warnings == []
    x = np.array([[1, 1, 1]], dtype=np.float32)
    out = backend.infer({"x": x}, ["y"])
    assert list(out) == ["y"]
    np.testing.assert_array_equal(out["y"], x + ADD_BIAS)
    backend.unload()
    backend.unload()  # twice is fine
    with pytest.raises(InternalError, match="not loaded"):
        backend.infer({"x": x}, ["y"])


def test_session_options_parameters_reach_onnxruntime(tmp_path: Path) -> None:
    backend = load_backend(
        tmp_path,
        params_block(
            {
                "intra_op_thread_count": "2",
                "inter_op_thread_count": "3",
                "execution_mode": "1",
                "enable_mem_arena": "false",
                "enable_mem_pattern": "no",
            }
        )
        + "\noptimization { graph { level: 1 } }",
    )
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 3
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.enable_cpu_mem_arena is False
    assert options.enable_mem_pattern is False
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (-1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        (0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        (2, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ],
)
def test_graph_level(tmp_path: Path, level: int, expected: object) -> None:
    backend = load_backend(tmp_path, f"optimization {{ graph {{ level: {level} }} }}")
    assert backend.session.get_session_options().graph_optimization_level == expected


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("intra_op_thread_count", "many", "must be an integer"),
        ("inter_op_thread_count", "1.5", "must be an integer"),
        ("intra_op_thread_count", "-3", "must be >= 0"),
        ("execution_mode", "7", "0 (sequential) or 1 (parallel)"),
        ("execution_mode", "parallel", "must be an integer"),
        ("enable_mem_arena", "maybe", "true or false"),
        ("enable_mem_pattern", "2", "true or false"),
    ],
)
def test_invalid_session_option_values_are_config_errors(
    tmp_path: Path, key: str, value: str, words: str
) -> None:
    with pytest.raises(InvalidModelConfig) as info:
        load_backend(tmp_path, params_block({key: value}))
    assert key in info.value.message
    assert words in info.value.message


def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = ModelConfig(name="m", default_model_filename="absent.onnx")
    backend = OnnxRuntimeBackend(cfg, tmp_path)
    with pytest.raises(InvalidModelConfig, match="does not exist"):
        backend.load()


def test_corrupt_model_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"definitely not protobuf")
    backend = OnnxRuntimeBackend(ModelConfig(name="m"), tmp_path)
    with pytest.raises(InvalidModelConfig, match=r"onnxruntime cannot load model\.onnx"):
        backend.load()
    with pytest.raises(InvalidModelConfig, match="cannot read ONNX model"):
        describe_onnx(tmp_path / "model.onnx")


# ----------------------------------------------------------------------------------- providers


def test_cpu_model_asks_for_cpu_only() -> None:
    assert select_providers(config(), CPU) == (["CPUExecutionProvider"], [])
    # KIND_AUTO takes CUDA only when it is there.
    assert select_providers(config("KIND_AUTO"), CPU) == (["CPUExecutionProvider"], [])
    chosen, _ = select_providers(config("KIND_AUTO"), GPU)
    assert chosen == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


def test_gpu_without_cuda_fails_loudly() -> None:
    with pytest.raises(InvalidModelConfig) as info:
        select_providers(config("KIND_GPU"), CPU)
    message = info.value.message
    assert "CUDAExecutionProvider was requested" in message
    assert "provider_fallback=true" in message


def test_gpu_without_cuda_falls_back_only_when_configured() -> None:
    chosen, warnings = select_providers(config("KIND_GPU", provider_fallback="true"), CPU)
    assert chosen == ["CPUExecutionProvider"]
    assert warnings == [
        "CUDAExecutionProvider is not available in this onnxruntime build; falling back"
    ]
    with pytest.raises(InvalidModelConfig):
        select_providers(config("KIND_GPU", provider_fallback="false"), CPU)
    # A value that is neither true nor false is an error, not a silent "no fallback".
    with pytest.raises(InvalidModelConfig, match="provider_fallback must be true or false"):
        select_providers(config("KIND_GPU", provider_fallback="maybe"), CPU)


def test_gpu_fallback_is_recorded_by_the_loaded_backend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA: nothing to fall back from")
    gpu = "instance_group [ { kind: KIND_GPU } ]\n"
    with pytest.raises(InvalidModelConfig, match="CUDAExecutionProvider"):
        load_backend(tmp_path / "strict", gpu)
    with caplog.at_level(logging.WARNING, logger="forwardpass.runtime.onnx"):
        backend = load_backend(
            tmp_path / "lenient", gpu + params_block({"provider_fallback": "true"})
        )
    assert backend.providers == ["CPUExecutionProvider"]
    assert len(backend.fallback_warnings) == 1
    assert "CUDAExecutionProvider" in backend.fallback_warnings[0]
    assert any("falling back" in r.getMessage() for r in caplog.records)
    out = backend.infer({"x": np.zeros((1, 3), np.float32)}, ["y"])
    np.testing.assert_array_equal(out["y"], [ADD_BIAS])


def test_tensorrt_accelerator_options_and_device() -> None:
    trt = accelerator("TensorRT", precision_mode="fp16", max_workspace_size_bytes="1073741824")
    chosen, warnings = select_providers(config("KIND_GPU", gpus=(1,), gpu_acc=(trt,)), GPU)
    assert warnings == []
    assert chosen == [
        (
            "TensorrtExecutionProvider",
            {"device_id": 1, "trt_fp16_enable": True, "trt_max_workspace_size": 1073741824},
        ),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    plain, _ = select_providers(config("KIND_GPU", gpu_acc=(accelerator("tensorrt"),)), GPU)
    assert plain[0] == ("TensorrtExecutionProvider", {"device_id": 0})


def test_tensorrt_missing_fails_or_falls_back() -> None:
    cuda_only = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = (accelerator("tensorrt"),)
    with pytest.raises(InvalidModelConfig, match="TensorrtExecutionProvider was requested"):
        select_providers(config("KIND_GPU", gpu_acc=trt), cuda_only)
    chosen, warnings = select_providers(
        config("KIND_GPU", gpu_acc=trt, provider_fallback="1"), cuda_only
    )
    assert chosen == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert [w.split()[0] for w in warnings] == ["TensorrtExecutionProvider"]


def test_bad_tensorrt_workspace_is_a_config_error() -> None:
    trt = accelerator("tensorrt", max_workspace_size_bytes="lots")
    with pytest.raises(InvalidModelConfig, match="max_workspace_size_bytes must be an integer"):
        select_providers(config("KIND_GPU", gpu_acc=(trt,)), GPU)


def test_openvino_accelerator() -> None:
    openvino = accelerator("OpenVINO", device_type="CPU_FP32")
    available = ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    chosen, warnings = select_providers(config(cpu_acc=(openvino,)), available)
    assert chosen == [
        ("OpenVINOExecutionProvider", {"device_type": "CPU_FP32"}),
        "CPUExecutionProvider",
    ]
    assert warnings == []
    with pytest.raises(InvalidModelConfig, match="OpenVINOExecutionProvider was requested"):
        select_providers(config(cpu_acc=(openvino,)), CPU)
    chosen, warnings = select_providers(config(cpu_acc=(openvino,), provider_fallback="yes"), CPU)
    assert chosen == ["CPUExecutionProvider"]
    assert len(warnings) == 1


def test_unknown_accelerators_are_config_errors() -> None:
    with pytest.raises(InvalidModelConfig, match="unknown gpu_execution_accelerator 'cudnn'"):
        select_providers(config("KIND_GPU", gpu_acc=(accelerator("cudnn"),)), GPU)
    with pytest.raises(InvalidModelConfig, match="unknown cpu_execution_accelerator 'mkl'"):
        select_providers(config(cpu_acc=(accelerator("mkl"),)), CPU)


def test_accelerators_read_from_pbtxt(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(
        root,
        "m",
        model=add_model(),
        config="""
max_batch_size: 8
instance_group [ { kind: KIND_GPU gpus: [ 2 ] } ]
optimization { execution_accelerators {
  gpu_execution_accelerator: [ { name: "tensorrt"
      parameters { key: "precision_mode" value: "FP16" } } ]
  cpu_execution_accelerator: [ { name: "openvino" } ]
} }
""",
    )
    cfg = ModelRepository(root).read("m").config
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider"]
    chosen, _ = select_providers(cfg, [*available, "CPUExecutionProvider"])
    assert [c[0] if isinstance(c, tuple) else c for c in chosen] == [
        *available,
        "CPUExecutionProvider",
    ]
    assert chosen[0] == ("TensorrtExecutionProvider", {"device_id": 2, "trt_fp16_enable": True})


# ------------------------------------------------------------------------------ error translation


def reshape_model() -> onnx.ModelProto:
    """``y = Reshape(x, shape)``: a bad ``shape`` fails inside the forward pass."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "columns"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnxruntime_errors_are_translated(tmp_path: Path) -> None:
    # Feeds that contradict the model's declared inputs reach the backend only when the
    # config (which the engine checked the request against) disagrees with the model: 500.
    backend = load_backend(tmp_path)
    with pytest.raises(InternalError) as info:
        backend.infer({"x": np.zeros((1, 4), np.float32)}, ["y"])
    assert info.value.message.startswith("onnxruntime: ")
    assert "invalid dimensions" in info.value.message
    assert info.value.__cause__ is not None  # the original kept as the cause
    assert type(info.value.__cause__).__module__.startswith("onnxruntime")
    with pytest.raises(InternalError, match="Unexpected input data type"):
        backend.infer({"x": np.zeros((1, 3), np.int32)}, ["y"])
    with pytest.raises(ForwardpassError):
        backend.infer({"x": np.zeros((1, 3), np.float32)}, ["nope"])


def test_runtime_failure_inside_the_graph_is_translated(tmp_path: Path) -> None:
    onnx.save(reshape_model(), str(tmp_path / "model.onnx"))
    backend = OnnxRuntimeBackend(ModelConfig(name="m"), tmp_path)
    backend.load()
    x = np.arange(6, dtype=np.float32)
    good = backend.infer({"x": x, "shape": np.array([2, 3], np.int64)}, ["y"])
    np.testing.assert_array_equal(good["y"], x.reshape(2, 3))
    with pytest.raises(ForwardpassError) as info:
        backend.infer({"x": x, "shape": np.array([4, 4], np.int64)}, ["y"])
    # Data the model cannot compute on is reported, never a raw onnxruntime exception.
    assert type(info.value) in (InternalError, InvalidArgument)
    assert info.value.message.startswith("onnxruntime: ")
    assert "Reshape" in info.value.message


def test_backend_class_selection() -> None:
    assert backend_class(ModelConfig(name="m")) is OnnxRuntimeBackend
    assert backend_class(ModelConfig(name="m", backend="null", platform="")) is NullBackend
    with pytest.raises(InvalidModelConfig, match="unknown backend 'torch'"):
        backend_class(ModelConfig(name="m", backend="torch", platform=""))


def test_null_backend_bad_parameters_are_config_errors(tmp_path: Path) -> None:
    spec = TensorSpec("a", DataType.INT32, (2,))
    cfg = ModelConfig(
        name="m",
        backend="null",
        inputs=(spec,),
        outputs=(spec,),
        parameters=MappingProxyType({"delay_ms": "soon"}),
    )
    with pytest.raises(InvalidModelConfig, match="null backend parameter"):
        NullBackend(cfg, tmp_path).load()
