"""Long audio → utterances: Silero VAD over 32 ms chunks, cut at silences, one WAV per cut.

The function step ``speech_segment`` (``backend: "function"``) of the ``speech-digits-stream``
ensemble. Its input is a 16 kHz waveform FP32 [samples] (the model's audio processing has
already read and resampled the client's WAV). It runs the Silero VAD graph named by parameter
``vad_model`` (a file in the model's version folder) over the audio in chunks of 512 samples
with 64 of context, carrying the recurrent state from chunk to chunk, so memory and work are
linear in the length. Then:

- speech starts at a chunk whose probability is at least ``threshold`` (0.5) and ends once
  the probability stays under ``threshold`` − 0.15 for ``min_silence_ms`` (250 ms);
- each utterance is widened by ``pad_ms`` (100 ms) each side (within the audio) and one longer
  than ``max_utterance_seconds`` is cut into equal pieces no longer than that;
- more than ``max_utterances`` (64) utterances is a 400 naming the limit.

Outputs: ``clips`` BYTES [K, 1] (each utterance as a 16-bit PCM WAV, ready for a recognizer
with its own audio processing), ``starts`` and ``ends`` FP32 [K] in seconds. Audio without
speech is a 400 ("no speech found"): an ensemble cannot pass zero rows on to a batching
recognizer.
"""

from __future__ import annotations

import io
import itertools
import threading
import wave
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument, InvalidModelConfig

__all__ = ["RATE", "Segment", "segment", "speech_probabilities", "wav_bytes"]

RATE = 16000
CHUNK = 512
CONTEXT = 64

Segment = tuple[int, int]


@lru_cache(maxsize=8)
def _session(path: str) -> tuple[Any, threading.Lock]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, threading.Lock()


def speech_probabilities(audio: np.ndarray, model: Path) -> np.ndarray:
    """Silero's speech probability for each 512-sample chunk of ``audio`` (16 kHz)."""
    session, lock = _session(str(model))
    chunks = -(-audio.size // CHUNK)
    padded = np.zeros(CONTEXT + chunks * CHUNK, dtype=np.float32)
    padded[CONTEXT : CONTEXT + audio.size] = audio
    state = np.zeros((2, 1, 128), dtype=np.float32)
    rate = np.array(RATE, dtype=np.int64)
    out = np.empty(chunks, dtype=np.float32)
    with lock:  # one state stream per call; the session itself is shared
        for i in range(chunks):
            window = padded[i * CHUNK : i * CHUNK + CONTEXT + CHUNK][None]
            prob, state = session.run(None, {"input": window, "state": state, "sr": rate})
            out[i] = prob[0, 0]
    return out


def segment(
    probs: np.ndarray,
    samples: int,
    threshold: float = 0.5,
    min_silence_ms: float = 250,
    pad_ms: float = 100,
    max_seconds: float = 10.0,
) -> list[Segment]:
    """Utterances as [start, end) sample ranges from the chunk probabilities."""
    low = threshold - 0.15
    quiet_chunks = max(1, round(min_silence_ms / 1000 * RATE / CHUNK))
    found: list[Segment] = []
    start, quiet = -1, 0
    for i, p in enumerate(probs):
        if start < 0:
            if p >= threshold:
                start, quiet = i, 0
        elif p < low:
            quiet += 1
            if quiet >= quiet_chunks:
                found.append((start * CHUNK, (i - quiet + 1) * CHUNK))
                start = -1
        else:
            quiet = 0
    if start >= 0:
        found.append((start * CHUNK, samples))
    pad = round(pad_ms / 1000 * RATE)
    longest = max(1, round(max_seconds * RATE))
    out: list[Segment] = []
    for a, b in found:
        a, b = max(0, a - pad), min(samples, b + pad)
        pieces = -(-(b - a) // longest)
        edges = np.linspace(a, b, pieces + 1).round().astype(int)
        out.extend((int(x), int(y)) for x, y in itertools.pairwise(edges))
    return out


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    """Float samples in [-1, 1] → a mono 16-bit PCM WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def _param(parameters: Mapping[str, str], key: str, default: float) -> float:
    raw = parameters.get(key)
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        raise InvalidModelConfig(f"speech_segment: parameter {key} must be a number") from None
    if value < 0:
        raise InvalidModelConfig(f"speech_segment: parameter {key} must not be negative")
    return value


def speech_segment(
    inputs: Mapping[str, np.ndarray], parameters: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """The registered function: ``waveform`` → ``clips``, ``starts``, ``ends``."""
    folder = parameters.get("model_dir", "")
    model = Path(folder) / parameters.get("vad_model", "silero_vad.onnx")
    if not folder or not model.is_file():
        raise InvalidModelConfig(f"speech_segment: VAD model {model} is missing")
    audio = np.ascontiguousarray(inputs["waveform"], dtype=np.float32).reshape(-1)
    probs = speech_probabilities(audio, model)
    cuts = segment(
        probs,
        audio.size,
        threshold=_param(parameters, "threshold", 0.5),
        min_silence_ms=_param(parameters, "min_silence_ms", 250),
        pad_ms=_param(parameters, "pad_ms", 100),
        max_seconds=_param(parameters, "max_utterance_seconds", 10.0) or 10.0,
    )
    if not cuts:
        # An ensemble cannot send zero rows on to a batching recognizer, so say it plainly.
        raise InvalidArgument(
            f"input 'audio': no speech found in {audio.size / RATE:.2f} s of audio (Silero VAD "
            f"probability never reached {_param(parameters, 'threshold', 0.5):g})"
        )
    limit = int(_param(parameters, "max_utterances", 64))
    if len(cuts) > limit:
        raise InvalidArgument(
            f"input 'audio': {len(cuts)} utterances found, over the limit of {limit} per request"
        )
    clips = np.empty((len(cuts), 1), dtype=object)
    for k, (a, b) in enumerate(cuts):
        clips[k, 0] = wav_bytes(audio[a:b])
    bounds = np.asarray(cuts, dtype=np.float32).reshape(-1, 2) / RATE
    return {"clips": clips, "starts": bounds[:, 0].copy(), "ends": bounds[:, 1].copy()}
