"""The adaptive batching policy's decisions, driven by injected instants (no clock, no loop)."""

from __future__ import annotations

import math

import pytest

from forwardpass.errors import InvalidModelConfig
from forwardpass.scheduling.adaptive import (
    MARGIN,
    PROBE_EVERY,
    SILENCE,
    AdaptivePolicy,
    AdaptiveSettings,
    ladder,
    read_adaptive,
)

US = 1_000
MS = 1_000_000
#: The fitted service time of every policy below: 2.5 ms per batch plus 0.1 ms per row.
FIXED, PER_ROW = 2.5 * MS, 0.1 * MS


def learned(gap_ns: int, *, latency_ms: float = 0, delay_ns: int = 0) -> tuple[AdaptivePolicy, int]:
    """A policy that has seen arrivals ``gap_ns`` apart and batches costing FIXED + PER_ROW·n;
    returns it and the instant of its last arrival."""
    policy = AdaptivePolicy(AdaptiveSettings(max_latency_ns=round(latency_ms * MS)), delay_ns)
    for rows in (1, 4, 16):
        policy.served(rows, int(FIXED + PER_ROW * rows))
    now = 1_000 * MS
    for _ in range(50):
        now += gap_ns
        policy.arrived(now)
    return policy, now


def hold(policy: AdaptivePolicy, now: int, rows: int, target: int = 32, **kw: int) -> int:
    return policy.hold_ns(
        now_ns=now,
        rows=rows,
        target=target,
        oldest_ns=kw.get("oldest", now),
        free_since_ns=kw.get("free_since", 0),
    )


# ---------------------------------------------------------------------------- estimates


def test_service_time_is_fitted_as_overhead_plus_per_row() -> None:
    policy, _ = learned(100 * US)
    assert policy.service_ns(1) == pytest.approx(FIXED + PER_ROW)
    assert policy.service_ns(32) == pytest.approx(FIXED + 32 * PER_ROW)
    view = policy.view()
    assert view.batch_fixed_s == pytest.approx(0.0025)
    assert view.batch_per_row_s == pytest.approx(0.0001)


def test_steady_poisson_like_gaps_estimate_their_mean() -> None:
    # Gaps of a geometric mean g estimate g·e^γ: unbiased for exponential gaps.
    policy, _ = learned(100 * US)
    assert policy.gap_ns() == pytest.approx(100 * US * math.exp(0.5772156649015329))
    assert policy.view().arrival_rate_per_s == pytest.approx(1e9 / policy.gap_ns())


def test_a_burst_is_not_hidden_by_the_long_gap_of_each_cycle() -> None:
    # A closed loop: 31 answers come back 50 us apart, then nothing for 30 ms while the
    # batch computes. The mean gap (~1 ms) would say "do not wait"; the typical one is short.
    policy = AdaptivePolicy(AdaptiveSettings())
    now = 0
    for _ in range(10):
        for _ in range(31):
            now += 50 * US
            policy.arrived(now)
        now += 30 * MS
        policy.arrived(now)
    gap = policy.gap_ns()
    assert gap is not None and gap < 0.25 * MS


def test_estimates_adapt_when_the_rate_changes() -> None:
    policy, now = learned(50 * US)
    assert hold(policy, now, 1) > 0  # busy: worth holding
    for _ in range(100):  # the load drops to a request every 20 ms
        now += 20 * MS
        policy.arrived(now)
    assert policy.gap_ns() == pytest.approx(20 * MS * math.exp(0.5772156649015329), rel=0.01)
    assert hold(policy, now, 1) == 0
    for _ in range(100):  # and comes back
        now += 50 * US
        policy.arrived(now)
    assert hold(policy, now, 1) > 0


def test_service_estimates_follow_a_model_that_slows_down() -> None:
    policy, _ = learned(100 * US)
    for _ in range(200):
        for rows in (1, 4, 16):
            policy.served(rows, int(2 * FIXED + PER_ROW * rows))
    assert policy.service_ns(0) == pytest.approx(2 * FIXED, rel=0.05)


# ---------------------------------------------------------------------------- decisions


