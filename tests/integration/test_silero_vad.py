"""A real stateful model: Silero VAD from the zoo, its recurrent state kept by the server.

Speech synthesized with ``espeak-ng`` and mixed with silence is streamed chunk by chunk over
HTTP by ``tritonclient`` (``sequence_id`` / ``sequence_start`` / ``sequence_end``), two
sequences interleaved; every speech probability must equal ONNX Runtime's with the state
carried by hand.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

RATE = 16000
CHUNK = 512
CONTEXT = 64


def speech(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng, as float32 samples at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    from scipy.signal import resample_poly

    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-s", "150", text], check=True, capture_output=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
    audio = samples.astype(np.float32) / 32768.0
    return resample_poly(audio, RATE, rate).astype(np.float32)


def clip(text: str, seed: int) -> np.ndarray:
    """Silence, speech, silence, speech, silence (with a little noise), cut to whole chunks."""
    rng = np.random.default_rng(seed)
    voice = speech(text)
    silence = np.zeros(RATE // 2, np.float32)
    audio = np.concatenate([silence, voice, silence, voice[: len(voice) // 2], silence])
    audio = audio + rng.normal(0, 1e-3, audio.shape).astype(np.float32)
    return audio[: len(audio) // CHUNK * CHUNK]


def windows(audio: np.ndarray) -> list[np.ndarray]:
    """Each model input: the previous 64 samples of context, then 512 new ones."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    return [padded[i : i + CONTEXT + CHUNK].reshape(1, -1) for i in range(0, len(audio), CHUNK)]


def reference(audio: np.ndarray) -> np.ndarray:
    """ONNX Runtime directly, the state carried by hand."""
    import onnxruntime as ort

    from forwardpass.zoo.silero_vad import onnx_path

    session = ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(RATE, dtype=np.int64)
    probabilities = []
    for window in windows(audio):
        out, state = session.run(None, {"input": window, "state": state, "sr": sr})
        probabilities.append(float(out[0, 0]))
    return np.array(probabilities)


@pytest.fixture(scope="module")
def vad_client(
    start_module_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpclient.InferenceServerClient]:
    pytest.importorskip("silero_vad", reason="the model ships in silero-vad==6.2.3")
    from forwardpass.zoo import add

    repository = tmp_path_factory.mktemp("vad") / "models"
    add("silero-vad", repository)
    server = start_module_server(repository, "--log-level", "WARNING")
    client = httpclient.InferenceServerClient(server.address)
    try:
        yield client
    finally:
        client.close()


def infer(
    client: httpclient.InferenceServerClient, window: np.ndarray, sid: int | str, **flags: bool
) -> float:
    audio = httpclient.InferInput("input", list(window.shape), "FP32")
    audio.set_data_from_numpy(window, binary_data=True)
    sr = httpclient.InferInput("sr", [1], "INT64")
    sr.set_data_from_numpy(np.array([RATE], dtype=np.int64), binary_data=True)
    result = client.infer(
        "silero-vad",
        [audio, sr],
        outputs=[httpclient.InferRequestedOutput("output", binary_data=True)],
        sequence_id=sid,
        **flags,
    )
    return float(result.as_numpy("output")[0, 0])


def test_two_interleaved_streams_match_onnxruntime_with_the_state_carried_by_hand(
    vad_client: httpclient.InferenceServerClient,
) -> None:
    a = clip("The quick brown fox jumps over the lazy dog.", seed=1)
    b = clip("Stateful models keep their memory between requests.", seed=2)
    streams = {101: windows(a), "speaker-b": windows(b)}
    served: dict[int | str, list[float]] = {sid: [] for sid in streams}
    longest = max(len(w) for w in streams.values())
    for i in range(longest):  # interleave: one chunk of each stream in turn
        for sid, chunks in streams.items():
            if i < len(chunks):
                served[sid].append(
                    infer(
                        vad_client,
                        chunks[i],
                        sid,
                        sequence_start=i == 0,
                        sequence_end=i == len(chunks) - 1,
                    )
                )
    for sid, audio in ((101, a), ("speaker-b", b)):
        expected = reference(audio)
        got = np.array(served[sid])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        # Real speech: the detector finds speech and silence, not one constant.
        assert got.max() > 0.8 and got.min() < 0.1


def test_a_stream_chunk_without_start_is_rejected(
    vad_client: httpclient.InferenceServerClient,
) -> None:
    window = np.zeros((1, CONTEXT + CHUNK), np.float32)
    with pytest.raises(httpclient.InferenceServerException, match="must specify the START flag"):
        infer(vad_client, window, 424242)
    with pytest.raises(httpclient.InferenceServerException, match="correlation ID"):
        infer(vad_client, window, 0, sequence_start=True)
