"""Spoken digits synthesized with espeak-ng: the training and test speech of ``speech-digits``.

A *voice* is an espeak-ng accent with a voice variant (``en-gb-scotland+klatt3``), spoken at a
speed (words per minute, ``-s``) and pitch (``-p``). Training clips are built cheaply: one
espeak-ng call per voice says the ten digits with long breaks between them, the call's audio
is cut at those breaks into ten word clips, and sequences of one to four digits are glued
from a voice's word clips with random gaps, gain and noise. Test clips are harder and
nearer real use: the whole digit sequence is one espeak-ng call (connected speech, its own
rhythm), in voice variants the training never heard, with noise added.

Everything is seeded: the same seed gives the same clips.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forwardpass.errors import Unsupported
from forwardpass.processing.dsp import resample
from forwardpass.processing.wav import decode_wav

__all__ = [
    "ACCENTS",
    "RATE",
    "WORDS",
    "Clip",
    "Voice",
    "espeak_binary",
    "split_variants",
    "test_clips",
    "training_clips",
    "variants",
    "word_bank",
]

RATE = 16000
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
# Unvoiced variants: no pitch at all, a different task.
_SKIPPED = {"whisper", "whisperf"}
_BREAK = '<break time="600ms"/>'


@dataclass(frozen=True, slots=True)
class Voice:
    accent: str
    variant: str
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True, slots=True)
class Clip:
    """A float32 waveform at :data:`RATE` and the digit indices it says."""

    samples: np.ndarray
    digits: tuple[int, ...]

    @property
    def text(self) -> str:
        return " ".join(WORDS[d] for d in self.digits)


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise Unsupported(
            "speech-digits is trained on speech synthesized by espeak-ng, which is not "
            "installed: apt-get install espeak-ng"
        )
    return path


def variants() -> list[str]:
    """The voice variants espeak-ng knows (``m1``, ``klatt3``, ``Andy`` ...), sorted."""
    listing = subprocess.run(
        [espeak_binary(), "--voices=variant"], capture_output=True, text=True, check=True
    ).stdout
    names = []
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("!v/"):
            names.append(fields[4][3:])
    return sorted(set(names) - _SKIPPED, key=str.lower)


def split_variants(names: Sequence[str], every: int = 7) -> tuple[list[str], list[str]]:
    """(training, held out): every ``every``-th variant is held out for the test set."""
    held = [v for i, v in enumerate(names) if i % every == every // 2]
    return [v for v in names if v not in held], held


def _say(voice: Voice, text: str, ssml: bool = False) -> np.ndarray:
    command = [espeak_binary(), "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch)]
    if ssml:
        command.append("-m")
    # A file, not --stdout: piped, espeak-ng leaves a placeholder size in the data chunk.
    with tempfile.TemporaryDirectory(prefix="fp-espeak-") as folder:
        path = Path(folder) / "say.wav"
        subprocess.run(
            [*command, "-w", str(path), text], capture_output=True, check=True, timeout=30
        )
        wav = decode_wav(path.read_bytes())
    return resample(wav.samples[0], wav.rate, RATE)


def _cut_words(samples: np.ndarray, expected: int) -> list[np.ndarray] | None:
    """Cut at the silences (>= 0.25 s) between words; None unless there are ``expected``."""
    hop = RATE // 100
    frames = samples[: samples.size // hop * hop].reshape(-1, hop)
    loud = np.sqrt((frames**2).mean(axis=1)) > max(1e-3, 0.01 * np.abs(samples).max())
    words: list[np.ndarray] = []
    start, quiet = None, 0
    for i, voiced in enumerate(loud):
        if voiced:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= 25:
                words.append(samples[max(0, start - 2) * hop : (i - quiet + 3) * hop])
                start, quiet = None, 0
    if start is not None:
        words.append(samples[max(0, start - 2) * hop :])
    return words if len(words) == expected else None


def word_bank(voices: Sequence[Voice], workers: int = 2) -> list[list[np.ndarray]]:
    """The ten word clips of each voice (voices whose audio does not cut cleanly are dropped)."""
    text = f" {_BREAK} ".join(WORDS)

    def one(voice: Voice) -> list[np.ndarray] | None:
        return _cut_words(_say(voice, text, ssml=True), len(WORDS))

    with ThreadPoolExecutor(workers) as pool:
        banks = list(pool.map(one, voices))
    return [b for b in banks if b is not None]


def _noisy(
    samples: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float]
) -> np.ndarray:
    """Add white noise at a random SNR and scale to a random peak level."""
    power = float((samples**2).mean()) + 1e-12
    snr = rng.uniform(*snr_db)
    noise = rng.standard_normal(samples.size).astype(np.float32)
    out = samples + noise * np.float32(np.sqrt(power / 10 ** (snr / 10)))
    peak = float(np.abs(out).max()) + 1e-9
    return (out * np.float32(rng.uniform(0.05, 0.95) / peak)).astype(np.float32)


def training_clips(
    banks: Sequence[list[np.ndarray]], count: int, seed: int, max_words: int = 4
) -> list[Clip]:
    """``count`` glued sequences of 1..``max_words`` digits, each from one voice's words."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        bank = banks[int(rng.integers(len(banks)))]
        digits = tuple(
            int(d) for d in rng.integers(0, 10, size=int(rng.integers(1, max_words + 1)))
        )
        parts = [np.zeros(int(rng.uniform(0.05, 0.4) * RATE), np.float32)]
        for d in digits:
            parts.append(bank[d])
            parts.append(np.zeros(int(rng.uniform(0.0, 0.25) * RATE), np.float32))
        parts.append(np.zeros(int(rng.uniform(0.05, 0.4) * RATE), np.float32))
        clips.append(Clip(_noisy(np.concatenate(parts), rng, (5.0, 35.0)), digits))
    return clips


def test_clips(
    held_out: Sequence[str], count: int, seed: int, max_words: int = 4, workers: int = 2
) -> list[tuple[Voice, Clip]]:
    """``count`` sequences spoken whole by voices of the ``held_out`` variants, with noise."""
    pick = random.Random(seed)
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(count):
        voice = Voice(
            pick.choice(ACCENTS),
            pick.choice(held_out),
            pick.randint(130, 210),
            pick.randint(25, 75),
        )
        digits = tuple(pick.randrange(10) for _ in range(pick.randint(1, max_words)))
        jobs.append((voice, digits))

    def one(job: tuple[Voice, tuple[int, ...]]) -> np.ndarray:
        voice, digits = job
        return _say(voice, " ".join(WORDS[d] for d in digits))

    with ThreadPoolExecutor(workers) as pool:
        spoken = list(pool.map(one, jobs))
    out = []
    for (voice, digits), samples in zip(jobs, spoken, strict=True):
        padded = np.concatenate(
            [np.zeros(RATE // 5, np.float32), samples, np.zeros(RATE // 5, np.float32)]
        )
        out.append((voice, Clip(_noisy(padded, rng, (10.0, 30.0)), digits)))
    return out


def training_voices(train_variants: Sequence[str], seed: int, per_variant: int = 4) -> list[Voice]:
    """``per_variant`` voices per training variant: random accent, speed and pitch."""
    pick = random.Random(seed)
    return [
        Voice(pick.choice(ACCENTS), v, pick.randint(120, 220), pick.randint(20, 80))
        for v in train_variants
        for _ in range(per_variant)
    ]
