"""WAV bytes → float samples, with a precise reason when a file cannot be read.

One RIFF/WAVE reader covers every encoding served: integer PCM of 8, 16, 24 and 32 bits and
IEEE float of 32 and 64 bits, in the plain ``fmt`` chunk or in ``WAVE_FORMAT_EXTENSIBLE``.
(The stdlib ``wave`` module reads only integer PCM, so a second path for float files would
give two sets of error messages for one format; the tests check this reader against files
``wave`` writes.) Companded (µ-law, A-law) and compressed encodings are refused by name.

A ``data`` chunk whose size is 0xFFFFFFFF, as streaming writers (``ffmpeg -f wav pipe:``)
leave it, runs to the end of the bytes; any other size larger than what is present is a
truncated file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["Wav", "WavError", "decode_wav"]

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_NAMES = {
    2: "Microsoft ADPCM",
    6: "A-law",
    7: "µ-law",
    0x11: "IMA ADPCM",
    0x31: "GSM 6.10",
    0x50: "MPEG",
    0x55: "MP3",
    0x161: "WMA",
    0x2000: "AC-3",
    0xF1AC: "FLAC",
}
_STREAMING = 0xFFFFFFFF


class WavError(ValueError):
    """The bytes are not a WAV file this reader can decode; the message says why."""


@dataclass(frozen=True, slots=True)
class Wav:
    """Decoded audio: float32 samples in [-1, 1], shaped [channels, frames]."""

    samples: np.ndarray
    rate: int
    #: ``pcm8``, ``pcm16``, ``pcm24``, ``pcm32``, ``float32`` or ``float64``.
    encoding: str = ""

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.rate


@dataclass(frozen=True, slots=True)
class _Format:
    tag: int
    channels: int
    rate: int
    block_align: int
    bits: int


def decode_wav(blob: bytes | bytearray | memoryview, max_seconds: float | None = None) -> Wav:
    """Decode one WAV file; ``max_seconds`` refuses a longer one before decoding it."""
    data = memoryview(blob)
    if len(data) < 12 or bytes(data[:4]) != b"RIFF" or bytes(data[8:12]) != b"WAVE":
        head = bytes(data[:4])
        if head in (b"RF64", b"RIFX"):
            raise WavError(f"unsupported WAV container {head.decode()} (RIFF little-endian only)")
        raise WavError("not a WAV file (no RIFF/WAVE header)")
    fmt, payload = _chunks(data)
    frames = len(payload) // fmt.block_align
    if frames == 0:
        raise WavError("audio is empty (0 samples)")
    if max_seconds is not None and frames / fmt.rate > max_seconds:
        raise WavError(f"audio is {frames / fmt.rate:.2f} s long, over the {max_seconds:g} s limit")
    samples = _samples(payload[: frames * fmt.block_align], fmt).reshape(frames, fmt.channels)
    if fmt.tag == _FLOAT and not np.all(np.isfinite(samples)):
        raise WavError("float WAV holds NaN or infinite samples")
    encoding = f"{'float' if fmt.tag == _FLOAT else 'pcm'}{fmt.bits}"
    return Wav(np.ascontiguousarray(samples.T), fmt.rate, encoding)


def _chunks(data: memoryview) -> tuple[_Format, memoryview]:
    """The format and the sample bytes, walking the chunk list after the RIFF header."""
    fmt: _Format | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = bytes(data[offset : offset + 4])
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt ":
            if body + size > len(data):
                raise WavError("truncated WAV: the fmt chunk is cut short")
            fmt = _format(data[body : body + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("malformed WAV: the data chunk comes before the fmt chunk")
            if size == _STREAMING:
                payload = data[body:]
                return fmt, payload[: len(payload) // fmt.block_align * fmt.block_align]
            if body + size > len(data):
                raise WavError(
                    f"truncated WAV: the data chunk declares {size} bytes, "
                    f"{len(data) - body} are present"
                )
            if size % fmt.block_align:
                raise WavError("truncated WAV: the data ends inside a sample frame")
            return fmt, data[body : body + size]
        offset = body + size + (size & 1)  # chunks are padded to an even length
    if fmt is None:
        raise WavError("truncated WAV: no fmt chunk")
    raise WavError("truncated WAV: no data chunk")


def _format(body: memoryview) -> _Format:
    if len(body) < 16:
        raise WavError(f"malformed WAV: the fmt chunk is {len(body)} bytes, under 16")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise WavError("malformed WAV: WAVE_FORMAT_EXTENSIBLE without its sub-format")
        # The sub-format GUID starts with the classic format tag.
        (tag,) = struct.unpack_from("<H", body, 24)
    if tag not in (_PCM, _FLOAT):
        name = _NAMES.get(tag, "compressed")
        raise WavError(f"unsupported WAV encoding {name} (format {tag:#x}); send PCM or IEEE float")
    if channels < 1 or rate < 1:
        raise WavError(f"malformed WAV: {channels} channel(s) at {rate} Hz")
    allowed = (8, 16, 24, 32) if tag == _PCM else (32, 64)
    if bits not in allowed:
        kind = "PCM" if tag == _PCM else "float"
        raise WavError(f"unsupported WAV encoding: {bits}-bit {kind}")
    if block_align != channels * bits // 8:
        raise WavError(
            f"malformed WAV: block align {block_align} does not fit {channels} channel(s) "
            f"of {bits} bits"
        )
    return _Format(tag, channels, rate, block_align, bits)


def _samples(payload: memoryview, fmt: _Format) -> np.ndarray:
    """Interleaved samples as float32 in [-1, 1]."""
    if fmt.tag == _FLOAT:
        dtype = "<f4" if fmt.bits == 32 else "<f8"
        return np.frombuffer(payload, dtype=dtype).astype(np.float32)
    if fmt.bits == 8:  # 8-bit WAV is unsigned, centred on 128
        raw = np.frombuffer(payload, dtype=np.uint8).astype(np.float32)
        return (raw - 128.0) / 128.0
    if fmt.bits == 24:
        # Put each 3-byte sample in the top of an int32 and shift back, keeping the sign.
        triples = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((triples.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = triples
        ints = wide.view("<i4").reshape(-1) >> 8
        return ints.astype(np.float32) / float(1 << 23)
    dtype, scale = ("<i2", 1 << 15) if fmt.bits == 16 else ("<i4", 1 << 31)
    return np.frombuffer(payload, dtype=dtype).astype(np.float32) / float(scale)
