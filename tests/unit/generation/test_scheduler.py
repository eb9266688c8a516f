"""The generation scheduler on the real exported SmolLM2 decoder: greedy equality with
transformers, continuous batching, sampling with a seed, admission control, cancellation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from forwardpass.errors import InvalidArgument, Unavailable
from forwardpass.generation import FinishReason, GenerationRequest, parse_sampling
from forwardpass.generation.scheduler import GenerationScheduler, TokenEvent

QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three fruits.",
    "Why is the sky blue?",
]

LONG_ANSWERS = [
    "Write a short paragraph about the history of Paris.",
    "Explain how a bicycle works.",
    "Describe the water cycle.",
]


def chat(smollm2: Any, question: str) -> tuple[int, ...]:
    return smollm2.model.encode(smollm2.model.chat_prompt([{"role": "user", "content": question}]))


def params(**given: Any) -> Any:
    return parse_sampling(given, default_max_tokens=16, max_tokens_limit=200, vocab=49152)


async def run_all(
    scheduler: GenerationScheduler, requests: list[GenerationRequest], stagger: float = 0.0
) -> list[TokenEvent]:
    async def one(i: int, request: GenerationRequest) -> TokenEvent:
        await asyncio.sleep(stagger * i)
        return await scheduler.submit(request).collect()

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))


def test_export_verified_against_transformers(smollm2: Any) -> None:
    record = json.loads((smollm2.folder / "ZOO.json").read_text())
    assert record["max_abs_logit_diff"] < 1e-3, record["verification"]
    assert "argmax agrees" in record["verification"]
    assert 134_000_000 < record["parameters"] < 135_000_000


def test_greedy_matches_transformers_generate(
    smollm2: Any, reference: Any, make_scheduler: Any
) -> None:
    import torch

    model, _ = reference
    scheduler = make_scheduler(slots=3)
    end = smollm2.model.settings.stop_token_ids
    prompts = [chat(smollm2, q) for q in LONG_ANSWERS]
    ours = asyncio.run(
        run_all(scheduler, [GenerationRequest(p, params(max_tokens=32)) for p in prompts])
    )
    for prompt, result in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.int64),
                max_new_tokens=32,
                do_sample=False,
            )
        theirs = out[0, len(prompt) :].tolist()
        # transformers keeps the end token it stopped at; the scheduler does not output it.
        if result.finish is FinishReason.STOP:
            assert theirs[-1] in end
            theirs = theirs[:-1]
        assert list(result.token_ids) == theirs
    assert sum(len(r.token_ids) for r in ours) >= 64  # most of it is real decoding


def test_continuous_batching_matches_each_alone(smollm2: Any, make_scheduler: Any) -> None:
    """Sequences of different lengths join while others run and leave early; each one's
    tokens are the same as when it runs alone (tight, full and bucketed cache windows; the
    first one outgrows a 64-position bucket, so the bucketed cache is laid out again)."""
    prompts = [chat(smollm2, q) for q in QUESTIONS]
    lengths = [48, 6, 16, 10]
    requests = [
        GenerationRequest(p, params(max_tokens=n, ignore_eos=True))
        for p, n in zip(prompts, lengths, strict=True)
    ]
    assert len(prompts[0]) + lengths[0] > 64
    alone_scheduler = make_scheduler(slots=1, window="tight")
    alone = [asyncio.run(run_all(alone_scheduler, [r]))[0] for r in requests]
    for window in ("tight", "full", "bucket"):
        # Two slots for four requests: the later ones wait, then take freed slots.
        scheduler = make_scheduler(slots=2, window=window)
        together = asyncio.run(run_all(scheduler, requests, stagger=0.05))
        for a, b, n in zip(alone, together, lengths, strict=True):
            assert b.token_ids == a.token_ids and len(b.token_ids) == n
            assert b.text == a.text
        assert scheduler.stats.batch_size.count > 0
        assert scheduler.cache.active == 0
        if window == "bucket":
            assert scheduler.cache.relayouts >= 1


def test_seeded_sampling_is_reproducible(smollm2: Any, make_scheduler: Any) -> None:
    scheduler = make_scheduler(slots=3)
    prompt = chat(smollm2, "Tell me a story.")
    sampled = params(max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=7)
    other = params(max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=8)
    a, b, c = asyncio.run(
        run_all(
            scheduler,
            [GenerationRequest(prompt, sampled)] * 2 + [GenerationRequest(prompt, other)],
        )
    )
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_stop_string_and_stop_token(smollm2: Any, make_scheduler: Any) -> None:
    scheduler = make_scheduler(slots=2)
    prompt = chat(smollm2, "What is the capital of France?")
    full = asyncio.run(run_all(scheduler, [GenerationRequest(prompt, params(max_tokens=30))]))[0]
    assert full.text == "The capital of France is Paris."
    assert full.finish is FinishReason.STOP  # the model's end-of-turn token
    cut, by_id = asyncio.run(
        run_all(
            scheduler,
            [
                GenerationRequest(prompt, params(max_tokens=30, stop=[" is"])),
                GenerationRequest(
                    prompt, params(max_tokens=30, stop_token_ids=[full.token_ids[2]])
                ),
            ],
        )
    )
    assert cut.text == "The capital of France" and cut.finish is FinishReason.STOP
    assert by_id.token_ids == full.token_ids[:2]


def test_admission_control_waits_then_refuses(smollm2: Any, make_scheduler: Any) -> None:
    scheduler = make_scheduler(slots=1, max_waiting=1)
    prompt = chat(smollm2, "Count to ten.")
    request = GenerationRequest(prompt, params(max_tokens=12, ignore_eos=True))

    async def scenario() -> tuple[list[TokenEvent], str]:
        first = scheduler.submit(request)
        second = scheduler.submit(request)  # waits for the one slot
        with pytest.raises(Unavailable) as refused:
            scheduler.submit(request)
        done = [await first.collect(), await second.collect()]
        return done, refused.value.message

    done, message = asyncio.run(scenario())
    assert all(len(d.token_ids) == 12 for d in done)
    assert "at capacity" in message and "max_waiting 1" in message
    assert scheduler.stats.rejected == 1


def test_waiting_past_the_queue_timeout_is_refused(smollm2: Any, make_scheduler: Any) -> None:
    scheduler = make_scheduler(slots=1, queue_timeout_s=0.2)
    prompt = chat(smollm2, "Count to a hundred.")

    async def scenario() -> None:
        long = scheduler.submit(GenerationRequest(prompt, params(max_tokens=150, ignore_eos=True)))
        short = scheduler.submit(GenerationRequest(prompt, params(max_tokens=4)))
        with pytest.raises(Unavailable, match="no cache slot"):
            await short.collect()
        long.cancel()

    asyncio.run(scenario())


def test_cancel_frees_the_slot_at_once(smollm2: Any, make_scheduler: Any) -> None:
    scheduler = make_scheduler(slots=2)
    prompt = chat(smollm2, "Count to a hundred.")

    async def scenario() -> None:
        stream = scheduler.submit(
            GenerationRequest(prompt, params(max_tokens=150, ignore_eos=True))
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break  # leaving the loop cancels, as a client disconnect does
        for _ in range(200):
            if scheduler.cache.active == 0:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert scheduler.cache.active == 0 and scheduler.cache.used_bytes == 0
    assert scheduler.stats.cancelled == 1


def test_prompt_over_the_context_is_refused(smollm2: Any, make_scheduler: Any) -> None:
    scheduler = make_scheduler(slots=1, context_length=64)

    async def scenario() -> None:
        with pytest.raises(InvalidArgument, match=r"context length .* is 64"):
            scheduler.submit(GenerationRequest(tuple(range(100)), params(max_tokens=4)))
        with pytest.raises(InvalidArgument, match="lower max_tokens to at most 14"):
            scheduler.submit(GenerationRequest(tuple(range(50)), params(max_tokens=20)))

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be between 1 and 200"),
        ({"max_tokens": 201}, "max_tokens must be between 1 and 200"),
        ({"max_tokens": "5"}, "must be an integer"),
        ({"temperature": -1}, "temperature must be between"),
        ({"top_p": 0}, "top_p must be in"),
        ({"top_k": -2}, "top_k must be >= 0"),
        ({"beam_width": 2}, "unknown sampling parameter.*'beam_width'"),
        ({"stop": [1]}, "'stop' must be a string or a list of strings"),
        ({"stop_token_ids": [99999999]}, "stop_token_ids must be token ids"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_sampling_parameters(given: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        params(**given)


def test_bucketed_cache_keeps_the_live_positions() -> None:
    """Growing and shrinking the bucketed layout keeps every live slot's positions."""
    from forwardpass.generation.kvcache import BUCKET, KVCache
    from forwardpass.zoo.decoder import DecoderShape

    cache = KVCache(DecoderShape(1, 2, 4, 10), context=4 * BUCKET, slots=3)
    cache.fit(1)
    assert cache.width == BUCKET and cache.buffers[0].shape == (3, 2, BUCKET, 4)
    rng = np.random.default_rng(0)
    written = []
    for count in (5, 40):
        slot = cache.acquire()
        assert slot is not None
        new = [rng.standard_normal((1, 2, count, 4)).astype(np.float32) for _ in range(2)]
        cache.write_prefill(slot, new)
        written.append(new)
    cache.fit(BUCKET + 1)
    assert cache.width == 2 * BUCKET and cache.buffers[0][:2].flags.c_contiguous
    for slot, new in enumerate(written):
        count = new[0].shape[2]
        for buffer, array in zip(cache.buffers, new, strict=True):
            np.testing.assert_array_equal(buffer[slot, :, :count], array[0])
    assert cache.past(2, cache.width)[0].base is not None  # a view, no copy
    cache.release(1)  # the 40-position sequence leaves: the layout may shrink again
    cache.fit(1)
    assert cache.width == BUCKET
    for buffer, array in zip(cache.buffers, written[0], strict=True):
        np.testing.assert_array_equal(buffer[0, :, :5], array[0])


