"""WAV files (BYTES, one per row) → a waveform or log-mel tensor at the model's sample rate.

Declared as ``{name: audio, kind: audio, to: MODEL_INPUT, sample_rate: 16000, ...}``.
Options:

- ``sample_rate`` (required): the rate the model was trained at; other rates are resampled
  (polyphase, :func:`forwardpass.processing.dsp.resample`) unless ``allowed_rates`` lists the
  rates accepted, when any other is a 400 ("audio with the wrong sample rate");
- ``mono`` (default true): average the channels; false keeps them, and the model input then
  has a fixed channel axis before time ([C, samples] or [C, n_mels, frames]);
- ``max_seconds``: a longer clip is a 400 naming its duration and the limit;
- ``encodings``: the WAV sample encodings accepted (``pcm8``, ``pcm16``, ``pcm24``,
  ``pcm32``, ``float32``, ``float64``; default all); any other is a 400 naming it;
- ``features``: ``waveform`` (default; [N, samples]) or ``log_mel`` ([N, n_mels, frames], or
  [N, frames, n_mels] with ``layout: frames_first``; the default layout is read off the
  model input's dims where n_mels fixes it). Log-mel options, defaulting to Whisper's
  feature extractor: ``n_mels`` 80, ``n_fft`` 400, ``hop_length`` 160, ``win_length``
  (n_fft), ``window`` (hann, hamming), ``center`` (true), ``pad_mode`` (reflect, constant),
  ``power`` (2; 1 for magnitude), ``fmin`` (0), ``fmax`` (rate / 2), ``mel_scale`` (slaney,
  htk), ``mel_norm`` (slaney, none), ``log`` (whisper, log10, ln, none), ``log_offset``
  (the floor for log10 / whisper, 1e-10; added before ``ln``, 1e-6);
- ``mask``: a model input [N, samples] or [N, frames] set to 1 where a row holds audio and 0
  where it is padding;
- ``chunk_seconds``: split each clip into windows of this length (the last one padded with
  silence), one row each, for models that take fixed windows. The answer then has one row
  per window, clip after clip, in order.

A request's rows are padded with silence to the longest of them, or to the model input's
length when its time axis is fixed (a longer clip is then a 400 unless it is chunked).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.base import InputProcessor
from forwardpass.processing.dsp import LogMel, resample
from forwardpass.processing.wav import WavError, decode_wav

__all__ = ["AudioInput"]

_FLOATS = (DataType.FP16, DataType.FP32, DataType.FP64)
_ENCODINGS = {"pcm8", "pcm16", "pcm24", "pcm32", "float32", "float64"}
_MEL_OPTIONS = (
    "n_mels",
    "n_fft",
    "hop_length",
    "win_length",
    "window",
    "center",
    "pad_mode",
    "power",
    "fmin",
    "fmax",
    "mel_scale",
    "mel_norm",
    "log",
    "log_offset",
    "layout",
)
_CHOICES = {
    "window": ("hann", "hamming"),
    "pad_mode": ("reflect", "constant"),
    "mel_scale": ("slaney", "htk"),
    "mel_norm": ("slaney", "none"),
    "log": ("whisper", "log10", "ln", "none"),
    "layout": ("mels_first", "frames_first"),
}


class AudioInput(InputProcessor):
    """Encoded WAV clips → float features for one model input (and an optional mask)."""

    def __init__(self, name: str, config: ModelConfig, options: Mapping[str, Any]) -> None:
        opts = dict(options)
        where = f"audio input {name!r}"
        target = config.input(str(opts.pop("to", "")))
        if target is None:
            raise InvalidModelConfig(f"{where}: 'to' must name a model input")
        if target.datatype not in _FLOATS:
            raise InvalidModelConfig(f"{where}: model input {target.name!r} must be a float type")
        rate = opts.pop("sample_rate", None)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise InvalidModelConfig(f"{where}: sample_rate must be a positive integer (Hz)")
        self.name, self.target, self.rate = name, target, rate
        self.batching, self.max_rows = config.batching, config.max_batch_size
        self.mono = opts.pop("mono", True)
        if not isinstance(self.mono, bool):
            raise InvalidModelConfig(f"{where}: mono must be true or false")
        self.max_seconds = _number(opts.pop("max_seconds", None), f"{where}: max_seconds")
        rates = opts.pop("allowed_rates", None)
        if rates is not None and (
            not isinstance(rates, list) or not all(isinstance(r, int) and r > 0 for r in rates)
        ):
            raise InvalidModelConfig(f"{where}: allowed_rates must be a list of rates in Hz")
        self.allowed_rates = None if rates is None else tuple(rates)
        encodings = opts.pop("encodings", None)
        if encodings is not None and (
            not isinstance(encodings, list) or not encodings or not set(encodings) <= _ENCODINGS
        ):
            raise InvalidModelConfig(
                f"{where}: encodings must be a list drawn from {sorted(_ENCODINGS)}"
            )
        self.encodings = None if encodings is None else tuple(encodings)
        features = str(opts.pop("features", "waveform"))
        if features not in ("waveform", "log_mel"):
            raise InvalidModelConfig(f"{where}: features must be waveform or log_mel")
        self.features = features
        mel = {k: opts.pop(k) for k in _MEL_OPTIONS if k in opts}
        chunk = _number(opts.pop("chunk_seconds", None), f"{where}: chunk_seconds")
        mask_name = opts.pop("mask", None)
        if opts:
            raise InvalidModelConfig(f"{where}: unknown option(s) {sorted(opts)}")
        if mel and features != "log_mel":
            raise InvalidModelConfig(f"{where}: {sorted(mel)} apply to features: log_mel only")
        self.mel = self._log_mel(where, mel) if features == "log_mel" else None
        self.channel_axis = self._check_rank(where)
        self.layout = self._layout(where, str(mel.get("layout", "")))
        time_axis = target.dims[-2] if self.layout == "frames_first" else target.dims[-1]
        #: The model's fixed time length (samples or frames; 0 when free) and the samples
        #: that fill it.
        self.fixed = max(0, time_axis)
        self.capacity = (self.mel.capacity(self.fixed) if self.mel else self.fixed) or 0
        self.chunk = 0 if chunk is None else round(chunk * rate)
        if chunk is not None:
            if not self.batching:
                raise InvalidModelConfig(f"{where}: chunk_seconds needs a batching model")
            if self.chunk < 1 or (self.fixed and self.chunk > self.capacity):
                raise InvalidModelConfig(
                    f"{where}: chunk_seconds {chunk:g} does not fit model input "
                    f"{target.name!r} {list(target.dims)}"
                )
        self.mask = self._mask(where, mask_name, config)
        self.inputs = (
            TensorSpec(name=name, datatype=DataType.BYTES, dims=(1,) if self.batching else (-1,)),
        )
        self.targets = (target.name,) + ((self.mask.name,) if self.mask else ())

    # ------------------------------------------------------------------ configuration
    def _log_mel(self, where: str, mel: dict[str, Any]) -> LogMel:
        for key, allowed in _CHOICES.items():
            if key in mel and mel[key] not in allowed:
                raise InvalidModelConfig(f"{where}: {key} must be one of {allowed}")
        kwargs = {k: v for k, v in mel.items() if k != "layout"}
        if "mel_norm" in kwargs:
            kwargs["mel_norm"] = kwargs["mel_norm"] == "slaney"
        try:
            return LogMel(self.rate, **kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidModelConfig(f"{where}: {exc}") from None

    def _check_rank(self, where: str) -> bool:
        """Whether the model input has a channel axis before the features; check its rank."""
        dims = self.target.dims
        rank = 1 if self.mel is None else 2
        channel_axis = len(dims) == rank + 1
        if len(dims) != rank and not channel_axis:
            shape = "[samples]" if self.mel is None else "[n_mels, frames] or [frames, n_mels]"
            raise InvalidModelConfig(
                f"{where}: model input {self.target.name!r} {list(dims)} does not fit {shape} "
                "(with an optional channel axis first)"
            )
        if not self.mono and (not channel_axis or dims[0] < 1):
            raise InvalidModelConfig(
                f"{where}: mono: false needs a fixed channel axis first in the model input"
            )
        if self.mono and channel_axis and dims[0] not in (1, -1):
            raise InvalidModelConfig(f"{where}: a channel axis of {dims[0]} needs mono: false")
        return channel_axis

    def _layout(self, where: str, layout: str) -> str:
        """Read the mel layout off the model input's dims, or check the declared one."""
        dims = self.target.dims
        if self.mel is None:
            return ""
        mels, frames_first = self.mel.n_mels, dims[-1] == self.mel.n_mels
        if not layout:
            layout = "frames_first" if frames_first and dims[-2] != mels else "mels_first"
        axis = dims[-2] if layout == "mels_first" else dims[-1]
        if axis not in (-1, mels):
            raise InvalidModelConfig(
                f"{where}: model input {self.target.name!r} {list(dims)} has no axis of "
                f"n_mels {mels} where layout {layout} puts it"
            )
        return layout

    def _mask(self, where: str, name: Any, config: ModelConfig) -> TensorSpec | None:
        if name is None:
            return None
        spec = config.input(str(name))
        if spec is None or spec.name == self.target.name or len(spec.dims) != 1:
            raise InvalidModelConfig(
                f"{where}: mask must name another model input, of one axis (time)"
            )
        if spec.dims[0] not in (-1, self.fixed or -1):
            raise InvalidModelConfig(
                f"{where}: mask {spec.name!r} {list(spec.dims)} does not fit the "
                f"{self.fixed} steps of {self.target.name!r}"
            )
        return spec

    # ------------------------------------------------------------------ requests
    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        data = arrays[self.name].reshape(-1)
        if not self.batching and data.size != 1:
            raise InvalidArgument(f"input {self.name!r}: this model takes one clip at a time")
        clips = [self._clip(item, i) for i, item in enumerate(data)]
        if self.chunk:
            clips = [w for clip in clips for w in _windows(clip, self.chunk)]
            if len(clips) > self.max_rows:
                raise InvalidArgument(
                    f"input {self.name!r}: the clips make {len(clips)} windows of "
                    f"{self.chunk / self.rate:g} s, over max_batch_size {self.max_rows}"
                )
        if not clips:  # zero rows (an ensemble step after a VAD that heard no speech)
            return {
                spec.name: np.zeros((0, *(max(0, d) for d in spec.dims)), spec.datatype.numpy)
                for spec in (self.target, self.mask)
                if spec is not None
            }
        lengths = [c.shape[-1] for c in clips]
        out: dict[str, np.ndarray] = {}
        if self.mel is None:
            width = self.fixed or self.chunk or max(lengths)
            batch = np.zeros((len(clips), clips[0].shape[0], width), dtype=np.float32)
            for i, clip in enumerate(clips):
                batch[i, :, : clip.shape[-1]] = clip
            valid = lengths
        else:
            width = self.fixed or max(self.mel.frames(n) for n in [self.chunk, *lengths])
            # A fixed window or a chunk is padded with silence before the STFT.
            batch = self.mel(clips, width, self.capacity or self.chunk)  # [N, C, frames, mels]
            if self.layout == "mels_first":
                batch = batch.swapaxes(-1, -2)
            valid = [min(width, self.mel.frames(n)) for n in lengths]
        if not self.channel_axis:
            batch = batch[:, 0]
        out[self.target.name] = self._rows(batch.astype(self.target.datatype.numpy, copy=False))
        if self.mask is not None:
            mask = np.arange(width)[None, :] < np.asarray(valid)[:, None]
            out[self.mask.name] = self._rows(mask.astype(self.mask.datatype.numpy))
        return out

    def _rows(self, batch: np.ndarray) -> np.ndarray:
        return batch if self.batching else batch[0]

    def _clip(self, blob: object, index: int) -> np.ndarray:
        """One row's WAV → float32 [channels, samples] at the model's rate."""
        where = f"input {self.name!r}[{index}]"
        if not isinstance(blob, bytes | bytearray) or not blob:
            raise InvalidArgument(f"{where}: empty audio")
        try:
            wav = decode_wav(blob, self.max_seconds)
        except WavError as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
        if self.encodings is not None and wav.encoding not in self.encodings:
            raise InvalidArgument(
                f"{where}: unsupported WAV encoding {wav.encoding}; this model takes "
                f"{', '.join(self.encodings)}"
            )
        if self.allowed_rates is not None and wav.rate not in self.allowed_rates:
            raise InvalidArgument(
                f"{where}: audio with the wrong sample rate: {wav.rate} Hz, the model takes "
                f"{', '.join(str(r) for r in self.allowed_rates)} Hz"
            )
        samples = wav.samples
        if self.mono:
            samples = samples.mean(axis=0, keepdims=True) if samples.shape[0] > 1 else samples
        elif samples.shape[0] != self.target.dims[0]:
            raise InvalidArgument(
                f"{where}: audio has {samples.shape[0]} channel(s), the model takes "
                f"{self.target.dims[0]}"
            )
        samples = resample(samples, wav.rate, self.rate)
        if self.fixed and not self.chunk and samples.shape[-1] > self.capacity:
            raise InvalidArgument(
                f"{where}: audio is {wav.seconds:.2f} s long, over the model's "
                f"{self.capacity / self.rate:g} s window"
            )
        return samples


def _windows(clip: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive windows of ``size`` samples (the last one shorter)."""
    # The last window keeps its true length here, so that the mask marks its padding.
    return [clip[..., k : k + size] for k in range(0, clip.shape[-1], size)]


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidModelConfig(f"{what} must be a positive number")
    return float(value)
