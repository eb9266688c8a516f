"""The contract every optimization method implements.

A :class:`Method` turns the source ONNX file into one candidate file per :class:`Variant`
(INT8 static has several: per-channel or not, symmetric or asymmetric activations). It is
asked first whether it applies (:meth:`Method.check`): a method that cannot handle the model
says why in one sentence and the others run on. A method that needs more than ONNX Runtime
(pruning and distillation need torch, and come later) declares the modules in ``requires``
and is skipped with an install hint when they are missing.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from forwardpass.model_config import ModelConfig
    from forwardpass.optimize.data import Samples
    from forwardpass.optimize.target import Target

__all__ = ["BuildContext", "Method", "MethodSkipped", "Variant"]


class MethodSkipped(Exception):
    """Raised by :meth:`Method.build` when the model turns out not to fit the method."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One candidate a method can build: a name for the report and the method's options."""

    name: str
    description: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(slots=True)
class BuildContext:
    """What a method may read while it builds: the source, its config, data and target."""

    source: Path
    config: ModelConfig
    target: Target
    #: Real inputs to calibrate on, or ``None`` when there are none.
    calibration: Samples | None
    #: Where the method writes its file(s); one folder per variant.
    workdir: Path
    #: Training steps for the methods that train (``--steps``); ``None``: their default.
    steps: int | None = None
    _model: onnx.ModelProto | None = None

    @property
    def model(self) -> onnx.ModelProto:
        """The source model, loaded once (callers must not mutate it: copy first)."""
        if self._model is None:
            import onnx

            self._model = onnx.load(str(self.source))
        return self._model


class Method(abc.ABC):
    """An optimization method: a name on the command line and the variants it builds."""

    #: The name ``--methods`` uses (``int8-static``).
    name: str = ""
    #: Modules the method needs beyond onnx and onnxruntime, and the extra that installs them.
    requires: tuple[str, ...] = ()
    extra: str = "optimize"

    @abc.abstractmethod
    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        """The candidates this method offers for ``ctx`` (usually fixed)."""

    def check(self, ctx: BuildContext) -> str | None:
        """Why the method cannot handle this model/target, or ``None`` when it can."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return (
                f"needs {', '.join(missing)}, which is not installed "
                f"(pip install 'forwardpass[{self.extra}]')"
            )
        return None

    #: The candidate's file name (``model.xml`` for OpenVINO IR, beside its ``model.bin``).
    filename: str = "model.onnx"

    def providers(self, ctx: BuildContext, variant: Variant) -> tuple[str, ...] | None:
        """Where this variant runs, when not on the target's providers (OpenVINO's)."""
        return None

    @abc.abstractmethod
    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        """Write the candidate model to ``output``; return notes for the report.

        Raises :class:`MethodSkipped` with a one-sentence reason when the model does not fit.
        """
