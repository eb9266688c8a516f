"""Choosing the candidate to promote: the best one within the accuracy budget.

Rules (the original is always a candidate, and is kept unless another clearly wins):

- only measured candidates whose accuracy drop is at most ``max_accuracy_drop`` are eligible;
  a candidate over the budget is never promoted, however fast;
- ``cpu``, ``cuda``, ``tensorrt``, ``openvino``: the lowest batch-1 p50 latency wins, and must
  beat the original's by at least ``min_gain`` (5 % by default) and by more than the measured
  noise. With interleaved rounds (see measure.py) the gain is the median over rounds of the
  candidate's p50 against the original's in the same round; the noise is the larger of the
  original's and the candidate's spread between rounds; and the candidate must also be faster
  in every round. A gain inside the noise is luck, not a reason for a new version;
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
    #: One sentence on the choice (about the chosen candidate only).
    reason: str
    #: Candidates over the accuracy budget (never promoted, however fast).
    over_budget: tuple[str, ...] = ()
    #: The latency noise the gain had to exceed (a fraction), when rounds measured it.
    noise: float | None = None

    @property
    def summary(self) -> str:
        """The reason, then the candidates over the budget as a sentence of their own."""
        if not self.over_budget:
            return self.reason
        return f"{self.reason}. Over the accuracy budget, never promoted: " + ", ".join(
            self.over_budget
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "over_budget": list(self.over_budget), "summary": self.summary}


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
    over = tuple(c.name for c in candidates if c.within_budget is False)
    noise: float | None = None
    steady = True

    if target is Target.EDGE:
        rule = f"edge: smallest file within the budget, ≥{min_gain:.0%} smaller than the original"
        smallest = min(_size(c) for c in eligible)
        best = min((c for c in eligible if _size(c) <= smallest * (1 + _SIZE_TIE)), key=_latency)
        gain = 1.0 - _size(best) / max(_size(original), 1)
        what = f"{_size(best):,} bytes vs {_size(original):,}"
    else:
        rule = (
            f"fastest batch-1 p50 within the budget, ≥{min_gain:.0%} faster than the original "
            "and by more than the measured noise"
        )
        best = min(eligible, key=_latency)
        gain, noise, steady, what = _latency_gain(best, original)

    def keep(why: str) -> Selection:
        return Selection(ORIGINAL, False, rule, f"kept the original: {why}", over, noise)

    if len(eligible) == 1:
        return keep("no candidate within the accuracy budget")
    if best is original:
        return keep("no candidate within the accuracy budget beats the original")
    if gain < min_gain:
        return keep(
            f"the best candidate within the budget ({best.name}: {what}) gains "
            f"{gain:.1%}, less than {min_gain:.0%}"
        )
    if noise is not None and gain <= noise:
        return keep(
            f"the best candidate within the budget ({best.name}: {what}) gains {gain:.1%}, "
            f"inside the measured noise (±{noise:.1%} between rounds)"
        )
    if not steady:
        return keep(
            f"the best candidate within the budget ({best.name}: {what}) gains {gain:.1%} "
            "on the median but was not faster in every round"
        )
    assert best.accuracy is not None
    return Selection(
        best.name,
        True,
        rule,
        f"promoted {best.name} ({best.method}): {what}, {gain:.1%} "
        f"{'smaller' if target is Target.EDGE else 'faster'}; accuracy drop "
        f"{best.accuracy.drop:.4f}, within the budget of {max_accuracy_drop}",
        over,
        noise,
    )


def _latency_gain(
    best: CandidateResult, original: CandidateResult
) -> tuple[float, float | None, bool, str]:
    """(gain, noise, faster in every round, description) of ``best`` against ``original``."""
    assert best.performance is not None and original.performance is not None
    mine, theirs = best.performance.rounds_p50_ms, original.performance.rounds_p50_ms
    what = f"p50 {_latency(best):.3f} ms vs {_latency(original):.3f} ms"
    if len(mine) < 2 or len(mine) != len(theirs):
        return 1.0 - _latency(best) / max(_latency(original), 1e-9), None, True, what
    ratios = sorted(m / max(t, 1e-9) for m, t in zip(mine, theirs, strict=True))
    middle = len(ratios) // 2
    median = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
    spreads = [s for s in (best.performance.spread, original.performance.spread) if s is not None]
    noise = max(spreads) if spreads else None
    what += f" over {len(ratios)} interleaved rounds"
    return 1.0 - median, noise, ratios[-1] < 1.0, what
