"""gRPC ``ModelStreamInfer`` for generation models: one response per token chunk.

A streamed request to a generation model (tensors of ``generation.tensors``) is answered as a
decoupled model's is: a response per scheduler event holding that event's new text as
``text_output``, the last one flagged ``triton_final_response`` (and carrying
``finish_reason``); with ``stream`` false, one response with the whole text. Leaving early
(the client cancelled the call, or went away) cancels the sequence, which frees its cache slot
before the next decode step.
"""

from __future__ import annotations

from collections.abc import Callable

from forwardpass.engine import Engine
from forwardpass.generation.tensors import decode_tensor_call, text_response
from forwardpass.types import InferRequest, InferResponse

__all__ = ["stream_generation"]


async def stream_generation(
    engine: Engine, request: InferRequest, version: str, send: Callable[[InferResponse], None]
) -> None:
    """Run ``request`` on the generation model it names and ``send`` each response."""
    call = decode_tensor_call(request)
    stream = engine.generate(
        request.model_name, request.model_version, call.text, call.parameters, request.id
    )
    if not call.stream:
        whole = await stream.collect()
        finish = whole.finish.value if whole.finish is not None else None
        send(text_response(request, version, whole.text, final=True, finish=finish))
        return
    async for event in stream:
        final = event.finish is not None
        if not final and not event.text:
            continue  # text held back (a partial character or stop string): nothing to say
        finish = event.finish.value if event.finish is not None else None
        send(text_response(request, version, event.text, final=final, finish=finish))
