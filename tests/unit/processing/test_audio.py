"""Audio input: WAV decoding, resampling, log-mel features and the AudioInput processor."""

from __future__ import annotations

import io
import json
import struct
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_builders import run_with_engine, write_model
from onnx import TensorProto, helper

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.audio import AudioInput
from forwardpass.processing.dsp import LogMel, hz_to_mel, mel_filterbank, mel_to_hz, resample
from forwardpass.processing.spec import build_processing
from forwardpass.processing.wav import WavError, decode_wav
from forwardpass.protocol.documents import metadata_document


# --------------------------------------------------------------------------- WAV writers
def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def pcm_wav(samples: np.ndarray, rate: int, bits: int = 16) -> bytes:
    """Integer PCM with the stdlib writer; ``samples`` [frames] or [channels, frames]."""
    x = np.atleast_2d(samples).T  # frames × channels, interleaved when flattened
    if bits == 8:
        raw = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.clip(np.round(x * 2**23), -(2**23), 2**23 - 1).astype("<i4")
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        dtype, scale = ("<i2", 2**15) if bits == 16 else ("<i4", 2**31)
        raw = np.clip(np.round(x * scale), -scale, scale - 1).astype(dtype).tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(x.shape[1])
        out.setsampwidth(bits // 8)
        out.setframerate(rate)
        out.writeframes(raw)
    return buffer.getvalue()


def riff(fmt: bytes, data: bytes, extra: bytes = b"", declared: int | None = None) -> bytes:
    """A RIFF/WAVE file from a fmt body and sample bytes (``declared`` overrides data's size)."""
    size = len(data) if declared is None else declared
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
    chunks += b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def fmt_body(tag: int, channels: int, rate: int, bits: int) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def float_wav(samples: np.ndarray, rate: int, bits: int = 32, extensible: bool = False) -> bytes:
    x = np.atleast_2d(samples).T
    data = x.astype("<f4" if bits == 32 else "<f8").tobytes()
    channels = x.shape[1]
    if not extensible:
        fact = b"fact" + struct.pack("<II", 4, x.shape[0])
        return riff(fmt_body(3, channels, rate, bits) + b"\x00\x00", data, extra=fact)
    guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = fmt_body(0xFFFE, channels, rate, bits) + struct.pack("<HHI", 22, bits, 0) + guid
    return riff(body, data)


def blobs(*items: bytes) -> np.ndarray:
    array = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        array[i, 0] = item
    return array


def dominant(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[spectrum.argmax()])


# --------------------------------------------------------------------------- decoding
@pytest.mark.parametrize(("bits", "tolerance"), [(8, 1 / 100), (16, 1e-4), (24, 1e-6), (32, 1e-7)])
def test_pcm_bit_depths_decode_to_the_same_wave(bits: int, tolerance: float) -> None:
    x = sine(440, 8000, 0.1)
    wav = decode_wav(pcm_wav(x, 8000, bits))
    assert wav.rate == 8000 and wav.samples.shape == (1, 800)
    assert wav.samples.dtype == np.float32
    assert np.abs(wav.samples[0] - x).max() < tolerance


@pytest.mark.parametrize("extensible", [False, True])
@pytest.mark.parametrize("bits", [32, 64])
def test_float_wav_including_extensible(bits: int, extensible: bool) -> None:
    x = np.stack([sine(300, 16000, 0.05), sine(500, 16000, 0.05, 0.25)])
    wav = decode_wav(float_wav(x, 16000, bits, extensible))
    assert wav.samples.shape == (2, 800)
    assert np.allclose(wav.samples, x, atol=1e-7)


def test_streaming_size_reads_to_the_end_and_odd_chunks_are_skipped() -> None:
    data = (np.arange(10, dtype="<i2") * 100).tobytes()
    odd = b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # padded to an even length
    streamed = riff(fmt_body(1, 1, 8000, 16), data + b"\x01", extra=odd, declared=0xFFFFFFFF)
    wav = decode_wav(streamed)
    assert wav.samples.shape == (1, 10)  # the trailing half sample is dropped
    assert wav.samples[0, 3] == pytest.approx(300 / 32768)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"ID3\x03 this is an mp3", "not a WAV file"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "not a WAV file"),
        (b"RF64" + b"\x00" * 40, "unsupported WAV container RF64"),
        (riff(fmt_body(1, 1, 8000, 16), b"\x00" * 100)[:60], "truncated WAV: the data chunk"),
        (riff(fmt_body(1, 1, 8000, 16), b"\x00" * 3), "ends inside a sample frame"),
        (riff(fmt_body(1, 1, 8000, 16), b"")[:36], "truncated WAV: no data chunk"),
        (riff(fmt_body(7, 1, 8000, 8), b"\x00" * 8), "µ-law"),
        (riff(fmt_body(0x55, 1, 8000, 16), b"\x00" * 8), "MP3"),
        (riff(fmt_body(0x1234, 1, 8000, 16), b"\x00" * 8), "compressed"),
        (riff(fmt_body(1, 1, 8000, 12), b"\x00" * 8), "12-bit PCM"),
        (riff(fmt_body(1, 1, 8000, 16), b""), "audio is empty"),
        (float_wav(np.array([0.0, np.nan]), 8000), "NaN"),
    ],
)
def test_bad_wavs_say_why(blob: bytes, message: str) -> None:
    with pytest.raises(WavError, match=message):
        decode_wav(blob)


