"""Checks that need the whole model config: names, reshapes, batch sizes, priorities, warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable

from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig

__all__ = ["validate_config"]


def _segments(shape: tuple[int, ...]) -> list[int]:
    """The element counts between the ``-1`` dims of ``shape`` (Triton's reshape check)."""
    counts, current = [], 1
    for dim in shape:
        if dim == -1:
            counts.append(current)
            current = 1
        else:
            current *= dim
    counts.append(current)
    return counts


def _check_tensors(config: ModelConfig) -> None:
    for kind, specs in (("input", config.inputs), ("output", config.outputs)):
        names = [s.name for s in specs]
        for spec in specs:
            if names.count(spec.name) > 1:
                raise InvalidModelConfig(f"{kind} name {spec.name!r} is declared twice")
            if spec.reshape is not None:
                # As Triton: dims and reshape have as many -1 dims, and the fixed dims between
                # them hold as many elements, so each -1 maps to one -1 (in order).
                a, b = _segments(spec.dims), _segments(spec.reshape)
                if len(a) != len(b):
                    raise InvalidModelConfig(
                        f"{kind} {spec.name!r} has different number of variable-size dimensions "
                        f"for dims and reshape (dims {list(spec.dims)}, reshape "
                        f"{list(spec.reshape)})"
                    )
                if a != b:
                    raise InvalidModelConfig(
                        f"{kind} {spec.name!r} has different size for dims and reshape: reshape "
                        f"{list(spec.reshape)} holds {math.prod(b)} elements but dims "
                        f"{list(spec.dims)} hold {math.prod(a)}"
                        if -1 not in spec.dims
                        else f"{kind} {spec.name!r} has different size for dims and reshape "
                        f"(dims {list(spec.dims)}, reshape {list(spec.reshape)})"
                    )


def _check_batching(config: ModelConfig) -> None:
    batching = config.dynamic_batching
    if batching is None:
        return
    for size in batching.preferred_batch_size:
        if size > config.max_batch_size:
            raise InvalidModelConfig(
                f"dynamic_batching.preferred_batch_size {size} exceeds max_batch_size "
                f"{config.max_batch_size}"
            )
    levels = batching.priority_levels
    if levels == 0:
        if batching.default_priority_level != 0 or batching.priority_queue_policy:
            raise InvalidModelConfig(
                "dynamic_batching: default_priority_level and priority_queue_policy need "
                "priority_levels > 0"
            )
        return
    if not 1 <= batching.default_priority_level <= levels:
        raise InvalidModelConfig(
            f"dynamic_batching.default_priority_level must be in 1..{levels} (priority_levels), "
            f"got {batching.default_priority_level}"
        )
    for level in batching.priority_queue_policy:
        if not 1 <= level <= levels:
            raise InvalidModelConfig(
                f"dynamic_batching.priority_queue_policy has level {level}, outside 1..{levels}"
            )


def _check_warmup(config: ModelConfig) -> None:
    for sample in config.model_warmup:
        limit = max(config.max_batch_size, 1)
        if sample.batch_size > limit:
            raise InvalidModelConfig(
                f"model_warmup {sample.name!r}: batch_size {sample.batch_size} exceeds "
                f"{'max_batch_size' if config.batching else 'the unbatched limit'} {limit}"
            )
        if not config.inputs:
            continue  # inputs still to come from the model file
        for input_name, data in sample.inputs.items():
            spec = config.input(input_name)
            if spec is None:
                raise InvalidModelConfig(
                    f"model_warmup {sample.name!r} names input {input_name!r}, which the model "
                    f"does not have (inputs: {[s.name for s in config.inputs]})"
                )
            if data.data_type is not spec.datatype:
                raise InvalidModelConfig(
                    f"model_warmup {sample.name!r} input {input_name!r} is "
                    f"{data.data_type.config_name}, the model input is {spec.datatype.config_name}"
                )


#: The checks that need the whole config; each raises :class:`InvalidModelConfig`.
_CHECKS: tuple[Callable[[ModelConfig], None], ...] = (
    _check_tensors,
    _check_batching,
    _check_warmup,
)


def validate_config(config: ModelConfig) -> None:
    """Cross-field checks: unique names, reshape sizes, batch sizes, priorities, warm-up."""
    for check in _CHECKS:
        check(config)
