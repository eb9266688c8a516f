"""The zoo's speech recognizer (trained at build time on espeak-ng speech) behind a real server.

One build per session, kept in pytest's cache keyed by the recipe's source, so that a second
session reuses it. WAVs go in over HTTP, gRPC and ``forwardpass predict``; the streaming
ensemble cuts a long recording at its silences with Silero VAD and reads each utterance.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

NAME = "speech-digits"
STREAM = f"{NAME}-stream"
RATE = 16000


def _source_key() -> str:
    import forwardpass.processing.dsp as dsp
    import forwardpass.zoo.espeak as espeak
    import forwardpass.zoo.speech_digits as recipe

    digest = hashlib.sha256()
    for module in (espeak, recipe, dsp):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def repository(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    from forwardpass.zoo import add, get_recipe

    for module in get_recipe(NAME).modules:
        pytest.importorskip(module, reason=f"zoo model {NAME} needs {module}")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    cached = (
        Path(cache.mkdir(f"speech-digits-{_source_key()}"))
        if cache is not None
        else tmp_path_factory.mktemp("speech-digits")
    )
    if not (cached / NAME / "1" / "model.onnx").is_file():
        add(NAME, cached, force=True)
    return cached


@pytest.fixture(scope="module")
def server(start_module_server: Any, repository: Path) -> Any:
    return start_module_server(repository, "--log-level", "WARNING")


def spoken(text: str, variant: str = "m3", speed: int = 150) -> np.ndarray:
    from forwardpass.zoo.espeak import Voice, _say

    return _say(Voice("en-us", variant, speed, 50), text)


def wav(samples: np.ndarray, bits: int = 16, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(bits // 8)
        writer.setframerate(rate)
        if bits == 8:
            writer.writeframes((np.clip(samples, -1, 1) * 127 + 128).astype(np.uint8).tobytes())
        else:
            writer.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def mu_law(samples: np.ndarray) -> bytes:
    """A µ-law WAV header (format 7) around 8-bit bytes: the encoding is what matters."""
    data = (np.clip(samples, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
    fmt = struct.pack("<HHIIHH", 7, 1, RATE, RATE, 1, 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def http_infer(server: Any, model: str, blob: bytes) -> Any:
    client = httpclient.InferenceServerClient(server.address)
    try:
        shape = [1, 1] if model == NAME else [1]
        item = httpclient.InferInput("audio", shape, "BYTES")
        item.set_data_from_numpy(np.array([blob], dtype=object).reshape(shape), binary_data=True)
        return client.infer(model, [item])
    finally:
        client.close()


def grpc_infer(server: Any, model: str, blob: bytes) -> Any:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        shape = [1, 1] if model == NAME else [1]
        item = grpcclient.InferInput("audio", shape, "BYTES")
        item.set_data_from_numpy(np.array([blob], dtype=object).reshape(shape))
        return client.infer(model, [item])
    finally:
        client.close()


def offline_text(repository: Path, samples: np.ndarray) -> str:
    """The same network run by hand: training features, ONNX Runtime, greedy CTC."""
    import onnxruntime as ort

    from forwardpass.zoo.espeak import WORDS
    from forwardpass.zoo.speech_digits import _features, _greedy

    session = ort.InferenceSession(str(repository / NAME / "1" / "model.onnx"))
    (logits,) = session.run(None, {"features": _features([samples])[0][None]})
    return " ".join(WORDS[d] for d in _greedy(logits[0]))


def test_the_build_records_a_held_out_accuracy(repository: Path) -> None:
    training = json.loads((repository / NAME / "TRAINING.json").read_text())
    assert "SYNTHETIC" in training["data"]
    assert training["onnx_vs_torch_max_abs"] < 1e-3
    # Far above chance (1 in 10 per word) on voices the training never heard.
    assert training["heldout_word_error_rate"] < 0.6
    assert training["heldout_sequence_accuracy"] > 0.25


def test_http_and_grpc_read_the_same_words_as_the_network(server: Any, repository: Path) -> None:
    for text in ("three one four", "seven", "two nine"):
        samples = np.concatenate(
            [np.zeros(3200, np.float32), spoken(text), np.zeros(3200, np.float32)]
        )
        h = http_infer(server, NAME, wav(samples))
        g = grpc_infer(server, NAME, wav(samples))
        heard = h.as_numpy("text")[0, 0].decode()
        assert g.as_numpy("text")[0, 0].decode() == heard
        # The served path (WAV parse, log-mel, batching, decoding) equals the network by hand
        # on the same 16-bit samples.
        pcm = np.frombuffer(wav(samples)[44:], "<i2").astype(np.float32) / 32768.0
        assert heard == offline_text(repository, pcm)
        assert 0.0 < float(h.as_numpy("score")[0, 0]) <= 1.0
        assert all(
            w in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
            for w in heard.split()
        )


def test_a_long_recording_streams_into_timed_utterances(server: Any) -> None:
    texts = ("four two", "eight", "one five nine")
    silence = np.zeros(RATE, np.float32)
    parts, truth, at = [silence], [], RATE
    for text in texts:
        voice = spoken(text)
        parts += [voice, silence]
        truth.append((at / RATE, (at + voice.size) / RATE))
        at += voice.size + silence.size
    recording = np.concatenate(parts)
    recording += np.random.default_rng(0).normal(0, 1e-3, recording.size).astype(np.float32)
    h = http_infer(server, STREAM, wav(recording))
    g = grpc_infer(server, STREAM, wav(recording))
    starts, ends = h.as_numpy("starts"), h.as_numpy("ends")
    assert starts.shape == (3,) and ends.shape == (3,)
    for (start, end), (a, b) in zip(truth, zip(starts, ends, strict=True), strict=True):
        assert abs(a - start) < 0.3 and abs(b - end) < 0.4
    assert np.array_equal(h.as_numpy("texts"), g.as_numpy("texts"))
    np.testing.assert_array_equal(g.as_numpy("starts"), starts)
    # Each utterance reads as the recognizer reads that cut alone.
    for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
        cut = recording[round(a * RATE) : round(b * RATE)]
        alone = http_infer(server, NAME, wav(cut)).as_numpy("text")[0, 0]
        assert h.as_numpy("texts")[k, 0] == alone


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (lambda s: wav(s, bits=8), "unsupported WAV encoding pcm8; this model takes pcm16"),
        (mu_law, "unsupported WAV encoding µ-law"),
        (lambda s: wav(s[:0]), "audio is empty"),
        (lambda s: b"", "empty audio"),
        (lambda s: wav(np.resize(s, 11 * RATE)), "over the 10 s limit"),
    ],
    ids=["8-bit", "mu-law", "no-samples", "no-bytes", "too-long"],
)
def test_bad_audio_is_a_400_that_says_why(server: Any, blob: Any, message: str) -> None:
    data = blob(spoken("one"))
    with pytest.raises(InferenceServerException, match=message) as http_error:
        http_infer(server, NAME, data)
    assert http_error.value.status() == "400"
    with pytest.raises(InferenceServerException, match=message) as grpc_error:
        grpc_infer(server, NAME, data)
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_recording_without_speech_says_so(server: Any) -> None:
    quiet = np.random.default_rng(1).normal(0, 1e-3, 2 * RATE).astype(np.float32)
    with pytest.raises(InferenceServerException, match=r"no speech found in 2\.00 s") as error:
        http_infer(server, STREAM, wav(quiet))
    assert error.value.status() == "400"


def test_predict_reads_a_wav_file(repository: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from forwardpass.cli.commands import register
    from forwardpass.cli.main import cli

    register(cli)
    samples = spoken("six zero")
    path = tmp_path / "digits.wav"
    path.write_bytes(wav(samples))
    pcm = np.frombuffer(wav(samples)[44:], "<i2").astype(np.float32) / 32768.0
    for model in (NAME, STREAM):
        result = CliRunner().invoke(
            cli, ["predict", model, str(path), "--model-repository", str(repository), "--json"]
        )
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output)[str(path)]
        key = "text" if model == NAME else "texts"
        assert answer[key]["data"] == [offline_text(repository, pcm)] or model == STREAM
        assert answer[key]["shape"][0] == 1
