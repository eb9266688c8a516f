"""ONNX → ORT format, and the operators the converted model needs.

The converter (``onnxruntime.tools.convert_onnx_models_to_ort``) writes the ``.ort`` model and
the reduced operator/type configuration a minimal ONNX Runtime build takes
(``--include_ops_by_config``). :func:`read_operators` reads that configuration back:
``domain;opset;Op1,Op2{"inputs": …}`` per line.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.export.target import Target

__all__ = ["Converted", "convert", "model_operators", "read_operators"]

#: Operator domains every full ONNX Runtime CPU build implements kernels for.
STANDARD_DOMAINS = ("ai.onnx", "ai.onnx.ml")
_MISSING = re.compile(r"implementation for (\w+)\((\d+)\)")


@dataclass(frozen=True, slots=True)
class Converted:
    """The converter's files, moved into the bundle."""

    model: Path
    config: Path
    #: domain → opset → sorted operator names, as the ORT model needs them.
    operators: dict[str, dict[str, list[str]]]


def read_operators(config: Path) -> dict[str, dict[str, list[str]]]:
    """The reduced-build configuration ``config`` as domain → opset → operators."""
    result: dict[str, dict[str, list[str]]] = {}
    for line in config.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, ops = line.split(";", 2)
        # Type constraints are JSON objects after each name: drop them, keep the names.
        names = re.sub(r"\{[^{}]*(\{[^{}]*\}[^{}]*)*\}", "", ops)
        bucket = result.setdefault(domain, {}).setdefault(opset, [])
        bucket.extend(n.strip() for n in names.split(",") if n.strip())
        bucket.sort()
    return result


def model_operators(model: Path) -> dict[str, list[str]]:
    """domain → operator types in the ONNX model (``ai.onnx`` for the default domain)."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    found: dict[str, set[str]] = {}
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            found.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
            for attribute in node.attribute:
                graphs.extend(attribute.graphs)
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
    return {domain: sorted(ops) for domain, ops in sorted(found.items())}


def convert(onnx_model: Path, target: Target, into: Path) -> Converted:
    """Convert ``onnx_model`` for ``target``; the ORT model and its config land in ``into``.

    Raises :class:`Unsupported` naming the operators ONNX Runtime has no kernel for.
    """
    import onnxruntime
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    with tempfile.TemporaryDirectory(prefix="fp-ort-") as scratch:
        work = Path(scratch)
        source = work / "model.onnx"
        shutil.copyfile(onnx_model, source)
        out = work / "out"
        # The converter prints progress and logs through its own logger: keep both off the
        # command's output, but keep the text for an error message.
        captured = io.StringIO()
        logger = logging.getLogger("ort_format_model.utils")
        level = logger.level
        logger.setLevel(logging.WARNING)
        # Its C++ warning about NCHWc layouts is what the Fixed style means: not news.
        onnxruntime.set_default_logger_severity(3)
        try:
            # The converter's config writer leaves the .ort file it read open; it is closed
            # when collected, here, not as a ResourceWarning somewhere later.
            with contextlib.redirect_stdout(captured), warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                convert_onnx_models_to_ort(
                    source,
                    output_dir=out,
                    optimization_styles=[OptimizationStyle[target.optimization_style]],
                    target_platform=target.converter_platform,
                    enable_type_reduction=True,
                )
                gc.collect()
        except Exception as exc:  # onnxruntime raises its own Fail / NotImplemented types
            raise _unsupported(onnx_model, exc) from None
        finally:
            logger.setLevel(level)
            onnxruntime.set_default_logger_severity(2)
        models = sorted(out.glob("*.ort"))
        configs = sorted(out.glob("*.config"))
        if len(models) != 1 or len(configs) != 1:
            raise InvalidArgument(
                f"the ORT converter wrote {[p.name for p in models + configs]}, expected one "
                f"model and one config: {captured.getvalue()[-500:]}"
            )
        into.mkdir(parents=True, exist_ok=True)
        model = into / models[0].name
        config = into / configs[0].name
        shutil.move(str(models[0]), model)
        shutil.move(str(configs[0]), config)
    return Converted(model, config, read_operators(config))


def _unsupported(onnx_model: Path, exc: Exception) -> Unsupported:
    text = str(exc)
    named = sorted({f"{op}(opset {v})" for op, v in _MISSING.findall(text)})
    try:
        foreign = {
            d: ops for d, ops in model_operators(onnx_model).items() if d not in STANDARD_DOMAINS
        }
    except Exception:  # an unreadable model: the converter's message says why
        foreign = {}
    detail = f"operators without a kernel: {', '.join(named)}" if named else text.strip()[:400]
    if foreign:
        detail += f"; operators outside the standard domains: {json.dumps(foreign)}"
    return Unsupported(f"the model cannot be converted to ORT format ({detail})")
