"""Fixtures for the generation tests: the exported SmolLM2 decoder, loaded once, and a factory
for schedulers over it with whatever settings a test needs (each has its own cache)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forwardpass.generation.kvcache import KVCache
from forwardpass.generation.model import GenerationModel, load_generation
from forwardpass.generation.scheduler import Decoder, GenerationScheduler
from forwardpass.generation.settings import GenerationSettings
from forwardpass.repository import ModelRepository

NAME = "smollm2-135m-instruct"


@dataclass
class Loaded:
    model: GenerationModel
    folder: Path


@pytest.fixture(scope="session")
def smollm2(smollm2_repository: Path) -> Loaded:
    entry = ModelRepository(smollm2_repository).read(NAME)
    settings = GenerationSettings.from_config(entry.config)
    assert settings is not None
    return Loaded(load_generation(entry.config, entry.path, 1, settings), entry.path)


@pytest.fixture(scope="session")
def reference(smollm2_reference: tuple[Any, Any]) -> tuple[Any, Any]:
    """transformers' model and tokenizer on the same dequantized weights (the session's one,
    which also built the export when no cached build was there)."""
    return smollm2_reference


@pytest.fixture
def make_scheduler(smollm2: Loaded) -> Iterator[Callable[..., GenerationScheduler]]:
    """``make_scheduler(**settings)``: a started scheduler on the shared decoder session."""
    made: list[GenerationScheduler] = []
    base = smollm2.model.settings

    def make(slots: int = 3, **overrides: Any) -> GenerationScheduler:
        context = overrides.pop("context_length", 256)
        shape = smollm2.model.scheduler.decoder.shape
        fields = {
            "context_length": context,
            "cache_bytes": KVCache.slot_bytes(shape, context) * slots,
            "max_tokens_limit": context - 1,
            "default_max_tokens": min(16, context - 1),
            "stop_token_ids": list(base.stop_token_ids),
            **overrides,
        }
        settings = GenerationSettings.from_mapping(fields, NAME)
        old = smollm2.model.scheduler.decoder
        scheduler = GenerationScheduler(
            Decoder(old.session, old.shape), settings, smollm2.model.decode, name=NAME
        )
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    import asyncio

    for scheduler in made:
        asyncio.run(scheduler.close())
