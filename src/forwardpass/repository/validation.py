"""Checks that need the whole model config: names, reshapes, batch sizes, priorities, warm-up,
ragged inputs with batch inputs and outputs."""

from __future__ import annotations

import math
from collections.abc import Callable

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig
from forwardpass.scheduling.adaptive import read_adaptive

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


def _check_adaptive(config: ModelConfig) -> None:
    """The ``batching`` and ``max_latency_ms`` parameters (adaptive batching)."""
    read_adaptive(
        config.parameters,
        config.max_batch_size,
        config.dynamic_batching is not None,
        config.sequence_batching is not None,
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


#: What a batch input may be computed as (counts and shapes: integers, or FP32 as Triton allows).
_BATCH_INPUT_TYPES = (DataType.INT32, DataType.INT64, DataType.FP32)


def _check_batch_io(config: ModelConfig) -> None:
    """Ragged inputs, batch inputs and batch outputs name real tensors and need batching."""
    ragged = [s.name for s in config.inputs if s.allow_ragged_batch]
    if not (ragged or config.batch_input or config.batch_output):
        return
    if not config.batching:
        what = f"input {ragged[0]!r} allows ragged batches" if ragged else "batch_input/output"
        raise InvalidModelConfig(f"{what}, which needs max_batch_size > 0")
    if not config.inputs:
        return  # tensors still to come from the model file
    inputs = {s.name for s in config.inputs}
    outputs = {s.name for s in config.outputs}
    targets: set[str] = set()
    for i, batch_input in enumerate(config.batch_input):
        where = f"batch_input[{i}] ({batch_input.kind})"
        if batch_input.data_type not in _BATCH_INPUT_TYPES:
            raise InvalidModelConfig(
                f"{where}: data_type {batch_input.data_type.config_name} is not one of "
                f"{', '.join(t.config_name for t in _BATCH_INPUT_TYPES)}"
            )
        if len(batch_input.source_input) != 1:
            raise InvalidModelConfig(
                f"{where}: needs exactly one source_input, got {list(batch_input.source_input)}"
            )
        source = batch_input.source_input[0]
        if source not in inputs:
            raise InvalidModelConfig(
                f"{where}: source_input {source!r} is not an input of the model "
                f"(inputs: {sorted(inputs)})"
            )
        for target in batch_input.target_name:
            if target in inputs:
                raise InvalidModelConfig(
                    f"{where}: target_name {target!r} is also a declared input; a batch input "
                    "is computed by the server, never sent by clients"
                )
            if target in targets:
                raise InvalidModelConfig(f"{where}: target_name {target!r} is computed twice")
            targets.add(target)
    scattered: set[str] = set()
    for i, batch_output in enumerate(config.batch_output):
        where = f"batch_output[{i}] ({batch_output.kind})"
        if len(batch_output.source_input) != 1:
            raise InvalidModelConfig(
                f"{where}: needs exactly one source_input, got {list(batch_output.source_input)}"
            )
        source = batch_output.source_input[0]
        if source not in inputs:
            raise InvalidModelConfig(
                f"{where}: source_input {source!r} is not an input of the model "
                f"(inputs: {sorted(inputs)})"
            )
        for target in batch_output.target_name:
            if target not in outputs:
                raise InvalidModelConfig(
                    f"{where}: target_name {target!r} is not an output of the model "
                    f"(outputs: {sorted(outputs)})"
                )
            if target in scattered:
                raise InvalidModelConfig(f"{where}: output {target!r} is scattered twice")
            scattered.add(target)


def _check_sequence(config: ModelConfig) -> None:
    sequence = config.sequence_batching
    if sequence is None:
        return
    if config.response_cache.enable:
        raise InvalidModelConfig(
            "response_cache cannot be enabled with sequence_batching: a stateful model's answer "
            "depends on the sequence's state, not only on the request"
        )
    if config.dynamic_batching is not None:
        raise InvalidModelConfig(
            "set only one scheduler: dynamic_batching or sequence_batching, not both"
        )
    if config.is_ensemble:
        raise InvalidModelConfig("an ensemble cannot use sequence_batching")
    declared = {s.name for s in config.inputs} & sequence.computed_inputs
    if declared:
        raise InvalidModelConfig(
            f"sequence_batching fills input(s) {sorted(declared)}; do not list them in input"
        )
    for size in sequence.oldest.preferred_batch_size:
        if size > max(1, config.max_batch_size):
            raise InvalidModelConfig(
                f"sequence_batching.oldest.preferred_batch_size {size} exceeds max_batch_size "
                f"{config.max_batch_size}"
            )
    for state in sequence.state:
        output = config.output(state.output_name)
        if output is not None and output.datatype is not state.data_type:
            raise InvalidModelConfig(
                f"state {state.input_name!r}: output {state.output_name!r} is "
                f"{output.datatype.config_name}, the state is {state.data_type.config_name}"
            )


#: The checks that need the whole config; each raises :class:`InvalidModelConfig`.
_CHECKS: tuple[Callable[[ModelConfig], None], ...] = (
    _check_tensors,
    _check_batching,
    _check_adaptive,
    _check_warmup,
    _check_batch_io,
    _check_sequence,
)


def validate_config(config: ModelConfig) -> None:
    """Cross-field checks: unique names, reshape sizes, batch sizes, priorities, warm-up."""
    for check in _CHECKS:
        check(config)
