"""``bench/models.py`` builds a valid Triton-layout repository of benchmark models."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "models.py"


@pytest.fixture(scope="module")
def bench_models() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_models_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repository_layout_and_models(bench_models: ModuleType, tmp_path: Path) -> None:
    assert bench_models.main([str(tmp_path), "--compute-layers", "3", "--no-timing"]) == 0
    expected = {
        "tiny": 256,
        "tiny_nobatch": 0,
        "compute": 32,
        "compute_delay": 32,
        "compute_nobatch": 0,
    }
    assert {p.name for p in tmp_path.iterdir()} == set(expected)
    for name, max_batch_size in expected.items():
        config = (tmp_path / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config
        assert f"max_batch_size: {max_batch_size}" in config
        assert 'string_value: "1"' in config
        assert ("dynamic_batching {" in config) == (max_batch_size > 0)
        assert ("max_queue_delay_microseconds" in config) == (name == "compute_delay")
        assert ("dims: [ -1, 64 ]" in config) == (max_batch_size == 0)
    tiny = (tmp_path / "tiny" / "1" / "model.onnx").read_bytes()
    assert tiny == (tmp_path / "tiny_nobatch" / "1" / "model.onnx").read_bytes()
    for name in ("tiny", "compute"):
        session = ort.InferenceSession(
            str(tmp_path / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
        (y,) = session.run(["output"], {"input": x})
        assert y.shape == (3, 10) and np.isfinite(y).all() and np.abs(y).max() > 0


def test_builds_are_reproducible(bench_models: ModuleType) -> None:
    assert (
        bench_models.build_tiny().SerializeToString()
        == bench_models.build_tiny().SerializeToString()
    )
