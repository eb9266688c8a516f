"""Speech to text: real-time factor (seconds of audio per second of compute) on one core.

``speech-digits`` (built, or taken from ``--model-repository``) is served by ``forwardpass
serve`` pinned to core 0 and driven over HTTP (binary tensors) by a closed-loop client on
core 1 with ``--concurrency`` workers. Two workloads:

- ``clips``: single utterances (one to four digits, espeak-ng voices, ~1-2 s) to the
  recognizer ``speech-digits``;
- ``stream``: a long recording (several utterances with a second of silence between them) to
  the ensemble ``speech-digits-stream`` (Silero VAD over 32 ms chunks, then the recognizer on
  every utterance in one batch).

Each answer is checked (a text per utterance). Served RTF = seconds of audio answered in the
window / window length. Bare RTF runs the same work without the server on core 0 in a child
process: WAV decode, log-mel (forwardpass's processing), ONNX Runtime on one thread and greedy
CTC; for the stream, the VAD loop and cuts first.

    python bench/speech_bench.py [--duration 10] [--concurrency 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SERVER_CORE, closed_loop, forwardpass_server, http_request, run_role, serving

MODEL = "speech-digits"
STREAM = f"{MODEL}-stream"
RATE = 16000


def audio(kind: str, count: int, seed: int) -> list[np.ndarray]:
    """``count`` clips (``kind`` clips) or long recordings (``stream``), seeded."""
    from forwardpass.zoo import espeak

    voices = espeak.test_clips(espeak.variants(), count * (1 if kind == "clips" else 5), seed)
    samples = [clip.samples for _, clip in voices]
    if kind == "clips":
        return samples
    silence = np.zeros(RATE, np.float32)
    return [
        np.concatenate([x for s in samples[k : k + 5] for x in (silence, s)] + [silence])
        for k in range(0, len(samples), 5)
    ]


def binary_request(port: int, model: str, blob: bytes) -> bytes:
    shape = [1, 1] if model == MODEL else [1]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "audio",
                    "datatype": "BYTES",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(blob) + 4},
                }
            ],
            "outputs": [{"name": "texts" if model == STREAM else "text"}],
        }
    ).encode()
    body = header + struct.pack("<I", len(blob)) + blob
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return http_request("127.0.0.1", port, f"/v2/models/{model}/infer", body, headers)


def check(key: str, status: bytes, body: bytes) -> str | None:
    if b" 200 " not in status:
        return f"{key}: {status!r} {body[:200]!r}"
    outputs = json.loads(body)["outputs"]
    if not outputs or not outputs[0]["data"]:
        return f"{key}: no text"
    return None


def served(repository: Path, kind: str, clips: list[np.ndarray], args: Any) -> dict[str, Any]:
    from forwardpass.processing.utterances import wav_bytes

    model = MODEL if kind == "clips" else STREAM
    seconds = {f"{kind}{i}": c.size / RATE for i, c in enumerate(clips)}
    reqs = [
        (f"{kind}{i}", binary_request(args.port, model, wav_bytes(c))) for i, c in enumerate(clips)
    ]
    cmd = forwardpass_server(repository, args.port)
    with serving(cmd, f"http://127.0.0.1:{args.port}/v2/models/{STREAM}/ready"):
        answered: list[str] = []

        def counted(key: str, status: bytes, body: bytes) -> str | None:
            problem = check(key, status, body)
            if problem is None:
                answered.append(key)
            return problem

        began = time.perf_counter()
        result = asyncio.run(
            closed_loop(
                "127.0.0.1", args.port, reqs, counted, args.concurrency, args.warmup, args.duration
            )
        )
        elapsed = time.perf_counter() - began
    # Requests finished in the window, each weighted by its audio length (the mean clip).
    mean = sum(seconds.values()) / len(seconds)
    result["rtf"] = result["infer_per_s"] * mean
    result["clip_seconds_mean"] = mean
    result["answers_checked"] = len(answered)
    result["wall_s"] = elapsed
    return result


def bare(kind: str, count: int, seed: int, seconds: float, repository: Path) -> dict[str, Any]:
    """The role run on the server core: the same work without a server."""
    import onnxruntime as ort

    from forwardpass.processing.dsp import LogMel
    from forwardpass.processing.utterances import segment, speech_probabilities, wav_bytes
    from forwardpass.processing.wav import decode_wav
    from forwardpass.zoo.speech_digits import FEATURES, _batch, _greedy

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    model = repository / MODEL / "1" / "model.onnx"
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    vad = repository / f"{MODEL}-vad" / "1" / "silero_vad.onnx"
    mel = LogMel(RATE, **FEATURES)
    blobs = [wav_bytes(c) for c in audio(kind, count, seed)]

    def one(blob: bytes) -> int:
        samples = decode_wav(blob).samples[0]
        cuts = [(0, samples.size)]
        if kind == "stream":
            cuts = segment(speech_probabilities(samples, vad), samples.size)
        parts = [samples[a:b] for a, b in cuts]
        feats = [mel([p[None]], mel.frames(p.size))[0, 0].T for p in parts]
        (logits,) = session.run(None, {"features": _batch(feats)})
        return sum(len(_greedy(row)) for row in logits)

    done = audio_s = 0.0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        blob = blobs[int(done) % len(blobs)]
        one(blob)
        audio_s += (len(blob) - 44) / 2 / RATE
        done += 1
    elapsed = time.perf_counter() - began
    return {"rtf": audio_s / elapsed, "requests": int(done), "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--port", type=int, default=8127)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--role", nargs=4, metavar=("KIND", "COUNT", "SECONDS", "REPO"))
    args = parser.parse_args()
    if args.role:
        kind, count, seconds, repo = args.role
        print(json.dumps(bare(kind, int(count), 7, float(seconds), Path(repo))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        repository = args.model_repository
        if repository is None:
            from forwardpass.zoo import add

            repository = Path(tmp) / "models"
            add(MODEL, repository)
        result: dict[str, Any] = {}
        for kind, count in (("clips", args.clips), ("stream", max(2, args.clips // 5))):
            clips = audio(kind, count, 7)
            result[kind] = {
                "served": served(repository, kind, clips, args),
                "bare": run_role(
                    Path(__file__),
                    SERVER_CORE,
                    kind,
                    str(count),
                    str(args.duration),
                    str(repository),
                ),
            }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
