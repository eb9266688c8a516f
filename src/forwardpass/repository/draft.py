"""A model config as read, before the model file fills what it leaves out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, cast

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import DynamicBatching, ModelConfig, TensorSpec, VersionPolicy
from forwardpass.repository.validation import validate_config

__all__ = ["ConfigDraft", "TensorDraft"]


@dataclass(slots=True)
class TensorDraft:
    """A tensor as a config declares it; ``None`` marks what the model file must supply."""

    name: str
    datatype: DataType | None = None
    dims: tuple[int, ...] | None = None
    label_filename: str = ""
    optional: bool = False
    reshape: tuple[int, ...] | None = None
    allow_ragged_batch: bool = False

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> TensorDraft:
        return cls(
            name=spec.name,
            datatype=spec.datatype,
            dims=spec.dims,
            label_filename=spec.label_filename,
            optional=spec.optional,
            reshape=spec.reshape,
            allow_ragged_batch=spec.allow_ragged_batch,
        )

    def build(self, kind: str) -> TensorSpec:
        """The :class:`TensorSpec`; an error names what the config left out."""
        if self.datatype is None or self.dims is None:
            missing = "data_type" if self.datatype is None else "dims"
            raise InvalidModelConfig(
                f"{kind} {self.name!r} has no {missing}; declare it, or let forwardpass read "
                "it from the model file"
            )
        return TensorSpec(
            name=self.name,
            datatype=self.datatype,
            dims=self.dims,
            label_filename=self.label_filename,
            optional=self.optional,
            reshape=self.reshape,
            allow_ragged_batch=self.allow_ragged_batch,
        )


@dataclass(slots=True)
class ConfigDraft:
    """A config read from a dict, before the model file fills its gaps.

    ``max_batch_size`` is ``None`` when the config does not say, which completion needs to
    tell "0, never batch" from "let the model decide".
    """

    name: str
    platform: str
    backend: str
    max_batch_size: int | None
    inputs: list[TensorDraft]
    outputs: list[TensorDraft]
    #: The remaining :class:`ModelConfig` keyword arguments.
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ModelConfig) -> ConfigDraft:
        """A draft that says everything ``config`` says (so nothing is left to decide)."""
        fields = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name not in ("name", "platform", "backend", "max_batch_size", "inputs", "outputs")
        }
        return cls(
            name=config.name,
            platform=config.platform,
            backend=config.backend,
            max_batch_size=config.max_batch_size,
            inputs=[TensorDraft.from_spec(s) for s in config.inputs],
            outputs=[TensorDraft.from_spec(s) for s in config.outputs],
            fields=fields,
        )

    @property
    def dynamic_batching(self) -> DynamicBatching | None:
        return cast(DynamicBatching | None, self.fields.get("dynamic_batching"))

    @property
    def version_policy(self) -> VersionPolicy:
        return cast(VersionPolicy, self.fields.get("version_policy", VersionPolicy()))

    @property
    def default_model_filename(self) -> str:
        return cast(str, self.fields["default_model_filename"])

    def build(
        self,
        inputs: tuple[TensorSpec, ...] | None = None,
        outputs: tuple[TensorSpec, ...] | None = None,
        max_batch_size: int | None = None,
        dynamic_batching: DynamicBatching | None = None,
    ) -> ModelConfig:
        """The validated :class:`ModelConfig`; arguments override the draft's own values."""
        kwargs = dict(self.fields)
        if dynamic_batching is not None:
            kwargs["dynamic_batching"] = dynamic_batching
        if max_batch_size is None:
            max_batch_size = self.max_batch_size or 0
        dynamic = kwargs.get("dynamic_batching")
        if max_batch_size > 0 and dynamic is not None and not dynamic.preferred_batch_size:
            # Triton's NormalizeModelConfig: no preferred batch size means [max_batch_size]
            # (the same batches either way; the effective config shows it).
            kwargs["dynamic_batching"] = dataclasses.replace(
                dynamic, preferred_batch_size=(max_batch_size,)
            )
        config = ModelConfig(
            name=self.name,
            platform=self.platform,
            backend=self.backend,
            max_batch_size=max_batch_size,
            inputs=inputs if inputs is not None else tuple(t.build("input") for t in self.inputs),
            outputs=(
                outputs if outputs is not None else tuple(t.build("output") for t in self.outputs)
            ),
            **kwargs,
        )
        validate_config(config)
        return config
