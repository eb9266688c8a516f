"""Small models built here: a MatMul MLP trained on digits, a conv net, and repositories."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from forwardpass.optimize.measure import MeasureSettings

DIGITS = Path(__file__).resolve().parents[3] / "src" / "forwardpass" / "models" / "digits"

#: Measurement light enough for tests: the numbers are not the point there.
FAST = MeasureSettings(warmup=1, iterations=5, max_seconds=0.2, batch_sizes=(1, 8), isolate=False)


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def mlp_model(hidden: tuple[int, ...] = (128, 128)) -> onnx.ModelProto:
    """An MLP trained on digits (features [N,64] → probabilities [N,10]) as MatMul + Add."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = digits_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden, max_iter=40, random_state=0).fit(x.reshape(len(x), -1), y)
    nodes, inits, current = [], [], "features"
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]),
        ]
        current = f"z{i}"
        if i < len(clf.coefs_) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"h{i}"]))
            current = f"h{i}"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """A small random conv net: image [N,1,8,8] → logits [N,10]."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["image", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            init("c1w", 8, 1, 3, 3),
            init("c1b", 8),
            init("c2w", 16, 8, 3, 3),
            init("c2b", 16),
            init("fw", 10, 16),
            init("fb", 10),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_repo(root: Path, name: str, model: onnx.ModelProto) -> Path:
    """``root/name/1/model.onnx`` with no config (auto-completed, batching on)."""
    (root / name / "1").mkdir(parents=True)
    onnx.save(model, str(root / name / "1" / "model.onnx"))
    return root


@pytest.fixture(scope="session")
def mlp() -> onnx.ModelProto:
    return mlp_model()


@pytest.fixture(scope="session")
def conv() -> onnx.ModelProto:
    return conv_model()


@pytest.fixture
def digits_repo(tmp_path: Path) -> Path:
    """The embedded digits model copied into a fresh repository."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(DIGITS, root / "digits")
    return root


@pytest.fixture
def digits_npz(tmp_path: Path) -> Path:
    """Validation data for the digits model: image [N,1,8,8] = digits/16, with labels."""
    x, y = digits_data()
    path = tmp_path / "digits.npz"
    np.savez(path, image=x[:400, None], labels=y[:400])
    return path


@pytest.fixture
def fast() -> MeasureSettings:
    return FAST


@pytest.fixture
def make_repo() -> object:
    return write_repo


@pytest.fixture(scope="session")
def digits_xy() -> tuple[np.ndarray, np.ndarray]:
    return digits_data()
