"""gRPC ``ModelStreamInfer`` for a generation model, through tritonclient's streaming API:
one response per token chunk, the last flagged ``triton_final_response``; bad input as the
stream's error; a cancelled stream frees its cache slot; metadata shows the text tensors."""

from __future__ import annotations

import json
import queue
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rawhttp import raw_request

grpcclient = pytest.importorskip("tritonclient.grpc")

NAME = "smollm2-135m-instruct"
FRANCE = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def server(
    smollm2_repository: Path, tmp_path_factory: pytest.TempPathFactory, start_module_server: Any
) -> Any:
    """The zoo model with a 256-position cache holding one sequence (HTTP and gRPC)."""
    from forwardpass.generation.kvcache import KVCache
    from forwardpass.zoo.decoder import DecoderShape

    source = smollm2_repository / NAME
    target = tmp_path_factory.mktemp("generate-grpc") / NAME
    target.mkdir()
    (target / "1").symlink_to(source / "1", target_is_directory=True)
    for name in ("tokenizer.json", "chat_template.jinja"):
        shutil.copy(source / name, target / name)
    settings = {
        "context_length": 256,
        "cache_bytes": KVCache.slot_bytes(DecoderShape(30, 3, 64, 49152), 256),
        "max_tokens_limit": 200,
        "default_max_tokens": 40,
        "stop_token_ids": json.loads((source / "ZOO.json").read_text())["stop_token_ids"],
    }
    text = json.dumps(settings).replace("\\", "\\\\").replace('"', '\\"')
    (target / "config.pbtxt").write_text(
        f'name: "{NAME}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        f'parameters {{ key: "generation" value {{ string_value: "{text}" }} }}\n'
    )
    return start_module_server(target.parent, "--log-level", "WARNING")


def _text(value: str | bytes, name: str = "text_input") -> Any:
    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value], dtype=object))
    return tensor


def _run(server: Any, inputs: list[Any], **kwargs: Any) -> list[tuple[Any, Any]]:
    """One streamed request; every answer up to the final one (or the first error)."""
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            client.async_stream_infer(NAME, inputs, request_id="r1", **kwargs)
            got: list[tuple[Any, Any]] = []
            while True:
                result, error = answers.get(timeout=60)
                got.append((result, error))
                if error is not None:
                    return got
                final = result.get_response().parameters["triton_final_response"]
                if final.bool_param:
                    return got
        finally:
            client.stop_stream()


def _metric(server: Any, name: str) -> float:
    body = raw_request(server.address, "GET", "/metrics").body.decode()
    match = re.search(rf'^{name}{{model="{NAME}",version="1"}} (\S+)$', body, re.M)
    assert match, name
    return float(match.group(1))


def test_stream_sends_one_response_per_chunk(server: Any) -> None:
    got = _run(server, [_text(FRANCE)], parameters={"max_tokens": 30})
    assert all(error is None for _, error in got)
    assert len(got) >= 3
    texts = [r.as_numpy("text_output")[0].decode() for r, _ in got]
    assert "".join(texts) == ANSWER
    flags = [r.get_response().parameters["triton_final_response"].bool_param for r, _ in got]
    assert flags == [False] * (len(got) - 1) + [True]
    last = got[-1][0].get_response()
    assert last.id == "r1" and last.model_name == NAME and last.model_version == "1"
    assert last.parameters["finish_reason"].string_param == "stop"


def test_stream_false_and_sampling_parameters_tensor(server: Any) -> None:
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([False]))
    sampling = _text(json.dumps({"max_tokens": 4}), "sampling_parameters")
    got = _run(server, [_text(FRANCE), stream, sampling])
    assert len(got) == 1 and got[0][1] is None
    result = got[0][0]
    assert result.as_numpy("text_output")[0].decode() == "The capital of France"
    assert result.get_response().parameters["finish_reason"].string_param == "length"


@pytest.mark.parametrize(
    ("inputs", "parameters", "message"),
    [
        (lambda: [_text("hi")], {"max_tokens": 0}, "max_tokens must be between 1 and 200"),
        (lambda: [_text("hi")], {"best_of": 2}, "unknown sampling parameter"),
        (lambda: [_text("hi " * 300)], {}, "context length of model .* is 256"),
        (lambda: [_text(b"\xff\xfe")], {}, "not UTF-8"),
        (lambda: [_text("hi", "prompt")], {}, "unexpected input.*'prompt'"),
        (
            lambda: [_text("hi"), _text('{"max_tokens": 2}', "sampling_parameters")],
            {"max_tokens": 3},
            "given both",
        ),
        (lambda: [_text("hi"), _text("{", "sampling_parameters")], {}, "not JSON"),
    ],
)
def test_bad_input_is_the_stream_error(
    server: Any, inputs: Any, parameters: dict[str, Any], message: str
) -> None:
    got = _run(server, inputs(), parameters=parameters)
    assert len(got) == 1
    _, error = got[0]
    assert error is not None and re.search(message, str(error)), error


def test_cancelled_stream_frees_the_slot(server: Any) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    cancelled = _metric(server, "forwardpass_generation_cancelled_total")
    client = grpcclient.InferenceServerClient(server.grpc_address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer(
        NAME, [_text(FRANCE)], parameters={"max_tokens": 200, "ignore_eos": True}
    )
    for _ in range(3):
        _, error = answers.get(timeout=60)
        assert error is None
    assert _metric(server, "forwardpass_generation_cache_used_bytes") > 0
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 10
    while _metric(server, "forwardpass_generation_cache_used_bytes") > 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)
    assert _metric(server, "forwardpass_generation_cancelled_total") == cancelled + 1
    # The one slot serves the next stream.
    got = _run(server, [_text(FRANCE)], parameters={"max_tokens": 30})
    assert "".join(r.as_numpy("text_output")[0].decode() for r, _ in got) == ANSWER


def test_metadata_shows_the_text_tensors(server: Any) -> None:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        meta = client.get_model_metadata(NAME, as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("text_input", "BYTES", ["1"]),
        ("stream", "BOOL", ["1"]),
        ("sampling_parameters", "BYTES", ["1"]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("text_output", "BYTES", ["-1"])
    ]
    http = raw_request(server.address, "GET", f"/v2/models/{NAME}").json()
    assert [t["name"] for t in http["inputs"]] == ["text_input", "stream", "sampling_parameters"]
