"""The processing contract: raw client inputs → model inputs, model outputs → answers.

An :class:`InputProcessor` consumes one or more client-facing inputs (an encoded image, a
string, named tabular columns) and fills one or more model inputs; an :class:`OutputProcessor`
consumes model outputs and produces client-facing outputs (probabilities, labels, embeddings).
Both work on one request's arrays, batch dimension first, before batching and after the batch
is split, so a request that fails processing fails alone.

:class:`Processing` is the set declared for one model; the engine asks it for the tensors the
model *shows* (metadata, validation) and calls :meth:`Processing.preprocess` and
:meth:`Processing.postprocess` around the batcher.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from forwardpass.model_config import ModelConfig, TensorSpec

__all__ = ["InputProcessor", "OutputProcessor", "Processing"]


class InputProcessor(abc.ABC):
    """Turns client inputs (``inputs``) into model inputs (``targets``)."""

    #: The client-facing tensors it reads; dims exclude the batch dimension when batching.
    inputs: tuple[TensorSpec, ...]
    #: The model inputs it fills.
    targets: tuple[str, ...]

    @abc.abstractmethod
    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request's arrays (batch dimension first) → model input arrays."""


class OutputProcessor(abc.ABC):
    """Turns model outputs (``sources``) into client outputs (``outputs``)."""

    sources: tuple[str, ...]
    outputs: tuple[TensorSpec, ...]

    @abc.abstractmethod
    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request's model outputs (batch dimension first) → client output arrays."""


@dataclass(slots=True)
class Processing:
    """The processors of one model, and the client-facing view they give it."""

    config: ModelConfig
    inputs: tuple[InputProcessor, ...] = ()
    outputs: tuple[OutputProcessor, ...] = ()
    #: Where the inputs are processed: ``"process"`` (the server's processing pool),
    #: ``"thread"`` (a thread of the server process), ``""`` (as the server is configured).
    pool: str = ""
    client_inputs: tuple[TensorSpec, ...] = field(init=False)
    client_outputs: tuple[TensorSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        targeted = {t for p in self.inputs for t in p.targets}
        raw = [spec for p in self.inputs for spec in p.inputs]
        kept = [spec for spec in self.config.inputs if spec.name not in targeted]
        self.client_inputs = tuple(kept + raw)
        produced = [spec for p in self.outputs for spec in p.outputs]
        produced_names = {spec.name for spec in produced}
        consumed = {s for p in self.outputs for s in p.sources}
        passthrough = [
            spec
            for spec in self.config.outputs
            if spec.name not in consumed and spec.name not in produced_names
        ]
        self.client_outputs = tuple(passthrough + produced)

    @property
    def active(self) -> bool:
        return bool(self.inputs or self.outputs)

    def preprocess(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Replace each processor's client inputs by the model inputs it fills."""
        if not self.inputs:
            return arrays
        out = dict(arrays)
        for processor in self.inputs:
            given = {spec.name: out.pop(spec.name) for spec in processor.inputs if spec.name in out}
            out.update(processor(given))
        return out

    def postprocess(
        self, arrays: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Model outputs → every client output (consumed model outputs are not passed on).

        ``inputs`` are the request's model inputs, for steps that need them (a mean-pooling
        mask); a source name is looked up among the outputs first.
        """
        if not self.outputs:
            return dict(arrays)
        inputs = inputs or {}
        out: dict[str, np.ndarray] = {}
        consumed: set[str] = set()
        for processor in self.outputs:
            given = {n: arrays[n] if n in arrays else inputs[n] for n in processor.sources}
            out.update(processor(given))
            consumed.update(n for n in processor.sources if n in arrays)
        for name, array in arrays.items():
            if name not in consumed and name not in out:
                out[name] = array
        return out
