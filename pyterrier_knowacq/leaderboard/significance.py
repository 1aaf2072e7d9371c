"""The statistics the leaderboard shows: tie groups of systems (paired t-tests against each group's leader, Holm),
paired tests of many systems against one baseline, and the significance of an aggregated.csv cell against the
experiment's baseline (pt.Experiment's columns).

Example::

    tie_groups({'A': 0.70, 'B': 0.69, 'C': 0.50}, {'A': a, 'B': b, 'C': c})   # A and B share rank 1 unless different
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

__all__ = ['ALPHA', 'holm', 'paired_p', 'paired_tests', 'query_matrix', 'tie_groups', 'baseline_sig']

ALPHA = 0.05


def holm(pvalues: List[float]) -> List[float]:
    """Holm-Bonferroni adjusted p-values (same as statsmodels' ``multipletests(method='holm')``, which is slow here
    because it runs the garbage collector on every call)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def paired_p(a: pd.Series, b: pd.Series) -> Tuple[float, int]:
    """Two-sided paired t-test p-value over the queries both series share (1.0 when undefined), and their count."""
    from scipy.stats import ttest_rel
    joined = pd.concat([a, b], axis=1, join='inner').dropna()
    n = len(joined)
    if n < 2:
        return 1.0, n
    x, y = joined.iloc[:, 0].to_numpy(float), joined.iloc[:, 1].to_numpy(float)
    if np.allclose(x, y):
        return 1.0, n
    p = float(ttest_rel(x, y).pvalue)
    return (1.0 if math.isnan(p) else p), n


def paired_tests(x: np.ndarray, base: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided paired t-tests of every column of ``x`` (queries x systems, NaN = no value) against ``base`` (one
    column of the same queries), each over the queries both have; vectorised, same p-values as
    ``scipy.stats.ttest_rel``. Returns ``(p, n, better, worse)`` per column: p is 1.0 where it is undefined (fewer
    than two shared queries, or identical values) and 0.0 for a constant non-zero difference."""
    from scipy.stats import t as t_dist
    d = x - base[:, None]
    ok = ~np.isnan(d)
    n = ok.sum(axis=0)
    dz = np.where(ok, d, 0.0)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean = dz.sum(axis=0) / np.maximum(n, 1)
        var = (np.where(ok, d - mean, 0.0) ** 2).sum(axis=0) / np.maximum(n - 1, 1)
        sd = np.sqrt(var)
        tstat = mean / (sd / np.sqrt(np.maximum(n, 1)))
        p = 2 * t_dist.sf(np.abs(tstat), np.maximum(n - 1, 1))
    same = np.array([np.allclose(dz[:, j], 0.0) for j in range(d.shape[1])]) if d.size else np.zeros(0, bool)
    p = np.where(n < 2, 1.0, np.where(same, 1.0, np.where(sd == 0, 0.0, p)))
    p = np.where(np.isnan(p), 1.0, p)
    better = (np.where(ok, d, 0.0) > 0).sum(axis=0)
    worse = (np.where(ok, d, 0.0) < 0).sum(axis=0)
    return p, n, better, worse


def query_matrix(perquery: Dict[str, pd.Series], ids: List[str]) -> np.ndarray:
    """The per-query values of ``ids`` as one matrix (queries in the union of their qids x ids; NaN where missing)."""
    if not ids:
        return np.zeros((0, 0))
    frame = pd.concat([perquery[i].rename(k) for k, i in enumerate(ids)], axis=1, join='outer')
    return frame.to_numpy(dtype=float)


def tie_groups(means: Dict[str, float], perquery: Dict[str, pd.Series], alpha: float = ALPHA) -> Dict[str, Dict]:
    """Rank systems by mean, sharing ranks within tie groups.

    The best remaining system leads a group; every other remaining system whose per-query values are not
    significantly different from the leader's (two-sided paired t-test on shared queries, Holm-corrected over the
    comparisons made against that leader, p >= alpha) joins its group and shares its rank. Repeat on the rest.
    Rank = 1 + the number of systems in better groups. Systems without per-query values get rank None.

    Returns ``{system: {'rank', 'leader', 'p', 'p_holm', 'size'}}`` (p values against the group's leader; size: how
    many systems share the rank).
    """
    out = {s: {'rank': None, 'leader': None, 'p': None, 'p_holm': None, 'size': None} for s in means}
    remaining = sorted((s for s in means if s in perquery and means[s] is not None and not math.isnan(means[s])),
                       key=lambda s: -means[s])
    matrix = query_matrix(perquery, remaining)
    column = {s: k for k, s in enumerate(remaining)}
    ranked = 0
    while remaining:
        leader, others = remaining[0], remaining[1:]
        if others:
            raw, _n, _b, _w = paired_tests(matrix[:, [column[o] for o in others]], matrix[:, column[leader]])
            raw = [float(v) for v in raw]
        else:
            raw = []
        adjusted = holm(raw)
        group = [leader] + [o for o, p in zip(others, adjusted) if p >= alpha]
        out[leader].update(rank=ranked + 1, leader=leader, size=len(group))
        for o, p, q in zip(others, raw, adjusted):
            if q >= alpha:
                out[o].update(rank=ranked + 1, leader=leader, p=p, p_holm=q, size=len(group))
        ranked += len(group)
        remaining = [o for o in others if o not in group]
    return out


def baseline_sig(row: pd.Series, measure: str, baseline_value: Optional[float]) -> Dict:
    """The significance of one aggregated.csv cell against the experiment's baseline (from pt.Experiment's columns)."""
    def get(suffix):
        v = row.get(measure + suffix)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    p_corr, p = get(' p-value corrected'), get(' p-value')
    reject = str(row.get(measure + ' reject', '')).strip().lower() in ('true', '1')
    value = row.get(measure)
    direction = 0
    if reject and baseline_value is not None and value is not None and not math.isnan(value):
        direction = 1 if value > baseline_value else -1 if value < baseline_value else 0
    plus, minus = get(' +'), get(' -')
    return {'p': None if p is None else float(p), 'p_corrected': None if p_corr is None else float(p_corr),
            'reject': reject, 'direction': direction,
            'better': None if plus is None else int(plus), 'worse': None if minus is None else int(minus)}