def test_a_lone_request_at_a_low_rate_goes_at_once() -> None:
    policy, now = learned(50 * MS)  # a request every 50 ms, a batch overhead of 2.5 ms
    assert hold(policy, now, 1) == 0
    assert policy.view().last_wait_s == 0


def test_a_closed_loop_of_one_never_waits() -> None:
    # One client: the next request comes only after this one's answer (gap > service time).
    policy, now = learned(int(FIXED + PER_ROW) + 200 * US)
    assert hold(policy, now, 1) == 0


def test_nothing_waits_before_the_estimates_exist() -> None:
    policy = AdaptivePolicy(AdaptiveSettings())
    assert hold(policy, 5 * MS, 1) == 0  # no arrivals, no fit
    for i in range(10):
        policy.arrived(i * 10 * US)
    assert hold(policy, 100 * US, 1) == 0  # arrivals, no fit
    policy.served(1, 3 * MS)
    policy.served(1, 3 * MS)
    assert hold(policy, 100 * US, 1) == 0  # one size class cannot split overhead from rows
    policy.served(8, 4 * MS)
    assert hold(policy, 100 * US, 1) > 0


def test_a_busy_model_holds_until_its_batch_reaches_the_target() -> None:
    policy, now = learned(50 * US)
    free = now - 10 * US
    wait = hold(policy, now, 1, free_since=free)
    assert 0 < wait <= FIXED
    # The wait ends SILENCE expected gaps after the last arrival, unless more come.
    assert wait == pytest.approx(SILENCE * policy.gap_ns(), abs=1)  # type: ignore[operator]
    for rows in range(2, 32):
        now += 50 * US
        policy.arrived(now)
        assert hold(policy, now, rows, oldest=free + 10 * US, free_since=free) > 0
    assert hold(policy, now, 32, oldest=free + 10 * US, free_since=free) == 0
    # With preferred sizes the batcher asks for the next one as the target.
    assert hold(policy, now, 8, target=8) == 0


def test_an_idle_instance_never_holds_longer_than_the_overhead_it_saves() -> None:
    policy, now = learned(50 * US)
    start = now - 2_400 * US  # the oldest request has been held 2.4 ms of the 2.5 ms overhead
    wait = hold(policy, now, 4, oldest=start, free_since=start - MS)
    assert wait == pytest.approx(start + FIXED - now, abs=1)
    assert hold(policy, start + int(FIXED), 4, oldest=start, free_since=start) == 0


def test_the_hold_ends_when_arrivals_stop() -> None:
    policy, last = learned(50 * US)
    later = last + int(SILENCE * policy.gap_ns()) + 1  # type: ignore[operator]
    assert hold(policy, later, 8, oldest=last - MS, free_since=last - MS) == 0


def test_a_freed_instance_waits_for_the_clients_it_just_answered() -> None:
    # Half of a closed loop queued while the other half computed; the instance is free now
    # and those answers are on their way back: their clients' next requests come soon.
    policy, last = learned(50 * US)
    free = last + 5 * MS  # the batch finished long after the last arrival
    wait = hold(policy, free, 16, oldest=last - MS, free_since=free)
    assert wait == pytest.approx(SILENCE * policy.gap_ns(), abs=1)  # type: ignore[operator]


def test_the_round_trip_after_a_batch_is_learned() -> None:
    # Each batch's answers take 300 us to come back as the next requests (rendering them,
    # the clients' turn-around): longer than SILENCE typical gaps inside a burst.
    policy, now = learned(50 * US)
    for _ in range(40):
        now += 5 * MS
        policy.served(16, int(FIXED + 16 * PER_ROW), done_ns=now)
        now += 300 * US
        for _ in range(16):
            policy.arrived(now)
            now += 50 * US
    back = policy.return_ns()
    assert back == pytest.approx(300 * US * math.exp(0.5772156649015329), rel=0.05)
    free = now + 5 * MS
    wait = hold(policy, free, 16, oldest=now, free_since=free)
    assert SILENCE * policy.gap_ns() < wait == pytest.approx(SILENCE * back, abs=1)  # type: ignore[operator]
    assert wait < FIXED


