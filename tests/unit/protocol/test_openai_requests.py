"""Decoding the OpenAI API's request bodies: what is honoured, what is accepted at its neutral
value, and the precise 400 (naming the field) for everything else."""

from __future__ import annotations

from typing import Any

import pytest

from forwardpass.errors import InvalidArgument, InvalidParameter
from forwardpass.protocol.openai_requests import (
    ChatMessage,
    decode_body,
    decode_completion,
    decode_embedding,
)

HI = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> Any:
    return decode_completion({"model": "m", "messages": HI, **fields}, chat=True)


def test_chat_fields_become_sampling_parameters() -> None:
    call = chat(
        max_completion_tokens=5, temperature=0.5, top_p=0.9, seed=3, stop="x", stream=True,
        stream_options={"include_usage": True}, top_k=4, ignore_eos=True,
    )  # fmt: skip
    assert call.parameters == {
        "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["x"],
        "top_k": 4, "ignore_eos": True,
    }  # fmt: skip
    assert call.stream and call.include_usage and call.messages == (ChatMessage("user", "hi"),)


def test_neutral_and_bookkeeping_fields_are_accepted() -> None:
    call = chat(
        n=1, presence_penalty=0, frequency_penalty=0.0, logprobs=False, top_logprobs=0,
        logit_bias={}, response_format={"type": "text"}, tools=[], tool_choice="none",
        user="u", metadata={"a": "b"}, store=False, service_tier="auto",
        parallel_tool_calls=True, max_tokens=None, temperature=None, stop=None, seed=None,
    )  # fmt: skip
    assert call.parameters == {} and not call.stream


def test_equal_max_tokens_fields_agree() -> None:
    assert chat(max_tokens=7, max_completion_tokens=7).parameters == {"max_tokens": 7}


def test_message_shapes() -> None:
    call = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "one"}, {"type": "text", "text": "two"},
            ]},
            {"role": "assistant", "content": "ok"},
        ]
    )  # fmt: skip
    assert call.messages == (
        ChatMessage("system", "be brief"),
        ChatMessage("user", "one\ntwo"),
        ChatMessage("assistant", "ok"),
    )


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"n": 3}, "n", "one choice per request"),
        ({"n": True}, "n", "n=true is not supported"),
        ({"temperature": True}, "temperature", "between 0 and 2"),
        ({"max_tokens": 1.5}, "max_tokens", "must be an integer"),
        ({"max_completion_tokens": -1}, "max_completion_tokens", "at least 1"),
        ({"stop": [""]}, "stop", "non-empty"),
        ({"stop": 5}, "stop", "non-empty string"),
        ({"seed": "1"}, "seed", "must be an integer"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"stream": True, "stream_options": {"x": 1}}, "stream_options", "only 'include_usage'"),
        ({"response_format": {"type": "json_object"}}, "response_format", "plain text only"),
        ({"tools": [{"type": "function"}]}, "tools", "no tool calling"),
        ({"frobnicate": 1}, "frobnicate", "unrecognized request argument"),
        ({"model": ""}, "model", "needs 'model'"),
        ({"messages": "hi"}, "messages", "non-empty list"),
        ({"messages": ["hi"]}, "messages[0]", "must be an object"),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role", "needs 'role'"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "got null"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "messages[0].tool_calls",
            "unsupported field",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0]",
            "'input_audio' is not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages[0].content[0]",
            "must be an object",
        ),
    ],
)
def test_bad_chat_fields_name_the_parameter(
    fields: dict[str, Any], param: str, message: str
) -> None:
    with pytest.raises(InvalidParameter, match=message) as info:
        chat(**fields)
    assert info.value.param == param


def test_completion_prompts() -> None:
    body = {"model": "m", "prompt": ["once"], "echo": False, "best_of": 1, "logprobs": 0}
    assert decode_completion(body, chat=False).prompt == "once"
    with pytest.raises(InvalidParameter, match=r"unrecognized.*messages"):
        decode_completion({"model": "m", "prompt": "x", "messages": HI}, chat=False)
    with pytest.raises(InvalidParameter, match="needs 'prompt'"):
        decode_completion({"model": "m"}, chat=False)
    with pytest.raises(InvalidParameter, match="prompt is empty"):
        decode_completion({"model": "m", "prompt": ""}, chat=False)


def test_embedding_inputs() -> None:
    call = decode_embedding({"model": "e", "input": "a", "encoding_format": "base64"})
    assert call.texts == ("a",) and call.base64
    call = decode_embedding({"model": "e", "input": ["a", "b"], "user": "u", "dimensions": 4})
    assert call.texts == ("a", "b") and not call.base64 and call.dimensions == 4
    with pytest.raises(InvalidParameter, match="unrecognized"):
        decode_embedding({"model": "e", "input": "a", "truncate": True})


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"\xc3\x28", "not UTF-8"), (b"", "needs a JSON body"), (b"{", "malformed JSON"),
     (b'"x"', "must be a JSON object")],
)  # fmt: skip
def test_bodies(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_body(body, "chat/completions")
