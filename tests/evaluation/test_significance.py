"""Paired tests: t-test p-values against closed forms and independently integrated values;
randomization test behaviour on clear-cut cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.evaluation import significance
from genrec.evaluation.significance import paired_randomization_test, paired_t_test


def integrated_p_value(t: float, df: int, points: int = 200_001) -> float:
    """1 - 2 * integral_0^|t| of the Student-t density (Simpson's rule): independent of the beta route."""
    x = np.linspace(0.0, abs(t), points)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    h = x[1] - x[0]
    return 1.0 - 2.0 * h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())


def t_statistic(d: np.ndarray) -> float:
    return d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))


def test_t_test_small_example():
    # d = [0.3, -0.02, 0.3, 0.05, 0.15]: mean 0.156, sd 0.14519, t = 2.41115 on 4 degrees of freedom.
    a = np.array([0.9, 0.7, 0.8, 0.65, 0.95])
    b = np.array([0.6, 0.72, 0.5, 0.6, 0.8])
    assert math.isclose(t_statistic(a - b), 2.4111542041672265, rel_tol=1e-12)
    p = paired_t_test(a, b)
    assert math.isclose(p, 0.07346291556785293, rel_tol=1e-9)  # scipy.stats.ttest_rel
    assert math.isclose(p, integrated_p_value(2.4111542041672265, 4), rel_tol=1e-9)


def test_t_test_many_users():
    a, b = np.cos(np.arange(1000)) + 0.06, np.zeros(1000)
    p = paired_t_test(a, b)
    assert math.isclose(p, 0.006557983587822483, rel_tol=1e-8)  # scipy.stats.ttest_rel
    assert math.isclose(p, integrated_p_value(t_statistic(a - b), 999), rel_tol=1e-8)


@pytest.mark.parametrize("a, b", [([1.0, 3.0], [0.0, 0.0]), ([0.2, 0.9], [0.5, 0.1]), ([5.0, -1.0], [0.0, 0.5])])
def test_t_test_closed_forms(a, b):
    """df = 1 is the Cauchy distribution; df = 2 has p = 1 - |t| / sqrt(2 + t^2)."""
    a, b = np.array(a), np.array(b)
    t = t_statistic(a - b)
    assert math.isclose(paired_t_test(a, b), 1 - 2 / math.pi * math.atan(abs(t)), rel_tol=1e-12)
    a3, b3 = np.append(a, a.mean()), np.append(b, b.mean())
    t3 = t_statistic(a3 - b3)
    assert math.isclose(paired_t_test(a3, b3), 1 - abs(t3) / math.sqrt(2 + t3 * t3), rel_tol=1e-12)


def test_t_test_zero_variance_and_symmetry():
    a = np.array([0.1, 0.5, 0.9])
    assert paired_t_test(a, a) == 1.0
    assert paired_t_test(a + 0.25, a) == 0.0
    b = np.array([0.3, 0.2, 0.4])
    assert paired_t_test(a, b) == paired_t_test(b, a)
    with pytest.raises(ValueError):
        paired_t_test([1.0], [0.0])
    with pytest.raises(ValueError):
        paired_t_test([1.0, 2.0], [0.0])


def test_randomization_identical_is_one():
    a = np.random.default_rng(0).random(200)
    assert paired_randomization_test(a, a) == 1.0


def test_randomization_detects_consistent_shift():
    rng = np.random.default_rng(1)
    a = rng.random(200)
    p = paired_randomization_test(a + 0.2 + 0.05 * rng.normal(size=200), a, n_resamples=2000)
    assert p == 1 / 2001  # no sign assignment comes close: the smallest p-value the convention allows
    assert p < 0.01


def test_randomization_no_shift_is_not_significant():
    rng = np.random.default_rng(2)
    a, b = rng.random(200), rng.random(200)
    assert paired_randomization_test(a, b, seed=0) > 0.05


def test_randomization_is_symmetric_and_agrees_with_t_test():
    rng = np.random.default_rng(3)
    a = (rng.random(500) < 0.35).astype(float)
    b = (rng.random(500) < 0.30).astype(float)
    p = paired_randomization_test(a, b, seed=5)
    assert p == paired_randomization_test(b, a, seed=5)
    assert abs(p - paired_t_test(a, b)) < 0.03  # large samples: both tests approximate the same p


def test_randomization_counts_ties_across_chunks(monkeypatch):
    """One resample per chunk. Two users, one zero difference: every sign assignment is as extreme
    as the observed one (a tie), so p = 1 exactly; a strong shift still gets the minimum p."""
    monkeypatch.setattr(significance, "_CHUNK_ELEMENTS", 1)
    assert paired_randomization_test([1.0, 0.0], [0.0, 0.0], n_resamples=37) == 1.0
    assert paired_randomization_test(np.full(30, 0.5) + np.arange(30) / 100, np.zeros(30), n_resamples=37) == 1 / 38