def test_a_rate_too_low_for_the_batch_size_sends_it() -> None:
    # A request every 0.5 ms: worth it for one row (0.9 ms < 2.5 ms), not for 8 rows held
    # 0.1 ms (8 × 0.9 ms > 2.6 ms): the next request would cost the batch more than it saves.
    policy, now = learned(500 * US)
    assert hold(policy, now, 1) > 0
    assert hold(policy, now, 8, oldest=now - 100 * US, free_since=now - 100 * US) == 0


def test_multi_row_requests_count_their_rows() -> None:
    policy, now = learned(500 * US)
    for _ in range(100):
        now += 500 * US
        policy.arrived(now, rows=8)
    # 8 rows per request: holding 8 rows for the next costs 0.9 ms per request, not per row.
    assert hold(policy, now, 8) > 0


def test_the_latency_objective_caps_the_wait() -> None:
    policy, now = learned(50 * US, latency_ms=3.0)
    oldest = now - 100 * US
    wait = hold(policy, now, 2, oldest=oldest, free_since=oldest)
    # Its deadline: oldest + 3 ms - the service time of the batch one request larger.
    expected = oldest + 3 * MS - (FIXED + PER_ROW * 3) - now
    assert wait == pytest.approx(expected, abs=2)
    assert 0 < wait < SILENCE * policy.gap_ns()  # type: ignore[operator]


def test_an_objective_that_cannot_be_met_sends_at_once() -> None:
    policy, now = learned(50 * US, latency_ms=2.0)  # below a batch's 2.5 ms overhead
    assert hold(policy, now, 1) == 0


def test_max_queue_delay_caps_the_wait() -> None:
    policy, now = learned(50 * US, delay_ns=100 * US)
    oldest = now - 60 * US
    assert hold(policy, now, 3, oldest=oldest, free_since=oldest) == pytest.approx(40 * US, abs=1)


# ---------------------------------------------------------------------------- batch cap


def curve(per_row_ms: dict[int, float], max_batch_size: int = 32) -> AdaptivePolicy:
    """A policy that has served each size of ``per_row_ms`` three times (the first of each
    is warm-up) at that many ms per row, and seen a busy arrival rate."""
    policy = AdaptivePolicy(AdaptiveSettings(), 0, max_batch_size)
    for _ in range(3):
        for rows, ms in per_row_ms.items():
            policy.served(rows, round(rows * ms * MS))
    now = 0
    for _ in range(20):
        now += 50 * US
        policy.arrived(now)
    return policy


def limits(
    policy: AdaptivePolicy, batches: int, per_row_ms: dict[int, float], rows: int = 0
) -> list[int]:
    """The limit of each of the next ``batches`` batches, each then served at that many rows
    (or ``rows``, where the load cannot fill more) at ``per_row_ms`` of its size."""
    seen = []
    for _ in range(batches):
        limit = policy.batch_limit()
        seen.append(limit)
        served = min(limit, rows) if rows else limit
        policy.served(served, round(served * per_row_ms[served] * MS))
    return seen


def test_the_ladder_is_powers_of_two_then_the_max() -> None:
    assert ladder(32) == (1, 2, 4, 8, 16, 32)
    assert ladder(24) == (1, 2, 4, 8, 16, 24)
    assert ladder(1) == (1,)
    assert ladder(0) == ()


def test_a_throughput_curve_that_bends_caps_the_batch() -> None:
    # 16 rows at 2.9 ms each, 32 at 3.2 ms each: the line through them would say "grow",
    # the measured rows/s says 16.
    policy = curve({1: 12.0, 8: 3.0, 16: 2.9, 32: 3.2})
    assert policy.view().batch_cap == 16
    assert policy.batch_limit() == 16


def test_without_a_slower_larger_size_the_cap_is_the_max() -> None:
    policy = curve({1: 12.0, 4: 4.0, 16: 3.0}, max_batch_size=32)
    assert policy.view().batch_cap == 32  # 16 is the largest measured: nothing says stop
    policy = curve({1: 12.0, 16: 3.0, 32: 2.9})
    assert policy.view().batch_cap == 32


def test_sizes_within_the_margin_go_to_the_larger_batch() -> None:
    policy = curve({16: 3.0, 32: 3.0 / (1 - MARGIN / 2)})
    assert policy.view().batch_cap == 32
    policy = curve({16: 3.0, 32: 3.0 / (1 - 2 * MARGIN)})
    assert policy.view().batch_cap == 16


