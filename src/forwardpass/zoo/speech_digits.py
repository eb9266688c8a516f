"""``speech-digits``: spoken digit sequences to text, a small CTC network trained at build time
on SYNTHETIC speech (espeak-ng), plus a streaming ensemble that cuts long audio with Silero VAD.

Why trained here: no PyPI package found ships a speech-to-text network's weights inside its
wheel (openai-whisper, faster-whisper, moonshine, vosk, sherpa-onnx ... download them at run
time; pocketsphinx ships a GMM acoustic model, not a network). So the recipe synthesizes
spoken digits with espeak-ng (:mod:`forwardpass.zoo.espeak`: many accents and voice variants,
speeds, pitches, added noise) and trains a dilated 1-D CNN on log-mel features with CTC over
the ten words, so it reads sequences ("three one four"), not only single words. The test set
is whole sequences spoken by voice variants the training never heard; its word and sequence
accuracy go into ``TRAINING.json``. It knows ten words and synthetic voices: it is a
demonstration of the audio path on a real trained network, not a general recognizer.

:func:`build` writes three models (``NAME`` is the one given to ``zoo add``):

- ``NAME``: the recognizer. ``audio`` BYTES [1] (a WAV, 16-bit PCM or float, at most
  :data:`MAX_SECONDS` s; other rates are resampled) → 40 log-mel bands → the network →
  ``text`` (words joined by spaces) and ``score`` (mean CTC confidence). Batched.
- ``NAME-vad``: a function step (``speech_segment``) running Silero VAD (its ONNX graph copied
  from the ``silero-vad`` wheel) over a long WAV in 32 ms chunks, answering one WAV clip per
  utterance with its start and end time.
- ``NAME-stream``: the ensemble clients call with a long WAV (up to
  :data:`STREAM_MAX_SECONDS` s): VAD, then the recognizer on every utterance at once (one
  batch), answering ``texts`` [K, 1], ``scores``, ``starts`` and ``ends`` (seconds) per
  utterance. An ensemble rather than a decoupled Python model: both steps already exist as
  served models (each with its own processing, statistics and batching), the VAD's state
  lives only for one request, and no Python process or IPC is added per request.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.model_config import (
    DynamicBatching,
    EnsembleStep,
    ModelConfig,
    TensorSpec,
)
from forwardpass.zoo.registry import PROVENANCE_FILE, Built, Recipe, provenance

__all__ = ["FEATURES", "MAX_SECONDS", "RECIPE", "STREAM_MAX_SECONDS", "build", "step_names"]

SEED = 20261201
#: The recognizer's clip limit (a longer one is a 400 naming it).
MAX_SECONDS = 10.0
#: The streaming ensemble's limit on the whole recording.
STREAM_MAX_SECONDS = 300.0
#: The log-mel features, as the audio processing declares them (the training uses the same).
N_MELS = 40
FEATURES: dict[str, Any] = {"n_mels": N_MELS, "n_fft": 400, "hop_length": 160, "log": "whisper"}
WORDS_FILE = "words.txt"
CHANNELS = 64
DILATIONS = (1, 2, 4, 8)
TRAIN_CLIPS = 3000
EPOCHS = 8
BATCH = 32
TEST_CLIPS = 200


def step_names(name: str) -> dict[str, str]:
    return {"rec": name, "vad": f"{name}-vad", "stream": f"{name}-stream"}


# --------------------------------------------------------------------------- network
def _network(torch: Any) -> Any:
    nn = torch.nn

    class DigitCtc(nn.Module):  # type: ignore[name-defined]
        """[N, 40, frames] log-mel → [N, frames/2, 11] logits (class 0 is the CTC blank)."""

        def __init__(self) -> None:
            super().__init__()
            mels, ch = N_MELS, CHANNELS
            self.stem = nn.Sequential(
                nn.Conv1d(mels, ch, 5, stride=2, padding=2), nn.BatchNorm1d(ch), nn.ReLU()
            )
            self.blocks = nn.ModuleList(
                nn.Sequential(
                    nn.Conv1d(ch, ch, 3, dilation=d, padding=d), nn.BatchNorm1d(ch), nn.ReLU()
                )
                for d in DILATIONS
            )
            self.head = nn.Conv1d(ch, 11, 1)

        def forward(self, x: Any) -> Any:
            h = self.stem(x)
            for block in self.blocks:
                h = h + block(h)
            return self.head(h).transpose(1, 2)

    return DigitCtc()


def _features(samples: list[np.ndarray]) -> list[np.ndarray]:
    """Each clip's [40, frames] log-mel, as the served processing computes it alone."""
    from forwardpass.processing.dsp import LogMel

    mel = LogMel(16000, **FEATURES)
    return [mel([s[None]], mel.frames(s.size))[0, 0].T for s in samples]


def _batch(feats: list[np.ndarray]) -> np.ndarray:
    """Pad to the longest; a clip's padding is its floor value, as served silence gives."""
    width = max(f.shape[1] for f in feats)
    return np.stack(
        [np.pad(f, ((0, 0), (0, width - f.shape[1])), constant_values=f.min()) for f in feats]
    ).astype(np.float32)


