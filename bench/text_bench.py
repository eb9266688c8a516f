"""Sentence embeddings through a real server vs a bare onnxruntime loop (issue #5).

The zoo's ``all-minilm-l6-v2`` (ONNX Runtime on one intra-op thread), in one run:

1. **bare**: ``InferenceSession.run`` on core 0 over sentences tokenized once (batch
   tokenization, padded to the longest), at the batch sizes in ``--batch``;
2. **served**: ``forwardpass serve`` on core 0, a closed-loop client on core 1 sending one
   sentence per request as JSON text and checking each 384-d embedding against the bare
   session's (cosine ≥ 0.999), at each concurrency in ``--concurrency``.

    python bench/text_bench.py [--concurrency 1,32] [--duration 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # a script beside its helpers, not a package
    CLIENT_CORE,
    SERVER_CORE,
    build_zoo_model,
    closed_loop,
    forwardpass_server,
    http_request,
    model_processing,
    one_thread_repository,
    run_role,
    serving,
)

HERE = Path(__file__).resolve()
MODEL = "all-minilm-l6-v2"
SENTENCES = (
    "The cat sat on the warm windowsill all afternoon.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "A good loaf of sourdough needs time, flour, water and salt.",
    "The new inference server batches concurrent requests along the first axis.",
    "She ran the marathon in just under three hours.",
    "Rain is expected over the mountains tomorrow morning.",
    "Quantization can make a transformer faster with little loss of accuracy.",
    "He forgot his umbrella at the railway station again.",
)


def build(repository: Path) -> Path:
    return build_zoo_model(repository, MODEL)


def _session_and_tokens(repository: Path) -> tuple[Any, Any]:
    import onnxruntime as ort

    from forwardpass.repository import ModelRepository

    entry = ModelRepository(repository).read(MODEL)
    (text_input,) = model_processing(repository, MODEL).inputs
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(entry.version_dir(entry.versions[-1]) / "model.onnx"),
        options,
        providers=["CPUExecutionProvider"],
    )
    return session, text_input


def _tokens(text_input: Any, sentences: list[str]) -> dict[str, np.ndarray]:
    raw = np.array([[s.encode()] for s in sentences], dtype=object)
    return text_input({"text": raw})


def role_bare(repository: Path, batches: list[int], seconds: float) -> dict[str, Any]:
    session, text_input = _session_and_tokens(repository)
    results: dict[str, Any] = {}
    for batch in batches:
        # Batch 1 cycles through every sentence at its own length, as a bare per-request
        # loop would; larger batches pad every sentence to the longest, as naive batching does.
        if batch == 1:
            feeds = [_tokens(text_input, [s]) for s in SENTENCES]
        else:
            feeds = [_tokens(text_input, [SENTENCES[i % len(SENTENCES)] for i in range(batch)])]
        for feed in feeds:
            session.run(None, feed)
        calls: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            session.run(None, feeds[len(calls) % len(feeds)])
            calls.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        results[str(batch)] = {
            "samples_per_s": len(calls) * batch / elapsed,
            "ms_per_call_p50": statistics.median(calls) * 1e3,
            "tokens": sorted({int(f[next(iter(f))].shape[1]) for f in feeds}),
        }
    references = {s: session.run(None, _tokens(text_input, [s]))[0][0].tolist() for s in SENTENCES}
    results["references"] = references
    return results


def role_client(
    url: str, concurrency: int, warmup: float, duration: float, references: str
) -> dict[str, Any]:
    from urllib.parse import urlsplit

    expected = {k: np.asarray(v) for k, v in json.loads(Path(references).read_text()).items()}
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = []
    for sentence in SENTENCES:
        body = json.dumps(
            {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [sentence]}]}
        ).encode()
        path = f"/v2/models/{MODEL}/infer"
        requests.append(
            (sentence, http_request(host, port, path, body, {"Content-Type": "application/json"}))
        )

    def check(sentence: str, status: bytes, body: bytes) -> str | None:
        if b" 200 " not in status:
            return f"{status!r}: {body[:200]!r}"
        got = np.asarray(json.loads(body)["outputs"][0]["data"], dtype=np.float64)
        want = expected[sentence]
        cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
        return None if cosine >= 0.999 else f"{sentence!r}: cosine {cosine:.4f}"

    return asyncio.run(closed_loop(host, port, requests, check, concurrency, warmup, duration))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--port", type=int, default=8212)
    parser.add_argument("--model-repository", type=Path, default=None, help="reuse a build")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--role", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        kind, *rest = args.role
        if kind == "bare":
            out = role_bare(Path(rest[0]), [int(b) for b in rest[1].split(",")], float(rest[2]))
        else:
            out = role_client(rest[0], int(rest[1]), float(rest[2]), float(rest[3]), rest[4])
        print(json.dumps(out))
        return 0
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        repository = (
            one_thread_repository(args.model_repository, MODEL)
            if args.model_repository
            else build(Path(tmp) / "repo")
        )
        bare = run_role(HERE, SERVER_CORE, "bare", str(repository), args.batch, "4")
        references = Path(tmp) / "references.json"
        references.write_text(json.dumps(bare.pop("references")))
        results["bare"] = bare
        url = f"http://127.0.0.1:{args.port}"
        results["served"] = []
        with serving(forwardpass_server(repository, args.port), f"{url}/v2/models/{MODEL}/ready"):
            for c in args.concurrency.split(","):
                results["served"].append(
                    run_role(HERE, CLIENT_CORE, "client", url, c, str(args.warmup),
                             str(args.duration), str(references))
                )  # fmt: skip
    best_batch, best = max(results["bare"].items(), key=lambda kv: kv[1]["samples_per_s"])
    for b, v in results["bare"].items():
        print(f"bare batch {b:>3}: {v['samples_per_s']:8,.1f} sentences/s "
              f"({v['ms_per_call_p50']:.2f} ms/call, {v['tokens']} tokens)")  # fmt: skip
    for s in results["served"]:
        print(
            f"served c{s['concurrency']:<3}: {s['infer_per_s']:8,.1f} sentences/s, "
            f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, {s['errors']} errors; "
            f"{s['infer_per_s'] / best['samples_per_s']:.1%} of bare best batch ({best_batch})"
        )
        if s["first_error"]:
            print("  first error:", s["first_error"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any(s["errors"] for s in results["served"]) else 0


if __name__ == "__main__":
    sys.exit(main())
