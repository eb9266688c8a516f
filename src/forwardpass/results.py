"""Typed results the engine answers with; each protocol renders them for its own wire.

Nothing here knows HTTP or gRPC: ``protocol/documents.py`` renders these as the JSON documents
of the HTTP protocol, ``protocol/grpc`` as protobuf messages. Field names follow Triton's so the
renderers stay one-to-one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from forwardpass.datatypes import DataType

__all__ = [
    "BatchStatistics",
    "Duration",
    "IndexEntry",
    "InferenceStatistics",
    "InstanceExecution",
    "ModelMetadata",
    "ModelState",
    "ModelStatistics",
    "TensorMetadata",
]


class ModelState(enum.Enum):
    """The lifecycle of one model name, in Triton's words."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """A tensor as clients see it; ``shape`` includes ``-1`` for the batch and variable dims."""

    name: str
    datatype: DataType
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """The model-metadata answer of the protocol."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True, slots=True)
class InstanceExecution:
    """What one loaded instance of a version runs on: its providers (or backend device) in
    order, the precision it computes in, and whether a requested provider was missing."""

    providers: tuple[str, ...]
    precision: str
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the repository index.

    A model found in the repository but never loaded has no version and no state (Triton lists
    just its name). ``optimized_from``/``optimization`` are set for versions written by
    ``forwardpass optimize``: beyond Triton's four fields, ignored by clients that do not know them.
    """

    name: str
    version: str = ""
    state: ModelState | None = None
    reason: str = ""
    optimized_from: str | None = None
    optimization: str | None = None
    #: One per loaded instance (beyond Triton's fields, like ``optimized_from``).
    execution: tuple[InstanceExecution, ...] = ()


@dataclass(frozen=True, slots=True)
class Duration:
    """A count and the nanoseconds those events took in total (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True, slots=True)
class InferenceStatistics:
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    cache_hit: Duration = Duration()
    cache_miss: Duration = Duration()


@dataclass(frozen=True, slots=True)
class BatchStatistics:
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """Triton's statistics for one model version."""

    name: str
    version: str
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    inference_stats: InferenceStatistics = InferenceStatistics()
    batch_stats: tuple[BatchStatistics, ...] = field(default=())
