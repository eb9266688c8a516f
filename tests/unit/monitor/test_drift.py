"""Drift windows, calibration of the alarm, persistence across a restart, disabling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forwardpass.errors import InvalidModelConfig
from forwardpass.monitor.drift import DriftDetector, DriftMonitor, DriftRecord
from forwardpass.monitor.profile import Profile
from forwardpass.monitor.reference import Reference
from forwardpass.monitor.settings import DriftSettings

NAMES = ("f0", "f1", "f2", "f3", "f4")


def _reference(n: int = 1000, seed: int = 0, fingerprint: str = "ref-1") -> Reference:
    rng = np.random.default_rng(seed)
    features = {name: rng.normal(size=n) for name in NAMES}
    features["cls"] = rng.choice(3, size=n, p=[0.5, 0.3, 0.2]).astype(np.int64)
    kinds = {name: "numeric" for name in NAMES} | {"cls": "categorical"}
    return Reference(features, kinds, None, {"rows": n, "sha256": fingerprint})


def _profile(n: int, rng: np.random.Generator, shift: float = 0.0) -> Profile:
    features = {name: rng.normal(size=n) for name in NAMES}
    features["f2"] = features["f2"] + shift
    features["cls"] = rng.choice(3, size=n, p=[0.5, 0.3, 0.2]).astype(np.int64)
    return Profile(features)


COLUMNS = (*NAMES, "cls")


def test_windows_evaluate_at_every_step_once_full() -> None:
    settings = DriftSettings(window=20, step=5)
    detector = DriftDetector(_reference(), settings, COLUMNS)
    rng = np.random.default_rng(1)
    assert detector.add(_profile(19, rng)) == []
    assert [r.end for r in detector.add(_profile(1, rng))] == [20]
    assert [r.end for r in detector.add(_profile(12, rng))] == [25, 30]
    # One large batch is cut at each boundary: 32 + 100 rows → ends 35, 40, ..., 130.
    assert [r.end for r in detector.add(_profile(100, rng))] == list(range(35, 131, 5))
    assert detector.filled == 20 and detector.seen == 132
    assert len(detector.history) == 1 + 2 + 20


def test_window_holds_the_last_rows_in_order() -> None:
    settings = DriftSettings(window=10, step=10)
    detector = DriftDetector(_reference(), settings, COLUMNS)
    values = np.arange(27, dtype=np.float64)
    profile = Profile({n: values for n in NAMES} | {"cls": np.zeros(27, dtype=np.int64)})
    detector.add(profile)
    assert detector.state_arrays()["window/f0"].tolist() == list(range(17, 27))


def test_clean_windows_alarm_at_most_at_the_configured_rate() -> None:
    """300 independent windows of undrifted data with 6 tests each: the corrected family
    keeps the alarm rate near false_alarm_rate (0.05), where p < 0.05 per test would alarm
    in about 1 - 0.95**6 = 26 % of them."""
    rng = np.random.default_rng(2)
    reference = _reference()
    for correction in ("bonferroni", "fdr"):
        settings = DriftSettings(window=100, step=100, false_alarm_rate=0.05, correction=correction)
        detector = DriftDetector(reference, settings, COLUMNS)
        results = detector.add(_profile(300 * 100, rng))
        assert len(results) == 300
        alarms = sum(r.alarm for r in results)
        assert alarms <= 27, (correction, alarms)  # binomial(300, 0.05): P(> 27) < 0.1 %
        naive = sum(any(f.p_value < 0.05 for f in r.features) for r in results)
        assert naive > 50


def test_shift_alarms_and_names_the_feature() -> None:
    rng = np.random.default_rng(3)
    settings = DriftSettings(window=200, step=50)
    detector = DriftDetector(_reference(), settings, COLUMNS)
    assert not any(r.alarm for r in detector.add(_profile(200, rng)))
    results = detector.add(_profile(300, rng, shift=1.0))
    alarmed = [r for r in results if r.alarm]
    assert alarmed and alarmed[0].end - 200 <= 150
    drifted = {f.feature for f in alarmed[-1].features if f.drift}
    assert drifted == {"f2"}
    by = {f.feature: f for f in alarmed[-1].features}
    assert by["f2"].wasserstein_sd == pytest.approx(1.0, abs=0.25)
    assert by["f2"].psi is not None and by["f2"].psi > 0.3
    assert by["cls"].test == "chi2" and by["f0"].test == "ks"


def test_cvm_numeric_test() -> None:
    rng = np.random.default_rng(4)
    settings = DriftSettings(window=100, step=100, numeric_test="cvm")
    detector = DriftDetector(_reference(), settings, COLUMNS)
    (result,) = detector.add(_profile(100, rng, shift=1.5))
    assert result.alarm and {f.test for f in result.features} == {"cvm", "chi2"}


class _Profiler:
    """Stands in for the model profiler: the record's inputs are the feature columns."""

    def __init__(self, fail_on: int = -1) -> None:
        self.columns = [type("C", (), {"name": n})() for n in COLUMNS]
        self.calls = 0
        self.fail_on = fail_on

    def profile(self, inputs: Any, outputs: Any, extra: Any) -> Profile:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("profiling broke")
        return Profile({k: np.asarray(v) for k, v in inputs.items()})


