"""Model configuration: frozen dataclasses with the fields of Triton's ``ModelConfig``.

Field names follow Triton's ``model_config.proto`` so a Triton repository reads unchanged
(``config.pbtxt``) and the native YAML form uses the same keys. Parsing lives in
``forwardpass.repository``; this module only defines the shape and its invariants.

``TensorSpec.dims`` exclude the batch dimension when ``max_batch_size > 0``, exactly as in
Triton; ``-1`` marks a variable dimension.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from forwardpass.datatypes import DataType

__all__ = [
    "BATCH_INPUT_KINDS",
    "SEQUENCE_CONTROL_KINDS",
    "BatchInput",
    "BatchOutput",
    "DynamicBatching",
    "EnsembleStep",
    "ExecutionAccelerator",
    "InstanceGroup",
    "ModelConfig",
    "ModelWarmup",
    "Optimization",
    "QueuePolicy",
    "ResponseCache",
    "SequenceBatching",
    "SequenceControl",
    "SequenceControlInput",
    "SequenceInitialState",
    "SequenceOldest",
    "SequenceState",
    "TensorSpec",
    "VersionPolicy",
    "WarmupInput",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output of a model, as the configuration declares it."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    #: Output only: a labels file in the model folder (one label per line, line = class index).
    label_filename: str = ""
    #: Input only: the request may omit it.
    optional: bool = False
    #: Triton's ``reshape``: the shape the model sees, when it differs from ``dims``.
    reshape: tuple[int, ...] | None = None
    #: Input only: requests whose shapes differ in this input may share a batch; the model
    #: receives the requests' elements concatenated into one flat (1-D) tensor.
    allow_ragged_batch: bool = False


#: Triton's ``BatchInput.Kind`` names, in the proto's order.
BATCH_INPUT_KINDS = (
    "BATCH_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
    "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
    "BATCH_ITEM_SHAPE",
    "BATCH_ITEM_SHAPE_FLATTEN",
)


@dataclass(frozen=True, slots=True)
class BatchInput:
    """Triton's ``BatchInput``: an extra model input the batcher computes for each batch.

    It describes ``source_input`` across the requests of the batch (their element counts,
    running totals, shapes), so a model fed a ragged (flat, concatenated) input can tell the
    requests apart. ``target_name`` is the model input that receives it.
    """

    kind: str
    target_name: tuple[str, ...]
    data_type: DataType
    source_input: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """Triton's ``BatchOutput``: how to split an output that is not one row per batch item.

    The only kind, ``BATCH_SCATTER_WITH_INPUT_SHAPE``, gives each request the slice of the
    output's first axis that matches its ``source_input`` elements, shaped like that input.
    """

    target_name: tuple[str, ...]
    kind: str
    source_input: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy``: how long a request may wait and how many may wait.

    ``max_queue_size`` 0 means "the server's default bound", never unbounded: a queue that
    grows without limit turns overload into unbounded latency.
    """

    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    """Triton's ``ModelDynamicBatching``."""

    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    preserve_ordering: bool = False
    #: 0 disables priorities; otherwise levels 1..priority_levels, 1 the highest.
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queue_policy: Mapping[int, QueuePolicy] = field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """Triton's ``ModelInstanceGroup``: ``count`` copies of the model on ``kind`` hardware."""

    count: int = 1
    kind: Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU"] = "KIND_AUTO"
    gpus: tuple[int, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which version folders are served: the latest N, all, or a specific list."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutionAccelerator:
    """An entry of ``optimization.execution_accelerators`` (``tensorrt``, ``openvino`` ...)."""

    name: str
    parameters: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Optimization:
    """Triton's ``ModelOptimizationPolicy``, the parts ONNX Runtime reads.

    ``graph_level``: Triton's onnxruntime backend maps -1 to basic, 1 to extended and
    anything else (default 0) to all optimizations.
    """

    graph_level: int = 0
    gpu_execution_accelerator: tuple[ExecutionAccelerator, ...] = ()
    cpu_execution_accelerator: tuple[ExecutionAccelerator, ...] = ()


@dataclass(frozen=True, slots=True)
class WarmupInput:
    """One input of a warm-up sample: zeros, random values or a file's raw bytes."""

    data_type: DataType
    dims: tuple[int, ...]
    source: Literal["zero_data", "random_data", "input_data_file"] = "zero_data"
    input_data_file: str = ""


@dataclass(frozen=True, slots=True)
class ModelWarmup:
    """Triton's ``ModelWarmup``: a synthetic request run before the model is READY."""

    name: str
    batch_size: int
    inputs: Mapping[str, WarmupInput]
    count: int = 1


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One step of Triton's ``ensemble_scheduling``: a model and how tensors flow through it.

    ``input_map`` maps the step model's input names to pipeline tensor names; ``output_map``
    maps its output names to the pipeline tensor names they produce. ``model_version`` -1 means
    the model's latest ready version.
    """

    model_name: str
    model_version: int = -1
    input_map: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    output_map: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


#: Triton's ``ModelSequenceBatching.Control.Kind`` names, in the proto's order.
SEQUENCE_CONTROL_KINDS = (
    "CONTROL_SEQUENCE_START",
    "CONTROL_SEQUENCE_READY",
    "CONTROL_SEQUENCE_END",
    "CONTROL_SEQUENCE_CORRID",
)


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """Triton's ``ModelSequenceBatching.Control``: how one control signal reaches the model.

    START, READY and END are written as the false/true pair of one of ``int32_false_true``,
    ``fp32_false_true`` or ``bool_false_true``; CORRID as the correlation id in ``data_type``.
    """

    kind: str
    int32_false_true: tuple[int, ...] = ()
    fp32_false_true: tuple[float, ...] = ()
    bool_false_true: tuple[bool, ...] = ()
    data_type: DataType | None = None


@dataclass(frozen=True, slots=True)
class SequenceControlInput:
    """Triton's ``ControlInput``: a model input the sequence batcher fills, not the client."""

    name: str
    control: tuple[SequenceControl, ...]


@dataclass(frozen=True, slots=True)
class SequenceInitialState:
    """Triton's ``InitialState``: zeros, or a file's raw bytes from ``initial_state/``."""

    data_type: DataType
    dims: tuple[int, ...]
    name: str = ""
    zero_data: bool = False
    data_file: str = ""


@dataclass(frozen=True, slots=True)
class SequenceState:
    """Triton's ``State``: a tensor the server keeps between the requests of a sequence.

    The model reads it from ``input_name`` and writes the next one to ``output_name``; ``dims``
    exclude the batch dimension when the model batches.
    """

    input_name: str
    output_name: str
    data_type: DataType
    dims: tuple[int, ...]
    initial_state: tuple[SequenceInitialState, ...] = ()


@dataclass(frozen=True, slots=True)
class SequenceOldest:
    """Triton's ``StrategyOldest``: batch the oldest ready requests of the candidate sequences."""

    max_candidate_sequences: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    preserve_ordering: bool = False


@dataclass(frozen=True, slots=True)
class SequenceBatching:
    """Triton's ``ModelSequenceBatching`` (the ``direct`` or ``oldest`` strategy).

    ``direct`` gives each sequence a batch slot on one instance for its whole life (a model
    instance has ``max_batch_size`` slots, one when it does not batch); ``oldest`` keeps
    ``max_candidate_sequences`` sequences and batches the oldest of their ready requests.
    """

    strategy: Literal["direct", "oldest"] = "direct"
    #: ``direct`` only: how long a batch may wait for more slots to be ready.
    max_queue_delay_microseconds: int = 0
    minimum_slot_utilization: float = 0.0
    oldest: SequenceOldest = field(default_factory=SequenceOldest)
    #: Triton's default is one second.
    max_sequence_idle_microseconds: int = 1_000_000
    control_input: tuple[SequenceControlInput, ...] = ()
    state: tuple[SequenceState, ...] = ()

    @property
    def computed_inputs(self) -> frozenset[str]:
        """Model inputs the batcher fills: control inputs and state inputs."""
        return frozenset(c.name for c in self.control_input) | frozenset(
            s.input_name for s in self.state
        )


@dataclass(frozen=True, slots=True)
class ResponseCache:
    """Triton's ``ModelResponseCache``: answer repeated identical requests from the cache."""

    enable: bool = False


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The effective configuration of one model (all versions share it)."""

    name: str
    platform: str = "onnxruntime_onnx"
    backend: str = "onnxruntime"
    max_batch_size: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    dynamic_batching: DynamicBatching | None = None
    instance_group: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    default_model_filename: str = "model.onnx"
    #: Free-form string parameters (``intra_op_thread_count`` ...), as Triton's ``parameters``.
    parameters: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    optimization: Optimization = field(default_factory=Optimization)
    model_warmup: tuple[ModelWarmup, ...] = ()
    #: Steps of an ensemble (``platform: "ensemble"``); empty for a model with a backend.
    ensemble: tuple[EnsembleStep, ...] = ()
    batch_input: tuple[BatchInput, ...] = ()
    batch_output: tuple[BatchOutput, ...] = ()
    #: Triton's ``model_transaction_policy { decoupled: true }``: 0..n responses per request.
    decoupled: bool = False
    sequence_batching: SequenceBatching | None = None
    response_cache: ResponseCache = field(default_factory=ResponseCache)

    @property
    def is_ensemble(self) -> bool:
        return self.platform == "ensemble"

    @property
    def batching(self) -> bool:
        """Whether requests carry a leading batch dimension that the server may merge."""
        return self.max_batch_size > 0

    @property
    def instance_count(self) -> int:
        return max(1, sum(g.count for g in self.instance_group))

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output(self, name: str) -> TensorSpec | None:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        return None
