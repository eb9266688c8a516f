"""``forwardpass optimize`` on the SmolLM2 generation model: INT8 weight-only through the
decoder loop, judged by greedy agreement with FP32 and perplexity on held-out text; the
promoted version (when it is faster) serves through the generation scheduler."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from forwardpass.errors import InvalidArgument
from forwardpass.optimize.generation import GenerationEval, held_out_text
from forwardpass.optimize.methods.int4 import fold_weight_transposes, matmul_weight_share
from forwardpass.optimize.optimizer import OptimizeOptions, optimize

NAME = "smollm2-135m-instruct"
FRANCE = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def test_fold_weight_transposes_keeps_the_answer() -> None:
    weight = np.random.default_rng(0).standard_normal((48, 64)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 48])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert matmul_weight_share(model) == (48 * 64, 48 * 64)
    assert fold_weight_transposes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert [i.name for i in model.graph.initializer] == ["wt"]
    x = np.ones((2, 64), np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ weight.T, rtol=1e-5)


def test_held_out_text(tmp_path: Path) -> None:
    text, source = held_out_text()
    assert len(text) > 2000 and "argparse" in source
    (tmp_path / "t.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        held_out_text(tmp_path / "t.txt")
    with pytest.raises(InvalidArgument, match="not a file"):
        held_out_text(tmp_path)


def test_int8_weight_only_through_the_decoder_loop(
    smollm2_repository: Path, tmp_path: Path
) -> None:
    source = smollm2_repository / NAME
    target = tmp_path / NAME
    target.mkdir()
    (target / "1").symlink_to(source / "1", target_is_directory=True)
    for name in ("tokenizer.json", "chat_template.jinja", "config.pbtxt"):
        shutil.copy(source / name, target / name)
    evaluation = GenerationEval(
        prompts=2, new_tokens=8, perplexity_tokens=32, decode_steps=4, rounds=2
    )
    with pytest.raises(InvalidArgument, match="generation model: --calibration"):
        optimize(OptimizeOptions(NAME, tmp_path, calibration=tmp_path, generation=evaluation))
    result = optimize(
        OptimizeOptions(
            NAME, tmp_path, methods=("int8-weight",), max_accuracy_drop=0.5, generation=evaluation
        )
    )
    report = result.report.to_dict()
    original, int8 = report["candidates"]
    assert original["name"] == "original" and int8["name"] == "int8w-b32"
    assert int8["status"] == "measured", int8["reason"]
    details = original["accuracy"]["details"]
    assert details["greedy_token_agreement"] == 1.0 and details["first_divergence_min"] == 8
    assert 1 < details["perplexity"] < 1000
    mine = int8["accuracy"]["details"]
    assert 0 <= mine["greedy_token_agreement"] <= 1 and 0 <= mine["first_divergence_min"] <= 8
    assert abs(mine["perplexity_increase"]) < 0.1  # 8-bit blocks barely move the model
    assert int8["size_bytes"] < 0.6 * original["size_bytes"]
    for candidate in (original, int8):
        assert set(candidate["performance"]["by_batch"]) == {"1", "8"}
        assert candidate["performance"]["by_batch"]["8"]["tokens_per_s"] > 0
    selection = report["selection"]
    if not selection["promoted"]:
        assert result.version_dir is None and "kept the original" in selection["reason"]
        return
    # Promoted: version 2 serves through the generation scheduler.
    assert result.version_dir == target / "2"
    from forwardpass.generation.model import load_generation
    from forwardpass.generation.settings import GenerationSettings
    from forwardpass.repository import ModelRepository

    entry = ModelRepository(tmp_path).read(NAME)
    settings = GenerationSettings.from_config(entry.config)
    assert settings is not None and 2 in entry.versions
    model = load_generation(entry.config, entry.path, 2, settings)
    model.scheduler.start()

    async def ask() -> str:
        try:
            final = await model.submit_text(FRANCE, {"max_tokens": 12}).collect()
        finally:
            await model.scheduler.close()
        return final.text

    assert "Paris" in asyncio.run(ask())
    assert any(
        n.op_type == "MatMulNBits" for n in onnx.load(str(target / "2/model.onnx")).graph.node
    )
