"""Structured pruning: the ONNX → torch converter, FLOPs, and the proof on the digits CNN."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from forwardpass.errors import Unsupported
from forwardpass.optimize import OptimizeOptions, optimize
from forwardpass.optimize.feedforward import count_flops, unsupported_ops
from forwardpass.optimize.measure import MeasureSettings, measure
from forwardpass.optimize.pruning import (
    NO_SPEEDUP,
    PruneOptions,
    prune_structured,
    prune_unstructured,
    run_onnx,
)

torch = pytest.importorskip("torch")

DIGITS = Path(__file__).resolve().parents[3] / "src" / "forwardpass" / "models" / "digits"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits/16 as [N,1,8,8], split as the embedded model's TRAINING.json says."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    split = json.loads((DIGITS / "TRAINING.json").read_text())["split"]
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(  # type: ignore[no-any-return]
        x,
        digits.target,
        test_size=split["test_fraction"],
        random_state=split["random_state"],
        stratify=digits.target,
    )


def bn_model(seed: int = 1) -> onnx.ModelProto:
    """Conv → BatchNorm → Clip(0, 6) → AveragePool → Reshape[0,-1] → Gemm → LogSoftmax."""
    rng = np.random.default_rng(seed)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(array.astype(np.float32), name)

    inits = [
        init("cw", rng.standard_normal((6, 1, 3, 3)) * 0.5),
        init("cb", rng.standard_normal(6)),
        init("g", rng.uniform(0.5, 1.5, 6)),
        init("b", rng.standard_normal(6) * 0.1),
        init("m", rng.standard_normal(6) * 0.1),
        init("v", rng.uniform(0.5, 2.0, 6)),
        init("lo", np.array(0.0)),
        init("hi", np.array(6.0)),
        init("fw", rng.standard_normal((10, 6 * 16)) * 0.2),
        init("fb", np.zeros(10)),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
        helper.make_node("Clip", ["n", "lo", "hi"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_converter_matches_onnx_runtime(
    mlp: onnx.ModelProto, conv: onnx.ModelProto, digits_xy: tuple[np.ndarray, np.ndarray]
) -> None:
    from forwardpass.optimize.torch_graph import convert, verify

    x = digits_xy[0][:64]
    digits = onnx.load(str(DIGITS / "1" / "model.onnx"))
    for model, feed in (
        (digits, {"image": x[:, None]}),
        (mlp, {"features": x.reshape(len(x), -1)}),
        (conv, {"image": x[:, None]}),
        (bn_model(), {"image": x[:, None]}),
    ):
        assert verify(model, convert(model), feed) <= 1e-5


def test_flops_are_counted_from_shapes(mlp: onnx.ModelProto) -> None:
    digits = count_flops(onnx.load(str(DIGITS / "1" / "model.onnx")))
    # conv 1→8 and 8→16 (3×3 over 8×8 positions), dense 256→32 and 32→10
    assert digits.macs == 8 * 9 * 64 + 16 * 8 * 9 * 64 + 256 * 32 + 32 * 10
    assert digits.flops == 2 * digits.macs and len(digits.by_node) == 4
    assert count_flops(mlp).macs == 64 * 128 + 128 * 128 + 128 * 10


def test_unsupported_op_is_named(conv: onnx.ModelProto) -> None:
    from forwardpass.optimize.torch_graph import convert

    model = onnx.ModelProto()
    model.CopyFrom(conv)
    model.graph.node[1].op_type = "Elu"  # not a converter op
    assert unsupported_ops(model) == ["Elu"]
    with pytest.raises(Unsupported, match="unsupported op Elu for pruning/distillation"):
        convert(model)


def test_batchnorm_and_blocks_follow_the_channels(tmp_path: Path) -> None:
    x_train, _, _, _ = digits_split()
    model = bn_model()
    result = prune_structured(
        model, tmp_path / "bn.onnx", x_train[:256], options=PruneOptions(0.3, "sensitivity")
    )
    assert result.reduction >= 0.3 and result.max_abs_diff <= 1e-4
    assert len(result.channels) == 1 and "log_probs" not in result.channels
    assert "LogSoftmax follows" in " ".join(result.kept_whole.values())


@pytest.mark.slow
def test_proof_digits_pruned_40_percent_within_one_point(tmp_path: Path) -> None:
    """PROOF: ≥ 40 % fewer FLOPs, held-out accuracy drop ≤ 1 point after a short fine-tune."""
    x_train, x_test, _, y_test = digits_split()
    source = tmp_path / "digits.onnx"
    source.write_bytes((DIGITS / "1" / "model.onnx").read_bytes())
    model = onnx.load(str(source))
    before = float(np.mean(run_onnx(source, x_test).argmax(1) == y_test))
    settings = MeasureSettings(
        warmup=5, iterations=300, max_seconds=1.0, batch_sizes=(1, 256), isolate=False
    )
    for score in ("l1", "sensitivity"):
        pruned = tmp_path / f"pruned-{score}.onnx"
        result = prune_structured(model, pruned, x_train, options=PruneOptions(0.4, score))
        after = float(np.mean(run_onnx(pruned, x_test).argmax(1) == y_test))
        assert result.reduction >= 0.40
        assert result.flops_after == count_flops(onnx.load(str(pruned))).flops
        assert result.parameters_after < result.parameters_before
        assert before - after <= 0.01, (score, before, after)
        speed = [
            measure(
                p,
                {"image": x_test},
                ["CPUExecutionProvider"],
                settings,
                batching=True,
                max_batch=256,
            ).by_batch["256"]["p50_ms"]
            for p in (source, pruned)
        ]
        print(
            f"{score}: FLOPs −{result.reduction:.1%}, accuracy {before:.4f} → {after:.4f}, "
            f"batch-256 p50 {speed[0]:.4f} → {speed[1]:.4f} ms ({speed[0] / speed[1]:.2f}×)"
        )
    zeros = prune_unstructured(model, tmp_path / "zeros.onnx", 0.5)
    assert zeros.flops_after == zeros.flops_before and NO_SPEEDUP in zeros.notes()


@pytest.mark.slow
def test_prune_is_an_optimize_method(
    digits_repo: Path, digits_npz: Path, fast: MeasureSettings
) -> None:
    options = OptimizeOptions(
        "digits",
        digits_repo,
        validation=digits_npz,
        methods=("prune",),
        measure=fast,
        dry_run=True,
        max_accuracy_drop=0.02,
    )
    report = optimize(options).report
    by_name = {c.name: c for c in report.candidates}
    structured = by_name["prune-l1-40"]
    assert structured.status == "measured", structured.reason
    assert structured.notes[0].startswith("FLOPs/sample 173,696 →")
    assert structured.parameters is not None and structured.parameters < 9802
    zeros = by_name["prune-unstructured-50"]
    assert zeros.status == "measured" and NO_SPEEDUP in zeros.notes


def test_without_torch_prune_is_skipped_and_the_others_run(
    digits_repo: Path, digits_npz: Path, fast: MeasureSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    options = OptimizeOptions(
        "digits",
        digits_repo,
        validation=digits_npz,
        methods=("graph", "prune"),
        measure=fast,
        dry_run=True,
    )
    by_name = {c.name: c for c in optimize(options).report.candidates}
    assert by_name["prune"].status == "skipped"
    assert (
        "needs torch" in by_name["prune"].reason and "forwardpass[torch]" in by_name["prune"].reason
    )
    assert by_name["graph-ort"].status == "measured"
