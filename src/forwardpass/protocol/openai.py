"""The OpenAI API on the HTTP server: ``/v1/completions``, ``/v1/chat/completions``,
``/v1/embeddings``, ``/v1/models`` and ``/v1/models/{id}``.

The official ``openai`` client works against it unchanged
(``openai.OpenAI(base_url="http://HOST:PORT/v1", api_key=...)``). Bodies are decoded in
``protocol.openai_requests``; generation runs on the engine's generation scheduler
(:meth:`Engine.generate`), embeddings through the model's own inference path (its text
processing, batcher and statistics), so both APIs give the same numbers for the same text.

Which model serves what: a **generation model** (config parameter ``generation``) serves the
completions and chat routes, the latter through its chat template. An **embedding model** is
one whose client-facing inputs are a single text input (processing kind ``text``) and whose
single output is a float32 vector per row (``all-minilm-l6-v2`` from the zoo); it serves
``/v1/embeddings``. ``/v1/models`` lists both kinds.

Streams are server-sent events in OpenAI's chunk format ending with ``data: [DONE]``; the
answer is held until the first token, so a request refused before it (the cache is full, 503)
is a plain HTTP error the client raises. Errors are
``{"error": {"message", "type", "param", "code"}}`` with the status of ``errors.WIRE_STATUS``;
an error after the first chunk is one ``data: {"error": ...}`` event (the ``openai`` client
raises it). A client that goes away mid-stream cancels its sequence, freeing its cache slot.

``--api-key`` guards every route here as it guards inference (``Authorization: Bearer``,
which is what OpenAI clients send); the restricted-API group is ``inference``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson

from forwardpass import __version__
from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import (
    ForwardpassError,
    InvalidArgument,
    InvalidParameter,
    NotFound,
    Unauthenticated,
    Unsupported,
    http_status,
)
from forwardpass.generation.scheduler import GenerationStream, TokenEvent
from forwardpass.processing.text import TextInput
from forwardpass.protocol.http import HttpRequest, HttpResponse, _decompress
from forwardpass.protocol.openai_requests import (
    CompletionCall,
    EmbeddingCall,
    decode_body,
    decode_completion,
    decode_embedding,
)
from forwardpass.types import InferRequest, Tensor

__all__ = ["OpenAiApi", "error_document"]

log = logging.getLogger("forwardpass.openai")

_FINGERPRINT = f"forwardpass-{__version__}"
_SSE = "text/event-stream; charset=utf-8"
_DONE = b"data: [DONE]\n\n"

#: OpenAI's error ``type`` for an HTTP status (what its own API answers).
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
}


def error_document(exc: BaseException, code: str | None = None) -> tuple[int, bytes]:
    """The HTTP status and OpenAI error body of ``exc``."""
    status = http_status(exc)
    message = exc.message if isinstance(exc, ForwardpassError) else "internal error"
    if code is None:
        code = {401: "invalid_api_key", 404: "model_not_found", 503: "overloaded"}.get(status)
    document = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": exc.param if isinstance(exc, InvalidParameter) else None,
            "code": code,
        }
    }
    return status, orjson.dumps(document)


def _json(payload: Any) -> HttpResponse:
    return HttpResponse(200, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))


def _event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass(frozen=True, slots=True)
class _Embedder:
    """How to call an embedding model: its text input, its vector output, its tokenizer."""

    input: str
    output: str
    batching: bool
    max_batch: int
    text: TextInput


class OpenAiApi:
    """The ``/v1`` routes on an :class:`Engine`.

    ``allow(group, request)`` is the HTTP app's access check (API key, restricted APIs).
    """

    def __init__(
        self,
        engine: Engine,
        allow: Callable[[str, HttpRequest], None],
        max_request_bytes: int,
    ) -> None:
        self.engine = engine
        self.allow = allow
        self.max_request_bytes = max_request_bytes
        self.started = int(time.time())

    async def handle(self, request: HttpRequest) -> HttpResponse:
        try:
            if not isinstance(self.engine, Engine):
                # A front end that only routes (the Ray ingress) has no generation scheduler
                # nor the models' processing to find embedding models with.
                raise Unsupported(
                    "the OpenAI API is not available on this front end (Ray): serve generation "
                    "and embedding models with forwardpass serve"
                )
            return await self._route(request)
        except ForwardpassError as exc:
            return self._error(exc)
        except Exception as exc:  # a bug: answer 500 in OpenAI's shape, keep serving
            log.exception("unhandled error on %s %s", request.method, request.path)
            status, body = error_document(exc)
            return HttpResponse(status, body)

    @staticmethod
    def _error(exc: ForwardpassError, code: str | None = None) -> HttpResponse:
        status, body = error_document(exc, code)
        headers = []
        if isinstance(exc, Unauthenticated):
            headers.append(("WWW-Authenticate", 'Bearer realm="forwardpass"'))
        return HttpResponse(status, body, headers=headers)

    async def _route(self, request: HttpRequest) -> HttpResponse:
        parts = [unquote(p) for p in request.path.split("/") if p][1:]  # after "v1"
        method = request.method
        routes = {
            ("chat", "completions"): "POST",
            ("completions",): "POST",
            ("embeddings",): "POST",
            ("models",): "GET",
        }
        key = tuple(parts) if len(parts) != 2 or parts[0] != "models" else ("models",)
        allowed = routes.get(key)
        if allowed is None:
            return self._error(
                NotFound(f"unknown URL: {method} {request.path}"), code="unknown_url"
            )
        self.allow("inference", request)
        if method != allowed:
            raise InvalidArgument(
                f"method {method} is not allowed on {request.path}; use {allowed}"
            )
        if key == ("models",):
            return self._models(parts[1] if len(parts) == 2 else None)
        what = "/".join(parts)
        body = decode_body(_decompress(request, self.max_request_bytes), what)
        if key == ("embeddings",):
            return await self._embeddings(decode_embedding(body))
        return await self._complete(decode_completion(body, chat=key[0] == "chat"))

    # ------------------------------------------------------------------ models
    def _kind(self, name: str) -> tuple[str, Any]:
        """``("generation", GenerationModel)`` or ``("embedding", _Embedder)`` for a served
        model, ``("", None)`` for any other; 404 for an unknown one, 503 if it is not ready."""
        handle, loaded = self.engine.version(name, "")
        if loaded.generator is not None:
            return "generation", loaded.generator
        processing = handle.processing
        inputs = list(handle.input_specs.values())
        outputs = list(handle.output_specs.values())
        if (
            processing is not None
            and len(processing.inputs) == 1
            and isinstance(processing.inputs[0], TextInput)
            and len(inputs) == 1
            and inputs[0].datatype is DataType.BYTES
            and len(outputs) == 1
            and outputs[0].datatype is DataType.FP32
            and len(outputs[0].dims) == 1
        ):
            config = handle.config
            text = processing.inputs[0]
            return "embedding", _Embedder(
                inputs[0].name, outputs[0].name, config.batching, config.max_batch_size, text
            )
        return "", None

    def _served(self, name: str, want: str, route: str) -> Any:
        try:
            kind, model = self._kind(name)
        except NotFound:
            raise NotFound(f"the model {name!r} does not exist") from None
        if kind != want:
            what = f"an {kind} model" if kind == "embedding" else f"a {kind} model"
            if not kind:
                what = "not a generation or embedding model"
            raise InvalidParameter("model", f"model {name!r} is {what}; it does not serve {route}")
        return model

    def _card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.started, "owned_by": "forwardpass"}

    def _models(self, name: str | None) -> HttpResponse:
        if name is not None:
            try:
                kind, _ = self._kind(name)
            except NotFound:
                kind = ""
            if not kind:
                raise NotFound(f"the model {name!r} does not exist")
            return _json(self._card(name))
        cards: list[dict[str, Any]] = []
        for entry in self.engine.index(ready_only=True):
            try:
                kind, _ = self._kind(entry.name)
            except ForwardpassError:  # unloaded between the index and the lookup
                continue
            if kind and (not cards or cards[-1]["id"] != entry.name):
                cards.append(self._card(entry.name))
        return _json({"object": "list", "data": cards})

    # ------------------------------------------------------------------ completions
    async def _complete(self, call: CompletionCall) -> HttpResponse:
        chat = bool(call.messages)
        model = self._served(
            call.model, "generation", "chat completions" if chat else "completions"
        )
        if chat:
            prompt = model.chat_prompt(
                [{"role": m.role, "content": m.content} for m in call.messages]
            )
        else:
            prompt = call.prompt
        reply = _Reply(chat, call.model, call.include_usage)
        generation = self.engine.generate(call.model, "", prompt, call.parameters, reply.id)
        if not call.stream:
            try:
                result = await generation.collect()
            finally:
                generation.cancel()  # the client went away while waiting: free the slot
            return _json(reply.whole(result))
        events = generation.__aiter__()
        assert isinstance(events, AsyncGenerator)
        try:
            first = await anext(events)  # errors before the first token: a plain HTTP error
        except BaseException:
            generation.cancel()
            raise
        return HttpResponse(
            200,
            b"",
            _SSE,
            [("cache-control", "no-cache")],
            stream=_stream(reply, first, events, generation),
        )

    # ------------------------------------------------------------------ embeddings
    async def _embeddings(self, call: EmbeddingCall) -> HttpResponse:
        embedder: _Embedder = self._served(call.model, "embedding", "embeddings")
        texts = list(call.texts)
        step = embedder.max_batch if embedder.batching and embedder.max_batch > 0 else len(texts)
        # Requests of at most max_batch_size texts, sent together: the batcher may merge them.
        parts = await asyncio.gather(
            *(
                self._embed(call.model, embedder, texts[start : start + step])
                for start in range(0, len(texts), step)
            )
        )
        vectors = [vector for part in parts for vector in part]
        if call.dimensions is not None and call.dimensions != vectors[0].size:
            raise InvalidParameter(
                "dimensions",
                f"model {call.model!r} gives {vectors[0].size}-dimensional embeddings; "
                f"dimensions={call.dimensions} is not supported (omit it)",
            )
        tokens = sum(len(e.ids) for e in embedder.text.tokenizer.encode_batch(texts))
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": (
                    base64.b64encode(v.astype("<f4").tobytes()).decode()
                    if call.base64
                    else v.tolist()
                ),
            }
            for i, v in enumerate(vectors)
        ]
        return _json(
            {
                "object": "list",
                "data": data,
                "model": call.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _embed(self, model: str, embedder: _Embedder, texts: list[str]) -> list[np.ndarray]:
        array = np.empty((len(texts), 1) if embedder.batching else (len(texts),), dtype=object)
        array.reshape(-1)[:] = [t.encode() for t in texts]
        request = InferRequest(
            model_name=model, inputs=[Tensor(embedder.input, DataType.BYTES, array)]
        )
        response = await self.engine.infer(request)
        (output,) = [o for o in response.outputs if o.name == embedder.output]
        data = np.asarray(output.data, dtype=np.float32).reshape(len(texts), -1)
        return list(data)


class _Reply:
    """The documents of one completion (chat or text): the whole answer, or its chunks."""

    def __init__(self, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.model = model
        self.include_usage = include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": _FINGERPRINT,
        }

    @staticmethod
    def usage(event: TokenEvent) -> dict[str, int]:
        return {
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens,
        }

    def whole(self, result: TokenEvent) -> dict[str, Any]:
        finish = result.finish.value if result.finish else None
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish}
        return {**self._head(False), "choices": [choice], "usage": self.usage(result)}

    def chunk(self, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None}
        choice["finish_reason"] = finish
        document = {**self._head(True), "choices": [choice]}
        if self.include_usage:
            document["usage"] = None  # as OpenAI: null on every chunk but the last
        return document

    def usage_chunk(self, event: TokenEvent) -> dict[str, Any]:
        return {**self._head(True), "choices": [], "usage": self.usage(event)}


async def _stream(
    reply: _Reply,
    first: TokenEvent,
    events: AsyncGenerator[TokenEvent, None],
    generation: GenerationStream,
) -> AsyncIterator[bytes]:
    """The chunks of a streamed completion, from its first token event on."""
    try:
        if reply.chat:
            yield _event(reply.chunk("", None, role=True))
        event = first
        while True:
            if event.text:
                yield _event(reply.chunk(event.text, None))
            if event.finish is not None:
                yield _event(reply.chunk(None, event.finish.value))
                if reply.include_usage:
                    yield _event(reply.usage_chunk(event))
                break
            event = await anext(events)
        yield _DONE
    except ForwardpassError as exc:
        yield b"data: " + error_document(exc)[1] + b"\n\n"
    finally:
        generation.cancel()  # no-op once finished; frees the slot when the client went away
        await events.aclose()