def test_a_batch_sizes_first_run_is_warm_up() -> None:
    policy = AdaptivePolicy(AdaptiveSettings(), 0, 32)
    policy.served(16, 16 * 3 * MS)
    policy.served(16, 16 * 3 * MS)
    policy.served(32, 32 * 30 * MS)  # the first run at a new shape: allocation, not speed
    assert policy.view().batch_cap == 32
    policy.served(32, 32 * 3 * MS)
    assert policy.view().batch_cap == 32
    policy.served(32, 32 * 4 * MS)
    assert policy.view().batch_cap == 16


def test_probes_measure_the_next_size_down_then_rarely() -> None:
    policy = curve({1: 12.0, 32: 3.0})
    assert policy.view().batch_cap == 32
    # 16 is not measured: every other batch is limited to it, until it is (twice).
    seen = limits(policy, 4, {16: 3.5, 32: 3.0})
    assert sorted(seen) == [16, 16, 32, 32]
    assert policy._rates[16].measured
    # 16 measured slower: the cap stays 32 and 16 is tried once in PROBE_EVERY batches.
    seen = limits(policy, 4 * PROBE_EVERY, {16: 3.5, 32: 3.0})
    assert seen.count(16) == 4 and seen.count(32) == 4 * PROBE_EVERY - 4
    assert policy.view().batch_cap == 32


def test_a_probe_finds_the_better_size_below() -> None:
    policy = curve({1: 12.0, 32: 3.2})
    limits(policy, 4, {16: 2.9, 32: 3.2})
    assert policy.view().batch_cap == 16
    # Then 8 (unmeasured, below the new cap) is tried, found slower, and 16 stays.
    seen = limits(policy, 2 * PROBE_EVERY, {8: 3.3, 16: 2.9, 32: 3.2})
    assert policy.view().batch_cap == 16
    assert seen.count(16) > 2 * PROBE_EVERY - 5


def test_probes_follow_a_model_that_changes() -> None:
    policy = curve({8: 3.1, 16: 2.9, 32: 3.2})
    assert policy.view().batch_cap == 16
    # Probes of 8 and 32 alternate, one batch in PROBE_EVERY each way.
    seen = limits(policy, 2 * PROBE_EVERY, {8: 3.1, 16: 2.9, 32: 3.2})
    assert seen.count(8) == 1 and seen.count(32) == 1 and seen.count(16) == 2 * PROBE_EVERY - 2
    # Batches of 32 get faster per row (another load left the cache): the probes see it.
    limits(policy, 4 * PROBE_EVERY, {8: 3.1, 16: 2.9, 32: 2.0})
    assert policy.view().batch_cap == 32


def test_a_load_that_cannot_fill_the_probe_measures_nothing_new() -> None:
    policy = curve({8: 3.1, 16: 2.9, 32: 3.2})
    limits(policy, 4 * PROBE_EVERY, {8: 3.1, 16: 2.9}, rows=16)
    assert policy.view().batch_cap == 16
    assert policy._rates[32].samples == 3  # only the curve's three


def test_a_probe_up_holds_for_its_rows_even_with_no_overhead_to_save() -> None:
    # A line with no fixed cost says holding never pays; the probe of 32 holds anyway (the
    # line is what it checks), while arrivals come, for at most a tenth of a batch of 16.
    policy = curve({1: 3.0, 8: 3.0, 16: 2.9, 32: 3.2})
    assert policy.view().batch_cap == 16 and policy.view().batch_fixed_s == 0
    while policy.batch_limit() != 32:
        policy.served(16, round(16 * 2.9 * MS))
    now = policy._last_arrival
    wait = hold(policy, now, 16, oldest=now - 20 * US, free_since=now - 20 * US)
    assert wait == pytest.approx(SILENCE * policy.gap_ns(), abs=1)  # type: ignore[operator]
    # Arrivals still coming: it holds 4 ms, not 6 (a tenth of 16 rows at ~3.1 ms a row).
    policy.arrived(now + 4 * MS)
    assert hold(policy, now + 4 * MS, 16, oldest=now, free_since=now) > 0
    policy.arrived(now + 6 * MS)
    assert hold(policy, now + 6 * MS, 16, oldest=now, free_since=now) == 0
    policy.served(16, round(16 * 2.9 * MS))  # the probe did not fill: the cap holds again
    assert hold(policy, now, 16, target=16) == 0