def _greedy(logits: np.ndarray) -> tuple[int, ...]:
    best = logits.argmax(-1)
    keep = (best != 0) & np.concatenate([[True], best[1:] != best[:-1]])
    return tuple(int(c) - 1 for c in best[keep])


def _train(torch: Any, clips: list[Any], seed: int) -> tuple[Any, list[float]]:
    torch.manual_seed(seed)
    feats = _features([c.samples for c in clips])
    net = _network(torch)
    steps = EPOCHS * (len(clips) // BATCH)
    optimizer = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 4e-3, total_steps=steps)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    rng = np.random.default_rng(seed)
    losses = []
    net.train()
    for _ in range(EPOCHS):
        order, total = rng.permutation(len(clips)), 0.0
        for k in range(0, len(order) - BATCH + 1, BATCH):
            rows = order[k : k + BATCH]
            x = torch.from_numpy(_batch([feats[i] for i in rows]))
            out = net(x).log_softmax(-1).transpose(0, 1)
            targets = torch.tensor([d + 1 for i in rows for d in clips[i].digits])
            lengths = torch.tensor([len(clips[i].digits) for i in rows])
            frames = torch.full((len(rows),), out.shape[0], dtype=torch.long)
            loss = ctc(out, targets, frames, lengths)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.item())
        losses.append(round(total / (len(order) // BATCH), 4))
    net.eval()
    return net, losses


def _edits(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@dataclass(frozen=True, slots=True)
class Scores:
    sequence_accuracy: float
    word_error_rate: float
    clips: int


def evaluate(model: Path, clips: list[Any]) -> Scores:
    """Sequence accuracy and WER of the ONNX graph on ``clips``, one clip at a time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    exact = errors = words = 0
    for clip, feats in zip(clips, _features([c.samples for c in clips]), strict=True):
        (logits,) = session.run(None, {"features": feats[None]})
        heard = _greedy(logits[0])
        exact += heard == clip.digits
        errors += _edits(heard, clip.digits)
        words += len(clip.digits)
    return Scores(exact / len(clips), errors / words, len(clips))


# --------------------------------------------------------------------------- configs
def _configs(name: str) -> dict[str, ModelConfig]:
    steps = step_names(name)
    rec_processing = {
        "inputs": [
            {
                "name": "audio",
                "kind": "audio",
                "to": "features",
                "sample_rate": 16000,
                "features": "log_mel",
                "encodings": ["pcm16", "float32", "float64"],
                "max_seconds": MAX_SECONDS,
                **FEATURES,
            }
        ],
        "outputs": [
            {
                "name": "text",
                "from": "logits",
                "decode": "ctc_greedy",
                "dictionary": WORDS_FILE,
                "separator": " ",
                "softmax": True,
                "scores": "score",
            }
        ],
    }
    vad_processing = {
        "inputs": [
            {
                "name": "audio",
                "kind": "audio",
                "to": "waveform",
                "sample_rate": 16000,
                "encodings": ["pcm16", "float32", "float64"],
                "max_seconds": STREAM_MAX_SECONDS,
            }
        ]
    }
    fp32 = DataType.FP32
    return {
        steps["rec"]: ModelConfig(
            name=steps["rec"],
            max_batch_size=64,
            inputs=(TensorSpec("features", fp32, (N_MELS, -1)),),
            outputs=(TensorSpec("logits", fp32, (-1, 11)),),
            dynamic_batching=DynamicBatching(max_queue_delay_microseconds=2000),
            parameters={
                "processing": json.dumps(rec_processing, separators=(",", ":")),
                "intra_op_thread_count": "1",
            },
        ),
        steps["vad"]: ModelConfig(
            name=steps["vad"],
            platform="",
            backend="function",
            inputs=(TensorSpec("waveform", fp32, (-1,)),),
            outputs=(
                TensorSpec("clips", DataType.BYTES, (-1, 1)),
                TensorSpec("starts", fp32, (-1,)),
                TensorSpec("ends", fp32, (-1,)),
            ),
            parameters={
                "function": "speech_segment",
                "processing": json.dumps(vad_processing, separators=(",", ":")),
                "vad_model": "silero_vad.onnx",
                "threshold": "0.5",
                "min_silence_ms": "250",
                "pad_ms": "100",
                "max_utterance_seconds": str(MAX_SECONDS),
                "max_utterances": "64",
            },
        ),
        steps["stream"]: ModelConfig(
            name=steps["stream"],
            platform="ensemble",
            backend="",
            inputs=(TensorSpec("audio", DataType.BYTES, (1,)),),
            outputs=(
                TensorSpec("texts", DataType.BYTES, (-1, 1)),
                TensorSpec("scores", fp32, (-1, 1)),
                TensorSpec("starts", fp32, (-1,)),
                TensorSpec("ends", fp32, (-1,)),
            ),
            ensemble=(
                EnsembleStep(
                    steps["vad"],
                    -1,
                    {"audio": "audio"},
                    {"clips": "clips", "starts": "starts", "ends": "ends"},
                ),
                EnsembleStep(
                    steps["rec"], -1, {"audio": "clips"}, {"text": "texts", "score": "scores"}
                ),
            ),
        ),
    }


# --------------------------------------------------------------------------- build
def build(repository: Path, name: str) -> Built:
    import torch

    from forwardpass.repository.pbtxt_writer import config_to_pbtxt
    from forwardpass.zoo import espeak
    from forwardpass.zoo.silero_vad import onnx_path

    torch.set_num_threads(min(2, torch.get_num_threads()))
    began = time.perf_counter()
    train_variants, held_out = espeak.split_variants(espeak.variants())
    banks = espeak.word_bank(espeak.training_voices(train_variants, SEED, per_variant=3))
    clips = espeak.training_clips(banks, TRAIN_CLIPS, SEED)
    tests = espeak.test_clips(held_out, TEST_CLIPS, SEED + 1)
    synth_seconds = time.perf_counter() - began
    began = time.perf_counter()
    net, losses = _train(torch, clips, SEED)
    train_seconds = time.perf_counter() - began

    steps = step_names(name)
    rec = repository / steps["rec"]
    (rec / "1").mkdir(parents=True)
    exported = rec / "1" / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.zeros(1, N_MELS, 100),),
            str(exported),
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={
                "features": {0: "batch", 2: "frames"},
                "logits": {0: "batch", 1: "steps"},
            },
            opset_version=17,
            dynamo=False,
        )
    # The graph must give what the trained network gives.
    sample = _batch(_features([c.samples for _, c in tests[:8]]))
    with torch.no_grad():
        expected = net(torch.from_numpy(sample)).numpy()
    from forwardpass.importers.verification import run_onnx

    drift = float(np.abs(run_onnx(exported, {"features": sample})["logits"] - expected).max())
    if drift > 1e-3:
        raise RuntimeError(f"the exported graph differs from the trained network by {drift}")
    scores = evaluate(exported, [clip for _, clip in tests])

    configs = _configs(name)
    (rec / WORDS_FILE).write_text("\n".join(espeak.WORDS) + "\n", encoding="utf-8")
    training = {
        "model": name,
        "data": "SYNTHETIC speech: espeak-ng "
        f"({len(espeak.ACCENTS)} English accents x {len(train_variants)} voice variants, "
        "random speed 120-220 wpm and pitch 20-80, white noise at 5-35 dB SNR, random gain); "
        f"{len(clips)} training sequences of 1-4 digits glued from {len(banks)} voices' words",
        "test": f"{scores.clips} sequences of 1-4 digits spoken whole (connected speech) by "
        f"voices of {len(held_out)} held-out variants ({', '.join(held_out)}), noise 10-30 dB",
        "network": f"dilated 1-D CNN, {CHANNELS} channels, dilations {list(DILATIONS)}, CTC "
        f"over blank + 10 words; AdamW one-cycle, {EPOCHS} epochs of {BATCH}, seed {SEED}",
        "features": FEATURES,
        "epoch_losses": losses,
        "synthesis_seconds": round(synth_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "heldout_sequence_accuracy": round(scores.sequence_accuracy, 4),
        "heldout_word_error_rate": round(scores.word_error_rate, 4),
        "onnx_vs_torch_max_abs": drift,
    }
    (rec / "TRAINING.json").write_text(json.dumps(training, indent=2) + "\n", encoding="utf-8")
    vad = repository / steps["vad"]
    (vad / "1").mkdir(parents=True)
    (vad / "1" / "silero_vad.onnx").write_bytes(onnx_path().read_bytes())
    (repository / steps["stream"] / "1").mkdir(parents=True)
    for model, config in configs.items():
        folder = repository / model
        (folder / "config.pbtxt").write_text(config_to_pbtxt(config), encoding="utf-8")
        (folder / PROVENANCE_FILE).write_bytes(
            provenance(RECIPE, trained_on="synthetic speech (espeak-ng)", step=model)
        )
    return Built(
        (
            "trained on SYNTHETIC speech (espeak-ng), digits zero..nine only",
            f"held-out voices: sequence accuracy {scores.sequence_accuracy:.3f}, word error "
            f"rate {scores.word_error_rate:.3f} on {scores.clips} clips",
            f"synthesis {synth_seconds:.1f} s, training {train_seconds:.1f} s; ONNX vs torch "
            f"max |diff| {drift:.2g}",
            f"also wrote {steps['vad']} (Silero VAD segmenter) and {steps['stream']} "
            "(ensemble: long WAV → utterances with times and text)",
        )
    )


RECIPE = Recipe(
    name="speech-digits",
    task="speech to text: spoken digit sequences (WAV → text), + VAD streaming ensemble",
    summary="CTC CNN on log-mel trained at build time on SYNTHETIC espeak-ng speech",
    source="trained here on speech synthesized by espeak-ng; VAD from the silero-vad wheel",
    license="forwardpass (Apache-2.0); espeak-ng GPL-3.0 (used only to make data); Silero MIT",
    modules=("torch", "onnx", "silero_vad"),
    pip="pip install torch==2.13.0 onnx silero-vad==6.2.3 (and apt-get install espeak-ng)",
    build=build,
    distributions=("torch", "silero-vad"),
)
