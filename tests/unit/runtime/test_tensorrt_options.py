"""Triton's TensorRT accelerator parameters translated to ONNX Runtime's TensorRT options.

No GPU is needed: the translation is checked against the provider list ORT would be given.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from model_builders import add_model, write_model

from forwardpass.errors import InvalidModelConfig
from forwardpass.repository import ModelRepository
from forwardpass.runtime.onnx import select_providers, tensorrt_options

GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_precision_modes() -> None:
    assert tensorrt_options({}) == {"device_id": 0}
    assert tensorrt_options({"precision_mode": "FP32"}) == {"device_id": 0}
    assert tensorrt_options({"precision_mode": "fp16"}, 3) == {
        "device_id": 3,
        "trt_fp16_enable": True,
    }
    assert tensorrt_options({"precision_mode": "INT8"}) == {
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_int8_enable": True,
    }


def test_engine_cache_and_sizes() -> None:
    options = tensorrt_options(
        {
            "precision_mode": "INT8",
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": "/var/cache/trt",
            "int8_calibration_table_name": "calib.flatbuffers",
            "max_workspace_size_bytes": "1073741824",
            "min_subgraph_size": "3",
            "max_partition_iterations": "10",
        }
    )
    assert options == {
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_int8_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "/var/cache/trt",
        "trt_int8_calibration_table_name": "calib.flatbuffers",
        "trt_max_workspace_size": 1073741824,
        "trt_min_subgraph_size": 3,
        "trt_max_partition_iterations": 10,
    }
    # A cache path alone turns the cache on; an explicit "false" is kept.
    assert tensorrt_options({"trt_engine_cache_path": "c"})["trt_engine_cache_enable"] is True
    off = tensorrt_options({"trt_engine_cache_path": "c", "trt_engine_cache_enable": "false"})
    assert off["trt_engine_cache_enable"] is False


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"precision_mode": "FP8"}, "precision_mode must be one of FP32, FP16, INT8"),
        ({"trt_engine_cache_enable": "maybe"}, "trt_engine_cache_enable must be true or false"),
        ({"trt_engine_cache_path": " "}, "trt_engine_cache_path must not be empty"),
        ({"int8_calibration_table_name": "t"}, "needs precision_mode INT8"),
        ({"min_subgraph_size": "0"}, "min_subgraph_size must be >= 1"),
    ],
)
def test_bad_parameters(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidModelConfig, match=message):
        tensorrt_options(params)


def test_from_config_pbtxt_to_the_provider_list(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(
        root,
        "m",
        model=add_model(),
        config="""
max_batch_size: 8
instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]
optimization { execution_accelerators {
  gpu_execution_accelerator: [ { name: "tensorrt"
      parameters { key: "precision_mode" value: "INT8" }
      parameters { key: "trt_engine_cache_enable" value: "1" }
      parameters { key: "trt_engine_cache_path" value: "/tmp/trt-cache" } } ]
} }
""",
    )
    chosen, warnings = select_providers(ModelRepository(root).read("m").config, GPU)
    assert warnings == []
    assert chosen == [
        (
            "TensorrtExecutionProvider",
            {
                "device_id": 1,
                "trt_fp16_enable": True,
                "trt_int8_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": "/tmp/trt-cache",
            },
        ),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