def test_nothing_is_capped_or_probed_before_a_size_is_measured() -> None:
    policy, _ = learned(50 * US)  # sizes 1, 4, 16 served; max_batch_size unknown
    assert policy.batch_limit() == 0
    policy = AdaptivePolicy(AdaptiveSettings(), 0, 8)
    for rows in (1, 3, 1, 3):  # size 1 measured, but nothing below it to probe
        policy.served(rows, (10 + rows) * MS)
    assert [policy.batch_limit() for _ in range(3)] == [8, 8, 8]


def test_a_load_below_the_max_probes_under_the_largest_size_it_fills() -> None:
    # max_batch_size 256, 32 clients: batches of 32, never 256. The probes try 16 below it
    # and, 16 serving more rows/s, cap there; 64 and up are never tried.
    policy = curve({1: 12.0, 32: 3.2}, max_batch_size=256)
    assert policy.view().batch_cap == 256
    seen = limits(policy, 2 * PROBE_EVERY, {8: 3.0, 16: 2.9, 32: 3.2}, rows=32)
    assert 16 in seen and max(seen) == 256
    assert policy.view().batch_cap == 16
    # Without that bend the cap stays the max and a probe of 16 comes once in PROBE_EVERY.
    policy = curve({1: 12.0, 16: 3.2, 32: 2.9}, max_batch_size=256)
    seen = limits(policy, 2 * PROBE_EVERY, {16: 3.2, 32: 2.9}, rows=32)
    assert seen.count(16) == 2 and policy.view().batch_cap == 256


# ---------------------------------------------------------------------------- parameters


def test_parameters_select_the_policy() -> None:
    assert read_adaptive({}, 8, True, False) is None
    assert read_adaptive({"batching": "triton"}, 8, True, False) is None
    assert read_adaptive({"batching": " Adaptive"}, 8, True, False) == AdaptiveSettings()
    assert read_adaptive(
        {"batching": "adaptive", "max_latency_ms": "2.5"}, 8, True, False
    ) == AdaptiveSettings(max_latency_ns=2_500_000)


@pytest.mark.parametrize(
    ("params", "max_batch_size", "dynamic", "sequence", "message"),
    [
        (
            {"batching": "greedy"},
            8,
            True,
            False,
            "parameter batching must be one of 'adaptive', 'triton', got 'greedy'",
        ),
        (
            {"batching": "adaptive", "max_latency_ms": "-1"},
            8,
            True,
            False,
            "parameter max_latency_ms must be a positive finite number, got '-1'",
        ),
        (
            {"batching": "adaptive", "max_latency_ms": "0"},
            8,
            True,
            False,
            "must be a positive finite number, got '0'",
        ),
        (
            {"batching": "adaptive", "max_latency_ms": "nan"},
            8,
            True,
            False,
            "must be a positive finite number, got 'nan'",
        ),
        (
            {"batching": "adaptive", "max_latency_ms": "fast"},
            8,
            True,
            False,
            "parameter max_latency_ms must be a number of milliseconds, got 'fast'",
        ),
        (
            {"max_latency_ms": "5"},
            8,
            True,
            False,
            'parameter max_latency_ms needs parameter batching "adaptive"',
        ),
        (
            {"batching": "adaptive"},
            0,
            False,
            False,
            "needs max_batch_size > 0 and dynamic_batching (max_batch_size is 0, no dyn",
        ),
        (
            {"batching": "adaptive"},
            8,
            False,
            False,
            "(max_batch_size is 8, no dynamic_batching)",
        ),
        ({"batching": "adaptive"}, 8, False, True, "this model uses sequence_batching"),
    ],
)
def test_bad_parameters_name_the_problem(
    params: dict[str, str], max_batch_size: int, dynamic: bool, sequence: bool, message: str
) -> None:
    with pytest.raises(InvalidModelConfig) as info:
        read_adaptive(params, max_batch_size, dynamic, sequence)
    assert message in str(info.value)
