"""The OpenAI API on a real server, driven by the official ``openai`` client unchanged: the
embedded SmolLM2 answering chat and completions (streamed and whole), the zoo's MiniLM
serving embeddings equal to its Triton-API answer, the models list, every bad input as the
right ``openai`` exception, a client that goes away mid-stream, and eight streams in one batch."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rawhttp import raw_request

openai = pytest.importorskip("openai")

LLM = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
SLOTS = 8
CONTEXT = 256
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
RAW_FRANCE = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
ANSWER = "The capital of France is Paris."


def _generation_entry(source: Path, target: Path) -> None:
    """SmolLM2 with a small cache: 256 positions, room for eight sequences, none waiting."""
    from forwardpass.generation.kvcache import KVCache
    from forwardpass.zoo.decoder import DecoderShape

    target.mkdir()
    (target / "1").symlink_to(source / "1", target_is_directory=True)
    for name in ("tokenizer.json", "chat_template.jinja"):
        shutil.copy(source / name, target / name)
    settings = {
        "context_length": CONTEXT,
        "cache_bytes": KVCache.slot_bytes(DecoderShape(30, 3, 64, 49152), CONTEXT) * SLOTS,
        "max_waiting": 0,
        "max_tokens_limit": 200,
        "default_max_tokens": 40,
        "stop_token_ids": json.loads((source / "ZOO.json").read_text())["stop_token_ids"],
    }
    text = json.dumps(settings).replace("\\", "\\\\").replace('"', '\\"')
    (target / "config.pbtxt").write_text(
        f'name: "{LLM}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        f'parameters {{ key: "generation" value {{ string_value: "{text}" }} }}\n'
    )


@pytest.fixture(scope="module")
def server(
    smollm2_repository: Path,
    minilm_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_module_server: Any,
) -> Any:
    repository = tmp_path_factory.mktemp("openai")
    _generation_entry(smollm2_repository / LLM, repository / LLM)
    (repository / EMBEDDER).symlink_to(minilm_repository / EMBEDDER, target_is_directory=True)
    return start_module_server(repository, "--no-grpc", "--log-level", "WARNING")


@pytest.fixture
def client(server: Any) -> Iterator[Any]:
    # No retries: a 503 must reach the test, not be retried away.
    with openai.OpenAI(
        base_url=f"http://{server.address}/v1", api_key="x", max_retries=0, timeout=120
    ) as client:
        yield client


def metric(server: Any, name: str, le: str = "") -> float:
    body = raw_request(server.address, "GET", "/metrics").body.decode()
    inner = (f'le="{le}",' if le else "") + f'model="{LLM}",version="1"'
    match = re.search(rf"^{name}{{{re.escape(inner)}}} (\S+)$", body, re.M)
    assert match, name
    return float(match.group(1))


def test_chat_streams_a_coherent_answer(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(model=LLM, messages=FRANCE, stream=True, temperature=0)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "Paris" in text, text
    assert len(chunks) > 4  # token by token
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_chat_whole_answer_with_usage(client: Any) -> None:
    answer = client.chat.completions.create(
        model=LLM, messages=FRANCE, max_tokens=30, user="u", logprobs=False, presence_penalty=0
    )
    assert answer.object == "chat.completion" and answer.model == LLM
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    usage = answer.usage
    assert usage.prompt_tokens > 10 and 5 < usage.completion_tokens < 30
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_is_the_models_greedy_answer(client: Any) -> None:
    answer = client.completions.create(model=LLM, prompt=RAW_FRANCE, max_tokens=30)
    assert answer.object == "text_completion"
    assert answer.choices[0].text == ANSWER and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == 7  # "The capital of France is Paris."
    short = client.completions.create(model=LLM, prompt=RAW_FRANCE, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert ANSWER.startswith(short.choices[0].text)


def test_max_completion_tokens_bounds_the_chat(client: Any) -> None:
    answer = client.chat.completions.create(model=LLM, messages=FRANCE, max_completion_tokens=2)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 2


def test_stream_include_usage_ends_with_a_usage_chunk(client: Any) -> None:
    chunks = list(
        client.completions.create(
            model=LLM, prompt=RAW_FRANCE, stream=True, stream_options={"include_usage": True}
        )
    )
    *text_chunks, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 7
    assert last.usage.total_tokens == last.usage.prompt_tokens + 7
    assert all(c.usage is None for c in text_chunks)
    assert "".join(c.choices[0].text for c in text_chunks) == ANSWER
    assert text_chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stop", ["Paris", [" is", "Paris"]])
def test_stop_strings_end_the_answer(client: Any, stop: Any) -> None:
    answer = client.completions.create(model=LLM, prompt=RAW_FRANCE, stop=stop)
    expected = "The capital of France" if isinstance(stop, list) else "The capital of France is "
    assert answer.choices[0].text == expected and answer.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=LLM, messages=FRANCE, stop=stop, stream=True, temperature=0
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed)
    assert "Paris" not in text


def test_seed_reproduces_a_sampled_answer(client: Any) -> None:
    def sample(seed: int) -> str:
        answer = client.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "Tell me a story about a dragon."}],
            temperature=1.0,
            top_p=0.95,
            seed=seed,
            max_tokens=24,
        )
        return str(answer.choices[0].message.content)

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_models_lists_generation_and_embedding_models(client: Any) -> None:
    models = client.models.list()
    assert sorted(m.id for m in models.data) == [EMBEDDER, LLM]
    assert all(m.object == "model" and m.owned_by == "forwardpass" for m in models.data)
    assert client.models.retrieve(LLM).id == LLM
    with pytest.raises(openai.NotFoundError, match="'nope' does not exist"):
        client.models.retrieve("nope")


def _triton_embedding(server: Any, text: str) -> np.ndarray:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [text]}]}
    response = raw_request(server.address, "POST", f"/v2/models/{EMBEDDER}/infer", body)
    assert response.status == 200, response.body
    return np.asarray(response.json()["outputs"][0]["data"], np.float32)


def test_embeddings_equal_the_triton_api_answer(client: Any, server: Any) -> None:
    texts = ["A man is eating a piece of bread.", "The stock market fell sharply on Monday."]
    default = client.embeddings.create(model=EMBEDDER, input=texts)  # the client asks base64
    floats = client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    one = client.embeddings.create(model=EMBEDDER, input=texts[0])
    assert [d.index for d in default.data] == [0, 1] and len(one.data) == 1
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > 10
    for i, text in enumerate(texts):
        triton = _triton_embedding(server, text)
        for answer in (default.data[i], floats.data[i]):
            vector = np.asarray(answer.embedding, np.float32)
            assert vector.shape == (384,)
            cosine = vector @ triton / np.linalg.norm(vector) / np.linalg.norm(triton)
            assert abs(cosine - 1) < 1e-6
    np.testing.assert_allclose(one.data[0].embedding, floats.data[0].embedding, atol=1e-6)
    # base64 on the wire is little-endian float32, what the client decodes.
    raw = raw_request(
        server.address, "POST", "/v1/embeddings",
        {"model": EMBEDDER, "input": texts[0], "encoding_format": "base64"},
    ).json()  # fmt: skip
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(decoded, floats.data[0].embedding, atol=1e-7)


def test_more_texts_than_one_batch_keep_their_order(client: Any) -> None:
    texts = [f"sentence number {i} is about {'cats' if i % 2 else 'stocks'}" for i in range(70)]
    answer = client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    assert [d.index for d in answer.data] == list(range(70))  # 64 + 6: two requests
    for i in (0, 63, 64, 69):
        alone = client.embeddings.create(model=EMBEDDER, input=texts[i], encoding_format="float")
        np.testing.assert_allclose(answer.data[i].embedding, alone.data[0].embedding, atol=1e-5)


CHAT_ERRORS = [
    ({"n": 2}, "n=2 is not supported"),
    ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ({"max_tokens": 201}, "max_tokens must be between 1 and 200"),
    ({"max_tokens": 10, "max_completion_tokens": 11}, "disagree"),
    ({"temperature": 3}, "temperature must be a number between 0 and 2"),
    ({"top_p": 0}, r"top_p must be a number in \(0, 1\]"),
    ({"presence_penalty": 0.5}, "presence_penalty=0.5 is not supported"),
    ({"logprobs": True}, "does not return log probabilities"),
    ({"extra_body": {"best_of": 2}}, "unrecognized request argument.*best_of"),
    ({"extra_body": {"top_k": -1}}, "top_k must be >= 0"),
    ({"stream_options": {"include_usage": True}}, "only allowed when stream is true"),
    ({"messages": [{"role": "user", "content": "hi " * 300}]}, "context length .* is 256"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"content": "hi"}]}, r"messages\[0\] needs 'role'"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "unknown role 'wizard'"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\] needs 'content'"),
    ({"messages": [{"role": "tool", "content": "1", "tool_call_id": "a"}]}, "no tool calling"),
    (
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
        ]}]},
        r"content\[1\]: content part type 'image_url' is not supported",
    ),
    ({"model": EMBEDDER}, "is an embedding model; it does not serve chat"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "message"), CHAT_ERRORS)
def test_bad_chat_requests_are_bad_request_errors(
    client: Any, fields: dict[str, Any], message: str
) -> None:
    call = {"model": LLM, "messages": FRANCE, **fields}
    for stream in (False, True):
        if stream and "stream_options" in fields:
            continue
        with pytest.raises(openai.BadRequestError, match=message) as info:
            client.chat.completions.create(**call, stream=stream)
        assert info.value.status_code == 400
        assert info.value.type == "invalid_request_error"


def test_the_error_names_the_parameter(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=LLM, messages=FRANCE, temperature=9)
    assert info.value.param == "temperature"
    assert info.value.body["message"].startswith("temperature must be")


def test_unknown_model_is_not_found(client: Any) -> None:
    with pytest.raises(openai.NotFoundError, match="'gpt-4' does not exist") as info:
        client.chat.completions.create(model="gpt-4", messages=FRANCE)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"model": LLM, "input": "x"}, "is a generation model; it does not serve embeddings"),
        ({"model": EMBEDDER, "input": []}, "non-empty list of strings"),
        ({"model": EMBEDDER, "input": [""]}, r"input\[0\] is empty"),
        ({"model": EMBEDDER, "input": [[1, 2]]}, "token-id inputs are not supported"),
        ({"model": EMBEDDER, "input": "x", "dimensions": 8}, "384-dimensional"),
        ({"model": EMBEDDER, "input": "x", "encoding_format": "int8"}, "'float' or 'base64'"),
    ],
)
def test_bad_embedding_requests(client: Any, call: dict[str, Any], message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        client.embeddings.create(**call)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"prompt": ["a", "b"]}, "send one prompt per request"),
        ({"prompt": [1, 2, 3]}, "token-id prompts are not supported"),
        ({"prompt": "hi", "echo": True}, "does not echo"),
        ({"prompt": "hi", "best_of": 3}, "best_of=3 is not supported"),
        ({"prompt": "hi " * 300}, "context length .* is 256"),
    ],
)
def test_bad_completion_requests(client: Any, call: dict[str, Any], message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        client.completions.create(model=LLM, **call)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/chat/completions", b"\xff\xfe{}", 400, "not UTF-8"),
        ("POST", "/v1/chat/completions", b"{not json", 400, "malformed JSON"),
        ("POST", "/v1/completions", b"[1]", 400, "must be a JSON object"),
        ("POST", "/v1/embeddings", b"", 400, "needs a JSON body"),
        ("GET", "/v1/chat/completions", None, 400, "use POST"),
        ("GET", "/v1/nothing", None, 404, "unknown URL"),
    ],
)
def test_wire_errors_have_the_openai_shape(
    server: Any, method: str, path: str, body: Any, status: int, message: str
) -> None:
    response = raw_request(server.address, method, path, body)
    assert response.status == status
    document = response.json()
    assert set(document) == {"error"} and set(document["error"]) == {
        "message", "type", "param", "code",
    }  # fmt: skip
    assert message in document["error"]["message"]
    assert document["error"]["type"] == "invalid_request_error"


def test_disconnect_mid_stream_frees_the_slot(server: Any) -> None:
    host, port = server.address.rsplit(":", 1)
    body = json.dumps(
        {"model": LLM, "messages": FRANCE, "stream": True, "max_tokens": 200, "ignore_eos": True}
    ).encode()
    cancelled = metric(server, "forwardpass_generation_cancelled_total")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b""
        while received.count(b"data: ") < 4:
            received += sock.recv(65536)
        assert b"chat.completion.chunk" in received
        assert metric(server, "forwardpass_generation_cache_used_bytes") > 0
    deadline = time.monotonic() + 10
    while metric(server, "forwardpass_generation_cache_used_bytes") > 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)
    assert metric(server, "forwardpass_generation_cancelled_total") == cancelled + 1


def test_eight_streams_share_one_batch_and_a_ninth_is_refused(client: Any, server: Any) -> None:
    """Eight streams fill the eight cache slots and decode together (the batch-size histogram
    sees steps of more than one row); one more, with no waiting room, is a 503."""
    batches = metric(server, "forwardpass_generation_batch_size_count")
    single = metric(server, "forwardpass_generation_batch_size_bucket", "1.0")
    wide = metric(server, "forwardpass_generation_batch_size_bucket", "4.0")
    started = threading.Barrier(SLOTS + 1)

    def one(i: int) -> str:
        stream = client.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": f"Count from {i} to {i + 50}."}],
            stream=True,
            max_tokens=60,
            extra_body={"ignore_eos": True},
        )
        text = []
        for n, chunk in enumerate(stream):
            if n == 1:
                started.wait(timeout=120)
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
        return "".join(text)

    with ThreadPoolExecutor(SLOTS) as pool:
        futures = [pool.submit(one, i) for i in range(SLOTS)]
        started.wait(timeout=120)  # all eight have their first token: all hold a slot
        assert metric(server, "forwardpass_generation_running_sequences") == SLOTS
        with pytest.raises(openai.InternalServerError, match="at capacity") as info:
            client.chat.completions.create(model=LLM, messages=FRANCE)
        assert info.value.status_code == 503
        answers = [f.result(timeout=300) for f in futures]
    assert all(answers)
    steps = metric(server, "forwardpass_generation_batch_size_count") - batches
    more_than_one = steps - (
        metric(server, "forwardpass_generation_batch_size_bucket", "1.0") - single
    )
    assert more_than_one > 0.5 * steps, (steps, more_than_one)
    over_four = steps - (metric(server, "forwardpass_generation_batch_size_bucket", "4.0") - wide)
    assert over_four > 0  # steps ran with five to eight rows together
    assert metric(server, "forwardpass_generation_running_sequences") == 0


def test_api_key_guards_the_openai_routes(minilm_repository: Path, start_server: Any) -> None:
    server = start_server(minilm_repository, "--no-grpc", "--api-key", "sesame")
    base = f"http://{server.address}/v1"
    with openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as info:
            wrong.embeddings.create(model=EMBEDDER, input="x")
        assert info.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    with openai.OpenAI(base_url=base, api_key="sesame", max_retries=0) as right:
        assert [m.id for m in right.models.list().data] == [EMBEDDER]
        assert len(right.embeddings.create(model=EMBEDDER, input="x").data[0].embedding) == 384
