"""``backend: "openvino"`` behind a real ``forwardpass serve``, driven by tritonclient: an IR
model built in the test, and the embedded digits model's ONNX file read by OpenVINO, whose
answers must match ONNX Runtime's; the repository index and ``forwardpass models`` say which
device and precision each instance runs with."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

import forwardpass  # noqa: E402
from forwardpass.cli.models import models  # noqa: E402

DIGITS = Path(forwardpass.__file__).parent / "models" / "digits"
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def affine() -> onnx.ModelProto:
    """``y = x @ W`` with x [batch, 4], y [batch, 3]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openvino") / "models"
    version = root / "affine" / "1"
    version.mkdir(parents=True)
    onnx.save(affine(), str(version / "source.onnx"))
    # compress_to_fp16=False: save_model would otherwise store the weights as FP16.
    ov.save_model(
        ov.Core().read_model(str(version / "source.onnx")),
        str(version / "model.xml"),
        compress_to_fp16=False,
    )
    (version / "source.onnx").unlink()
    (root / "affine" / "config.pbtxt").write_text(
        'backend: "openvino"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        "dynamic_batching { }\n"
        'parameters { key: "INFERENCE_NUM_THREADS" value: { string_value: "1" } }\n'
        'parameters { key: "PERFORMANCE_HINT" value: { string_value: "LATENCY" } }\n',
        encoding="utf-8",
    )
    # The embedded digits model twice: as shipped (onnxruntime) and read by OpenVINO.
    shutil.copytree(DIGITS, root / "digits")
    shutil.copytree(DIGITS, root / "digits_ov")
    text = (DIGITS / "config.pbtxt").read_text(encoding="utf-8")
    (root / "digits_ov" / "config.pbtxt").write_text(
        text.replace('name: "digits"', 'name: "digits_ov"').replace(
            'platform: "onnxruntime_onnx"',
            'backend: "openvino"\ndefault_model_filename: "model.onnx"\n'
            'parameters { key: "INFERENCE_NUM_THREADS" value: { string_value: "1" } }',
        ),
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def server(start_module_server, repository: Path) -> Iterator[object]:  # type: ignore[no-untyped-def]
    yield start_module_server(repository, "--no-grpc")


def infer(client: httpclient.InferenceServerClient, model: str, name: str, array: np.ndarray):  # type: ignore[no-untyped-def]
    tensor = httpclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor])


def test_ir_model_answers(server) -> None:  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(server.address)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = infer(client, "affine", "x", x).as_numpy("y")
    np.testing.assert_allclose(out, x @ WEIGHTS, rtol=1e-5, atol=1e-5)
    assert client.get_model_metadata("affine")["platform"] == "openvino"


def test_digits_read_by_openvino_agrees_with_onnxruntime(server) -> None:  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(server.address)
    images = np.random.default_rng(1).uniform(0, 16, (16, 1, 8, 8)).astype(np.float32)
    ours = infer(client, "digits_ov", "image", images).as_numpy("probabilities")
    reference = infer(client, "digits", "image", images).as_numpy("probabilities")
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)
    assert (ours.argmax(1) == reference.argmax(1)).all()


def test_bad_shape_is_a_client_error(server) -> None:  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(server.address)
    with pytest.raises(InferenceServerException, match="shape") as caught:
        infer(client, "affine", "x", np.zeros((2, 5), np.float32))
    assert caught.value.status() == "400"


def test_index_and_models_say_where_each_instance_runs(server) -> None:  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(server.address)
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["affine"]["execution"] == [
        {"providers": ["openvino:CPU"], "precision": "fp32", "fallback": False}
    ]
    assert index["digits"]["execution"] == [
        {"providers": ["CPUExecutionProvider"], "precision": "model", "fallback": False}
    ]
    result = CliRunner().invoke(models, ["--url", server.url, "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["digits_ov"]["detail"] == "runs on openvino:CPU (fp32)"
    assert rows["digits"]["detail"] == "runs on CPUExecutionProvider (model)"
