"""The generation scheduler: iteration-level (continuous) batching of decoder steps.

Guarantees:

* **Continuous batching.** Every iteration of the worker thread admits up to
  ``prefills_per_step`` waiting prompts, at most ``prefill_tokens`` padded tokens, into free
  cache slots and prefills them in one batched call, then runs one decode step for every
  running sequence together. A sequence leaves the batch the moment it finishes; nobody
  waits for the longest sequence of "their" batch.
* **Batched prefill, chunked long prompts.** Prompts of a batch are right-padded to the
  longest; padding never reaches a real position (attention is causal), and the cache keeps
  only each prompt's own positions. The longest prompts' first token comes from the prefill;
  a shorter prompt's last token is fed to the decode step that follows instead (its logits
  in the padded prefill are at a padding position). A prompt longer than ``prefill_tokens``
  is prefilled alone, one chunk per iteration, while the running sequences keep decoding
  between its chunks; it sits in the cache's last slot, outside the decode batch, until done.
* **One answer per request.** Each :class:`GenerationStream` receives its tokens in order and
  exactly one final event (finish reason ``stop``, ``length`` or ``cancelled``), or one
  error. A failed step fails the sequences in it, frees their slots, and the scheduler goes on.
* **Admission control.** The cache has a fixed number of slots (the byte budget); a request
  that finds none free waits, at most ``queue_timeout_s`` and behind at most ``max_waiting``
  others. Past either bound it gets :class:`Unavailable` (503) — memory never grows with load.
  A prompt plus ``max_tokens`` over the context length is refused at submission (400).
* **Cancellation.** :meth:`GenerationStream.cancel` (the client went away) frees the slot at
  the next iteration, before the next decode step.
* **Greedy is exact.** With temperature 0 each step takes the argmax of the same float32
  logits a batch-of-one run computes: a sequence's tokens do not depend on its neighbours.

The scheduler knows nothing of a wire. Callers (the engine) submit token ids and sampling
parameters and read :class:`TokenEvent` items; text comes from the model's tokenizer here,
so that stop strings end the output at the right character.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forwardpass.errors import ForwardpassError, InternalError, InvalidArgument, Unavailable
from forwardpass.generation.kvcache import KVCache
from forwardpass.generation.metrics import GenerationStats
from forwardpass.generation.sampling import Sampler, SamplingParams
from forwardpass.generation.settings import GenerationSettings
from forwardpass.zoo.decoder import DecoderShape

__all__ = [
    "Decoder",
    "FinishReason",
    "GenerationRequest",
    "GenerationScheduler",
    "GenerationStream",
    "TokenEvent",
]

log = logging.getLogger("forwardpass.generation")


class FinishReason(enum.Enum):
    """Why a sequence ended."""

    STOP = "stop"  # a stop token or stop string
    LENGTH = "length"  # max_tokens reached
    CANCELLED = "cancelled"  # the caller cancelled (the client went away)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to continue: its token ids and how to sample."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    id: str = ""


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """What one step added to a sequence's output.

    ``text`` is the new text since the previous event (it may be empty while a multi-byte
    character or a possible stop string is still incomplete); the final event has ``finish``.
    """

    text: str
    token_ids: tuple[int, ...]
    finish: FinishReason | None
    prompt_tokens: int
    completion_tokens: int


class Decoder:
    """The exported decoder step (``zoo.decoder``) on onnxruntime, run with IOBinding.

    Inputs are bound from numpy arrays (on CPU onnxruntime reads them in place, so a view of
    the cache's buffers costs no copy); outputs are allocated by onnxruntime and read back.
    """

    def __init__(self, session: Any, shape: DecoderShape) -> None:
        self.session = session
        self.shape = shape
        self.outputs = shape.output_names()
        self._past_names = shape.input_names()[3:]

    def run(
        self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("position_ids", positions)
        binding.bind_cpu_input("past_length", lengths)
        for name, array in zip(self._past_names, past, strict=True):
            binding.bind_cpu_input(name, array)
        for name in self.outputs:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        produced = binding.copy_outputs_to_cpu()
        return produced[0], produced[1:]


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    stream: GenerationStream
    sampler: Sampler
    enqueued: float
    slot: int = -1
    generated: list[int] = field(default_factory=list)
    #: The token the next decode step feeds.
    last: int = -1
    sent_chars: int = 0
    last_token_at: float = 0.0
    done: bool = False
    #: Incremental detokenization: ``text`` is final; ids from ``prefix`` on are decoded
    #: again each step (``read`` of them already gave ``text``'s tail).
    text: str = ""
    prefix: int = 0
    read: int = 0


class GenerationStream:
    """One request's events, read on the event loop: ``async for event in stream``.

    Leaving the loop early (or calling :meth:`cancel`) cancels the sequence.
    """

    def __init__(self, scheduler: GenerationScheduler, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduler = scheduler
        self._loop = loop
        self._queue: asyncio.Queue[TokenEvent | ForwardpassError] = asyncio.Queue()
        self.cancelled = False
        self.finished = False

    def _put(self, item: TokenEvent | ForwardpassError) -> None:
        """Worker thread: hand ``item`` to the loop (dropped if the loop is gone)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def cancel(self) -> None:
        """Stop generating; the slot is freed before the next decode step."""
        if not self.finished and not self.cancelled:
            self.cancelled = True
            self._scheduler._wake()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, ForwardpassError):
                    self.finished = True
                    raise item
                if item.finish is not None:
                    self.finished = True
                    yield item
                    return
                yield item
        finally:
            if not self.finished:
                self.cancel()

    async def collect(self) -> TokenEvent:
        """Wait for the whole output: one event with all the text and token ids."""
        text: list[str] = []
        ids: list[int] = []
        final: TokenEvent | None = None
        async for event in self:
            text.append(event.text)
            ids.extend(event.token_ids)
            final = event
        assert final is not None
        return TokenEvent(
            "".join(text), tuple(ids), final.finish, final.prompt_tokens, final.completion_tokens
        )


