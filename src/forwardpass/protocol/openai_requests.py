"""The OpenAI API's request bodies, decoded and checked (``protocol.openai`` serves them).

Each body becomes a small frozen dataclass; everything wrong in it is an
:class:`InvalidParameter` naming the field (OpenAI's ``param``), so a client learns exactly what
to change. What a field may hold:

* **Honoured**: ``model``, ``messages`` / ``prompt``, ``stream``, ``stream_options``
  (``include_usage``), ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``,
  ``seed``, ``stop``; and, as vLLM does, the extensions ``top_k``, ``ignore_eos`` and
  ``stop_token_ids`` (the ``openai`` client sends them with ``extra_body``).
* **Accepted, no effect**: ``user``, ``metadata``, ``store``, ``service_tier``,
  ``parallel_tool_calls``: bookkeeping that does not change the answer.
* **Accepted only at their neutral value** (anything else is 400, saying so): ``n`` and
  ``best_of`` 1, ``presence_penalty`` / ``frequency_penalty`` 0, ``logprobs`` false,
  ``top_logprobs`` 0, ``logit_bias`` empty, ``echo`` false, ``suffix`` none,
  ``response_format`` text, ``tools`` empty, ``tool_choice`` none, ``modalities`` text.
  ``null`` is always the default.
* **Anything else** is an unrecognized argument (400), as OpenAI answers it.

A chat message is ``{"role", "content"}`` (and an optional ``name``); ``role`` is ``system``,
``developer`` (rendered as ``system``), ``user`` or ``assistant``; ``content`` is a string or a
list of ``{"type": "text", "text": ...}`` parts (joined with newlines). Images, audio, files
and tool messages are refused: the models served here read text only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from forwardpass.errors import InvalidArgument, InvalidParameter

__all__ = [
    "ChatMessage",
    "CompletionCall",
    "EmbeddingCall",
    "decode_body",
    "decode_completion",
    "decode_embedding",
]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class CompletionCall:
    """A ``/v1/completions`` (``prompt``) or ``/v1/chat/completions`` (``messages``) call."""

    model: str
    #: The sampling parameters, in ``generation.sampling``'s names (validated there).
    parameters: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class EmbeddingCall:
    model: str
    texts: tuple[str, ...]
    #: ``encoding_format`` base64: little-endian float32 bytes, base64 encoded.
    base64: bool = False
    #: ``dimensions`` when given (it must equal the model's).
    dimensions: int | None = None


def decode_body(body: bytes, what: str) -> dict[str, Any]:
    """The JSON object of a request body (400 for non-UTF-8 bytes, bad JSON, a non-object)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"the {what} request body is not UTF-8 text: {exc}") from None
    if not body.strip():
        raise InvalidArgument(f"the {what} request needs a JSON body")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON in the {what} request: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"the {what} request body must be a JSON object")
    return value


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    # JSON's true/false are not numbers here, whatever Python thinks.
    return isinstance(value, kind) and not isinstance(value, bool)


def _neutral(check: Callable[[Any], bool], says: str) -> Callable[[str, Any], None]:
    def accept(field: str, value: Any) -> None:
        if value is not None and not check(value):
            raise InvalidParameter(
                field, f"{field}={orjson.dumps(value).decode()} is not supported: {says}"
            )

    return accept


def _anything(field: str, value: Any) -> None:
    return None


_ONE_CHOICE = "forwardpass generates one choice per request; send n=1 (or omit it)"
_NO_LOGPROBS = "forwardpass does not return log probabilities"

