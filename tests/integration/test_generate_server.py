"""Triton's generate extension on a real server: the embedded-weights SmolLM2 answering over
``generate`` and ``generate_stream``, bad input, a client that goes away mid-stream, and more
concurrent streams than the cache has room for."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from rawhttp import raw_request

NAME = "smollm2-135m-instruct"
PATH = f"/v2/models/{NAME}"
SLOTS = 2
FRANCE = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def generate_server(
    smollm2_repository: Path, tmp_path_factory: pytest.TempPathFactory, start_module_server: Any
) -> Any:
    """The zoo model with a small cache: 256 positions, room for two sequences, two waiting."""
    from forwardpass.generation.kvcache import KVCache
    from forwardpass.zoo.decoder import DecoderShape

    source = smollm2_repository / NAME
    target = tmp_path_factory.mktemp("generate") / NAME
    target.mkdir()
    (target / "1").symlink_to(source / "1", target_is_directory=True)
    for name in ("tokenizer.json", "chat_template.jinja"):
        shutil.copy(source / name, target / name)
    stop = json.loads((source / "ZOO.json").read_text())["stop_token_ids"]
    settings = {
        "context_length": 256,
        "cache_bytes": KVCache.slot_bytes(DecoderShape(30, 3, 64, 49152), 256) * SLOTS,
        "max_waiting": 2,
        "max_tokens_limit": 200,
        "default_max_tokens": 40,
        "stop_token_ids": stop,
    }
    text = json.dumps(settings).replace("\\", "\\\\").replace('"', '\\"')
    (target / "config.pbtxt").write_text(
        f'name: "{NAME}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        f'parameters {{ key: "generation" value {{ string_value: "{text}" }} }}\n'
    )
    return start_module_server(target.parent, "--no-grpc", "--log-level", "WARNING")


def metric(server: Any, name: str) -> float:
    body = raw_request(server.address, "GET", "/metrics").body.decode()
    match = re.search(rf'^{name}{{model="{NAME}",version="1"}} (\S+)$', body, re.M)
    assert match, name
    return float(match.group(1))


def events(body: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")
    ]


def test_generate_answers(generate_server: Any) -> None:
    response = raw_request(
        generate_server.address, "POST", f"{PATH}/generate",
        {"text_input": FRANCE, "parameters": {"max_tokens": 30}, "id": "q1"},
    )  # fmt: skip
    assert response.status == 200, response.body
    assert response.json() == {
        "model_name": NAME,
        "model_version": "1",
        "id": "q1",
        "text_output": "The capital of France is Paris.",
        "finish_reason": "stop",
    }


def test_generate_stream_sends_events(generate_server: Any) -> None:
    response = raw_request(
        generate_server.address, "POST", f"{PATH}/generate_stream",
        {"text_input": FRANCE, "max_tokens": 30},
    )  # fmt: skip
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    sent = events(response.body)
    assert len(sent) >= 3  # token by token
    assert "".join(e["text_output"] for e in sent) == "The capital of France is Paris."
    assert [e.get("finish_reason") for e in sent][-1] == "stop"
    assert all("finish_reason" not in e for e in sent[:-1])
    assert metric(generate_server, "forwardpass_generation_tokens_total") > 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text_input": "hi " * 300}, "context length of model .* is 256"),
        ({"text_input": "hi", "max_tokens": 0}, "max_tokens must be between 1 and 200"),
        ({"text_input": "hi", "max_tokens": 201}, "max_tokens must be between 1 and 200"),
        ({"text_input": "hi", "parameters": {"best_of": 2}}, "unknown sampling parameter"),
        ({"text_input": "hi", "temperature": "hot"}, "must be a number"),
        ({"text_input": 5}, "needs 'text_input', a string"),
        ({"prompt": "hi"}, "unknown sampling parameter.*'prompt'|needs 'text_input'"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "malformed JSON"),
    ],
)
def test_bad_input_is_400(generate_server: Any, body: Any, message: str) -> None:
    for action in ("generate", "generate_stream"):
        response = raw_request(generate_server.address, "POST", f"{PATH}/{action}", body)
        assert response.status == 400, response.body
        assert re.search(message, response.error), response.error


def test_disconnect_mid_stream_frees_the_slot(generate_server: Any) -> None:
    host, port = generate_server.address.rsplit(":", 1)
    body = json.dumps({"text_input": FRANCE, "max_tokens": 200, "ignore_eos": True}).encode()
    cancelled = metric(generate_server, "forwardpass_generation_cancelled_total")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {PATH}/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(65536)
        assert metric(generate_server, "forwardpass_generation_cache_used_bytes") > 0
    deadline = time.monotonic() + 10
    while metric(generate_server, "forwardpass_generation_cache_used_bytes") > 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)
    assert metric(generate_server, "forwardpass_generation_cancelled_total") == cancelled + 1


def test_more_streams_than_the_cache_holds(generate_server: Any) -> None:
    """Eight streams, two slots, two waiting places: whatever arrives while two run and two
    wait is refused with 503 at once, the others finish; the server goes on answering."""

    def one(i: int) -> Any:
        return raw_request(
            generate_server.address, "POST", f"{PATH}/generate_stream",
            {"text_input": FRANCE, "max_tokens": 12, "ignore_eos": True}, timeout=120,
        )  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    refused = [r for r in responses if r.status == 503]
    served = [r for r in responses if r.status == 200]
    assert len(served) + len(refused) == 8 and len(served) >= SLOTS
    assert all("at capacity" in r.error for r in refused)
    for response in served:
        sent = events(response.body)
        assert sent[-1]["finish_reason"] == "length"
    assert metric(generate_server, "forwardpass_generation_running_sequences") == 0
    assert raw_request(generate_server.address, "GET", "/v2/health/ready").status == 200
