"""Completing a model config from what the model file declares (Triton's auto-complete).

The model file knows its tensors: names, datatypes and full shapes (``-1`` where a dimension
varies). The config knows what the model file cannot say: whether the leading dimension is a
batch the server may merge requests along, queue policies, instances. :func:`complete_config`
joins the two and refuses contradictions.

Batching is decided like this:

* the config sets ``max_batch_size``: that value holds (0 means never batch); a positive one
  needs every model input and output to have a variable leading dimension;
* the config does not say: the model is batched (``max_batch_size`` = the default, 4 as in
  Triton's onnxruntime backend, dynamic batching on with no delay) only when every input and
  output has rank >= 1 and a variable leading dimension, and every tensor the config declares
  reads as "dims without the batch dimension". Otherwise ``max_batch_size`` is 0 and dims are
  the full shapes, so a model whose batch axis is not first, or that takes a scalar, still
  serves.

A tensor the model file declares without a rank takes the config's dims
(and never makes the model batchable on its own, as in Triton's autocomplete).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import (
    BatchInput,
    BatchOutput,
    DynamicBatching,
    ModelConfig,
    TensorSpec,
)
from forwardpass.repository.config_io import read_draft
from forwardpass.repository.draft import ConfigDraft, TensorDraft
from forwardpass.runtime.base import BackendIO

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "complete_config", "complete_pytorch_config"]

#: The ``max_batch_size`` a batchable model without one gets: Triton's onnxruntime backend's
#: ``default-max-batch-size`` backend setting, 4 unless the server is told otherwise.
DEFAULT_MAX_BATCH_SIZE = 4


def _compatible(declared: Sequence[int], model: Sequence[int]) -> bool:
    """A declared shape fits the model's when ranks agree and each model dim is -1 or equal."""
    if len(declared) != len(model):
        return False
    return all(m == -1 or d == m for d, m in zip(declared, model, strict=True))


def _batchable(io: BackendIO) -> bool:
    tensors = io.inputs + io.outputs
    return bool(io.inputs) and all(
        t.name not in io.unranked and len(t.dims) >= 1 and t.dims[0] == -1 for t in tensors
    )


def _fits(
    declared: list[TensorDraft],
    model: tuple[TensorSpec, ...],
    batching: bool,
    unranked: frozenset[str] = frozenset(),
) -> bool:
    by_name = {t.name: t for t in model}
    for tensor in declared:
        spec = by_name.get(tensor.name)
        shape = tensor.reshape if tensor.reshape is not None else tensor.dims
        if spec is None or shape is None or tensor.name in unranked:
            continue
        if not _compatible(shape, spec.dims[1:] if batching else spec.dims):
            return False
    return True


