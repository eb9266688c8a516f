"""Ensembles (Triton's ensemble_scheduling) through the engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_builders import ADD_BIAS, add_model, run_with_engine, write_model
from onnx import TensorProto, helper

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import InvalidArgument
from forwardpass.protocol.documents import index_document, metadata_document, statistics_document
from forwardpass.repository import config_to_dict
from forwardpass.types import InferRequest, Tensor


def square3_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "square3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


STEPS = """
ensemble_scheduling {
  step [
    { model_name: "add" model_version: -1
      input_map { key: "x" value: "raw" } output_map { key: "y" value: "added" } },
    { model_name: "square3"
      input_map { key: "x" value: "added" } output_map { key: "y" value: "squared" } },
    { model_name: "square3"
      input_map { key: "x" value: "raw" } output_map { key: "y" value: "raw_squared" } }
  ]
}
"""


def ensemble_config(steps: str = STEPS, outputs: str = '"squared", "raw_squared"') -> str:
    names = [n.strip().strip('"') for n in outputs.split(",")]
    out = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 3 ] }}' for n in names)
    return f"""
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "raw" data_type: TYPE_FP32 dims: [ 3 ] }} ]
output [ {out} ]
{steps}
"""


def build(root: Path, config: str | None = None) -> Path:
    write_model(root, "add", model=add_model(), config="max_batch_size: 8\ndynamic_batching { }")
    write_model(
        root, "square3", model=square3_model(), config="max_batch_size: 8\ndynamic_batching { }"
    )
    write_model(root, "pipe", config=config or ensemble_config())
    return root


def raw(*rows: list[float]) -> Tensor:
    return Tensor("raw", DataType.FP32, np.array(rows, dtype=np.float32))


def test_ensemble_runs_its_dag(tmp_path: Path) -> None:
    async def body(engine: Engine) -> None:
        x = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]], np.float32)
        response = await engine.infer(
            InferRequest(model_name="pipe", inputs=[raw(*x.tolist())], id="e1")
        )
        got = {t.name: t.data for t in response.outputs}
        assert np.allclose(got["squared"], (x + ADD_BIAS) ** 2)
        assert np.allclose(got["raw_squared"], x**2)
        assert response.id == "e1" and response.model_name == "pipe"
        meta = metadata_document(engine.metadata("pipe"))
        assert meta["platform"] == "ensemble"
        assert [i["name"] for i in meta["inputs"]] == ["raw"]
        config = config_to_dict(engine.handle("pipe").config)
        assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == [
            "add",
            "square3",
            "square3",
        ]

    run_with_engine(build(tmp_path), body)


def test_steps_batch_with_other_traffic(tmp_path: Path) -> None:
    async def body(engine: Engine) -> None:
        requests = [
            engine.infer(InferRequest(model_name="pipe", inputs=[raw([float(i), 0.0, 0.0])]))
            for i in range(24)
        ]
        responses = await asyncio.gather(*requests)
        for i, response in enumerate(responses):
            squared = {t.name: t.data for t in response.outputs}["squared"]
            assert np.allclose(squared, [[(i + 1.0) ** 2, 4.0, 9.0]])
        (stats,) = statistics_document(engine.stats("square3"))["model_stats"]
        assert stats["inference_count"] == 48
        assert stats["execution_count"] < 48  # merged with the other requests' steps

    run_with_engine(build(tmp_path), body)


def test_a_failing_step_names_itself(tmp_path: Path) -> None:
    async def body(engine: Engine) -> None:
        with pytest.raises(InvalidArgument, match=r"raw"):
            await engine.infer(
                InferRequest(
                    model_name="pipe", inputs=[Tensor("raw", DataType.FP64, np.zeros((1, 3)))]
                )
            )
        await engine.unload("square3")
        with pytest.raises(
            Exception,
            match=r"ensemble step [12] \(square3\): Request for unknown model: 'square3' has no "
            r"available versions \(model 'square3' is not ready",
        ):
            await engine.infer(InferRequest(model_name="pipe", inputs=[raw([1.0, 1.0, 1.0])]))

    run_with_engine(build(tmp_path), body)


def test_loading_an_ensemble_loads_its_steps(tmp_path: Path) -> None:
    async def body(engine: Engine) -> None:
        assert {h.name for h in engine.models()} == {"pipe", "add", "square3"}
        response = await engine.infer(
            InferRequest(model_name="pipe", inputs=[raw([0.0, 0.0, 0.0])])
        )
        assert np.allclose(response.outputs[0].data, [ADD_BIAS**2])

    run_with_engine(build(tmp_path), body, load_models=("pipe",))


@pytest.mark.parametrize(
    ("steps", "outputs", "reason"),
    [
        (
            STEPS.replace('key: "x" value: "added"', 'key: "x" value: "nowhere"'),
            '"squared"',
            "reads ['nowhere'], which no input or step provides",
        ),
        (STEPS, '"squared", "missing"', "no ensemble step produces output(s) ['missing']"),
        (STEPS.replace('"add"', '"ghost"'), '"squared"', "'ghost' is not in the repository"),
        (
            STEPS.replace(
                'key: "x" value: "raw" } output_map { key: "y" value: "added"',
                'key: "x" value: "squared" } output_map { key: "y" value: "added"',
            ),
            '"squared"',
            "wait on each other",
        ),
        (STEPS.replace('value: "raw_squared"', 'value: "raw"'), '"squared"', "ensemble input"),
    ],
)
def test_broken_ensembles_are_unavailable_with_a_reason(
    tmp_path: Path, steps: str, outputs: str, reason: str
) -> None:
    async def body(engine: Engine) -> None:
        entry = next(e for e in index_document(engine.index()) if e["name"] == "pipe")
        assert entry["state"] == "UNAVAILABLE"
        assert reason in entry["reason"], entry["reason"]
        assert engine.is_ready("add")

    run_with_engine(build(tmp_path, ensemble_config(steps, outputs)), body)