def _records(
    n: int, rng: np.random.Generator, per: int = 10, shift: float = 0.0
) -> list[DriftRecord]:
    out = []
    for _ in range(n // per):
        p = _profile(per, rng, shift)
        out.append(DriftRecord("m", 1, p.features, {}))
    return out


def test_state_survives_a_restart(tmp_path: Path) -> None:
    settings = DriftSettings(window=40, step=20)
    reference = _reference()
    rng = np.random.default_rng(5)
    first = _records(100, rng)
    second = _records(60, rng)

    steady = DriftMonitor("m", 1, settings, reference, _Profiler(), None)
    steady.observe(first + second)

    before = DriftMonitor("m", 1, settings, reference, _Profiler(), tmp_path)
    before.observe(first)
    assert (tmp_path / "drift-v1.npz").is_file() and (tmp_path / "drift-v1.json").is_file()
    after = DriftMonitor("m", 1, settings, reference, _Profiler(), tmp_path)
    assert after.detector.seen == 100 and after.observed == before.observed
    assert after.report()["history"] == before.report()["history"]
    assert after.report()["features"] == before.report()["features"]
    after.observe(second)
    assert after.detector.seen == steady.detector.seen == 160
    got = after.report()["features"]
    want = steady.report()["features"]
    assert [f["p_value"] for f in got] == pytest.approx([f["p_value"] for f in want])
    assert len(after.report()["history"]) == len(steady.report()["history"])


def test_state_of_another_reference_is_not_restored(tmp_path: Path) -> None:
    settings = DriftSettings(window=40, step=20)
    rng = np.random.default_rng(6)
    DriftMonitor("m", 1, settings, _reference(), _Profiler(), tmp_path).observe(_records(60, rng))
    rebuilt = _reference(fingerprint="ref-2")
    fresh = DriftMonitor("m", 1, settings, rebuilt, _Profiler(), tmp_path)
    assert fresh.detector.seen == 0 and fresh.report()["history"] == []


def test_damaged_state_is_reported_not_raised(tmp_path: Path) -> None:
    settings = DriftSettings(window=40, step=20)
    rng = np.random.default_rng(7)
    DriftMonitor("m", 1, settings, _reference(), _Profiler(), tmp_path).observe(_records(60, rng))
    (tmp_path / "drift-v1.npz").write_bytes(b"not an npz")
    monitor = DriftMonitor("m", 1, settings, _reference(), _Profiler(), tmp_path)
    assert monitor.detector.seen == 0
    assert monitor.state_error and "not restored" in monitor.state_error


def test_a_monitor_that_raises_propagates_to_the_hub() -> None:
    # The hub disables the drift sink for the model (tests/unit/monitor/test_drift_engine.py);
    # the monitor itself only raises.
    settings = DriftSettings(window=20, step=10)
    profiler = _Profiler(fail_on=3)
    monitor = DriftMonitor("m", 1, settings, _reference(), profiler, None)
    rng = np.random.default_rng(8)
    with pytest.raises(RuntimeError, match="profiling broke"):
        monitor.observe(_records(100, rng))


def test_observe_returns_the_alarm_transitions() -> None:
    settings = DriftSettings(window=20, step=10)
    monitor = DriftMonitor("m", 1, settings, _reference(), _Profiler(), None)
    rng = np.random.default_rng(4)
    assert monitor.observe(_records(60, rng)) == []  # no drift: the alarm never turned on
    shifted = _records(60, rng, shift=3.0)
    changes = monitor.observe(shifted)
    assert [c.alarm for c in changes] == [True]
    assert [c.alarm for c in monitor.observe(_records(60, rng))] == [False]  # and off again


def test_report_shape() -> None:
    settings = DriftSettings(window=20, step=20)
    monitor = DriftMonitor("m", 3, settings, _reference(), _Profiler(), None)
    monitor.observe(_records(40, np.random.default_rng(9)))
    report = monitor.report()
    assert report["version"] == "3" and report["reference"]["rows"] == 1000
    assert report["window"] == {
        "size": 20,
        "step": 20,
        "filled": 20,
        "rows_seen": 40,
        "evaluated_at": 40,
        "start": 20,
    }
    feature = report["features"][0]
    assert set(feature) == {
        "feature",
        "kind",
        "test",
        "statistic",
        "p_value",
        "drift",
        "psi",
        "wasserstein",
        "wasserstein_sd",
    }
    assert report["tests"] == 6 and report["per_test_level"] == pytest.approx(0.01 / 6)
    assert [h["end"] for h in report["history"]] == [20, 40]
    scores = {(f, t) for f, t, _ in monitor.scores()}
    assert {("f0", "ks"), ("f0", "psi"), ("f0", "wasserstein"), ("cls", "chi2")} <= scores


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"window": 5}, "window: must be at least 10"),
        ({"step": 300}, "step: must be between 1"),
        ({"step": -1}, "step: must be between 1"),
        ({"false_alarm_rate": 1.5}, "false_alarm_rate: must be in (0, 1)"),
        ({"correction": "holm"}, "correction: must be bonferroni or fdr"),
        ({"numeric_test": "t"}, "numeric_test: must be ks or cvm"),
        ({"windw": 10}, "unknown key(s) ['windw']"),
        ({"features": "a"}, "features must be a list of names"),
        ({"window": "big"}, "window must be an integer"),
    ],
)
def test_bad_settings(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidModelConfig) as info:
        DriftSettings.from_mapping(data)
    assert message in info.value.message
