"""A generation model's settings: the ``generation`` parameter of its config.

``config.pbtxt`` carries them as JSON in one string parameter::

    parameters { key: "generation" value { string_value: "{\"context_length\": 2048, ...}" } }

Every key is optional (the defaults are the dataclass's); an unknown key or a value of the
wrong type is an :class:`InvalidModelConfig` naming it, so a typo never silently falls back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig

__all__ = ["PARAMETER", "GenerationSettings"]

#: The config parameter that makes a model a generation model.
PARAMETER = "generation"


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """How a generation model is served (one place for its defaults)."""

    #: Positions one sequence may hold (prompt + generated): the per-slot cache length.
    context_length: int = 2048
    #: The KV cache budget in bytes; slots = budget // bytes per slot (at least one).
    cache_bytes: int = 512 * 1024 * 1024
    #: Upper bound on sequences decoded together (also capped by the budget).
    max_batch: int = 32
    #: Requests that may wait for a cache slot; one more is refused at once with 503.
    max_waiting: int = 256
    #: How long a request may wait for a slot before it is refused with 503 (seconds).
    queue_timeout_s: float = 60.0
    #: ``max_tokens`` when the request gives none, and the most a request may ask for.
    default_max_tokens: int = 64
    max_tokens_limit: int = 1024
    #: Prompts prefilled together (one batched call) per scheduler iteration, between decode
    #: steps of the running batch.
    prefills_per_step: int = 32
    #: Prompt tokens one iteration prefills, padding included (rows x longest prompt): the
    #: prompts that arrived together are batched up to it, and a longer prompt is prefilled
    #: in chunks of this many tokens, one per iteration, so the running sequences' decode
    #: steps are never stalled for a whole long prefill.
    prefill_tokens: int = 512
    #: ``"tight"``: bind the live prefix of the cache (copied into one batch array per step);
    #: ``"full"``: bind the preallocated buffers themselves (no copy; attention spans the
    #: whole context, masked); ``"bucket"``: the buffers laid out as wide as the longest live
    #: sequence rounded up to 64 positions, bound without a copy (``generation.kvcache``).
    #: See bench/generate_bench.py for which is faster where.
    window: str = "bucket"
    #: Tokens that end a sequence (end-of-turn / end-of-text), besides a request's own.
    stop_token_ids: tuple[int, ...] = ()
    #: Files in the model folder.
    tokenizer: str = "tokenizer.json"
    chat_template: str = "chat_template.jinja"
    #: onnxruntime intra-op threads for the decoder (0: onnxruntime's default).
    intra_op_threads: int = 0

    @classmethod
    def from_config(cls, config: ModelConfig) -> GenerationSettings | None:
        """The settings of ``config``, or ``None`` when it is not a generation model."""
        text = config.parameters.get(PARAMETER)
        if text is None:
            return None
        try:
            raw = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidModelConfig(
                f"model {config.name!r}: parameter {PARAMETER!r} is not JSON: {exc}"
            ) from None
        if not isinstance(raw, dict):
            raise InvalidModelConfig(
                f"model {config.name!r}: parameter {PARAMETER!r} must be a JSON object"
            )
        return cls.from_mapping(raw, config.name)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], model: str = "") -> GenerationSettings:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise InvalidModelConfig(
                    f"model {model!r}: unknown generation setting {key!r} "
                    f"(known: {', '.join(sorted(known))})"
                )
            default = getattr(cls(), key)
            if isinstance(default, tuple):
                if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value
                ):
                    raise InvalidModelConfig(
                        f"model {model!r}: generation setting {key!r} must be a list of integers"
                    )
                value = tuple(value)
            elif isinstance(default, bool) or type(value) is bool:
                raise InvalidModelConfig(f"model {model!r}: bad generation setting {key!r}")
            elif isinstance(default, float):
                if not isinstance(value, int | float):
                    raise InvalidModelConfig(
                        f"model {model!r}: generation setting {key!r} must be a number"
                    )
                value = float(value)
            elif not isinstance(value, type(default)):
                raise InvalidModelConfig(
                    f"model {model!r}: generation setting {key!r} must be "
                    f"{type(default).__name__}, got {value!r}"
                )
            values[key] = value
        settings = cls(**values)
        settings._check(model)
        return settings

    def _check(self, model: str) -> None:
        for key in ("context_length", "cache_bytes", "max_batch", "default_max_tokens"):
            if getattr(self, key) < 1:
                raise InvalidModelConfig(f"model {model!r}: generation {key} must be >= 1")
        if (
            self.max_waiting < 0
            or self.queue_timeout_s <= 0
            or self.prefills_per_step < 1
            or self.prefill_tokens < 1
        ):
            raise InvalidModelConfig(
                f"model {model!r}: generation max_waiting must be >= 0, queue_timeout_s > 0, "
                "prefills_per_step >= 1 and prefill_tokens >= 1"
            )
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise InvalidModelConfig(
                f"model {model!r}: generation default_max_tokens must be between 1 and "
                f"max_tokens_limit ({self.max_tokens_limit})"
            )
        if self.window not in ("tight", "full", "bucket"):
            raise InvalidModelConfig(
                f"model {model!r}: generation window must be 'tight', 'full' or 'bucket', "
                f"got {self.window!r}"
            )
