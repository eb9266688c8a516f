"""PyTorch models served by a real ``forwardpass serve`` from a Triton-layout repository
(``platform: "pytorch_libtorch"``), driven by tritonclient over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from torch_models import (  # noqa: E402
    DictOut,
    HalfTypes,
    Linear,
    Raises,
    TwoInTwoOut,
    script,
    tensor,
    write_config,
)

ONE_THREAD = 'parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }'
BATCHER = "dynamic_batching { max_queue_delay_microseconds: 200000 }"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("torch") / "models"
    script(Linear(), root / "linear" / "1" / "model.pt")
    write_config(
        root,
        "linear",
        [tensor("INPUT__0", "TYPE_FP32", [4])],
        [tensor("OUTPUT__0", "TYPE_FP32", [3])],
        extra=ONE_THREAD,
    )
    script(TwoInTwoOut(), root / "two" / "1" / "model.pt")
    write_config(
        root,
        "two",
        [tensor("a", "TYPE_FP32", [3]), tensor("b", "TYPE_FP32", [3])],
        [tensor("SUM__0", "TYPE_FP32", [3]), tensor("PRODUCT__1", "TYPE_FP32", [3])],
        max_batch_size=32,
        extra=BATCHER + "\n" + ONE_THREAD,
    )
    script(DictOut(), root / "dict" / "1" / "model.pt")
    write_config(
        root,
        "dict",
        [tensor("x", "TYPE_FP32", [2])],
        [tensor("total", "TYPE_FP32", [1]), tensor("double", "TYPE_FP32", [2])],
    )
    script(HalfTypes(), root / "half" / "1" / "model.pt")
    write_config(
        root,
        "half",
        [tensor("INPUT__0", "TYPE_FP16", [3]), tensor("INPUT__1", "TYPE_BF16", [3])],
        [
            tensor("OUTPUT__0", "TYPE_FP16", [3]),
            tensor("OUTPUT__1", "TYPE_BF16", [3]),
            tensor("OUTPUT__2", "TYPE_FP32", [3]),
        ],
    )
    script(Raises(), root / "raises" / "1" / "model.pt")
    write_config(
        root,
        "raises",
        [tensor("INPUT__0", "TYPE_FP32", [2])],
        [tensor("OUTPUT__0", "TYPE_FP32", [2])],
    )
    # A broken one beside them: the others must not notice.
    script(TwoInTwoOut(), root / "arity" / "1" / "model.pt")
    write_config(
        root,
        "arity",
        [tensor("INPUT__0", "TYPE_FP32", [3])],
        [tensor("OUTPUT__0", "TYPE_FP32", [3]), tensor("OUTPUT__1", "TYPE_FP32", [3])],
    )
    return root


@pytest.fixture(scope="module")
def client(start_module_server: Any, repository: Path) -> Iterator[Any]:
    server = start_module_server(repository, "--log-level", "WARNING")
    triton = httpclient.InferenceServerClient(server.address, concurrency=16)
    try:
        yield triton
    finally:
        triton.close()


def infer(client: Any, model: str, outputs: list[str], **arrays: tuple[np.ndarray, str]) -> Any:
    inputs = []
    for name, (array, datatype) in arrays.items():
        item = httpclient.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array, binary_data=True)
        inputs.append(item)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
    return client.infer(model, inputs, outputs=wanted)


def test_served_outputs_equal_eager_pytorch_exactly(client: Any) -> None:
    assert client.is_model_ready("linear")
    x = np.random.default_rng(3).standard_normal((6, 4), dtype=np.float32)
    got = infer(client, "linear", ["OUTPUT__0"], INPUT__0=(x, "FP32")).as_numpy("OUTPUT__0")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's INTRA_OP_THREAD_COUNT
    try:
        with torch.inference_mode():
            want = Linear()(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(got, want)


def test_metadata_reports_the_platform_and_config_names(client: Any) -> None:
    meta = client.get_model_metadata("two")
    assert meta["platform"] == "pytorch_libtorch"
    assert [i["name"] for i in meta["inputs"]] == ["a", "b"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(client: Any) -> None:
    def stats() -> Any:
        return client.get_inference_statistics("two")["model_stats"][0]

    before = stats()
    n = 16
    pending = []
    for i in range(n):
        a = np.full((1, 3), i, np.float32)
        b = np.arange(3, dtype=np.float32).reshape(1, 3) + 1
        inputs = []
        for name, array in (("a", a), ("b", b)):
            item = httpclient.InferInput(name, [1, 3], "FP32")
            item.set_data_from_numpy(array, binary_data=True)
            inputs.append(item)
        pending.append((a, b, client.async_infer("two", inputs)))
    for a, b, request in pending:
        result = request.get_result(timeout=30)
        np.testing.assert_array_equal(result.as_numpy("SUM__0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("PRODUCT__1"), a * b)
    after = stats()
    assert after["inference_count"] - before["inference_count"] == n
    assert 1 <= after["execution_count"] - before["execution_count"] < n


def test_dict_outputs_are_served_by_name(client: Any) -> None:
    x = np.array([[1, 2], [3, 4]], np.float32)
    result = infer(client, "dict", ["total", "double"], x=(x, "FP32"))
    np.testing.assert_array_equal(result.as_numpy("total"), [[3], [7]])
    np.testing.assert_array_equal(result.as_numpy("double"), x * 2)


def test_fp16_and_bf16_are_served_bit_exactly(client: Any) -> None:
    h = np.array([[0.5, -1.25, 3e4]], np.float16)
    ml_dtypes = pytest.importorskip("ml_dtypes")  # tritonclient's BF16 arrays
    b = np.array([[0.1, 2.5, -3.3e30]], ml_dtypes.bfloat16)
    result = infer(
        client,
        "half",
        ["OUTPUT__0", "OUTPUT__1", "OUTPUT__2"],
        INPUT__0=(h, "FP16"),
        INPUT__1=(b, "BF16"),
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), h * 2)
    doubled = (torch.from_numpy(b.view(np.int16)).view(torch.bfloat16) * 2).view(torch.int16)
    assert result.as_numpy("OUTPUT__1").view(np.int16).tolist() == doubled.numpy().tolist()
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__2"), h.astype(np.float32))


def test_a_forward_that_raises_answers_500_with_its_message_and_keeps_serving(
    client: Any,
) -> None:
    bad = np.array([[1, 5000]], np.float32)
    with pytest.raises(InferenceServerException, match="input too large for this model") as err:
        infer(client, "raises", ["OUTPUT__0"], INPUT__0=(bad, "FP32"))
    assert "500" in str(err.value.status()) or "Internal" in str(err.value)
    good = np.array([[1, 2]], np.float32)
    result = infer(client, "raises", ["OUTPUT__0"], INPUT__0=(good, "FP32"))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), good + 1)


def test_a_broken_model_is_unavailable_with_its_reason_in_the_index(client: Any) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["arity"]["state"] == "UNAVAILABLE"
    assert "forward(a, b) takes 2 input(s), but the config declares 1" in index["arity"]["reason"]
    assert index["linear"]["state"] == "READY"
