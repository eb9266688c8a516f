"""``ModelStreamInfer`` on a real server with ``tritonclient.grpc``: decoupled Python models
answering 0..n times with Triton's final-response flag, models that are not decoupled, and a
sequence model driven by ``sequence_id``/``sequence_start``/``sequence_end``."""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "runtime"))
sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "scheduling"))
sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
import python_models as pm
from test_sequence import acc_config, accumulator

#: Decoupled: one response per value, the final flag riding on the last response.
FINAL_ON_LAST_CONFIG = """
name: "count_down"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

FINAL_ON_LAST = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            if n < 0:
                sender.send(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("negative count")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            for k in range(n, 0, -1):
                out = pb_utils.Tensor("OUT", np.array([k], np.int32))
                flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if k == 1 else 0
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]), flags=flags)
            if n == 0:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


@pytest.fixture(scope="module")
def stream_server(start_module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = pm.triton_examples(tmp_path_factory.mktemp("streams") / "models")
    pm.write(root, "count_down", FINAL_ON_LAST_CONFIG, FINAL_ON_LAST)
    (root / "acc" / "1").mkdir(parents=True)
    (root / "acc" / "1" / "model.onnx").write_bytes(accumulator().SerializeToString())
    (root / "acc" / "config.pbtxt").write_text(acc_config())
    return start_module_server(root, "--log-level", "WARNING")


@pytest.fixture
def gclient(stream_server: Any) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(stream_server.grpc_address)
    try:
        yield triton
    finally:
        triton.close()


class Stream:
    """A started stream whose answers land in a queue."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client
        self.answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def get(self, n: int) -> list[tuple[Any, Any]]:
        return [self.answers.get(timeout=30) for _ in range(n)]

    def close(self) -> list[tuple[Any, Any]]:
        """Stop the stream (it waits for every answer owed) and return what is left."""
        self.client.stop_stream()
        left = []
        while not self.answers.empty():
            left.append(self.answers.get_nowait())
        return left


