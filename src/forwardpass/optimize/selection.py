"""Choosing the candidate to promote: the best one within the accuracy budget.

Rules (the original is always a candidate, and is kept unless another clearly wins):

- only measured candidates whose accuracy drop is at most ``max_accuracy_drop`` are eligible;
  a candidate over the budget is never promoted, however fast;
- ``cpu``, ``cuda``, ``tensorrt``, ``openvino``: the lowest batch-1 p50 latency wins, and must
  beat the original's by at least ``min_gain`` (5 % by default) — smaller differences are
  within the noise of a shared machine and not worth a new version;
- ``edge``: the smallest file wins (among files within 5 % of the smallest, the fastest), and
  must be at least ``min_gain`` smaller than the original; latency breaks ties, since on a
  device storage and memory are the hard limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from forwardpass.errors import InternalError
from forwardpass.optimize.candidates import ORIGINAL, CandidateResult
from forwardpass.optimize.target import Target

__all__ = ["Selection", "select"]

_SIZE_TIE = 0.05


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen candidate, whether it replaces the original, and why."""

    chosen: str
    promoted: bool
    rule: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _latency(c: CandidateResult) -> float:
    assert c.performance is not None
    return c.performance.p50_ms


def _size(c: CandidateResult) -> int:
    return c.size_bytes or 0


def select(
    candidates: Sequence[CandidateResult],
    *,
    max_accuracy_drop: float,
    target: Target,
    min_gain: float = 0.05,
) -> Selection:
    """Mark each candidate's ``within_budget`` and choose (see the module docstring)."""
    original = next((c for c in candidates if c.method == ORIGINAL), None)
    if original is None or not original.measured:
        raise InternalError("the original model was not measured; nothing to compare with")
    eligible: list[CandidateResult] = []
    for c in candidates:
        if not c.measured or c.accuracy is None:
            c.within_budget = None
            continue
        c.within_budget = c.method == ORIGINAL or c.accuracy.drop <= max_accuracy_drop
        if c.within_budget:
            eligible.append(c)
    over = [c.name for c in candidates if c.within_budget is False]
    over_note = f"; over the accuracy budget, never promoted: {', '.join(over)}" if over else ""

    if target is Target.EDGE:
        rule = f"edge: smallest file within the budget, ≥{min_gain:.0%} smaller than the original"
        smallest = min(_size(c) for c in eligible)
        best = min((c for c in eligible if _size(c) <= smallest * (1 + _SIZE_TIE)), key=_latency)
        gain = 1.0 - _size(best) / max(_size(original), 1)
        what = f"{_size(best):,} bytes vs {_size(original):,}"
    else:
        rule = f"fastest batch-1 p50 within the budget, ≥{min_gain:.0%} faster than the original"
        best = min(eligible, key=_latency)
        gain = 1.0 - _latency(best) / max(_latency(original), 1e-9)
        what = f"p50 {_latency(best):.3f} ms vs {_latency(original):.3f} ms"

    if best is original or gain < min_gain:
        why = (
            "no candidate within the accuracy budget"
            if len(eligible) == 1
            else f"the best candidate within the budget ({best.name}: {what}) gains "
            f"{gain:.1%}, less than {min_gain:.0%}"
        )
        if best is original and len(eligible) > 1:
            why = "no candidate within the accuracy budget beats the original"
        return Selection(ORIGINAL, False, rule, f"kept the original: {why}{over_note}")
    return Selection(
        best.name,
        True,
        rule,
        f"{best.name} ({best.method}): {what}, accuracy drop "
        f"{best.accuracy.drop if best.accuracy else 0:.4f} ≤ {max_accuracy_drop}{over_note}",
    )