def test_max_seconds_is_checked_before_decoding() -> None:
    with pytest.raises(WavError, match=r"audio is 2\.00 s long, over the 1\.5 s limit"):
        decode_wav(pcm_wav(sine(100, 8000, 2.0), 8000), max_seconds=1.5)


# --------------------------------------------------------------------------- resampling
@pytest.mark.parametrize(("source", "target"), [(8000, 16000), (44100, 16000), (16000, 22050)])
def test_resampling_keeps_the_frequency(source: int, target: int) -> None:
    x = sine(440, source, 1.0).astype(np.float32)
    y = resample(x[None], source, target, "numpy")[0]
    assert y.size == -(-x.size * target // source)
    assert dominant(y, target) == pytest.approx(440, abs=1.5)
    # Away from the edges the output is the same sine sampled at the new rate.
    expected = sine(440, target, 1.0)
    inner = slice(200, -200)
    error = np.sqrt(np.mean((y[inner] - expected[: y.size][inner]) ** 2))
    assert error < 1e-3


@pytest.mark.parametrize(
    ("source", "target"), [(8000, 16000), (44100, 16000), (48000, 16000), (16000, 22050)]
)
def test_numpy_resampling_matches_scipy(source: int, target: int) -> None:
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(0)
    x = (sine(440, source, 0.5) + 0.1 * rng.standard_normal(source // 2)).astype(np.float32)
    x = np.stack([x, -x])
    ours = resample(x, source, target, "numpy")
    g = np.gcd(source, target)
    theirs = signal.resample_poly(x, target // g, source // g, axis=-1)
    assert ours.shape == theirs.shape
    assert np.sqrt(np.mean((ours - theirs) ** 2)) < 1e-6
    assert np.allclose(resample(x, source, target), theirs, atol=1e-6)


def test_downsampling_filters_out_what_the_new_rate_cannot_hold() -> None:
    # 6 kHz does not fit under 8 kHz's Nyquist (4 kHz): it must vanish, not alias to 2 kHz.
    x = (sine(6000, 16000, 0.5) + sine(500, 16000, 0.5)).astype(np.float32)
    y = resample(x, 16000, 8000, "numpy")[200:-200]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / 8000)
    assert spectrum[np.abs(freqs - 2000).argmin()] < 1e-3 * spectrum.max()


# --------------------------------------------------------------------------- log-mel
def reference_filterbank(rate: int, n_fft: int, n_mels: int, htk: bool) -> np.ndarray:
    """Slaney/HTK triangles written out filter by filter, bin by bin."""

    def to_mel(f: float) -> float:
        if htk:
            return 2595 * np.log10(1 + f / 700)
        return f * 3 / 200 if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4)

    def to_hz(m: float) -> float:
        if htk:
            return 700 * (10 ** (m / 2595) - 1)
        return m * 200 / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    top = to_mel(rate / 2)
    edges = [to_hz(top * k / (n_mels + 1)) for k in range(n_mels + 2)]
    bank = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for b in range(n_fft // 2 + 1):
            f = b * rate / n_fft
            if lo < f <= mid:
                bank[m, b] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                bank[m, b] = (hi - f) / (hi - mid)
        bank[m] *= 2 / (hi - lo)
    return bank


def reference_log_mel(x: np.ndarray, rate: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """Whisper's recipe frame by frame with a full complex FFT: [n_mels, frames]."""
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = 1 + x.size // hop
    power = np.empty((n_fft // 2 + 1, frames))
    for t in range(frames):
        spectrum = np.fft.fft(padded[t * hop : t * hop + n_fft] * window)
        power[:, t] = np.abs(spectrum[: n_fft // 2 + 1]) ** 2
    mel = reference_filterbank(rate, n_fft, n_mels, htk=False) @ power
    log = np.log10(np.maximum(mel, 1e-10))
    return (np.maximum(log, log.max() - 8) + 4) / 4


def test_mel_scales() -> None:
    assert float(hz_to_mel(1000, "slaney")) == pytest.approx(15)
    assert float(hz_to_mel(1000, "htk")) == pytest.approx(1000, abs=0.1)
    f = np.array([0.0, 440.0, 1000.0, 3000.0, 7999.0])
    for scale in ("slaney", "htk"):
        assert np.allclose(mel_to_hz(hz_to_mel(f, scale), scale), f)
    for htk in (False, True):
        ours = mel_filterbank(16000, 512, 40, scale="htk" if htk else "slaney")
        assert np.abs(ours - reference_filterbank(16000, 512, 40, htk)).max() < 1e-6


def test_log_mel_matches_an_independent_reference() -> None:
    rng = np.random.default_rng(1)
    x = (sine(440, 16000, 1.0) + 0.05 * rng.standard_normal(16000)).astype(np.float32)
    mel = LogMel(16000)
    ours = mel([x[None]], mel.frames(x.size))[0, 0].T
    reference = reference_log_mel(x, 16000, 400, 160, 80)
    assert ours.shape == reference.shape == (80, 101)
    assert np.abs(ours - reference).max() < 1e-4


def test_a_fixed_window_is_padded_with_silence_before_the_stft() -> None:
    # Whisper pads to 30 s with zeros, then centres (reflecting the zeros), keeps 3000 frames.
    x = sine(440, 16000, 2.0).astype(np.float32)
    proc = AudioInput(
        "audio", audio_config((80, 3000)), {"to": "x", "sample_rate": 16000, "features": "log_mel"}
    )
    ours = proc({"audio": blobs(float_wav(x, 16000))})["x"][0]
    reference = reference_log_mel(np.pad(x, (0, 480000 - x.size)), 16000, 400, 160, 80)
    assert np.abs(ours - reference[:, :3000]).max() < 1e-4


def test_log_mel_power_spectrum_matches_torch_stft() -> None:
    torch = pytest.importorskip("torch")
    x = sine(1000, 16000, 0.5).astype(np.float32)
    mel = LogMel(16000, n_mels=64, n_fft=512, hop_length=128, win_length=400, log="none")
    ours = mel([x[None]], mel.frames(x.size))[0, 0]
    stft = torch.stft(
        torch.from_numpy(x),
        512,
        128,
        400,
        window=torch.hann_window(400),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = (stft.abs() ** 2).numpy()  # [bins, frames]
    expected = (mel.filters_t.T @ power).T
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-4 * expected.max()


def test_log_styles() -> None:
    x = sine(440, 8000, 0.2).astype(np.float32)[None]
    kwargs = {"n_mels": 20, "n_fft": 256, "hop_length": 80}
    power = LogMel(8000, log="none", **kwargs)([x], 21)  # type: ignore[arg-type]
    ln = LogMel(8000, log="ln", log_offset=1e-3, **kwargs)([x], 21)  # type: ignore[arg-type]
    log10 = LogMel(8000, log="log10", **kwargs)([x], 21)  # type: ignore[arg-type]
    assert np.allclose(ln, np.log(power + 1e-3), atol=1e-5)
    assert np.allclose(log10, np.log10(np.maximum(power, 1e-10)), atol=1e-5)


# --------------------------------------------------------------------------- AudioInput
def audio_config(dims: tuple[int, ...], *extra: TensorSpec, batch: int = 8) -> ModelConfig:
    return ModelConfig(
        name="asr",
        max_batch_size=batch,
        inputs=(TensorSpec("x", DataType.FP32, dims), *extra),
        outputs=(TensorSpec("y", DataType.FP32, (-1,)),),
    )


MASK = TensorSpec("mask", DataType.INT64, (-1,))


def test_waveform_resamples_mixes_pads_and_masks() -> None:
    proc = AudioInput(
        "audio", audio_config((-1,), MASK), {"to": "x", "sample_rate": 16000, "mask": "mask"}
    )
    assert proc.targets == ("x", "mask")
    stereo = np.stack([sine(440, 8000, 0.5), sine(440, 8000, 0.5)])
    out = proc(
        {
            "audio": blobs(
                pcm_wav(stereo, 8000, 16),
                float_wav(sine(440, 44100, 0.25), 44100),
                pcm_wav(sine(440, 16000, 0.1), 16000, 24),
            )
        }
    )
    x, mask = out["x"], out["mask"]
    assert x.shape == mask.shape == (3, 8000) and x.dtype == np.float32
    assert mask.dtype == np.int64 and mask.sum(axis=1).tolist() == [8000, 4000, 1600]
    assert np.all(x[1, 4000:] == 0) and np.all(x[2, 1600:] == 0)
    for row, n in zip(x, (8000, 4000, 1600), strict=True):
        assert dominant(row[:n], 16000) == pytest.approx(440, abs=16000 / n)
    assert np.abs(x[0, 100:7900] - sine(440, 16000, 0.5)[100:7900]).max() < 5e-3


def test_log_mel_input_reads_its_layout_and_pads_to_a_fixed_window() -> None:
    whisper = AudioInput(
        "audio",
        audio_config((80, 3000)),
        {"to": "x", "sample_rate": 16000, "features": "log_mel", "max_seconds": 30},
    )
    assert whisper.layout == "mels_first" and whisper.capacity == 480000
    out = whisper({"audio": blobs(pcm_wav(sine(440, 16000, 2.0), 16000))})["x"]
    assert out.shape == (1, 80, 3000)
    # Past the clip the features are silence: (max(-10, peak - 8) + 4) / 4, constant.
    assert np.ptp(out[0, :, 300:]) == 0
    frames_first = AudioInput(
        "audio",
        audio_config((-1, 40), MASK),
        {"to": "x", "sample_rate": 8000, "features": "log_mel", "n_mels": 40, "n_fft": 256,
         "hop_length": 80, "log": "ln", "mask": "mask"},
    )  # fmt: skip
    assert frames_first.layout == "frames_first"
    both = frames_first(
        {"audio": blobs(pcm_wav(sine(300, 8000, 0.5), 8000), pcm_wav(sine(300, 8000, 1.0), 8000))}
    )
    assert both["x"].shape == (2, 101, 40)
    assert both["mask"].sum(axis=1).tolist() == [51, 101]


def test_a_clip_is_the_same_alone_or_with_a_longer_one() -> None:
    proc = AudioInput(
        "audio", audio_config((80, -1)), {"to": "x", "sample_rate": 16000, "features": "log_mel",
                                          "log": "log10"},
    )  # fmt: skip
    short, long = pcm_wav(sine(440, 16000, 0.3), 16000), pcm_wav(sine(880, 16000, 1.0), 16000)
    alone = proc({"audio": blobs(short)})["x"][0]
    together = proc({"audio": blobs(short, long)})["x"][0]
    assert np.allclose(together[:, : alone.shape[1]], alone, atol=1e-5)


def test_chunking_splits_long_clips_into_rows() -> None:
    proc = AudioInput(
        "audio",
        audio_config((16000,), MASK, batch=4),
        {"to": "x", "sample_rate": 16000, "chunk_seconds": 1.0, "mask": "mask"},
    )
    out = proc({"audio": blobs(pcm_wav(sine(440, 16000, 2.5), 16000))})
    assert out["x"].shape == (3, 16000)
    assert out["mask"].sum(axis=1).tolist() == [16000, 16000, 8000]
    with pytest.raises(InvalidArgument, match="5 windows of 1 s, over max_batch_size 4"):
        proc({"audio": blobs(pcm_wav(sine(440, 16000, 4.5), 16000))})
    mel = AudioInput(
        "audio",
        audio_config((40, -1), MASK),
        {"to": "x", "sample_rate": 8000, "chunk_seconds": 1.0, "mask": "mask",
         "features": "log_mel", "n_mels": 40, "n_fft": 256, "hop_length": 80},
    )  # fmt: skip
    out = mel({"audio": blobs(pcm_wav(sine(440, 8000, 1.5), 8000))})
    assert out["x"].shape == (2, 40, 101)
    assert out["mask"].sum(axis=1).tolist() == [101, 51]


def test_stereo_kept_when_mono_is_false() -> None:
    proc = AudioInput(
        "audio", audio_config((2, -1)), {"to": "x", "sample_rate": 8000, "mono": False}
    )
    stereo = np.stack([sine(100, 8000, 0.1), np.zeros(800)])
    out = proc({"audio": blobs(pcm_wav(stereo, 8000))})["x"]
    assert out.shape == (1, 2, 800) and np.all(out[0, 1] == 0)
    with pytest.raises(InvalidArgument, match="1 channel"):
        proc({"audio": blobs(pcm_wav(sine(100, 8000, 0.1), 8000))})


def test_bad_audio_names_the_row_and_the_problem() -> None:
    proc = AudioInput(
        "audio",
        audio_config((16000,)),
        {"to": "x", "sample_rate": 16000, "allowed_rates": [16000, 8000], "max_seconds": 2},
    )
    good = pcm_wav(sine(440, 16000, 0.5), 16000)
    cases = [
        (b"not a wav at all", r"'audio'\[1\]: not a WAV file"),
        (good[:100], r"'audio'\[1\]: truncated WAV"),
        (riff(fmt_body(7, 1, 8000, 8), b"\x00" * 8), r"'audio'\[1\]: unsupported .*µ-law"),
        (riff(fmt_body(2, 1, 8000, 4), b"\x00" * 8), r"'audio'\[1\]: unsupported .*ADPCM"),
        (riff(fmt_body(1, 1, 16000, 16), b""), r"'audio'\[1\]: audio is empty"),
        (b"", r"'audio'\[1\]: empty audio"),
        (pcm_wav(sine(440, 44100, 0.5), 44100), r"wrong sample rate: 44100 Hz"),
        (pcm_wav(sine(440, 16000, 3.0), 16000), r"audio is 3\.00 s long, over the 2 s limit"),
        (pcm_wav(sine(440, 16000, 1.5), 16000), r"1\.50 s long, over the model's 1 s window"),
    ]
    for blob, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            proc({"audio": blobs(good, blob)})
    assert proc({"audio": blobs(pcm_wav(sine(440, 8000, 0.5), 8000))})["x"].shape == (1, 16000)


@pytest.mark.parametrize(
    ("dims", "options", "message"),
    [
        ((-1,), {}, "sample_rate must be"),
        ((-1,), {"sample_rate": 16000, "speed": 2}, r"unknown option\(s\) \['speed'\]"),
        ((-1,), {"sample_rate": 16000, "n_mels": 80}, "log_mel only"),
        ((-1,), {"sample_rate": 16000, "features": "mfcc"}, "waveform or log_mel"),
        ((1, 80, -1), {"sample_rate": 16000}, r"does not fit \[samples\]"),
        ((64, -1), {"sample_rate": 16000, "features": "log_mel"}, "no axis of n_mels 80"),
        ((-1,), {"sample_rate": 16000, "mono": False}, "fixed channel axis"),
        ((2, -1), {"sample_rate": 16000}, "needs mono: false"),
        ((800,), {"sample_rate": 8000, "chunk_seconds": 1}, "does not fit"),
        ((-1,), {"sample_rate": 16000, "mask": "nope"}, "mask must name"),
        ((-1,), {"sample_rate": 16000, "allowed_rates": "16000"}, "allowed_rates"),
        ((80, -1), {"sample_rate": 16000, "features": "log_mel", "fmax": 9000}, "fmax"),
        ((80, -1), {"sample_rate": 16000, "features": "log_mel", "log": "db"}, "log must"),
    ],
)
def test_declaration_errors(
    dims: tuple[int, ...], options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidModelConfig, match=message):
        AudioInput("audio", audio_config(dims), {"to": "x", **options})


def test_dispatched_from_the_declaration(tmp_path: Path) -> None:
    declaration = {"inputs": [{"name": "speech", "kind": "audio", "to": "x", "sample_rate": 8000}]}
    config = ModelConfig(
        name="m",
        max_batch_size=2,
        inputs=(TensorSpec("x", DataType.FP32, (-1,)),),
        outputs=(TensorSpec("y", DataType.FP32, (-1,)),),
        parameters={"processing": json.dumps(declaration)},
    )
    processing = build_processing(config, tmp_path, {})
    assert [(s.name, s.datatype) for s in processing.client_inputs] == [("speech", DataType.BYTES)]
    out = processing.preprocess({"speech": blobs(pcm_wav(sine(100, 8000, 0.1), 8000))})
    assert out["x"].shape == (1, 800)


def test_a_model_without_batching_takes_one_clip() -> None:
    config = ModelConfig(
        name="m",
        inputs=(TensorSpec("x", DataType.FP32, (-1,)),),
        outputs=(TensorSpec("y", DataType.FP32, (-1,)),),
    )
    proc = AudioInput("audio", config, {"to": "x", "sample_rate": 8000})
    assert proc.inputs[0].dims == (-1,)
    clip = pcm_wav(sine(100, 8000, 0.1), 8000)
    assert proc({"audio": np.array([clip], dtype=object)})["x"].shape == (800,)
    with pytest.raises(InvalidArgument, match="one clip at a time"):
        proc({"audio": np.array([clip, clip], dtype=object)})


# --------------------------------------------------------------------------- engine
def mel_mean_model() -> onnx.ModelProto:
    """y[n, m] = mean over time of features[n, m, t]."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["features"], ["y"], axes=[2], keepdims=0)],
        "mel_mean",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 40, "t"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 40])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_audio_through_the_engine(tmp_path: Path) -> None:
    from forwardpass.engine import Engine
    from forwardpass.types import InferRequest, Tensor

    processing = {
        "inputs": [
            {"name": "speech", "kind": "audio", "to": "features", "sample_rate": 16000,
             "features": "log_mel", "n_mels": 40, "n_fft": 512, "hop_length": 160,
             "log": "log10", "allowed_rates": [16000, 44100]},
        ]
    }  # fmt: skip
    config = f"""
name: "mels"
max_batch_size: 4
dynamic_batching {{ }}
input [ {{ name: "features" data_type: TYPE_FP32 dims: [ 40, -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 40 ] }} ]
parameters {{ key: "processing" value: {{ string_value: {json.dumps(json.dumps(processing))} }} }}
"""
    write_model(tmp_path, "mels", config=config, model=mel_mean_model())

    async def body(engine: Engine) -> None:
        meta = metadata_document(engine.metadata("mels"))
        assert meta["inputs"] == [{"name": "speech", "datatype": "BYTES", "shape": [-1, 1]}]
        low, high = pcm_wav(sine(300, 16000, 1.0), 16000), float_wav(sine(3000, 44100, 1.0), 44100)
        response = await engine.infer(
            InferRequest(
                model_name="mels", inputs=[Tensor("speech", DataType.BYTES, blobs(low, high))]
            )
        )
        y = response.outputs[0].data
        assert y.shape == (2, 40)
        # The low tone fills a low mel band, the high tone a high one.
        assert y[0].argmax() < 10 < y[1].argmax()
        with pytest.raises(
            InvalidArgument, match=r"'speech'\[0\]: audio with the wrong sample rate"
        ):
            await engine.infer(
                InferRequest(
                    model_name="mels",
                    inputs=[
                        Tensor("speech", DataType.BYTES, blobs(pcm_wav(sine(1, 8000, 1), 8000)))
                    ],
                )
            )

    run_with_engine(tmp_path, body)
