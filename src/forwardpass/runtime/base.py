"""The backend contract: load a model version, run a batch of named arrays.

A backend never sees a request, only arrays already merged along the batch axis; the batcher
never sees a backend's own types. Subclasses implement the ``_load``/``_infer`` hooks (and
``_check``, for what can be told wrong about one request before it joins a batch); the public
methods here validate and translate foreign exceptions exactly once.

The error contract: :class:`InvalidArgument` from ``infer`` means "the data of this batch is
wrong", so the batcher re-runs the batch in halves to find the request at fault;
:class:`InternalError` means the backend or the model failed, which fails the batch (500).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import ForwardpassError, InternalError, InvalidArgument
from forwardpass.model_config import ModelConfig, TensorSpec

__all__ = ["Backend", "BackendIO", "NamedArrays", "RequestContext", "Sink"]

NamedArrays = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class BackendIO:
    """What a model file declares about itself, used to complete a missing config.

    Shapes are the model's full shapes with ``-1`` for symbolic or unknown dimensions.
    A tensor of unknown rank is named in ``unranked`` (its ``dims`` are empty): the config's
    dims are taken for it.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    unranked: frozenset[str] = frozenset()


#: Where a decoupled model's responses go, from any thread: (outputs or None, error or None, final).
Sink = Callable[[NamedArrays | None, ForwardpassError | None, bool], None]


@dataclass(slots=True)
class RequestContext:
    """What a backend that runs requests unmerged (the Python backend) is told about each one.

    Batches of such a backend are not merged into one array per input: the backend receives
    every request's own arrays with its context, and answers each request on its own.
    """

    id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: Requested output names; ``None`` when the client wants every output.
    outputs: tuple[str, ...] | None = None
    correlation_id: int | str = 0
    flags: int = 0
    #: Set for a decoupled model: receives its 0..n responses, the last one ``final``.
    sink: Sink | None = None


class Backend(abc.ABC):
    """One loaded instance of one model version.

    ``infer`` is called from a worker thread (or, for an ``inline_safe`` backend, from the
    event loop's thread), never concurrently on the same instance.
    """

    #: Name used in ``config.backend`` (``onnxruntime``, ``null`` ...).
    name: str = ""
    #: Runs requests unmerged, through :meth:`infer_requests` (see :class:`RequestContext`).
    unmerged: bool = False
    #: ``infer`` may run on the event loop's own thread when its batches are fast (see the
    #: batcher's inline mode): it never waits on the loop (no callbacks into the engine, no
    #: other model's result) and holds no lock the loop could want. Off unless declared.
    inline_safe: bool = False

    def __init__(self, config: ModelConfig, version_dir: Path, instance: int = 0) -> None:
        self.config = config
        self.version_dir = version_dir
        self.instance = instance
        #: Execution providers (or devices) actually in use, for metadata and logs.
        self.providers: list[str] = []
        #: Providers that were asked for but missing, taken only where the config allows it.
        self.fallback_warnings: list[str] = []
        #: The arithmetic precision the instance actually computes in (``fp32``, ``bf16``,
        #: ``fp16``, ``int8``), or ``model`` where it is the model file's own types.
        self.precision: str = "model"

    def load(self) -> None:
        """Load the model; any failure becomes an :class:`InvalidModelConfig`/`InternalError`."""
        try:
            self._load()
        except ForwardpassError:
            raise
        except Exception as exc:
            raise InternalError(f"{self.name} failed to load {self.version_dir}: {exc}") from exc

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> NamedArrays:
        """Run one batch. Returns exactly the requested ``outputs``."""
        try:
            result = self._infer(inputs, outputs)
        except ForwardpassError:
            raise
        except Exception as exc:
            raise self.translate_error(exc) from exc
        missing = [name for name in outputs if name not in result]
        if missing:
            raise InternalError(f"backend {self.name} returned no output(s) {missing}")
        return result

    def check(self, inputs: NamedArrays) -> NamedArrays:
        """Check (and convert) one request's inputs before it is queued; the arrays to queue.

        Anything this backend would reject in one request's data is rejected here, with an
        :class:`InvalidArgument` for that request alone, instead of failing the batch it would
        join. Called on the event loop for every request, so it must be cheap.
        """
        try:
            return self._check(inputs)
        except ForwardpassError:
            raise
        except Exception as exc:
            raise self.translate_error(exc) from exc

    def infer_requests(
        self, requests: Sequence[NamedArrays], contexts: Sequence[RequestContext]
    ) -> list[NamedArrays | ForwardpassError]:
        """Run a batch of requests unmerged: one result or one error per request, in order.

        Only backends with ``unmerged = True`` implement it; called from a worker thread.
        """
        raise NotImplementedError(f"backend {self.name} merges its batches")

    def bind(self, loop: asyncio.AbstractEventLoop, caller: Any) -> None:  # noqa: B027
        """Give the backend the server's event loop and engine (``caller.infer`` and
        ``caller.infer_stream``), for models that call other models (the Python backend's
        BLS). Called once the instance is loaded; most backends ignore it."""

    def _check(self, inputs: NamedArrays) -> NamedArrays:
        """Per-request hook; the default accepts everything unchanged."""
        return inputs

    def unload(self) -> None:  # noqa: B027 - optional hook; most backends free on GC
        """Release the model's resources. Safe to call twice."""

    def translate_error(self, exc: Exception) -> ForwardpassError:
        """Map a backend's own exception to ours; subclasses refine this."""
        if isinstance(exc, ValueError | TypeError):
            return InvalidArgument(f"{self.name}: {exc}")
        return InternalError(f"{self.name}: {exc}")

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> NamedArrays: ...