def test_batched_and_chunked_prefill_match_each_alone(smollm2: Any, make_scheduler: Any) -> None:
    """Prompts of different lengths arriving together are prefilled in one padded call (the
    shorter ones' last token through the decode step), and a prompt longer than
    ``prefill_tokens`` in chunks while the others decode (then a short one finishing first
    moves it within the cache); each one's tokens are those it gets alone."""
    story = " ".join(["Tell me about the sea, the wind and the old lighthouse keeper."] * 6)
    prompts = [chat(smollm2, q) for q in (*QUESTIONS[:3], story)]
    lengths = [12, 4, 20, 10]
    assert len(prompts[3]) > 64 and len({len(p) for p in prompts}) > 1
    requests = [
        GenerationRequest(p, params(max_tokens=n, ignore_eos=True))
        for p, n in zip(prompts, lengths, strict=True)
    ]
    alone_scheduler = make_scheduler(slots=1, window="tight", prefills_per_step=1)
    alone = [asyncio.run(run_all(alone_scheduler, [r]))[0] for r in requests]
    for window in ("tight", "full", "bucket"):
        scheduler = make_scheduler(slots=4, window=window, prefill_tokens=32)
        together = asyncio.run(run_all(scheduler, requests))
        for a, b, n in zip(alone, together, lengths, strict=True):
            assert b.token_ids == a.token_ids and len(b.token_ids) == n
            assert b.text == a.text
        assert scheduler.cache.active == 0 and scheduler._prefilling is None
        # The long prompt took several prefill calls.
        assert scheduler.stats.prefill_seconds.count >= len(prompts[3]) // 32