#: Fields that change nothing (bookkeeping) or are accepted only at their neutral value.
_PASSIVE: dict[str, Callable[[str, Any], None]] = {
    "user": _anything,
    "metadata": _anything,
    "store": _anything,
    "service_tier": _anything,
    "parallel_tool_calls": _anything,
    "n": _neutral(lambda v: v == 1 and _is(v, int), _ONE_CHOICE),
    "presence_penalty": _neutral(lambda v: _is(v, (int, float)) and v == 0, "no penalties"),
    "frequency_penalty": _neutral(lambda v: _is(v, (int, float)) and v == 0, "no penalties"),
    "logprobs": _neutral(lambda v: v is False, _NO_LOGPROBS),
    "top_logprobs": _neutral(lambda v: _is(v, int) and v == 0, _NO_LOGPROBS),
    "logit_bias": _neutral(lambda v: v == {}, "forwardpass applies no logit bias"),
    "response_format": _neutral(
        lambda v: v == {"type": "text"}, "forwardpass answers plain text only (type 'text')"
    ),
    "tools": _neutral(lambda v: v == [], "forwardpass has no tool calling"),
    "tool_choice": _neutral(lambda v: v == "none", "forwardpass has no tool calling"),
    "functions": _neutral(lambda v: v == [], "forwardpass has no tool calling"),
    "function_call": _neutral(lambda v: v == "none", "forwardpass has no tool calling"),
    "modalities": _neutral(lambda v: v == ["text"], "forwardpass answers text only"),
    "audio": _neutral(lambda v: False, "forwardpass answers text only"),
    "prediction": _neutral(lambda v: False, "forwardpass has no predicted outputs"),
    "reasoning_effort": _neutral(lambda v: False, "the served models do not reason"),
}
_COMPLETION_PASSIVE: dict[str, Callable[[str, Any], None]] = {
    **{k: _PASSIVE[k] for k in ("user", "n", "presence_penalty", "frequency_penalty")},
    "logprobs": _neutral(lambda v: _is(v, int) and v == 0, _NO_LOGPROBS),
    "logit_bias": _PASSIVE["logit_bias"],
    "best_of": _neutral(lambda v: v == 1 and _is(v, int), _ONE_CHOICE.replace("n=1", "best_of=1")),
    "echo": _neutral(lambda v: v is False, "forwardpass does not echo the prompt"),
    "suffix": _neutral(lambda v: False, "forwardpass does not insert text (no suffix)"),
}
#: Sampling fields passed on under the scheduler's names (it checks ranges; the types and
#: OpenAI's own bounds are checked here).
_SAMPLING = ("temperature", "top_p", "seed", "top_k", "ignore_eos", "stop_token_ids")
_COMMON = ("model", "stream", "stream_options", "stop", "max_tokens")
_CHAT = (*_COMMON, "messages", "max_completion_tokens", *_SAMPLING)
_COMPLETION = (*_COMMON, "prompt", *_SAMPLING)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def decode_completion(body: dict[str, Any], chat: bool) -> CompletionCall:
    """A chat (``chat``) or completions request body → :class:`CompletionCall`."""
    passive = _PASSIVE if chat else _COMPLETION_PASSIVE
    known = _CHAT if chat else _COMPLETION
    _refuse_unknown(body, (*known, *passive))
    for field, check in passive.items():
        if field in body:
            check(field, body[field])
    model = _model(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidParameter("stream", f"stream must be true or false, got {stream!r}")
    include_usage = _stream_options(body.get("stream_options"), bool(stream))
    parameters: dict[str, Any] = {}
    max_tokens = _max_tokens(body, chat)
    if max_tokens is not None:
        parameters["max_tokens"] = max_tokens
    for field in _SAMPLING:
        if body.get(field) is not None:
            parameters[field] = body[field]
    temperature = parameters.get("temperature")
    if temperature is not None and not (_is(temperature, (int, float)) and 0 <= temperature <= 2):
        raise InvalidParameter(
            "temperature", f"temperature must be a number between 0 and 2, got {temperature!r}"
        )
    top_p = parameters.get("top_p")
    if top_p is not None and not (_is(top_p, (int, float)) and 0 < top_p <= 1):
        raise InvalidParameter("top_p", f"top_p must be a number in (0, 1], got {top_p!r}")
    seed = parameters.get("seed")
    if seed is not None and not _is(seed, int):
        raise InvalidParameter("seed", f"seed must be an integer, got {seed!r}")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidParameter(
                "stop", "stop must be a non-empty string or a list of non-empty strings"
            )
        if stop:
            parameters["stop"] = stop
    if chat:
        return CompletionCall(
            model, parameters, bool(stream), include_usage, messages=_messages(body)
        )
    return CompletionCall(model, parameters, bool(stream), include_usage, prompt=_prompt(body))


def decode_embedding(body: dict[str, Any]) -> EmbeddingCall:
    """An ``/v1/embeddings`` request body → :class:`EmbeddingCall`."""
    _refuse_unknown(body, ("model", "input", "encoding_format", "dimensions", "user"))
    model = _model(body)
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts:
        raise InvalidParameter(
            "input", "input must be a string or a non-empty list of strings"
            + ("" if raw is None else f" (got {type(raw).__name__})")
        )  # fmt: skip
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidParameter(
                "input",
                f"input[{i}] is {type(text).__name__}: forwardpass embeds text only "
                "(token-id inputs are not supported)",
            )
        if not text.strip():
            raise InvalidParameter("input", f"input[{i}] is empty")
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise InvalidParameter(
            "encoding_format", f"encoding_format must be 'float' or 'base64', got {encoding!r}"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and not (_is(dimensions, int) and dimensions > 0):
        raise InvalidParameter(
            "dimensions", f"dimensions must be a positive integer, got {dimensions!r}"
        )
    return EmbeddingCall(model, tuple(texts), encoding == "base64", dimensions)


def _refuse_unknown(body: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise InvalidParameter(
            unknown[0],
            f"unrecognized request argument(s) supplied: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})",
        )


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParameter("model", "the request needs 'model', the name of a served model")
    return model


def _stream_options(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise InvalidParameter(
            "stream_options", "stream_options is only allowed when stream is true"
        )
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidParameter(
            "stream_options", "stream_options must be an object with only 'include_usage'"
        )
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InvalidParameter(
            "stream_options", "stream_options.include_usage must be true or false"
        )
    return include


def _max_tokens(body: Mapping[str, Any], chat: bool) -> int | None:
    given = {f: body[f] for f in ("max_tokens", "max_completion_tokens") if body.get(f) is not None}
    for field, value in given.items():
        if not _is(value, int):
            raise InvalidParameter(field, f"{field} must be an integer, got {value!r}")
        if value < 1:
            raise InvalidParameter(field, f"{field} must be at least 1, got {value}")
    values = set(given.values())
    if len(values) > 1:
        raise InvalidParameter(
            "max_completion_tokens",
            f"max_tokens ({given['max_tokens']}) and max_completion_tokens "
            f"({given['max_completion_tokens']}) disagree; send one of them",
        )
    return values.pop() if values else None


def _prompt(body: Mapping[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidParameter("prompt", "prompt is empty")
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) and prompt:
        raise InvalidParameter(
            "prompt", f"prompt holds {len(prompt)} prompts: send one prompt per request"
        )
    if isinstance(prompt, list):
        raise InvalidParameter(
            "prompt", "prompt must be a string: token-id prompts are not supported"
        )
    raise InvalidParameter(
        "prompt", "the request needs 'prompt', a string"
        + ("" if prompt is None else f" (got {type(prompt).__name__})")
    )  # fmt: skip


def _messages(body: Mapping[str, Any]) -> tuple[ChatMessage, ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidParameter(
            "messages", "messages must be a non-empty list of {role, content} objects"
        )
    return tuple(_message(i, m) for i, m in enumerate(raw))


def _message(i: int, message: Any) -> ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise InvalidParameter(
            where, f"{where} must be an object with 'role' and 'content', got "
            f"{type(message).__name__}"
        )  # fmt: skip
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidParameter(f"{where}.role", f"{where} needs 'role', a string")
    if role in ("tool", "function"):
        raise InvalidParameter(
            f"{where}.role", f"{where}: role {role!r} is not supported (no tool calling)"
        )
    if role not in _ROLES:
        raise InvalidParameter(
            f"{where}.role",
            f"{where}: unknown role {role!r} (known: {', '.join(_ROLES)})",
        )
    extra = sorted(set(message) - {"role", "content", "name"})
    if extra:
        raise InvalidParameter(
            f"{where}.{extra[0]}",
            f"{where}: unsupported field(s) {', '.join(extra)} (a message has role, content "
            "and an optional name)",
        )
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidParameter(f"{where}.name", f"{where}.name must be a string")
    if "content" not in message:
        raise InvalidParameter(f"{where}.content", f"{where} needs 'content'")
    return ChatMessage(_ROLES[role], _content(where, message["content"]))


def _content(where: str, content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParameter(
            f"{where}.content",
            f"{where}.content must be a string or a list of text parts, got "
            f"{'null' if content is None else type(content).__name__}",
        )
    texts: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            if isinstance(kind, str):
                raise InvalidParameter(
                    at, f"{at}: content part type {kind!r} is not supported (text only)"
                )
            raise InvalidParameter(at, f"{at} must be an object {{'type': 'text', 'text': ...}}")
        if not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
            raise InvalidParameter(at, f"{at}: a text part is {{'type': 'text', 'text': <str>}}")
        texts.append(part["text"])
    return "\n".join(texts)
