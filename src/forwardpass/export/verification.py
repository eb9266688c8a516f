"""The bundle's answers against the engine's: same outputs, same values.

Floats agree within ``rtol``/``atol`` (the ORT model is optimized ahead of time, so fused
kernels may round differently in the last bits); integers, booleans and strings exactly, except
the score of a top-k string (``score:index[:label]``), which is a float written with six
decimals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["differences", "plain"]

RTOL = 1e-4
ATOL = 1e-5
_RANKED = re.compile(r"^(-?[\d.]+(?:e[-+]?\d+)?|nan|inf|-inf):(\d+)(:.*)?$", re.S)


def plain(array: np.ndarray) -> Any:
    """An array as the runner prints it (nested lists; bytes decoded as UTF-8)."""
    if array.dtype == object:
        flat = [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in array.reshape(-1)
        ]
        return np.asarray(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _strings_differ(a: str, b: str) -> bool:
    ma, mb = _RANKED.match(a), _RANKED.match(b)
    if ma and mb:
        same_rest = ma.group(2, 3) == mb.group(2, 3)
        return not (same_rest and abs(float(ma.group(1)) - float(mb.group(1))) <= 2e-5)
    return a != b


def differences(expected: Mapping[str, np.ndarray], answer: Mapping[str, Any]) -> list[str]:
    """What differs between the engine's outputs and the runner's answer (empty: none)."""
    problems: list[str] = []
    if set(expected) != set(answer):
        return [f"outputs differ: engine {sorted(expected)}, bundle {sorted(answer)}"]
    for name, want in expected.items():
        got = answer[name]
        if want.dtype == object:
            flat_want = [str(x) for x in np.asarray(plain(want), dtype=object).reshape(-1)]
            flat_got = [str(x) for x in np.asarray(got, dtype=object).reshape(-1)]
            if len(flat_want) != len(flat_got) or any(
                _strings_differ(a, b) for a, b in zip(flat_want, flat_got, strict=False)
            ):
                problems.append(f"{name}: engine {flat_want[:4]} …, bundle {flat_got[:4]} …")
            continue
        value = np.asarray(got)
        if value.shape != want.shape:
            problems.append(f"{name}: shape {list(value.shape)}, engine {list(want.shape)}")
        elif want.dtype.kind == "f":
            if not np.allclose(value, want, rtol=RTOL, atol=ATOL):
                worst = float(np.max(np.abs(value.astype(np.float64) - want)))
                problems.append(f"{name}: values differ by up to {worst:.3g}")
        elif not np.array_equal(value.astype(want.dtype), want):
            problems.append(f"{name}: values differ")
    return problems
