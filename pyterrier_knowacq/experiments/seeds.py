"""Experiments with ``seeds: [1, 2, 3]``: which systems run once per seed, and the tables of one collection (seed-mean
aggregates with pt.Experiment's columns and tests, per-query values with a ``seed`` column, per-seed aggregates).

Example::

    agg, perq, per_seed = _seed_tables(runs, topics, qrels, measures, names=['BM25', 'C'], baseline=0, test='t',
                                       correction='holm', correction_alpha=0.05)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Set

import pandas as pd

__all__: List[str] = []


def _seeds_of(config) -> Optional[List[int]]:
    """The experiment's ``seeds:`` (checked by the preflight: distinct integers), or None (one seed, ``seed:``)."""
    seeds = config.get('seeds')
    return None if seeds is None else [int(s) for s in seeds]


def _uses_trained(stages, trained: Set[str]) -> bool:
    """Whether a system's stages load a model the experiment trains (``ce(model=C)``): it then runs once per seed."""
    return any(isinstance(v, str) and v in trained for stage in stages for v in stage.params.values())


def _seed_tables(runs, topics: pd.DataFrame, qrels: pd.DataFrame, measures, *, names: List[str],
                 baseline: Optional[int], test: str, correction, correction_alpha: float, **_):
    """An experiment with ``seeds:``: ``(aggregated, perquery, per-seed aggregates)`` of one collection.

    ``runs`` are ``(system, seed or None, run)``. ``perquery`` is pt.Experiment's per-query frame of every run with
    a ``seed`` column (empty for seed-independent systems); ``aggregated`` has pt.Experiment's columns, each system's
    value being its seed-mean, and the paired test against the baseline runs over queries on the per-query seed-means
    (the query is the unit); ``per-seed aggregates`` are ``{system: {seed: {measure: mean}}}`` of seeded systems.
    """
    import pyterrier as pt
    from scipy import stats as st
    perq = pt.Experiment([r[2] for r in runs], topics, qrels, measures, perquery=True,
                         names=[str(i) for i in range(len(runs))], verbose=False)
    which = perq['name'].astype(int).to_numpy()
    perq = perq.assign(name=[runs[i][0] for i in which], seed=pd.array([runs[i][1] for i in which], dtype='Int64'))
    order = {n: i for i, n in enumerate(names)}
    perq = perq.sort_values(['name', 'seed', 'qid'], key=lambda c: c.map(order) if c.name == 'name' else c,
                            na_position='first', kind='stable').reset_index(drop=True)
    ms = [str(m) for m in measures]
    # per query: the mean over seeds (a seed-independent system has one value)
    wide = perq.pivot_table(index=['name', 'qid'], columns='measure', values='value', aggfunc='mean')
    rows = [[n] + [float(wide.loc[n][m].mean()) for m in ms] for n in names]
    columns = ['name'] + ms
    p_cols = []
    if baseline is not None:   # the columns, order and tests of pt.Experiment's table (pyterrier's renderer)
        test_fn = {'t': st.ttest_rel, 'wilcoxon': st.wilcoxon}[test]
        base = wide.loc[names[baseline]]
        for i, n in enumerate(names):
            if i == baseline:
                rows[i] += [None] * (3 * len(ms))
                continue
            own = wide.loc[n].reindex(base.index)
            for m in ms:
                x, y = own[m].to_numpy(float), base[m].to_numpy(float)
                try:
                    p = float(test_fn(x, y)[1])
                except ValueError:   # e.g. wilcoxon on all-zero differences
                    p = float('nan')
                rows[i] += [int((x > y).sum()), int((x < y).sum()), p]
        for m in ms:
            columns += [f'{m} +', f'{m} -', f'{m} p-value']
            p_cols.append(f'{m} p-value')
    agg = pd.DataFrame(rows, columns=columns)
    if baseline is not None and correction is not None:
        import numpy as np
        import statsmodels.stats.multitest
        for col in p_cols:
            reject, corrected, _, _ = statsmodels.stats.multitest.multipletests(
                agg[col].drop(agg.index[baseline]), alpha=correction_alpha, method=correction)
            at = agg.columns.get_loc(col)
            agg.insert(at + 1, col.replace('p-value', 'reject'), np.insert(reject, baseline, False))
            agg.insert(at + 2, col + ' corrected', np.insert(corrected, baseline, np.nan))
    seeded = perq[perq['seed'].notna()]
    per_seed: Dict[str, Dict[str, Dict[str, float]]] = {}
    for (n, s, m), v in seeded.groupby(['name', 'seed', 'measure'], sort=False)['value'].mean().items():
        per_seed.setdefault(n, {}).setdefault(str(int(s)), {})[m] = float(v)
    per_seed = {n: {s: {m: vals[m] for m in ms if m in vals} for s, vals in by.items()} for n, by in per_seed.items()}
    return agg, perq, per_seed