class GenerationScheduler:
    """Continuous batching of one generation model version (see the module docstring).

    ``decode(ids)`` turns generated token ids into text (the tokenizer's decode);
    ``end_ids`` are the model's own end tokens.
    """

    def __init__(
        self,
        decoder: Decoder,
        settings: GenerationSettings,
        decode: Callable[[list[int]], str],
        name: str = "",
    ) -> None:
        self.decoder = decoder
        self.settings = settings
        self.decode = decode
        self.name = name
        shape = decoder.shape
        slots = KVCache.slots_for(
            settings.cache_bytes, shape, settings.context_length, settings.max_batch
        )
        self.cache = KVCache(shape, settings.context_length, slots)
        self.stats = GenerationStats()
        self._cond = threading.Condition()
        self._arrivals: list[_Sequence] = []
        self._waiting: collections.deque[_Sequence] = collections.deque()
        #: Running sequences by slot: ``_running[i].slot == i``.
        self._running: list[_Sequence] = []
        #: A prompt longer than ``prefill_tokens`` being prefilled a chunk per iteration; it
        #: holds the cache's last slot (``len(_running)``), outside the decode batch.
        self._prefilling: _Sequence | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name=f"fp-generate-{name}", daemon=True)

    # ------------------------------------------------------------------ caller side
    def start(self) -> None:
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._arrivals)

    @property
    def running(self) -> int:
        return len(self._running) + (self._prefilling is not None)

    @property
    def pending(self) -> int:
        return self.waiting + self.running

    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue ``request`` (on the event loop); its events come on the returned stream.

        400 when the prompt plus ``max_tokens`` does not fit the context; 503 when the
        scheduler is closing or ``max_waiting`` requests already wait.
        """
        context = self.settings.context_length
        prompt = len(request.prompt_ids)
        if prompt == 0:
            raise InvalidArgument("the prompt is empty: it must have at least one token")
        if prompt >= context:
            raise InvalidArgument(
                f"the prompt has {prompt} tokens; the context length of model {self.name!r} "
                f"is {context} (prompt + max_tokens must fit in it)"
            )
        if prompt + request.params.max_tokens > context:
            raise InvalidArgument(
                f"the prompt has {prompt} tokens and max_tokens is {request.params.max_tokens}: "
                f"{prompt + request.params.max_tokens} exceeds the context length of model "
                f"{self.name!r} ({context}); lower max_tokens to at most {context - prompt}"
            )
        stream = GenerationStream(self, asyncio.get_running_loop())
        sequence = _Sequence(request, stream, Sampler(request.params), time.monotonic())
        with self._cond:
            if self._closing:
                raise Unavailable(f"model {self.name!r} is unloading")
            # Requests ahead of this one that will not find a free slot wait; so would this.
            queued = self.waiting + 1 - (self.cache.slots - self.cache.active)
            if queued > self.settings.max_waiting:
                self.stats.rejected += 1
                raise Unavailable(
                    f"model {self.name!r} is at capacity: {self.cache.slots} sequences run and "
                    f"{self.waiting} wait for a cache slot (max_waiting "
                    f"{self.settings.max_waiting}); retry later"
                )
            self._arrivals.append(sequence)
            self._cond.notify()
        return stream

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    async def close(self, grace_s: float = 0.0) -> None:
        """Let running sequences finish for up to ``grace_s``, then fail what is left (503)."""
        deadline = time.monotonic() + grace_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            with self._cond:
                while not (
                    self._arrivals
                    or self._waiting
                    or self._running
                    or self._prefilling is not None
                    or self._closing
                ):
                    self._cond.wait()
                if self._closing:
                    break
                self._waiting.extend(self._arrivals)
                self._arrivals.clear()
            try:
                self._iterate()
            except Exception:  # a bug here must not end serving: fail what ran, go on
                log.exception("generation step failed for model %s", self.name)
                self._fail_all(InternalError("generation step failed; see the server log"))
        self._fail_all(Unavailable(f"model {self.name!r} is unloading"))

    def _iterate(self) -> None:
        now = time.monotonic()
        for sequence in [s for s in self._running if s.stream.cancelled]:
            self._finish(sequence, FinishReason.CANCELLED, "")
        if self._prefilling is not None and self._prefilling.stream.cancelled:
            self._finish(self._prefilling, FinishReason.CANCELLED, "")
        timeout = self.settings.queue_timeout_s
        for sequence in list(self._waiting):
            if sequence.stream.cancelled:
                self._waiting.remove(sequence)
                self._emit(sequence, "", (), FinishReason.CANCELLED)
            elif now - sequence.enqueued > timeout:
                self._waiting.remove(sequence)
                self.stats.rejected += 1
                sequence.stream._put(
                    Unavailable(
                        f"no cache slot of model {self.name!r} came free within "
                        f"{timeout:g} s ({self.cache.slots} sequences fit); retry later"
                    )
                )
        prefilled = False
        if self._prefilling is not None:
            self._prefill_chunk()
            prefilled = True
        elif self._waiting:
            prefilled = self._admit()
        if self._running:
            self._decode_step()
        elif self._waiting and not prefilled:
            # Nothing runs and nothing fits (cannot happen with >= 1 slot); avoid spinning.
            time.sleep(0.001)

    def _admit(self) -> bool:
        """Take waiting prompts into free slots and prefill them; whether any was taken."""
        budget = self.settings.prefill_tokens
        batch: list[_Sequence] = []
        width = 0
        while self._waiting and len(batch) < self.settings.prefills_per_step:
            head = self._waiting[0]
            count = len(head.request.prompt_ids)
            if batch and (len(batch) + 1) * max(width, count) > budget:
                break
            slot = self.cache.acquire()
            if slot is None:
                break
            self._waiting.popleft()
            head.slot = slot
            if count > budget:  # alone, in chunks (``batch`` is empty: the budget checks)
                self._prefilling = head
                self._prefill_chunk()
                return True
            self._running.append(head)
            batch.append(head)
            width = max(width, count)
        if not batch:
            return False
        try:
            self._prefill(batch, width)
        except ForwardpassError as exc:
            for sequence in batch:
                self._fail(sequence, exc)
        return True

    def _prefill(self, batch: list[_Sequence], width: int) -> None:
        """One call for ``batch``'s prompts, right-padded to ``width`` tokens."""
        rows = len(batch)
        ids = np.zeros((rows, width), np.int64)
        for row, sequence in enumerate(batch):
            prompt = sequence.request.prompt_ids
            ids[row, : len(prompt)] = prompt
        shape = self.decoder.shape
        empty = np.zeros((rows, shape.kv_heads, 0, shape.head_dim), np.float32)
        began = time.monotonic()
        logits, new = self.decoder.run(
            ids,
            np.tile(np.arange(width, dtype=np.int64), (rows, 1)),
            np.zeros(rows, np.int64),
            [empty] * (2 * shape.layers),
        )
        if self.settings.window == "bucket":
            self.cache.fit(width)
        ready: list[tuple[_Sequence, np.ndarray]] = []
        for row, sequence in enumerate(batch):
            prompt = sequence.request.prompt_ids
            if len(prompt) == width:
                self.cache.write_prefill(sequence.slot, new, row)
                ready.append((sequence, logits[row]))
            else:  # the last prompt token goes through the decode step (see the docstring)
                self.cache.write_prefill(sequence.slot, new, row, len(prompt) - 1)
                sequence.last = prompt[-1]
            self.stats.prompt_tokens += len(prompt)
        self.stats.prefill_seconds.observe(time.monotonic() - began)
        for sequence, row_logits in ready:
            self._advance(sequence, row_logits)

    def _prefill_chunk(self) -> None:
        """The next ``prefill_tokens`` of the long prompt in the cache's last slot."""
        sequence = self._prefilling
        assert sequence is not None
        cache = self.cache
        slot = sequence.slot
        prompt = sequence.request.prompt_ids
        start = int(cache.lengths[slot])
        end = min(len(prompt), start + self.settings.prefill_tokens)
        if self.settings.window == "bucket":
            cache.fit(end)
        if self.settings.window == "tight":
            past = [np.ascontiguousarray(b[slot : slot + 1, :, :start]) for b in cache.buffers]
        else:  # the slot's whole row, a view; positions from ``start`` on are masked out
            past = [b[slot : slot + 1] for b in cache.buffers]
        began = time.monotonic()
        try:
            logits, new = self.decoder.run(
                np.array([prompt[start:end]], np.int64),
                np.arange(start, end, dtype=np.int64)[None],
                np.array([start], np.int64),
                past,
            )
        except ForwardpassError as exc:
            self._fail(sequence, exc)
            return
        cache.write_prefill(slot, new)
        self.stats.prefill_seconds.observe(time.monotonic() - began)
        if end < len(prompt):
            return
        self._prefilling = None
        assert slot == len(self._running)
        self._running.append(sequence)
        self.stats.prompt_tokens += len(prompt)
        self._advance(sequence, logits[0])

    def _decode_step(self) -> None:
        rows = len(self._running)
        cache = self.cache
        lengths = cache.lengths[:rows].copy()
        mode = self.settings.window
        if mode == "bucket":
            cache.fit(int(lengths.max()) + 1)  # room for this step's token
            window = cache.width
        else:
            window = cache.context if mode == "full" else int(lengths.max())
        ids = np.array([[s.last] for s in self._running], np.int64)
        try:
            logits, new = self.decoder.run(ids, lengths[:, None], lengths, cache.past(rows, window))
        except ForwardpassError as exc:
            for sequence in list(self._running):
                self._fail(sequence, exc)
            return
        cache.write_step(rows, new)
        self.stats.batch_size.observe(rows)
        for sequence, row in zip(list(self._running), logits, strict=True):
            self._advance(sequence, row)

    def _advance(self, sequence: _Sequence, logits: np.ndarray) -> None:
        """Sample the next token of ``sequence`` and tell its stream."""
        params = sequence.request.params
        token = sequence.sampler.choose(logits)
        now = time.monotonic()
        if not sequence.generated:
            self.stats.time_to_first_token.observe(now - sequence.enqueued)
        else:
            self.stats.inter_token.observe(now - sequence.last_token_at)
        sequence.last_token_at = now
        self.stats.generated_tokens += 1
        ends = set(params.stop_token_ids)
        if not params.ignore_eos:
            ends.update(self.settings.stop_token_ids)
        if token in ends:
            self._finish(sequence, FinishReason.STOP, self._text(sequence)[sequence.sent_chars :])
            return
        sequence.generated.append(token)
        sequence.last = token
        text = self._text(sequence)
        for stop in params.stop:
            at = text.find(stop, max(0, sequence.sent_chars - len(stop) + 1))
            if at >= 0:
                self._finish(sequence, FinishReason.STOP, text[sequence.sent_chars : at], token)
                return
        if len(sequence.generated) >= params.max_tokens:
            self._finish(sequence, FinishReason.LENGTH, text[sequence.sent_chars :], token)
            return
        # Hold back what might still become a stop string, and an incomplete character.
        hold = max((len(s) - 1 for s in params.stop), default=0)
        ready = len(text) - hold
        while ready > sequence.sent_chars and text[ready - 1] == "\ufffd":
            ready -= 1
        delta = text[sequence.sent_chars : ready] if ready > sequence.sent_chars else ""
        sequence.sent_chars += len(delta)
        self._emit(sequence, delta, (token,), None)

    def _text(self, sequence: _Sequence) -> str:
        """The text of ``sequence.generated``, decoding only its last few tokens again (the
        tokens since the last complete character; a whole-output decode per step would cost
        O(n) each, O(n^2) per sequence)."""
        ids = sequence.generated
        if not ids:
            return ""
        before = self.decode(ids[sequence.prefix : sequence.read])
        now = self.decode(ids[sequence.prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            # Complete characters: fix them, and decode from the last read token on.
            sequence.text += now[len(before) :]
            sequence.prefix = sequence.read
            sequence.read = len(ids)
            return sequence.text
        return sequence.text + now[len(before) :]

    def _emit(
        self,
        sequence: _Sequence,
        text: str,
        ids: tuple[int, ...],
        finish: FinishReason | None,
    ) -> None:
        sequence.stream._put(
            TokenEvent(text, ids, finish, len(sequence.request.prompt_ids), len(sequence.generated))
        )

    def _finish(
        self, sequence: _Sequence, reason: FinishReason, text: str, token: int | None = None
    ) -> None:
        self._release(sequence)
        if reason is FinishReason.CANCELLED:
            self.stats.cancelled += 1
        self._emit(sequence, text, () if token is None else (token,), reason)

    def _fail(self, sequence: _Sequence, error: ForwardpassError) -> None:
        self._release(sequence)
        sequence.stream._put(error)

    def _release(self, sequence: _Sequence) -> None:
        if sequence.done:
            return
        sequence.done = True
        slot = sequence.slot
        moved = self.cache.release(slot)
        if sequence is self._prefilling:  # the last slot: nothing moved
            assert moved is None
            self._prefilling = None
            return
        last = self._running.pop()
        filling = self._prefilling
        if filling is not None:
            # The cache moved the prefilling sequence (the last slot) into the hole; it goes
            # on to the decode batch's new end, and the batch's last row into the hole.
            end = len(self._running)
            if last is not sequence:
                self.cache.swap(slot, end)
                last.slot = slot
                self._running[slot] = last
            filling.slot = end
        elif moved is not None:
            assert last.slot == moved
            last.slot = slot
            self._running[slot] = last
        else:
            assert last is sequence

    def _fail_all(self, error: ForwardpassError) -> None:
        with self._cond:
            self._waiting.extend(self._arrivals)
            self._arrivals.clear()
        for sequence in list(self._running):
            self._fail(sequence, error)
        if self._prefilling is not None:
            self._fail(self._prefilling, error)
        while self._waiting:
            self._waiting.popleft().stream._put(error)