def _repeat(values: list[int], delay_ms: int = 1) -> list[grpcclient.InferInput]:
    tensors = [
        grpcclient.InferInput("IN", [len(values)], "INT32"),
        grpcclient.InferInput("DELAY", [len(values)], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    tensors[0].set_data_from_numpy(np.array(values, np.int32))
    tensors[1].set_data_from_numpy(np.full(len(values), delay_ms, np.uint32))
    tensors[2].set_data_from_numpy(np.array([0], np.uint32))
    return tensors


def _int(name: str, value: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput(name, [1], "INT32")
    tensor.set_data_from_numpy(np.array([value], np.int32))
    return [tensor]


def _final(result: Any) -> bool | None:
    params = result.get_response().parameters
    return params["triton_final_response"].bool_param if "triton_final_response" in params else None


def test_decoupled_responses_stream_in_order_without_an_empty_final(
    gclient: grpcclient.InferenceServerClient,
) -> None:
    stream = Stream(gclient)
    gclient.async_stream_infer("repeat_int32", _repeat([7, 8, 9]), request_id="r")
    got = stream.get(3)
    assert stream.close() == []  # the model's final flag came alone: nothing more is sent
    assert [e for _, e in got] == [None] * 3
    assert [r.as_numpy("OUT").tolist() for r, _ in got] == [[7], [8], [9]]
    assert [r.as_numpy("IDX").tolist() for r, _ in got] == [[0], [1], [2]]
    assert {r.get_response().id for r, _ in got} == {"r"}
    assert [_final(r) for r, _ in got] == [False, False, False]


def test_decoupled_responses_arrive_as_they_are_sent(
    gclient: grpcclient.InferenceServerClient,
) -> None:
    stream = Stream(gclient)
    start = time.monotonic()
    gclient.async_stream_infer("repeat_int32", _repeat([1, 2], delay_ms=600))
    [(first, error)] = stream.get(1)
    first_at = time.monotonic() - start
    stream.get(1)
    stream.close()
    assert error is None and first.as_numpy("OUT").tolist() == [1]
    assert first_at < 1.1, first_at  # not held back until the request ended (1.2 s)


def test_decoupled_empty_final_when_asked(gclient: grpcclient.InferenceServerClient) -> None:
    stream = Stream(gclient)
    gclient.async_stream_infer(
        "repeat_int32", _repeat([4, 5]), request_id="e", enable_empty_final_response=True
    )
    got = stream.get(3)
    assert stream.close() == []
    assert [_final(r) for r, _ in got] == [False, False, True]
    empty = got[2][0].get_response()
    assert (empty.id, empty.model_name, list(empty.outputs)) == ("e", "repeat_int32", [])
    assert list(empty.raw_output_contents) == []

    # Zero responses: nothing at all by default, one empty final when asked.
    stream = Stream(gclient)
    gclient.async_stream_infer("square_int32", _int("IN", 0), request_id="zero")
    gclient.async_stream_infer(
        "square_int32", _int("IN", 0), request_id="zero-final", enable_empty_final_response=True
    )
    [(result, error)] = stream.get(1)
    assert stream.close() == []
    assert error is None and result.get_response().id == "zero-final" and _final(result)


def test_decoupled_final_flag_on_the_last_response(
    gclient: grpcclient.InferenceServerClient,
) -> None:
    stream = Stream(gclient)
    gclient.async_stream_infer("count_down", _int("IN", 3), request_id="c")
    gclient.async_stream_infer(
        "count_down", _int("IN", 2), request_id="c2", enable_empty_final_response=True
    )
    got = stream.get(5)
    assert stream.close() == []  # the flag rode on a response: no empty one, even when asked
    by_id: dict[str, list[Any]] = {}
    for result, error in got:
        assert error is None, error
        by_id.setdefault(result.get_response().id, []).append(result)
    assert [r.as_numpy("OUT").tolist() for r in by_id["c"]] == [[3], [2], [1]]
    assert [_final(r) for r in by_id["c"]] == [False, False, True]
    assert [_final(r) for r in by_id["c2"]] == [False, True]


def test_decoupled_error_on_the_stream(gclient: grpcclient.InferenceServerClient) -> None:
    stream = Stream(gclient)
    gclient.async_stream_infer("count_down", _int("IN", -1), request_id="bad")
    gclient.async_stream_infer("count_down", _int("IN", 1), request_id="after")
    got = stream.get(2)
    stream.close()
    errors = [e for _, e in got if e is not None]
    results = [r for r, e in got if e is None]
    assert len(errors) == 1 and "negative count" in errors[0].message()
    assert [r.get_response().id for r in results] == ["after"]


def test_decoupled_over_unary_infer_is_refused(gclient: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        gclient.infer("repeat_int32", _repeat([1]))
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "decoupled" in info.value.message()


def test_not_decoupled_answers_once_per_request_in_order(
    gclient: grpcclient.InferenceServerClient,
) -> None:
    stream = Stream(gclient)
    inputs = [grpcclient.InferInput(n, [4], "FP32") for n in ("INPUT0", "INPUT1")]
    for k in range(3):
        inputs[0].set_data_from_numpy(np.full(4, k, np.float32))
        inputs[1].set_data_from_numpy(np.ones(4, np.float32))
        gclient.async_stream_infer(
            "add_sub", inputs, request_id=f"a{k}", enable_empty_final_response=True
        )
    got = stream.get(3)
    assert stream.close() == []
    assert [r.get_response().id for r, _ in got] == ["a0", "a1", "a2"]
    assert [r.as_numpy("OUTPUT0").tolist() for r, _ in got] == [[k + 1.0] * 4 for k in range(3)]
    assert [_final(r) for r, _ in got] == [True, True, True]


def _acc(value: float) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], np.float32))
    return [tensor]


def test_sequence_over_grpc(gclient: grpcclient.InferenceServerClient) -> None:
    # Unary: two interleaved sequences.
    def step(value: float, sid: int | str, **flags: bool) -> float:
        result = gclient.infer("acc", _acc(value), sequence_id=sid, **flags)
        return float(result.as_numpy("y")[0, 0])

    assert step(1, 41, sequence_start=True) == 1
    assert step(10, 42, sequence_start=True) == 10
    assert step(2, 41) == 3
    assert step(5, 42) == 15
    result = gclient.infer("acc", _acc(4), sequence_id=41, sequence_end=True)
    assert result.as_numpy("y").tolist() == [[7.0]]
    assert result.as_numpy("corrid").tolist() == [[41]]
    assert result.as_numpy("end").tolist() == [[1]]
    assert step(1, 42, sequence_end=True) == 16
    with pytest.raises(InferenceServerException) as info:
        gclient.infer("acc", _acc(1), sequence_id=41)  # ended: needs a new start
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "41" in info.value.message()

    # On a stream, in order.
    stream = Stream(gclient)
    for i, value in enumerate([1.0, 2.0, 3.0]):
        gclient.async_stream_infer(
            "acc",
            _acc(value),
            request_id=f"q{i}",
            sequence_id=77,
            sequence_start=i == 0,
            sequence_end=i == 2,
        )
    got = stream.get(3)
    stream.close()
    assert [e for _, e in got] == [None] * 3
    assert [r.as_numpy("y").tolist() for r, _ in got] == [[[1.0]], [[3.0]], [[6.0]]]
