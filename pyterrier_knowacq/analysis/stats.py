"""Statistics for probe results and study claims: Wilson intervals, paired tests (McNemar exact, paired bootstrap,
paired t), equivalence (TOST), intervals, power (minimum detectable effect), Holm correction and the one verdict
vocabulary every report uses.

Example::

    from pyterrier_knowacq.analysis.stats import wilson_interval, mcnemar_exact, holm, paired_summary, verdict
    lo, hi = wilson_interval(83, 100)
    p = mcnemar_exact(correct_a, correct_b)          # two boolean arrays over the same test examples
    reject, p_adj = holm([0.01, 0.04, 0.3])
    s = paired_summary(ndcg_a, ndcg_b, margin=0.02)  # per-query values of two systems on the same queries
    verdict('equivalence', s['diff'], s['p_diff'], s['p_tost'], s['margin'])   # e.g. 'equivalent within ±0.02'

Claims (``knowacq report``) are judged in one way for every study:

- the *difference* test is a two-sided paired test (paired t over queries; the probe tables' McNemar over test
  examples), Holm-corrected over the claims of a study (or over the parts of one claim);
- the *equivalence* test is TOST (two one-sided paired t-tests, ``statsmodels.stats.weightstats.ttost_paired``)
  against a margin ±m declared per claim (:data:`DEFAULT_MARGINS`; YAML ``claims: {equivalence_margin: ...}``);
- the interval is the 95% paired t interval of the mean difference (or a paired bootstrap with a fixed seed), not
  adjusted for multiplicity; TOST at 5% rejects exactly when the 90% interval lies inside ±m;
- the minimum detectable effect (MDE) is the difference a two-sided paired t-test at alpha 0.05 detects with 80%
  power for the claim's n and observed sd of the paired differences.

Verdicts (:func:`verdict`, :func:`combine`): an "≈" claim is ``equivalent within ±m`` when TOST rejects,
``different`` when only the difference test rejects, else ``inconclusive``; a directional claim ("a > b") is
``supported (higher)`` / ``supported (lower)`` when the difference test rejects in the claimed direction,
``different, opposite direction`` when it rejects the other way, ``equivalent within ±m`` when TOST rejects (the
claimed difference is not there), else ``inconclusive``. A claim that could not be computed is ``not measured``.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .._util import KnowacqError

__all__ = ['wilson_interval', 'mcnemar_exact', 'paired_bootstrap', 'holm', 'paired_test', 'TESTS',
           'ALPHA', 'POWER', 'DEFAULT_MARGINS', 'KINDS', 'EQUIVALENT', 'DIFFERENT', 'OPPOSITE', 'SUPPORTED',
           'INCONCLUSIVE', 'NOT_MEASURED', 'ClaimSettings', 'claim_settings', 'paired_summary', 'summary_from_counts',
           'discordant_from_mcnemar', 'mde', 'verdict', 'combine', 'underpowered', 'claim_fields', 'missing_fields',
           'fmt_interval', 'method_note']


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
    """Holm-Bonferroni step-down correction: ``(reject: bool array, adjusted p: float array)``; nan p-values stay nan
    and are not counted. The one Holm of the package (``statsmodels.stats.multitest.multipletests(method='holm')``).
    """
    from statsmodels.stats.multitest import multipletests
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    reject = np.zeros(p.shape, dtype=bool)
    adjusted = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok):
        r, adj, _, _ = multipletests(np.clip(p[ok], 0.0, 1.0), alpha=alpha, method='holm')
        reject[ok], adjusted[ok] = r, adj
    return reject, adjusted


# ---------------------------------------------------------------------------------------------------------------
# Claims: one vocabulary, one set of tests, intervals and power for every study report.

ALPHA = 0.05
POWER = 0.8
#: equivalence margins per measure (``probe_accuracy``: the probe tables' accuracy); other measures: DEFAULT_MARGIN
DEFAULT_MARGINS = {'nDCG@10': 0.02, 'probe_accuracy': 0.05}
DEFAULT_MARGIN = 0.02
KINDS = ('equivalence', 'greater', 'less')   # "a ≈ b", "a > b", "a < b"

EQUIVALENT = 'equivalent within ±{margin:g}'
DIFFERENT = 'different'
OPPOSITE = 'different, opposite direction'
SUPPORTED = 'supported ({direction})'        # higher | lower
INCONCLUSIVE = 'inconclusive'
NOT_MEASURED = 'not measured'
INTERVALS = {'t': '95% paired t interval', 'bootstrap': '95% paired bootstrap interval (percentile, 10000 resamples, seed 0)'}
CLAIMS_KEYS = {
    'equivalence_margin': 'margin of the "≈" claims: one number, or measure -> number (nDCG@10, probe_accuracy, ...)',
    'per_claim': 'claim id (e.g. cd_eq_c) or exact claim text -> margin, overriding equivalence_margin',
    'interval': 't (paired t interval, default) | bootstrap (paired bootstrap, fixed seed)',
}


class ClaimSettings:
    """The experiment YAML's ``claims:`` section (margins and interval), with the documented defaults."""

    def __init__(self, margins: Mapping[str, float], per_claim: Mapping[str, float], interval: str = 't',
                 declared: bool = False):
        self.margins, self.per_claim, self.interval, self.declared = dict(margins), dict(per_claim), interval, declared

    def margin(self, measure: str, claim_id: str = '', claim: str = '') -> float:
        for key in (claim, claim_id):
            if key and key in self.per_claim:
                return float(self.per_claim[key])
        return float(self.margins.get(measure, self.margins.get('*', DEFAULT_MARGIN)))

    def describe(self) -> str:
        parts = ', '.join(f'{k} ±{v:g}' for k, v in self.margins.items() if k != '*')
        if '*' in self.margins:
            parts += f'{", " if parts else ""}other measures ±{self.margins["*"]:g}'
        extra = ''.join(f'; {k}: ±{float(v):g}' for k, v in self.per_claim.items())
        origin = 'from the experiment YAML `claims:`' if self.declared else \
            'defaults; set `claims: {equivalence_margin: ...}` in the experiment YAML'
        return f'equivalence margins {parts}{extra} ({origin})'


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise KnowacqError(f'claims: {where} must be a positive number such as 0.02, got {value!r}')
    return float(value)


