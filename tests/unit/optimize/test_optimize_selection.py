"""The promotion rule: fastest (edge: smallest) within budget; never over budget."""

from __future__ import annotations

from dataclasses import replace

import pytest

from forwardpass.errors import InternalError
from forwardpass.optimize.accuracy import Accuracy
from forwardpass.optimize.candidates import CandidateResult
from forwardpass.optimize.measure import Performance
from forwardpass.optimize.selection import select
from forwardpass.optimize.target import Target


def _candidate(name: str, p50: float, drop: float, size: int = 1000) -> CandidateResult:
    method = "original" if name == "original" else name.split("-")[0]
    perf = Performance(p50, p50 * 2, 1, p50, p50 * 2, 1000 / p50, 10.0, "test")
    acc = Accuracy("classification", "labels", "top1", 0.9 - drop, drop)
    return CandidateResult(name, method, "", path=None, size_bytes=size, performance=perf,
                           accuracy=acc)  # fmt: skip


def test_fastest_within_budget_wins_and_over_budget_is_never_promoted() -> None:
    cands = [
        _candidate("original", 10.0, 0.0),
        _candidate("int8-fast", 2.0, 0.05),  # fastest, but over the budget
        _candidate("fp16-ok", 6.0, 0.005),
        _candidate("graph-ok", 9.0, 0.0),
    ]
    chosen = select(cands, max_accuracy_drop=0.01, target=Target.CPU)
    assert chosen.promoted and chosen.chosen == "fp16-ok"
    assert [c.within_budget for c in cands] == [True, False, True, True]
    assert chosen.over_budget == ("int8-fast",) and "int8-fast" not in chosen.reason
    assert "never promoted: int8-fast" in chosen.summary


def test_original_is_kept_when_nothing_qualifies() -> None:
    cands = [_candidate("original", 10.0, 0.0), _candidate("int8-a", 1.0, 0.2)]
    chosen = select(cands, max_accuracy_drop=0.01, target=Target.CPU)
    assert not chosen.promoted and chosen.chosen == "original"
    assert "kept the original" in chosen.reason and "no candidate within" in chosen.reason


def test_a_gain_inside_the_noise_keeps_the_original() -> None:
    cands = [_candidate("original", 10.0, 0.0), _candidate("graph-a", 9.8, 0.0)]
    chosen = select(cands, max_accuracy_drop=0.01, target=Target.CPU)
    assert not chosen.promoted and "less than 5%" in chosen.reason


def test_edge_prefers_the_smallest_file_within_budget() -> None:
    cands = [
        _candidate("original", 10.0, 0.0, size=4000),
        _candidate("int4-tiny", 30.0, 0.5, size=500),  # smallest, over budget
        _candidate("int8-small", 12.0, 0.002, size=1000),
        _candidate("int8-small2", 11.0, 0.002, size=1020),  # within 5 % of the size, faster
        _candidate("graph-fast", 5.0, 0.0, size=4000),
    ]
    chosen = select(cands, max_accuracy_drop=0.01, target=Target.EDGE)
    assert chosen.promoted and chosen.chosen == "int8-small2"


def test_skipped_and_failed_candidates_are_ignored() -> None:
    skipped = CandidateResult("int8-static", "int8-static", "", "skipped", "no calibration data")
    cands = [_candidate("original", 10.0, 0.0), skipped]
    chosen = select(cands, max_accuracy_drop=0.01, target=Target.CPU)
    assert chosen.chosen == "original" and cands[1].within_budget is None


def test_without_a_measured_original_there_is_no_choice() -> None:
    with pytest.raises(InternalError):
        select([_candidate("int8", 1.0, 0.0)], max_accuracy_drop=0.01, target=Target.CPU)


def _rounds(name: str, rounds: tuple[float, ...], drop: float = 0.0) -> CandidateResult:
    candidate = _candidate(name, sorted(rounds)[len(rounds) // 2], drop)
    assert candidate.performance is not None
    candidate.performance = replace(candidate.performance, rounds_p50_ms=rounds)
    return candidate


def test_a_gain_inside_the_measured_noise_is_not_promoted() -> None:
    # 10 % faster on the median, but the original's own rounds spread by 30 %.
    cands = [_rounds("original", (0.10, 0.13, 0.10)), _rounds("graph-a", (0.09, 0.09, 0.09))]
    chosen = select(cands, max_accuracy_drop=0.01, target=Target.CPU)
    assert not chosen.promoted and "inside the measured noise" in chosen.reason
    assert chosen.noise == pytest.approx(0.3)


def test_a_candidate_slower_in_one_round_is_not_promoted() -> None:
    cands = [
        _rounds("original", (0.100, 0.100, 0.100, 0.100, 0.100)),
        _rounds("graph-a", (0.080, 0.080, 0.080, 0.080, 0.101)),
    ]
    chosen = select(cands, max_accuracy_drop=0.01, target=Target.CPU, min_gain=0.05)
    # The spread of graph-a's own rounds (26 %) is the noise here.
    assert not chosen.promoted and "noise" in chosen.reason


def test_a_steady_gain_beyond_the_noise_is_promoted_and_the_report_says_so() -> None:
    cands = [
        _rounds("original", (0.100, 0.102, 0.101)),
        _rounds("fp16-a", (0.060, 0.061, 0.060)),
        _rounds("int8-b", (0.030, 0.030, 0.030), drop=0.2),
    ]
    chosen = select(cands, max_accuracy_drop=0.01, target=Target.CPU)
    assert chosen.promoted and chosen.chosen == "fp16-a"
    assert chosen.noise is not None and chosen.noise < 0.03
    assert "interleaved rounds" in chosen.reason and "40." in chosen.reason
