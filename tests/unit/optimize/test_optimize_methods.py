"""Every method yields a loadable model whose outputs stay close to the original's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from forwardpass.model_config import ModelConfig
from forwardpass.optimize.data import Samples
from forwardpass.optimize.methods import METHODS, BuildContext, MethodSkipped, resolve_methods
from forwardpass.optimize.target import Target
from forwardpass.repository import ModelRepository


def _context(
    tmp_path: Path, model: onnx.ModelProto, x: np.ndarray, calibrate: bool
) -> BuildContext:
    root = tmp_path / "repo"
    (root / "m" / "1").mkdir(parents=True)
    source = root / "m" / "1" / "model.onnx"
    onnx.save(model, str(source))
    config: ModelConfig = ModelRepository(root).read("m").config
    name = config.inputs[0].name
    calibration = Samples({name: x[:64]}, "test") if calibrate else None
    work = tmp_path / "work"
    work.mkdir()
    return BuildContext(source, config, Target.CPU, calibration, work)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _build_all(ctx: BuildContext, x: np.ndarray) -> dict[str, np.ndarray | str]:
    out: dict[str, np.ndarray | str] = {}
    for method in resolve_methods(None):
        reason = method.check(ctx)
        if reason:
            out[method.name] = reason
            continue
        for variant in method.variants(ctx):
            path = ctx.workdir / f"{variant.name}.onnx"
            try:
                method.build(ctx, variant, path)
            except MethodSkipped as exc:
                out[variant.name] = str(exc)
                continue
            out[variant.name] = _run(path, x)
    return out


def test_every_method_on_a_matmul_mlp(tmp_path: Path, mlp: onnx.ModelProto, digits_xy) -> None:
    x = digits_xy[0].reshape(-1, 64)[:300]
    ctx = _context(tmp_path, mlp, x, calibrate=True)
    reference = _run(ctx.source, x)
    built = _build_all(ctx, x)
    assert isinstance(built["bf16"], str) and "CPU provider" in built["bf16"]
    expected = {"graph-ort", "graph-onnxsim", "fp16", "int8-dynamic-pc", "int8-dynamic",
                "int8-static-s8s8-pc", "int8-static-u8s8-pc", "int8-static-s8s8",
                "int4-b32", "int4-b128"}  # fmt: skip
    assert expected <= set(built)
    for name in expected:
        out = built[name]
        assert isinstance(out, np.ndarray), f"{name}: {out}"
        assert out.shape == reference.shape and out.dtype == np.float32
        error = np.abs(out - reference).max(axis=1)  # per sample
        if name.startswith("graph") or name == "fp16":
            assert error.max() < (1e-5 if name.startswith("graph") else 5e-3), name
        else:
            # 8- and 4-bit arithmetic moves borderline samples' probabilities a lot (how many
            # depends on the CPU's kernels: VNNI or not); the typical sample must stay close and
            # the decisions agree (below).
            assert np.median(error) < 0.05, (name, np.median(error))
        agreement = np.mean(out.argmax(1) == reference.argmax(1))
        assert agreement > 0.95, (name, agreement)


def test_conv_net_int4_is_skipped_with_a_reason(tmp_path: Path, conv: onnx.ModelProto) -> None:
    x = np.random.default_rng(1).random((64, 1, 8, 8), dtype=np.float32)
    ctx = _context(tmp_path, conv, x, calibrate=True)
    reference = _run(ctx.source, x)
    built = _build_all(ctx, x)
    reason = built["int4"]
    assert isinstance(reason, str) and "MatMul" in reason and "0%" in reason
    for name in ("graph-ort", "fp16", "int8-dynamic-pc", "int8-static-s8s8-pc"):
        out = built[name]
        assert isinstance(out, np.ndarray), f"{name}: {out}"
        assert out.shape == reference.shape, name
        if name == "int8-static-s8s8-pc":
            # Loads and runs; its accuracy depends on the CPU's int8 kernels (on an AVX-512 VNNI
            # EPYC it is 30 % of the output scale off on every sample of this conv net, elsewhere
            # close): the optimizer's accuracy gate measures it, this test cannot promise it.
            continue
        scale = np.abs(reference).max()
        assert np.abs(out - reference).max() < 0.1 * scale, name


def test_static_quantization_needs_real_calibration_data(tmp_path: Path, conv) -> None:
    ctx = _context(tmp_path, conv, np.zeros((1, 1, 8, 8), np.float32), calibrate=False)
    reason = METHODS["int8-static"]().check(ctx)
    assert reason is not None and reason.startswith("no calibration data")
    ctx.calibration = Samples({"image": np.zeros((4, 1, 8, 8), np.float32)}, "random", real=False)
    assert METHODS["int8-static"]().check(ctx) is not None


def test_unknown_method_is_named() -> None:
    from forwardpass.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="bogus"):
        resolve_methods(["graph", "bogus"])


def test_fp16_casts_are_aligned_with_their_declared_type() -> None:
    """A Cast left at FP32 whose output the converter declared FP16 (seen on a transformer's
    attention-mask Cast) is retargeted, so the model loads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from forwardpass.optimize.methods.fp16 import _align_casts

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["mask"], ["m16"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["m16", "x"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("mask", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])],
        value_info=[helper.make_tensor_value_info("m16", TensorProto.FLOAT16, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _align_casts(model) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"mask": np.array([1, 0]), "x": np.array([2, 3], np.float16)})
    assert y.tolist() == [2.0, 0.0]
    assert _align_casts(onnx.ModelProto.FromString(model.SerializeToString())) == 0