def claim_settings(meta_or_config: Optional[Mapping]) -> ClaimSettings:
    """Read ``claims:`` from an experiment config (or a ``meta.json`` holding it under ``config``); checks its keys."""
    config = dict(meta_or_config or {})
    if 'config' in config and isinstance(config['config'], Mapping):
        config = dict(config['config'])
    section = config.get('claims')
    margins, per_claim, interval = dict(DEFAULT_MARGINS), {}, 't'
    if section is None:
        return ClaimSettings(margins, per_claim, interval)
    if not isinstance(section, Mapping):
        raise KnowacqError(f'claims must be a mapping such as {{equivalence_margin: {{nDCG@10: 0.02}}}}, got {section!r:.60}')
    unknown = sorted(set(section) - set(CLAIMS_KEYS))
    if unknown:
        raise KnowacqError(f'claims: unknown keys {unknown}; known: ' + '; '.join(f'{k} ({v})' for k, v in CLAIMS_KEYS.items()))
    em = section.get('equivalence_margin')
    if isinstance(em, Mapping):
        margins.update({str(k): _number(v, f'equivalence_margin.{k}') for k, v in em.items()})
    elif em is not None:
        margins = {k: _number(em, 'equivalence_margin') for k in list(margins) + ['*']}
    pc = section.get('per_claim') or {}
    if not isinstance(pc, Mapping):
        raise KnowacqError(f'claims: per_claim must map a claim id or claim text to a margin, got {pc!r:.60}')
    per_claim = {str(k): _number(v, f'per_claim.{k}') for k, v in pc.items()}
    interval = str(section.get('interval', 't'))
    if interval not in INTERVALS:
        raise KnowacqError(f'claims: interval must be one of {sorted(INTERVALS)}, got {interval!r}')
    return ClaimSettings(margins, per_claim, interval, declared=True)


