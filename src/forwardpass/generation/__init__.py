"""Text generation: continuous batching of decoder steps over a KV cache forwardpass owns.

A model is a generation model when its config has a ``generation`` parameter (JSON, see
:class:`GenerationSettings`); the engine then serves it through a :class:`GenerationScheduler`
instead of the dynamic batcher. See ``scheduler`` for the guarantees.
"""

from forwardpass.generation.sampling import SamplingParams, parse_sampling
from forwardpass.generation.scheduler import (
    FinishReason,
    GenerationRequest,
    GenerationScheduler,
    TokenEvent,
)
from forwardpass.generation.settings import GenerationSettings

__all__ = [
    "FinishReason",
    "GenerationRequest",
    "GenerationScheduler",
    "GenerationSettings",
    "SamplingParams",
    "TokenEvent",
    "parse_sampling",
]
