"""Sampling parameters, their validation, and choosing the next token from logits.

:func:`parse_sampling` turns a request's parameter mapping (wire-neutral: the generate
extension's JSON fields, later the OpenAI body) into a frozen :class:`SamplingParams`, with a
precise :class:`InvalidArgument` for every unknown name, wrong type or value out of range.
A :class:`Sampler` holds one sequence's random generator, so that a seed reproduces the same
tokens whatever else shares the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument

__all__ = ["SAMPLING_KEYS", "Sampler", "SamplingParams", "parse_sampling"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request chooses its tokens. ``temperature`` 0 is greedy (the default)."""

    max_tokens: int
    temperature: float = 0.0
    #: 0: no top-k cut.
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    #: Strings that end the output (not included in it).
    stop: tuple[str, ...] = ()
    #: Token ids that end the output, besides the model's own end tokens.
    stop_token_ids: tuple[int, ...] = ()
    #: Keep going past the model's end tokens (the request's own still stop).
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


#: Every parameter a generate request may carry. ``stream`` is accepted for Triton clients
#: that send it; the endpoint (``generate`` or ``generate_stream``) decides streaming.
SAMPLING_KEYS = (
    "ignore_eos",
    "max_tokens",
    "seed",
    "stop",
    "stop_token_ids",
    "stream",
    "temperature",
    "top_k",
    "top_p",
)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"parameter {name!r} must be an integer, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"parameter {name!r} must be a number, got {value!r}")
    return float(value)


def parse_sampling(
    parameters: Mapping[str, Any],
    *,
    default_max_tokens: int,
    max_tokens_limit: int,
    vocab: int,
) -> SamplingParams:
    """Validate ``parameters`` into :class:`SamplingParams` (400 on anything wrong)."""
    unknown = sorted(set(parameters) - set(SAMPLING_KEYS))
    if unknown:
        raise InvalidArgument(
            f"unknown sampling parameter(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(SAMPLING_KEYS)}"
        )
    max_tokens = default_max_tokens
    if parameters.get("max_tokens") is not None:
        max_tokens = _int("max_tokens", parameters["max_tokens"])
    if not 1 <= max_tokens <= max_tokens_limit:
        raise InvalidArgument(
            f"max_tokens must be between 1 and {max_tokens_limit}, got {max_tokens}"
        )
    temperature = _number("temperature", parameters.get("temperature", 0.0))
    if not 0.0 <= temperature <= 100.0:
        raise InvalidArgument(f"temperature must be between 0 and 100, got {temperature}")
    top_k = _int("top_k", parameters.get("top_k", 0))
    if top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0 (0: no cut), got {top_k}")
    top_p = _number("top_p", parameters.get("top_p", 1.0))
    if not 0.0 < top_p <= 1.0:
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
    seed = parameters.get("seed")
    if seed is not None:
        seed = _int("seed", seed)
        if seed < 0:
            raise InvalidArgument(f"seed must be >= 0, got {seed}")
    stop_raw = parameters.get("stop", ())
    if isinstance(stop_raw, str):
        stop_raw = [stop_raw]
    if not isinstance(stop_raw, list | tuple) or not all(isinstance(s, str) for s in stop_raw):
        raise InvalidArgument("parameter 'stop' must be a string or a list of strings")
    if any(not s for s in stop_raw):
        raise InvalidArgument("parameter 'stop' must not contain an empty string")
    ids_raw = parameters.get("stop_token_ids", ())
    if not isinstance(ids_raw, list | tuple):
        raise InvalidArgument("parameter 'stop_token_ids' must be a list of integers")
    ids = tuple(_int("stop_token_ids", i) for i in ids_raw)
    if any(not 0 <= i < vocab for i in ids):
        raise InvalidArgument(f"stop_token_ids must be token ids in [0, {vocab})")
    ignore_eos = parameters.get("ignore_eos", False)
    stream = parameters.get("stream", False)
    if not isinstance(ignore_eos, bool) or not isinstance(stream, bool):
        raise InvalidArgument("parameters 'ignore_eos' and 'stream' must be booleans")
    return SamplingParams(
        max_tokens, temperature, top_k, top_p, seed, tuple(stop_raw), ids, ignore_eos
    )


class Sampler:
    """Picks one sequence's tokens: argmax when greedy, else temperature / top-k / top-p
    sampling from its own generator (seeded when the request gives a seed)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def choose(self, logits: np.ndarray) -> int:
        params = self.params
        if params.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / params.temperature
        if params.top_k and params.top_k < scaled.size:
            kth = np.partition(scaled, -params.top_k)[-params.top_k]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        if params.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # Keep the smallest prefix whose mass reaches top_p (at least one token).
            keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(self._rng.choice(probs.size, p=probs))