def mde(n: int, sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided paired t-test: ``TTestPower().solve_power(nobs=n) * sd``."""
    if n is None or n < 2 or sd is None or not np.isfinite(sd):
        return float('nan')
    if sd == 0:
        return 0.0
    from statsmodels.stats.power import TTestPower
    d = TTestPower().solve_power(effect_size=None, nobs=int(n), alpha=alpha, power=power, alternative='two-sided')
    return abs(float(np.asarray(d).reshape(-1)[0])) * float(sd)   # the root finder may return the negative root


def _units(values) -> Tuple[np.ndarray, int]:
    """1-d values per unit, or ``[seeds, units]`` per seed (averaged over seeds per unit): ``(values, seeds)``."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        return v, 1
    if v.ndim == 2:
        return v.mean(0), v.shape[0]
    raise KnowacqError(f'paired values must be [units] or [seeds, units], got shape {v.shape}')


def paired_summary(a, b=None, *, margin: float, alpha: float = ALPHA, power: float = POWER, interval: str = 't',
                   seed: int = 0, samples: int = 10000) -> Dict:
    """Mean paired difference ``a - b`` with its interval, difference test, TOST and MDE.

    ``a`` and ``b`` hold the values of two systems on the same units (queries, test examples), either ``[units]``
    or ``[seeds, units]`` (per-seed values: each unit's values are averaged over seeds first, so the unit of the
    tests stays the query; ``seeds`` is reported). ``b=None``: ``a`` already holds the differences.
    Returns ``n, seeds, diff, sd, ci_low, ci_high, p_diff`` (two-sided paired t), ``p_tost`` (TOST against
    ±margin), ``margin, mde, interval``. Constant differences (sd 0) use the exact sign test instead of t.
    """
    x, seeds = _units(a)
    if b is not None:
        y, seeds_b = _units(b)
        if y.shape != x.shape:
            raise KnowacqError(f'paired values need the same units, got {x.shape} and {y.shape}')
        seeds = max(seeds, seeds_b)
        d = x - y
    else:
        d = x
    d = d[np.isfinite(d)]
    n = len(d)
    out = {'n': n, 'seeds': seeds, 'margin': float(margin), 'interval': INTERVALS.get(interval, interval)}
    if n < 2:
        return {**out, 'diff': float(d.mean()) if n else float('nan'), 'sd': float('nan'), 'ci_low': float('nan'),
                'ci_high': float('nan'), 'p_diff': float('nan'), 'p_tost': float('nan'), 'mde': float('nan')}
    diff, sd = float(d.mean()), float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(diff)):
        # constant differences: no variance to run a t-test on; the exact sign test takes over (n equal signs:
        # two-sided p = 2 * 0.5^n; each one-sided test of TOST: 0.5^n), so two units prove nothing, 20 do
        sd = 0.0
        p_diff = 1.0 if diff == 0 else min(1.0, 2 * 0.5 ** n)
        p_tost = 0.5 ** n if abs(diff) < margin else 1.0
        lo = hi = diff
    else:
        from scipy import stats as st
        from statsmodels.stats.weightstats import ttost_paired
        p_diff = float(st.ttest_1samp(d, 0.0).pvalue)
        p_tost = float(ttost_paired(d, np.zeros_like(d), -margin, margin)[0])
        if interval == 'bootstrap':
            rng = np.random.default_rng(seed)
            means = d[rng.integers(0, n, size=(samples, n))].mean(1)
            lo, hi = (float(q) for q in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
        elif interval == 't':
            half = float(st.t.ppf(1 - alpha / 2, n - 1)) * sd / np.sqrt(n)
            lo, hi = diff - half, diff + half
        else:
            raise KnowacqError(f'unknown interval {interval!r}; choose one of {sorted(INTERVALS)}')
    return {**out, 'diff': diff, 'sd': sd, 'ci_low': float(lo), 'ci_high': float(hi), 'p_diff': p_diff,
            'p_tost': p_tost, 'mde': mde(n, sd, alpha, power)}


def summary_from_counts(n: int, gains: int, losses: int, **kw) -> Dict:
    """:func:`paired_summary` of a paired 0/1 outcome (e.g. probe correctness) from its counts: ``gains`` units
    where a is right and b wrong, ``losses`` the reverse, the other ``n - gains - losses`` equal."""
    d = np.zeros(int(n))
    d[:int(gains)] = 1.0
    d[int(gains):int(gains) + int(losses)] = -1.0
    return paired_summary(d, **kw)


def discordant_from_mcnemar(n: int, correct_a: int, correct_b: int, p_value: float) -> Tuple[int, int, bool]:
    """The discordant counts ``(gains, losses, exact)`` of two paired 0/1 outcomes over ``n`` units, from their
    correct counts and the two-sided exact McNemar p-value (tables that keep only accuracy and p).

    ``gains - losses = correct_a - correct_b`` and the p-value grows with ``gains + losses``, so the p-value names
    the discordant total; where several totals give the same p (p = 1 when the counts differ by at most one) or
    none does, the largest total the margins allow is taken (the widest interval): ``exact`` is then False.
    """
    n, ca, cb = int(n), int(correct_a), int(correct_b)
    k = ca - cb
    d_max = min(2 * min(ca, n - cb) - k, 2 * min(cb, n - ca) + k)
    from scipy.stats import binomtest
    matches = []
    if p_value is not None and np.isfinite(p_value):
        for total in range(abs(k), d_max + 1, 2):
            p = 1.0 if total == 0 else binomtest((total - abs(k)) // 2, total, 0.5).pvalue
            if np.isclose(p, p_value, rtol=1e-6, atol=0.0):
                matches.append(total)
    total = matches[0] if len(matches) == 1 else (max(matches) if matches else d_max)
    return (total + k) // 2, (total - k) // 2, len(matches) == 1


def _direction(kind: str) -> int:
    return {'greater': 1, 'less': -1}.get(kind, 0)


def _part_verdict(kind: str, diff, p_diff, p_tost, margin, alpha: float) -> str:
    if kind not in KINDS:
        raise KnowacqError(f'unknown claim kind {kind!r}; choose one of {KINDS}')
    if diff is None or p_diff is None or not np.isfinite(diff) or not np.isfinite(p_diff):
        return NOT_MEASURED
    equivalent = p_tost is not None and np.isfinite(p_tost) and p_tost < alpha
    if kind == 'equivalence':
        if equivalent:
            return EQUIVALENT.format(margin=margin)
        return DIFFERENT if p_diff < alpha else INCONCLUSIVE
    if p_diff < alpha and diff != 0:
        if np.sign(diff) == _direction(kind):
            return SUPPORTED.format(direction='higher' if kind == 'greater' else 'lower')
        return OPPOSITE
    return EQUIVALENT.format(margin=margin) if equivalent else INCONCLUSIVE


def verdict(kind: str, diff: float, p_diff: float, p_tost: Optional[float], margin: float, alpha: float = ALPHA) -> str:
    """The verdict of one comparison ``a - b = diff`` for a claim of ``kind`` (see the module docstring)."""
    return _part_verdict(kind, diff, p_diff, p_tost, margin, alpha)


def combine(parts: Sequence[Mapping], kind: str, alpha: float = ALPHA) -> Dict:
    """The verdict of a claim made of several comparisons that must all hold (N = 2..5, collections, curves).

    Each part has ``diff, p_diff`` (already corrected over the parts, e.g. with :func:`holm`), ``p_tost`` and
    ``margin``. All parts equivalent -> equivalent (intersection-union test: the claim's TOST p is the largest);
    for "≈", any part different -> different (the claim's p is the smallest); for "a > b", all supported ->
    supported (the claim's p is the largest), any rejected the other way -> different, opposite direction; otherwise
    inconclusive. Returns ``{verdict, index, p_diff, p_tost}``: ``index`` is the deciding part (the weakest part that
    carries the verdict, or the strongest counter-example), whose difference and interval the report shows.
    """
    verdicts = [_part_verdict(kind, p.get('diff'), p.get('p_diff'), p.get('p_tost'), p.get('margin'), alpha) for p in parts]
    ok = [i for i, v in enumerate(verdicts) if v != NOT_MEASURED]
    if not ok:
        return {'verdict': NOT_MEASURED, 'index': None, 'p_diff': None, 'p_tost': None}

    def p_of(i, key):
        v = parts[i].get(key)
        return 1.0 if v is None or not np.isfinite(v) else float(v)
    tost_max = max(ok, key=lambda i: p_of(i, 'p_tost'))
    p_tost = p_of(tost_max, 'p_tost')
    p_min = min(p_of(i, 'p_diff') for i in ok)
    p_max = max(p_of(i, 'p_diff') for i in ok)
    if kind == 'equivalence':
        if all(verdicts[i].startswith('equivalent') for i in ok):
            v, index = verdicts[tost_max], tost_max
        elif any(verdicts[i] == DIFFERENT for i in ok):
            v, index = DIFFERENT, min((i for i in ok if verdicts[i] == DIFFERENT), key=lambda i: p_of(i, 'p_diff'))
        else:
            v, index = INCONCLUSIVE, tost_max
        return {'verdict': v, 'index': index, 'p_diff': p_min, 'p_tost': p_tost}
    if all(verdicts[i].startswith('supported') for i in ok):
        v, index, p = verdicts[ok[0]], max(ok, key=lambda i: p_of(i, 'p_diff')), p_max
    elif any(verdicts[i] == OPPOSITE for i in ok):
        index = min((i for i in ok if verdicts[i] == OPPOSITE), key=lambda i: p_of(i, 'p_diff'))
        v, p = OPPOSITE, p_of(index, 'p_diff')
    elif all(verdicts[i].startswith('equivalent') for i in ok):
        v, index, p = verdicts[tost_max], tost_max, p_max
    else:
        v, p = INCONCLUSIVE, p_max
        index = max((i for i in ok if not verdicts[i].startswith('supported')), key=lambda i: p_of(i, 'p_diff'))
    return {'verdict': v, 'index': index, 'p_diff': p, 'p_tost': p_tost}


def underpowered(kind: str, mde_value: float, margin: float, paper_diff: Optional[float]) -> Optional[bool]:
    """Directional claims: the paper's own effect (when known) is below our MDE. "≈" claims: the margin is below our
    MDE (a difference as large as the margin would be missed more than 20% of the time, so equivalence within it is
    out of reach; the paper's effect, about 0, is always below the MDE). ``None`` when it cannot be judged."""
    if mde_value is None or not np.isfinite(mde_value):
        return None
    if kind == 'equivalence':
        return bool(margin < mde_value)
    if paper_diff is None or not np.isfinite(paper_diff):
        return None
    return bool(abs(paper_diff) < mde_value)


def claim_fields(summary: Mapping, kind: str, verdict_text: str, *, test: str, paper_diff: Optional[float] = None,
                 p_tost: Optional[float] = None) -> Dict:
    """The report.json fields of a claim from its (deciding) :func:`paired_summary`: ``kind, diff, ci_low, ci_high,
    mde, margin, underpowered, test, p_tost, n, paper_diff, interval`` (plus ``seeds`` when more than one)."""
    out = {'kind': kind, 'diff': summary.get('diff'), 'ci_low': summary.get('ci_low'), 'ci_high': summary.get('ci_high'),
           'mde': summary.get('mde'), 'margin': summary.get('margin'),
           'underpowered': underpowered(kind, summary.get('mde'), summary.get('margin'), paper_diff),
           'test': test, 'p_tost': summary.get('p_tost') if p_tost is None else p_tost, 'n': summary.get('n'),
           'paper_diff': paper_diff, 'interval': summary.get('interval')}
    if summary.get('seeds', 1) > 1:
        out['seeds'] = summary['seeds']
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def missing_fields(kind: str, margin: float, test: str) -> Dict:
    """The report.json fields of a claim that could not be computed."""
    return {'kind': kind, 'diff': None, 'ci_low': None, 'ci_high': None, 'mde': None, 'margin': margin,
            'underpowered': None, 'test': test, 'p_tost': None, 'n': None, 'paper_diff': None, 'interval': None}


def fmt_interval(diff, lo, hi, digits: int = 3) -> str:
    """``+0.081 [+0.031, +0.131]`` (``n/a`` when unknown)."""
    if diff is None or not np.isfinite(diff):
        return 'n/a'
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f'{diff:+.{digits}f}'
    return f'{diff:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]'


def method_note(settings: Optional[ClaimSettings] = None) -> str:
    """One paragraph that says how every claim is judged (written under each report's table)."""
    settings = settings or ClaimSettings(DEFAULT_MARGINS, {})
    return (f'Each claim: mean paired difference (a - b) with its {INTERVALS.get(settings.interval, settings.interval)} '
            f'(not adjusted for multiplicity); difference test as named in `test`, Holm-corrected as stated; '
            f'equivalence by TOST (two one-sided paired t-tests, rejects exactly when the 90% interval lies inside '
            f'±margin); MDE = smallest difference a two-sided paired t-test (alpha {ALPHA:g}) detects with '
            f'{POWER:.0%} power at this n and sd. Verdicts: "≈" claims are "equivalent within ±m" (TOST rejects), '
            f'"different" (difference test rejects) or "inconclusive"; directional claims are "supported (higher|lower)", '
            f'"different, opposite direction", "equivalent within ±m" (no difference as large as the margin) or '
            f'"inconclusive". "underpowered": the paper\'s effect (directional) or the margin ("≈") is below the MDE. '
            f'{settings.describe()[0].upper() + settings.describe()[1:]}.')
