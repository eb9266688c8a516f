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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forwardpass.errors import ForwardpassError, InternalError, InvalidArgument
from forwardpass.model_config import ModelConfig, TensorSpec

__all__ = ["Backend", "BackendIO", "NamedArrays"]

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


class Backend(abc.ABC):
    """One loaded instance of one model version.

    ``infer`` is called from a worker thread, never concurrently on the same instance.
    """

    #: Name used in ``config.backend`` (``onnxruntime``, ``null`` ...).
    name: str = ""

    def __init__(self, config: ModelConfig, version_dir: Path, instance: int = 0) -> None:
        self.config = config
        self.version_dir = version_dir
        self.instance = instance
        #: Execution providers (or devices) actually in use, for metadata and logs.
        self.providers: list[str] = []
        #: Providers that were asked for but missing, taken only where the config allows it.
        self.fallback_warnings: list[str] = []

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
