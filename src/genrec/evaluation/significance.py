"""Paired significance tests for per-user metrics of two recommenders evaluated on the same users.

Leave-one-out metrics are one number per user, and two runs see the same users, so differences are
tested per user (paired): that removes the large between-user variance and detects much smaller
effects than comparing two means. The randomization test makes no distributional assumption, which
matters for 0/1 metrics such as Recall@K; the t-test is the quick parametric cross-check. Both are
numpy + math only, so reports need no scipy.
"""

from __future__ import annotations

import math

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # sign-flip bits per chunk: ~4 MB as uint8, whatever the number of users


def _differences(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    if not len(a):
        raise ValueError("need at least one pair")
    return a - b


def paired_randomization_test(a, b, n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of mean(a - b) under the paired sign-flip (randomization) test.

    Under the null hypothesis the two runs are exchangeable for every user, so each difference is
    as likely to have either sign. The p-value is the share of random sign assignments whose
    |sum| reaches the observed one, with the (count + 1) / (n_resamples + 1) convention so it is
    never 0 and stays valid for a finite number of resamples.
    """
    d = _differences(a, b)
    if not d.any():
        return 1.0
    n = len(d)
    total = d.sum()
    # Flipping the users in mask M turns sum(d) into total - 2 * sum(d[M]); ties (common for 0/1
    # metrics) must count as "as extreme", so allow for summation-order rounding.
    threshold = abs(total) - 1e-9 * np.abs(d).sum()
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    extreme = 0
    for start in range(0, n_resamples, rows):
        count = min(rows, n_resamples - start)
        bits = np.unpackbits(rng.integers(0, 256, (count, (n + 7) // 8), dtype=np.uint8), axis=1, count=n)
        flipped = total - 2.0 * (bits @ d)
        extreme += int((np.abs(flipped) >= threshold).sum())
    return (extreme + 1) / (n_resamples + 1)


def paired_t_test(a, b) -> float:
    """Two-sided p-value of the paired t-test of mean(a - b) = 0 (Student t, n - 1 degrees of freedom).

    A zero-variance difference has no t statistic: identical runs give 1.0, a constant nonzero
    difference (up to floating-point rounding) is as significant as it gets (0.0).
    """
    d = _differences(a, b)
    n = len(d)
    if n < 2:
        raise ValueError("the paired t-test needs at least two pairs")
    scale = np.abs(d).max()
    if scale == 0:
        return 1.0
    if np.ptp(d) <= 1e-12 * scale:  # constant up to rounding: (x + c) - x is not exactly c for every x
        return 0.0
    t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    df = n - 1
    # P(|T| >= |t|) for Student t with df degrees of freedom is I_x(df/2, 1/2) at x = df / (df + t^2).
    return _regularized_beta(df / 2, 0.5, df / (df + t * t))


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (Numerical Recipes `betai`)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only for x < (a + 1) / (a + b + 2); use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) on the other side.
    if x < (a + 1) / (a + b + 2):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float, eps: float = 1e-15,
                             max_iterations: int = 100_000) -> float:
    """Continued fraction of the incomplete beta function by the modified Lentz method (NR `betacf`).

    It needs O(sqrt(max(a, b))) iterations, hence the generous cap for 100k-user tests.
    """
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iterations + 1):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")