def _describe(dims: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _shape_error(
    kind: str, tensor: TensorDraft, declared: Sequence[int], spec: TensorSpec, batching: bool
) -> InvalidModelConfig:
    model_view = spec.dims[1:] if batching else spec.dims
    what = "reshape" if tensor.reshape is not None else "dims"
    if len(declared) != len(model_view):
        detail = f"rank {len(declared)} vs {len(model_view)}"
        if batching:
            detail += "; with max_batch_size > 0, dims leave out the leading batch dimension"
    else:
        axis = next(
            i
            for i, (d, m) in enumerate(zip(declared, model_view, strict=True))
            if m != -1 and d != m
        )
        detail = (
            f"dimension {axis} is {declared[axis]} in the config, {model_view[axis]} in the model"
        )
    return InvalidModelConfig(
        f"{kind} {tensor.name!r}: {what} {_describe(declared)} contradict the model's shape "
        f"{_describe(spec.dims)} ({detail})"
    )


def _merge(
    kind: str,
    declared: list[TensorDraft],
    model: tuple[TensorSpec, ...],
    batching: bool,
    flat: frozenset[str] = frozenset(),
    computed: frozenset[str] = frozenset(),
    unranked: frozenset[str] = frozenset(),
) -> tuple[TensorSpec, ...]:
    """Declared tensors checked against the model and completed, then the undeclared ones.

    ``flat`` names tensors the model holds as one flat (1-D) tensor for the whole batch (ragged
    inputs, scattered batch outputs): their config dims are what each request has, and the
    model's tensor must be 1-D. ``computed`` names model inputs the batcher computes (batch
    inputs): they are no input of the config.
    """
    by_name = {t.name: t for t in model}
    for name in sorted(computed):
        if name not in by_name:
            raise InvalidModelConfig(
                f"batch_input target {name!r} is not an input of the model; the model's inputs "
                f"are {sorted(by_name)}"
            )
    out: list[TensorSpec] = []
    for tensor in declared:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InvalidModelConfig(
                f"{kind} {tensor.name!r} is not an {kind} of the model; the model's {kind}s "
                f"are {sorted(by_name)}"
            )
        if tensor.datatype is not None and tensor.datatype is not spec.datatype:
            raise InvalidModelConfig(
                f"{kind} {tensor.name!r}: data_type {tensor.datatype.config_name} contradicts the "
                f"model's {spec.datatype.config_name}"
            )
        if tensor.name in flat:
            if len(spec.dims) != 1:
                raise InvalidModelConfig(
                    f"{kind} {tensor.name!r} is batched flat (ragged or scattered), so the "
                    f"model's {kind} must be 1-D, but it has shape {_describe(spec.dims)}"
                )
            out.append(
                TensorSpec(
                    name=tensor.name,
                    datatype=spec.datatype,
                    dims=tuple(tensor.dims) if tensor.dims is not None else (-1,),
                    label_filename=tensor.label_filename,
                    optional=tensor.optional,
                    allow_ragged_batch=tensor.allow_ragged_batch,
                )
            )
            continue
        model_view = spec.dims[1:] if batching else spec.dims
        if tensor.reshape is not None and tensor.dims is None:
            raise InvalidModelConfig(
                f"{kind} {tensor.name!r} has a reshape but no dims; declare the dims clients send"
            )
        if tensor.name in unranked and tensor.dims is None:
            raise InvalidModelConfig(_unranked(kind, tensor.name))
        dims = tensor.dims if tensor.dims is not None else model_view
        seen_by_model = tensor.reshape if tensor.reshape is not None else dims
        # The model file does not say the rank of an unranked tensor: the config's dims hold.
        if tensor.name not in unranked and not _compatible(seen_by_model, model_view):
            raise _shape_error(kind, tensor, seen_by_model, spec, batching)
        out.append(
            TensorSpec(
                name=tensor.name,
                datatype=spec.datatype,
                dims=tuple(dims),
                label_filename=tensor.label_filename,
                optional=tensor.optional,
                reshape=tensor.reshape,
                allow_ragged_batch=tensor.allow_ragged_batch,
            )
        )
    named = {t.name for t in declared} | computed
    for spec in model:
        if spec.name not in named and spec.name in unranked:
            raise InvalidModelConfig(_unranked(kind, spec.name))
        if spec.name not in named:
            dims = spec.dims[1:] if batching else spec.dims
            out.append(TensorSpec(name=spec.name, datatype=spec.datatype, dims=dims))
    return tuple(out)


def _unranked(kind: str, name: str) -> str:
    return f"{kind} {name!r} has no declared rank in the model file; give its dims in the config"


def _draft(config: ModelConfig | Mapping[str, Any] | ConfigDraft | None, name: str) -> ConfigDraft:
    if config is None:
        return read_draft({}, name=name)
    if isinstance(config, ConfigDraft):
        return config
    if isinstance(config, ModelConfig):
        if config.name != name:
            raise InvalidModelConfig(
                f"config name {config.name!r} does not match the model's folder name {name!r}"
            )
        return ConfigDraft.from_config(config)
    return read_draft(config, name=name)


def complete_config(
    config: ModelConfig | Mapping[str, Any] | ConfigDraft | None,
    io: BackendIO,
    *,
    name: str,
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> ModelConfig:
    """The effective config of model ``name``: ``config`` completed and checked against ``io``.

    ``config`` may be ``None`` (no config file), a config dict as read from ``config.pbtxt`` /
    ``config.yaml`` / Triton JSON (which may omit tensors, their datatypes or dims, and
    ``max_batch_size``), or a :class:`ModelConfig` (taken as saying everything it holds,
    ``max_batch_size`` included). Raises :class:`InvalidModelConfig` when the config names a
    tensor the model lacks, or gives it another datatype or an incompatible shape.
    """
    draft = _draft(config, name)
    model_tensors = (("input", io.inputs), ("output", io.outputs))
    max_batch_size = draft.max_batch_size
    dynamic_batching = draft.dynamic_batching
    if max_batch_size is None:
        batched = (
            _batchable(io)
            and _fits(draft.inputs, io.inputs, True, io.unranked)
            and _fits(draft.outputs, io.outputs, True, io.unranked)
        )
        max_batch_size = default_max_batch_size if batched else 0
        if batched and dynamic_batching is None and "sequence_batching" not in draft.fields:
            dynamic_batching = DynamicBatching()
    elif max_batch_size > 0:
        for kind, specs in model_tensors:
            for spec in specs:
                if spec.name in io.unranked:
                    continue
                if not spec.dims or spec.dims[0] != -1:
                    raise InvalidModelConfig(
                        f"max_batch_size {max_batch_size} needs a variable leading (batch) "
                        f"dimension on every model input and output, but {kind} {spec.name!r} "
                        f"has shape {_describe(spec.dims)}; set max_batch_size: 0 to serve the "
                        "model unbatched"
                    )
    batching = max_batch_size > 0
    batch_inputs: tuple[BatchInput, ...] = draft.fields.get("batch_input", ())
    batch_outputs: tuple[BatchOutput, ...] = draft.fields.get("batch_output", ())
    ragged = frozenset(t.name for t in draft.inputs if t.allow_ragged_batch)
    computed = frozenset(n for b in batch_inputs for n in b.target_name)
    sequence = draft.fields.get("sequence_batching")
    if sequence is not None:  # control and state inputs are the sequence batcher's to fill
        lacking = sorted(sequence.computed_inputs - {t.name for t in io.inputs})
        if lacking:
            raise InvalidModelConfig(
                f"sequence_batching fills input(s) {lacking} (control_input or state) that the "
                f"model lacks; the model's inputs are {sorted(t.name for t in io.inputs)}"
            )
        computed |= sequence.computed_inputs
    scattered = frozenset(n for b in batch_outputs for n in b.target_name)
    return draft.build(
        inputs=_merge(
            "input", draft.inputs, io.inputs, batching, ragged, computed, unranked=io.unranked
        ),
        outputs=_merge(
            "output", draft.outputs, io.outputs, batching, scattered, unranked=io.unranked
        ),
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
    )


def complete_pytorch_config(
    draft: ConfigDraft,
    model_file: Path,
    *,
    autocomplete: bool = True,
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> ModelConfig:
    """The effective config of a PyTorch model (``backend: "pytorch"``), as the server will
    load it.

    Without torch installed this raises :class:`Unsupported` with the install hint, so listing a
    repository reports the model exactly as serving it would. A TorchScript file carries no
    tensor names, datatypes or shapes, so (as in Triton) its config must declare every input
    and output in full. A torch.export program does carry them (its example inputs, with
    dynamic dimensions as -1) and completes a partial config like an ONNX file does.
    """
    from forwardpass.runtime import pytorch

    pytorch.require_torch()
    if not draft.platform:
        draft.platform = "pytorch_libtorch"  # Triton reports the platform of backend "pytorch"
    pytorch.check_datatypes(
        [("input", t.name, t.datatype) for t in draft.inputs]
        + [("output", t.name, t.datatype) for t in draft.outputs]
    )
    parameters = draft.fields.get("parameters", {})
    fmt = pytorch.model_format(parameters, model_file.name)
    pytorch.check_file(model_file, fmt)
    pytorch.check_devices(draft.fields.get("instance_group", ()))
    if fmt == "export" and autocomplete:
        return complete_config(
            draft,
            pytorch.describe_export(model_file),
            name=draft.name,
            default_max_batch_size=default_max_batch_size,
        )
    incomplete = [
        f"{kind} {t.name!r}"
        for kind, tensors in (("input", draft.inputs), ("output", draft.outputs))
        for t in tensors
        if t.datatype is None or t.dims is None
    ]
    if not draft.inputs or not draft.outputs or incomplete:
        what = ", ".join(incomplete) if incomplete else "its inputs and outputs"
        raise InvalidModelConfig(
            f"{model_file.name}: a TorchScript file does not say its tensors' names, datatypes "
            f"or shapes, so the config must declare every input and output with data_type and "
            f"dims (missing for {what}); name them INPUT__0, OUTPUT__0 ... or after forward()'s "
            "arguments"
        )
    return draft.build()
