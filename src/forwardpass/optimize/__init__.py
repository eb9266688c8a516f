"""Offline optimization: turn a model version into a faster (or smaller) one, with proof.

``forwardpass optimize MODEL`` builds one candidate per applicable method and variant (graph
optimization, FP16, INT8 dynamic and static, INT4 weight-only), measures each on the target
(latency p50/p99 at batch 1 and the best batch, throughput, peak memory, size, parameters) and
against the original's answers (task accuracy with labels, agreement without), and writes the
best one within the accuracy budget as a new version with its report beside it. Modules:

- :mod:`.methods`: the methods (one :class:`~.methods.Method` subclass each);
- :mod:`.data`: calibration and validation inputs; :mod:`.measure`: latency and memory;
- :mod:`.accuracy`: metrics; :mod:`.selection`: the promotion rule; :mod:`.report`: JSON/HTML;
- :mod:`.version`: atomic version writing; :mod:`.provenance`: reading ``optimization.json``;
- :mod:`.optimizer`: the run that ties them together.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from forwardpass.optimize.provenance import OPTIMIZATION_FILE, Provenance, read_provenance

if TYPE_CHECKING:
    from forwardpass.optimize.measure import MeasureSettings
    from forwardpass.optimize.optimizer import OptimizeOptions, OptimizeResult, optimize
    from forwardpass.optimize.target import Target

__all__ = [
    "OPTIMIZATION_FILE",
    "MeasureSettings",
    "OptimizeOptions",
    "OptimizeResult",
    "Provenance",
    "Target",
    "optimize",
    "read_provenance",
]

# The server reads provenance for every version it loads; the optimizer's own modules (ONNX
# tooling, quantization) load only when something here asks for them.
_LAZY = {
    "MeasureSettings": "forwardpass.optimize.measure",
    "OptimizeOptions": "forwardpass.optimize.optimizer",
    "OptimizeResult": "forwardpass.optimize.optimizer",
    "optimize": "forwardpass.optimize.optimizer",
    "Target": "forwardpass.optimize.target",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'forwardpass.optimize' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
