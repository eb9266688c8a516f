"""Checking an exported ONNX file against the model it came from, on sample inputs.

The importer runs the original model (the reference) and the ONNX file through ONNX Runtime
on the same inputs and reports, per output, the largest absolute difference. An output whose
values differ by more than ``atol + rtol * |reference|`` anywhere fails the import. Integer,
boolean and string outputs (class labels) must match exactly; their "difference" is the
fraction of elements that differ.

Samples come from the user (``.npy`` / ``.npz`` files), from data the caller holds, or are
synthesized from the declared shapes (see :func:`synthesize`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument
from forwardpass.model_config import TensorSpec

__all__ = [
    "OutputCheck",
    "Verification",
    "compare",
    "load_samples",
    "run_onnx",
    "synthesize",
]

#: Size of a synthesized batch: two rows, so a model that mixes rows is caught.
SAMPLE_BATCH = 2
#: Length given to a variable non-batch dimension when synthesizing.
SAMPLE_LENGTH = 8


@dataclass(frozen=True, slots=True)
class OutputCheck:
    """One output compared: its largest difference and whether it is within tolerance."""

    name: str
    max_abs_diff: float
    exact: bool
    ok: bool
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Verification:
    """Every output compared on ``samples`` rows."""

    outputs: tuple[OutputCheck, ...]
    atol: float
    rtol: float
    samples: int

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.outputs)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.outputs if not c.exact), default=0.0)

    def summary(self) -> str:
        parts = []
        for check in self.outputs:
            what = "mismatched" if check.exact else "max |diff|"
            parts.append(f"{check.name}: {what} {check.max_abs_diff:.3g}")
        return ", ".join(parts)

    def raise_if_failed(self) -> None:
        """:class:`InvalidArgument` naming every output beyond tolerance."""
        if self.ok:
            return
        bad = [c for c in self.outputs if not c.ok]
        details = "; ".join(
            f"{c.name}: {'fraction mismatched' if c.exact else 'max |diff|'} {c.max_abs_diff:.3g}"
            for c in bad
        )
        raise InvalidArgument(
            f"the exported ONNX model does not match the original on {self.samples} sample "
            f"row(s) (atol {self.atol:g}, rtol {self.rtol:g}): {details}; nothing was written"
        )


def run_onnx(model: Path | bytes, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` on ``inputs``, on the CPU, with full graph optimizations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, dict(inputs))
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise InvalidArgument(f"ONNX Runtime cannot run the exported model: {exc}") from exc
    return dict(zip(names, (np.asarray(r) for r in results), strict=True))


def compare(
    reference: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    atol: float,
    rtol: float = 0.0,
) -> Verification:
    """Compare each reference output with the ONNX output of the same name."""
    checks: list[OutputCheck] = []
    samples = 0
    for name, expected in reference.items():
        if name not in actual:
            raise InvalidArgument(f"the exported model has no output {name!r}")
        got = np.asarray(actual[name])
        expected = np.asarray(expected)
        samples = max(samples, expected.shape[0] if expected.ndim else 1)
        if got.size != expected.size:
            raise InvalidArgument(
                f"output {name!r}: the exported model gives shape {got.shape}, the original "
                f"{expected.shape}"
            )
        got = got.reshape(expected.shape)
        exact = not (
            np.issubdtype(expected.dtype, np.floating) or np.issubdtype(got.dtype, np.floating)
        )
        if exact:
            differ = np.asarray(got.astype(str) != expected.astype(str))
            diff = float(differ.mean()) if differ.size else 0.0
            ok = diff == 0.0
        else:
            e = expected.astype(np.float64)
            g = got.astype(np.float64)
            if not np.array_equal(np.isnan(e), np.isnan(g)):
                diff, ok = float("nan"), False
            else:
                gap = np.abs(np.nan_to_num(e - g, nan=0.0))
                diff = float(gap.max()) if gap.size else 0.0
                ok = bool(np.all(gap <= atol + rtol * np.abs(np.nan_to_num(e))))
        checks.append(OutputCheck(name, diff, exact, ok, tuple(got.shape)))
    return Verification(tuple(checks), atol, rtol, samples)


def load_samples(files: Sequence[str], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays from ``[NAME=]FILE.npy`` or ``FILE.npz`` arguments, keyed by input name.

    A ``.npy`` without a name feeds the only input; a ``.npz`` maps its keys to inputs.
    Pickled object arrays are refused (loading them runs code).
    """
    out: dict[str, np.ndarray] = {}
    for item in files:
        name, sep, path_text = item.partition("=")
        if not sep:
            name, path_text = "", item
        path = Path(path_text)
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"cannot read sample file {path}: {exc}") from exc
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = {key: loaded[key] for key in loaded.files}
            out.update(arrays)
            continue
        if not name:
            if len(input_names) != 1:
                raise InvalidArgument(
                    f"the model has inputs {list(input_names)}: name the input a sample feeds "
                    f"(NAME={path})"
                )
            name = input_names[0]
        out[name] = loaded
    unknown = sorted(set(out) - set(input_names))
    if unknown:
        raise InvalidArgument(f"sample inputs {unknown} are not inputs of the model")
    return out


def synthesize(
    specs: Sequence[TensorSpec], *, batched: bool, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for tensors of these full shapes (``-1`` for variable dimensions).

    A variable leading dimension of a batched model becomes :data:`SAMPLE_BATCH`, other
    variable dimensions :data:`SAMPLE_LENGTH`. Floats are standard normal, integers small
    non-negative values (safe as indices), booleans random.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(
            (SAMPLE_BATCH if batched and i == 0 else SAMPLE_LENGTH) if d == -1 else d
            for i, d in enumerate(spec.dims)
        )
        if spec.datatype in (DataType.BYTES, DataType.BF16):
            raise InvalidArgument(
                f"cannot synthesize samples for {spec.datatype.name} input {spec.name!r}; "
                "give sample files"
            )
        dtype = spec.datatype.numpy
        if np.issubdtype(dtype, np.floating):
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            out[spec.name] = rng.random(shape) < 0.5
        else:
            out[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return out