def test_a_lone_long_prompt_is_prefilled_in_chunks(smollm2: Any, make_scheduler: Any) -> None:
    """Nothing else runs or waits between its chunks: the worker must not go to sleep."""
    story = " ".join(["Tell me about the sea, the wind and the old lighthouse keeper."] * 4)
    request = GenerationRequest(chat(smollm2, story), params(max_tokens=3, ignore_eos=True))
    alone = asyncio.run(run_all(make_scheduler(slots=1), [request]))[0]
    scheduler = make_scheduler(slots=1, prefill_tokens=16)
    chunked = asyncio.run(asyncio.wait_for(run_all(scheduler, [request]), 60))[0]
    assert chunked.token_ids == alone.token_ids and len(chunked.token_ids) == 3


def test_cancel_while_a_long_prompt_is_prefilled_in_chunks(
    smollm2: Any, make_scheduler: Any
) -> None:
    story = " ".join(["Tell me about the sea, the wind and the old lighthouse keeper."] * 8)
    scheduler = make_scheduler(slots=2, prefill_tokens=16)

    async def scenario() -> None:
        stream = scheduler.submit(GenerationRequest(chat(smollm2, story), params(max_tokens=8)))
        for _ in range(500):  # until it is between two chunks
            if scheduler._prefilling is not None:
                break
            await asyncio.sleep(0.002)
        assert scheduler._prefilling is not None
        stream.cancel()
        final = await stream.collect()
        assert final.finish is FinishReason.CANCELLED
        for _ in range(200):
            if scheduler.cache.active == 0:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert scheduler.cache.active == 0 and scheduler._prefilling is None


def test_incremental_text_equals_the_whole_decode(smollm2: Any, make_scheduler: Any) -> None:
    """The text streamed from decoding only the last tokens again equals the tokenizer's
    decode of all the output's ids (multi-byte characters included)."""
    scheduler = make_scheduler(slots=2)
    prompts = [chat(smollm2, "Écris une phrase en français avec des accents, et un emoji 🌊.")]
    prompts.append(chat(smollm2, "Write a haiku about snow."))
    results = asyncio.run(
        run_all(scheduler, [GenerationRequest(p, params(max_tokens=40)) for p in prompts])
    )
    for result in results:
        assert result.text == smollm2.model.decode(list(result.token_ids))


def test_cache_swap_exchanges_two_slots() -> None:
    from forwardpass.generation.kvcache import KVCache
    from forwardpass.zoo.decoder import DecoderShape

    cache = KVCache(DecoderShape(1, 2, 4, 10), context=16, slots=3)
    rng = np.random.default_rng(1)
    written = []
    for count in (3, 9, 5):
        slot = cache.acquire()
        assert slot is not None
        new = [rng.standard_normal((2, 2, count, 4)).astype(np.float32) for _ in range(2)]
        cache.write_prefill(slot, new, row=1, count=count - 1)  # row 1, all but the last
        written.append(new)
    cache.swap(0, 2)
    assert list(cache.lengths) == [4, 8, 2]
    for slot, source in ((0, 2), (1, 1), (2, 0)):
        count = int(cache.lengths[slot])
        for buffer, array in zip(cache.buffers, written[source], strict=True):
            np.testing.assert_array_equal(buffer[slot, :, :count], array[1, :, :count])
