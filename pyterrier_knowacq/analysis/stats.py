"""Statistics for probe results: Wilson intervals, paired tests (McNemar exact, paired bootstrap), Holm correction.

Example::

    from pyterrier_knowacq.analysis.stats import wilson_interval, mcnemar_exact, holm
    lo, hi = wilson_interval(83, 100)
    p = mcnemar_exact(correct_a, correct_b)          # two boolean arrays over the same test examples
    reject, p_adj = holm([0.01, 0.04, 0.3])
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from .._util import KnowacqError

__all__ = ['wilson_interval', 'mcnemar_exact', 'paired_bootstrap', 'holm', 'paired_test', 'TESTS']


def wilson_interval(successes: int, total: int, alpha: float = 0.05) -> Tuple[float, float]:
    """Wilson score interval of a proportion (``nan`` bounds when ``total`` is 0)."""
    if total <= 0:
        return float('nan'), float('nan')
    from statsmodels.stats.proportion import proportion_confint
    lo, hi = proportion_confint(int(successes), int(total), alpha=alpha, method='wilson')
    return float(lo), float(hi)


def _paired(a, b):
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise KnowacqError(f'paired test needs two 1-d outcome arrays over the same examples, got shapes {a.shape} and {b.shape}')
    return a, b


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar test (binomial on the discordant pairs) for two classifiers on the same examples."""
    a, b = _paired(a, b)
    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    if n01 + n10 == 0:
        return 1.0
    from scipy.stats import binomtest
    return float(binomtest(n01, n01 + n10, 0.5).pvalue)


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], *, samples: int = 10000, seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value of the accuracy difference (resampling examples)."""
    a, b = _paired(a, b)
    if len(a) == 0:
        return 1.0
    d = a.astype(np.float64) - b.astype(np.float64)
    observed = d.mean()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(samples, len(d)))
    means = d[idx].mean(1) - observed  # centred under the null
    return float(min(1.0, (np.sum(np.abs(means) >= abs(observed) - 1e-12) + 1) / (samples + 1)))


TESTS = {'mcnemar': mcnemar_exact, 'bootstrap': paired_bootstrap}


def paired_test(name: str):
    """Look up a paired test by name (``mcnemar`` or ``bootstrap``)."""
    try:
        return TESTS[name]
    except KeyError:
        raise KnowacqError(f'unknown paired test {name!r}; choose one of {sorted(TESTS)}') from None


def holm(p_values: Sequence[float], alpha: float = 0.05):
    """Holm-Bonferroni step-down correction: ``(reject: bool array, adjusted p: float array)``; nan p-values stay nan.

    Same numbers as ``statsmodels.stats.multitest.multipletests(method='holm')`` (checked in the tests), in numpy
    because this runs once per probe curve.
    """
    p = np.asarray(p_values, dtype=np.float64)
    reject = np.zeros(p.shape, dtype=bool)
    adjusted = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind='stable')]
        stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
        adjusted[order] = np.minimum(stepped, 1.0)
        reject[ok] = adjusted[ok] <= alpha
    return reject, adjusted
