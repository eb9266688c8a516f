"""The drift statistics against scipy's, and the MMD permutation test's calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from forwardpass.monitor.statistics import (
    CategoricalReference,
    MmdReference,
    NumericBatch,
    NumericReference,
    chi2_test,
    cvm_test,
    ks_test,
    mmd_test,
    psi,
    reject,
    wasserstein,
)


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("discrete", [False, True])
def test_ks_matches_scipy(shift: float, discrete: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    y = rng.normal(shift, 1.0, size=150)
    if discrete:  # ties across and within the samples
        x, y = np.round(x), np.round(y)
    ours = ks_test(NumericReference.of(x), y)
    theirs = stats.ks_2samp(x, y, method="asymp")
    assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_batched_numeric_tests_equal_the_one_feature_functions(shift: float) -> None:
    """All numeric features of a window at once: KS (statistic and p-value as scipy's),
    Wasserstein and PSI as the per-feature functions, with ties, few distinct deciles, a
    constant reference and an infinite value."""
    rng = np.random.default_rng(5)
    columns = [rng.normal(size=400) for _ in range(4)]
    columns += [np.round(rng.normal(size=400)), rng.integers(0, 3, size=400) * 1.0, np.ones(400)]
    refs = [NumericReference.of(c) for c in columns]
    windows = np.stack(
        [rng.normal(shift, 1.0, size=150) for _ in range(4)]
        + [np.round(rng.normal(shift, 1.0, size=150)), rng.integers(0, 4, size=150) * 1.0]
        + [np.r_[np.ones(149), np.inf]]
    )
    d, p, w, psi_values = NumericBatch.of(refs).test(windows)
    for i, (ref, values) in enumerate(zip(refs, windows, strict=True)):
        theirs = stats.ks_2samp(ref.values, values, method="asymp")
        assert d[i] == pytest.approx(theirs.statistic, abs=1e-12)
        assert p[i] == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-15)
        one = ks_test(ref, values)
        assert d[i] == pytest.approx(one.statistic, abs=1e-15)
        assert p[i] == pytest.approx(one.p_value, rel=1e-12, abs=1e-15)
        assert w[i] == pytest.approx(wasserstein(ref, values), rel=1e-12)
        assert psi_values[i] == pytest.approx(psi(ref, values), rel=1e-12, abs=1e-15)


def test_batched_numeric_tests_need_references_of_one_size() -> None:
    with pytest.raises(ValueError, match="one size"):
        NumericBatch.of([NumericReference.of(np.zeros(3)), NumericReference.of(np.zeros(4))])


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_cvm_matches_scipy(shift: float) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    y = rng.normal(shift, 1.0, size=120)
    ours = cvm_test(NumericReference.of(x), y)
    theirs = stats.cramervonmises_2samp(x, y, method="asymptotic")
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-6, abs=1e-12)


def test_chi2_matches_chi2_contingency() -> None:
    rng = np.random.default_rng(3)
    x = rng.choice(4, size=500, p=[0.4, 0.3, 0.2, 0.1])
    y = rng.choice(4, size=200, p=[0.25, 0.25, 0.25, 0.25])
    ours = chi2_test(CategoricalReference.of(x), y)
    table = np.array([np.bincount(x, minlength=4), np.bincount(y, minlength=4)])
    stat, p, _dof, _ = stats.chi2_contingency(table, correction=False)
    assert ours.statistic == pytest.approx(stat, rel=1e-12)
    assert ours.p_value == pytest.approx(p, rel=1e-9)


def test_chi2_pools_rare_and_counts_unseen_categories() -> None:
    x = np.array([0] * 300 + [1] * 300 + [2] * 2 + [3] * 1)
    same = chi2_test(CategoricalReference.of(x), np.array([0] * 50 + [1] * 50))
    assert same.p_value > 0.5
    unseen = chi2_test(CategoricalReference.of(x), np.array([0] * 40 + [1] * 40 + [9] * 20))
    assert unseen.p_value < 1e-6


def test_wasserstein_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=333), rng.exponential(size=77)
    assert wasserstein(NumericReference.of(x), y) == pytest.approx(
        stats.wasserstein_distance(x, y), rel=1e-10
    )


def test_psi_is_zero_for_the_reference_and_grows_with_shift() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=5000)
    ref = NumericReference.of(x)
    assert psi(ref, x) == pytest.approx(0.0, abs=1e-9)
    small, large = psi(ref, x + 0.25), psi(ref, x + 1.0)
    assert 0.0 < small < large
    cat = CategoricalReference.of(np.array(["a"] * 50 + ["b"] * 50))
    assert psi(cat, np.array(["a"] * 50 + ["b"] * 50)) == pytest.approx(0.0, abs=1e-12)
    assert psi(cat, np.array(["a"] * 90 + ["b"] * 10)) > 0.3


def test_mmd_permutation_test_is_calibrated_on_same_distribution() -> None:
    """Under the null the permutation p-value is (super-)uniform: rejections at 0.1 stay
    near 10 % of 100 independent trials, and a real shift is always found."""
    rng = np.random.default_rng(6)
    ref = MmdReference.of(rng.normal(size=(200, 8)))
    p_null = np.array(
        [mmd_test(ref, rng.normal(size=(50, 8)), 200, seed=i).p_value for i in range(100)]
    )
    rate = float(np.mean(p_null <= 0.1))
    assert rate <= 0.2  # binomial(100, 0.1): P(> 20) < 0.001
    assert float(np.mean(p_null)) == pytest.approx(0.5, abs=0.1)
    shifted = mmd_test(ref, rng.normal(0.5, 1.0, size=(50, 8)), 200)
    assert shifted.p_value <= 1 / 201 + 1e-12
    assert shifted.statistic > 0


def test_mmd_rejects_wrong_width() -> None:
    ref = MmdReference.of(np.zeros((10, 3)) + np.arange(10)[:, None])
    with pytest.raises(ValueError, match="width 4"):
        mmd_test(ref, np.zeros((5, 4)))


def test_corrections() -> None:
    p = np.array([0.001, 0.01, 0.02, 0.5])
    assert reject(p, 0.05, "bonferroni").tolist() == [True, True, False, False]  # <= 0.0125
    # BH: p(i) <= 0.05 * i / 4 -> 0.0125, 0.025, 0.0375: the first three.
    assert reject(p, 0.05, "fdr").tolist() == [True, True, True, False]
    assert reject(np.array([0.9, 0.04]), 0.05, "fdr").tolist() == [False, False]
    with pytest.raises(ValueError):
        reject(p, 0.05, "holm")
