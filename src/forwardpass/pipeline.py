"""Ensembles: a model that is a graph of other models (Triton's ``ensemble_scheduling``).

Each step names a model and maps tensors in and out of it. Steps form a DAG by the tensors
they consume and produce; a step starts as soon as all its inputs exist, so independent
branches run concurrently. Every step is an ordinary request to its model through the
engine, so it queues and batches together with that model's other traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from forwardpass.errors import ForwardpassError, InvalidModelConfig
from forwardpass.model_config import EnsembleStep, ModelConfig
from forwardpass.types import InferRequest, InferResponse, RequestedOutput, Tensor

__all__ = ["Pipeline"]

InferFn = Callable[[InferRequest], Awaitable[InferResponse]]


@dataclass(frozen=True, slots=True)
class _Step:
    index: int
    spec: EnsembleStep
    needs: frozenset[str]


class Pipeline:
    """The steps of one ensemble, checked to form a DAG from its inputs to its outputs."""

    def __init__(self, config: ModelConfig) -> None:
        if not config.ensemble:
            raise InvalidModelConfig(f"model {config.name!r} has no ensemble steps")
        self.config = config
        inputs = {spec.name for spec in config.inputs}
        produced: dict[str, int] = {}
        for i, entry in enumerate(config.ensemble):
            for tensor in entry.output_map.values():
                if tensor in inputs:
                    raise InvalidModelConfig(
                        f"ensemble step {i} ({entry.model_name}) writes {tensor!r}, "
                        "which is an ensemble input"
                    )
                if tensor in produced:
                    raise InvalidModelConfig(
                        f"ensemble tensor {tensor!r} is produced by steps "
                        f"{produced[tensor]} and {i}"
                    )
                produced[tensor] = i
        self.steps = tuple(
            _Step(i, entry, frozenset(entry.input_map.values()))
            for i, entry in enumerate(config.ensemble)
        )
        for step in self.steps:
            unknown = step.needs - inputs - produced.keys()
            if unknown:
                raise InvalidModelConfig(
                    f"ensemble step {step.index} ({step.spec.model_name}) reads {sorted(unknown)}, "
                    "which no input or step provides"
                )
        missing = [o.name for o in config.outputs if o.name not in produced]
        if missing:
            raise InvalidModelConfig(f"no ensemble step produces output(s) {missing}")
        self._check_acyclic(inputs)

    def _check_acyclic(self, inputs: set[str]) -> None:
        available = set(inputs)
        left = list(self.steps)
        while left:
            ready = [s for s in left if s.needs <= available]
            if not ready:
                names = [s.spec.model_name for s in left]
                raise InvalidModelConfig(f"ensemble steps {names} wait on each other (a cycle)")
            for step in ready:
                available.update(step.spec.output_map.values())
                left.remove(step)

    @property
    def models(self) -> tuple[str, ...]:
        """The models the steps call, in step order, each once."""
        return tuple(dict.fromkeys(s.spec.model_name for s in self.steps))

    async def run(
        self, infer: InferFn, inputs: Mapping[str, Tensor], request_id: str
    ) -> dict[str, Tensor]:
        """Run every step once; returns every tensor the ensemble declares as output."""
        available: dict[str, Tensor] = dict(inputs)
        pending = list(self.steps)
        running: dict[asyncio.Task[InferResponse], _Step] = {}
        try:
            while pending or running:
                for step in [s for s in pending if s.needs <= available.keys()]:
                    pending.remove(step)
                    task = asyncio.ensure_future(infer(self._request(step, available, request_id)))
                    running[task] = step
                if not running:
                    raise InvalidModelConfig("ensemble cannot make progress")  # checked at load
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    try:
                        response = task.result()
                    except ForwardpassError as exc:
                        raise type(exc)(
                            f"ensemble step {step.index} ({step.spec.model_name}): {exc.message}"
                        ) from exc
                    for tensor in response.outputs:
                        target = step.spec.output_map[tensor.name]
                        available[target] = Tensor(target, tensor.datatype, tensor.data)
        finally:
            for task in running:
                task.cancel()
        return {o.name: available[o.name] for o in self.config.outputs}

    @staticmethod
    def _request(step: _Step, available: Mapping[str, Tensor], request_id: str) -> InferRequest:
        spec = step.spec
        return InferRequest(
            model_name=spec.model_name,
            model_version=str(spec.model_version) if spec.model_version > 0 else "",
            id=request_id,
            inputs=[
                Tensor(name, available[tensor].datatype, available[tensor].data)
                for name, tensor in spec.input_map.items()
            ],
            outputs=[RequestedOutput(name) for name in spec.output_map],
        )
