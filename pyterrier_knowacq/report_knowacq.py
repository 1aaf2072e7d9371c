"""Claims of the knowledge-acquisition study, computed from a result folder's tables only (no model code imported).

Yao, Wang & Zuccon, "Does fine-tuning a dense retriever acquire retrieval knowledge?" (SIGIR 2025, reproducing
Reichman & Heck, EMNLP Findings 2024). Their reading: fine-tuning mostly re-routes what pre-training stored.

Claims (probe figures at the last probed layer of each curve, on the first probe data set of a group; McNemar tests
on the same test examples, Holm over the N values of a claim):

1. fine-tuned CLS ≈ backbone at the last layer (concatenation probe; no significant difference at any N);
2. mean-pooled curves nearly equal (max |Δ accuracy| over layers and N at most 0.05, or no Holm-significant layer);
3. probe accuracy falls as N grows (backbone, N_min vs N_max, McNemar);
4. the decoder gains from fine-tuning (last-token pooling, fine-tuned > backbone at the last layer);
5. the random-init control (ours; the study has none): pre-training matters — the random-init model fine-tuned with
   the same recipe retrieves worse than the pre-trained one (paired t-test on nDCG@10 per query) and probes worse;
6. the interaction probe (ours) sees more than the concatenation probe at the last layer.

Example::

    from pyterrier_knowacq.report_knowacq import claims
    for c in claims('results/knowacq'):
        print(c['claim'], c['ours'], c['p_value'], c['verdict'])
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from ._util import KnowacqError

__all__ = ['claims', 'STUDY', 'ALPHA', 'NEAR']

STUDY = 'knowacq'
ALPHA = 0.05
NEAR = 0.05   # "nearly equal": accuracy differences up to 5 points
PAPER = {
    'cls': 'BERT-base vs DPR (CLS): probe accuracy nearly identical at the last layer (Reichman & Heck; Yao et al.)',
    'mean': 'BERT-base vs Contriever (mean): curves nearly overlap across layers',
    'n': 'accuracy decreases as the number of passages N grows from 2 to 5',
    'decoder': 'Llama-2 vs RepLLaMA (last token): fine-tuning raises probe accuracy (Yao et al.)',
    'random': 'not reported (no random-init control in the study)',
    'interaction': 'not reported (the study only uses the concatenation probe)',
}


def _holm(p):
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind='stable')]
        out[order] = np.minimum(np.maximum.accumulate((len(ok) - np.arange(len(ok))) * p[order]), 1.0)
    return out


def _claim(key, claim, ours, p, verdict, detail):
    return {'study': STUDY, 'claim': claim, 'paper': PAPER[key], 'ours': ours,
            'p_value': None if p is None or (isinstance(p, float) and np.isnan(p)) else float(p),
            'verdict': verdict, 'detail': detail}


def _missing(key, claim, why):
    return _claim(key, claim, 'n/a', None, 'not measured', why)


def _last(acc: pd.DataFrame) -> pd.DataFrame:
    top = acc.groupby(['group', 'data', 'model', 'n', 'probe'])['layer'].transform('max')
    return acc[acc['layer'] == top]


def _first_data(acc: pd.DataFrame, group: str) -> str:
    return acc[acc['group'] == group]['data'].iloc[0]


def _last_layer_comparison(acc, pooling: str, probe: str, models=('fine-tuned',)):
    """Per group with ``pooling``: rows at the last layer of the first data set for the first of ``models`` found."""
    out = []
    last = _last(acc)
    for group in acc[acc['pooling'] == pooling]['group'].unique():
        data = _first_data(acc, group)
        sub = last[(last['group'] == group) & (last['data'] == data) & (last['probe'] == probe)]
        for m in models:
            rows = sub[sub['model'] == m]
            if not rows.empty:
                base = sub[sub['model'] == 'backbone'].set_index('n')['accuracy']
                out.append((group, data, m, rows.assign(base=rows['n'].map(base)).sort_values('n')))
                break
    return out


def _fmt_rows(rows):
    return ', '.join(f'N={int(r.n)}: {r.base:.3f}→{r.accuracy:.3f} (p={r.p_value:.3g})' for r in rows.itertuples())


def claims(folder) -> List[Dict]:
    """The study's claims with our figures, p-values and verdicts, from ``folder``'s tables."""
    folder = Path(folder)
    table = folder / 'tables' / 'probe_accuracy.csv'
    if not table.exists():
        raise KnowacqError(f'{folder} has no tables/probe_accuracy.csv; run an experiment with an `analysis:` section '
                           '(e.g. experiments/knowacq.yaml)')
    acc = pd.read_csv(table)
    trend_file = folder / 'tables' / 'probe_n_trend.csv'
    trend = pd.read_csv(trend_file) if trend_file.exists() else pd.DataFrame()
    out = []

    # 1. fine-tuned CLS ≈ backbone at the last layer
    comp = _last_layer_comparison(acc, 'cls', 'concat', ('fine-tuned', 'dpr-paired'))
    if comp:
        group, data, model, rows = comp[0]
        adj = _holm(rows['p_value'].to_numpy())
        p = float(np.nanmin(adj))
        max_diff = float((rows['accuracy'] - rows['base']).abs().max())
        verdict = 'consistent' if p >= ALPHA else 'not consistent'
        out.append(_claim('cls', 'fine-tuned CLS ≈ backbone at the last layer (concatenation probe)',
                          f'{group}/{data}, {model}: {_fmt_rows(rows)}', p, verdict,
                          f'max |Δ| {max_diff:.3f}; smallest Holm-adjusted p over N = {p:.3g} (McNemar, {int(rows.n_test.iloc[0])} test examples)'))
    else:
        out.append(_missing('cls', 'fine-tuned CLS ≈ backbone at the last layer', 'no cls group with a fine-tuned model'))

    # 2. mean-pooled curves nearly equal
    groups = [g for g in acc[acc['pooling'] == 'mean']['group'].unique() if (acc[(acc.group == g)]['model'] != 'backbone').any()]
    if groups:
        g = groups[0]
        data = _first_data(acc, g)
        sub = acc[(acc.group == g) & (acc.data == data) & (acc.probe == 'concat') & (acc.model != 'backbone')]
        model = 'fine-tuned' if (sub.model == 'fine-tuned').any() else sub.model.iloc[0]
        sub = sub[sub.model == model]
        max_diff = float(sub['diff_vs_backbone'].abs().max())
        n_sig = int(sub['significant'].astype(bool).sum())
        p = float(sub['p_holm'].min())
        verdict = 'consistent' if (max_diff <= NEAR or n_sig == 0) else 'not consistent'
        out.append(_claim('mean', 'mean-pooled curves of backbone and fine-tuned model nearly equal (concatenation probe)',
                          f'{g}/{data}, {model}: max |Δ| {max_diff:.3f} over {sub.layer.nunique()} layers x N={sorted(int(n) for n in sub.n.unique())}; '
                          f'{n_sig} of {len(sub)} layer tests significant', p, verdict,
                          f'smallest Holm-adjusted p {p:.3g}; nearly equal = |Δ| <= {NEAR} or no significant layer'))
    else:
        out.append(_missing('mean', 'mean-pooled curves nearly equal', 'no mean-pooled group with a compared model'))

    # 3. accuracy falls with N
    if not trend.empty:
        rows = trend[(trend.model == 'backbone') & (trend.probe == 'concat')]
        if rows.empty:
            rows = trend[trend.model == 'backbone']
        lo, hi = int(rows.n_low.iloc[0]), int(rows.n_high.iloc[0])
        falls = (rows[f'acc_n{lo}'] > rows[f'acc_n{hi}'])
        adj = _holm(rows['p_value'].to_numpy())
        p = float(np.nanmax(adj))
        above = ((rows[f'acc_n{lo}'] - 1 / lo) > (rows[f'acc_n{hi}'] - 1 / hi))
        verdict = 'consistent' if falls.all() and p < ALPHA else ('partly consistent' if falls.any() else 'not consistent')
        out.append(_claim('n', f'probe accuracy falls as N grows ({lo} -> {hi})',
                          '; '.join(f'{r.group}/{r.data}: {getattr(r, f"acc_n{lo}"):.3f} -> {getattr(r, f"acc_n{hi}"):.3f}'
                                    for r in rows.itertuples()), p, verdict,
                          f'backbones, concatenation probe, last layer; largest Holm-adjusted McNemar p {p:.3g}. '
                          f'Above chance (1/N) it falls in {int(above.sum())} of {len(rows)} curves, so part of the drop is '
                          'the lower chance level'))
    else:
        out.append(_missing('n', 'probe accuracy falls as N grows', 'no tables/probe_n_trend.csv'))

    # 4. decoder gains from fine-tuning
    comp = _last_layer_comparison(acc, 'last', 'concat', ('fine-tuned', 'repllama'))
    if comp:
        group, data, model, rows = comp[0]
        gain = rows['accuracy'] - rows['base']
        adj = _holm(rows['p_value'].to_numpy())
        p = float(np.nanmin(adj))
        inter = _last_layer_comparison(acc, 'last', 'interaction', (model,))
        extra = f'; interaction probe: {_fmt_rows(inter[0][3])}' if inter else ''
        verdict = 'consistent' if (gain > 0).all() and p < ALPHA else ('direction only' if gain.mean() > 0 else 'not consistent')
        out.append(_claim('decoder', 'the decoder gains probe accuracy from fine-tuning (last token)',
                          f'{group}/{data}, {model}: {_fmt_rows(rows)}', p, verdict,
                          f'mean gain {gain.mean():+.3f}; smallest Holm-adjusted p over N {p:.3g}{extra}'))
    else:
        out.append(_missing('decoder', 'the decoder gains from fine-tuning', 'no last-token group with a fine-tuned model'))

    # 5. random-init control
    out.append(_random_claim(folder, acc))

    # 6. interaction vs concatenation probe
    last = _last(acc)
    b = last[last.model == 'backbone'].pivot_table(index=['group', 'data', 'n'], columns='probe', values='accuracy')
    if {'concat', 'interaction'} <= set(b.columns):
        d = (b['interaction'] - b['concat'])
        verdict = 'ours: interaction > concat' if (d > 0).mean() > 0.5 else 'ours: no advantage'
        out.append(_claim('interaction', 'the interaction probe (q ⊙ p_i) sees more than the concatenation probe (backbones, last layer)',
                          f'interaction - concat: mean {d.mean():+.3f}, positive in {int((d > 0).sum())} of {len(d)} (group, data, N)',
                          None, verdict, 'a linear map of [q; p1..pN] cannot compute a query-passage match; q ⊙ p_i can'))
    return out


def _random_claim(folder: Path, acc: pd.DataFrame) -> Dict:
    claim = 'pre-training matters: the random-init control fine-tuned with the same recipe retrieves and probes worse'
    meta_file = folder / 'meta.json'
    probe = ''
    last = _last(acc)
    for group in last.group.unique():
        sub = last[(last.group == group) & (last.probe == 'concat') & (last.data == _first_data(acc, group))]
        if {'random-fine-tuned', 'fine-tuned'} <= set(sub.model):
            a = sub[sub.model == 'fine-tuned'].set_index('n')['accuracy']
            r = sub[sub.model == 'random-fine-tuned'].set_index('n')['accuracy']
            probe = f'probe (last layer, {group}): ' + ', '.join(f'N={n}: {a[n]:.3f} vs {r[n]:.3f}' for n in a.index)
            break
    if not meta_file.exists():
        return _missing('random', claim, 'no meta.json')
    meta = json.loads(meta_file.read_text())
    systems = meta.get('systems', [])
    rnd = [s for s in systems if str(s.get('tags', {}).get('backbone', '')).startswith('random:')
           and s['tags'].get('strategy') not in (None, 'zero-shot', 'none')]
    if not rnd:
        return _missing('random', claim, 'no fine-tuned random-init system in the experiment' + (f'; {probe}' if probe else ''))
    pairs = []   # (pre-trained, random-init) trained alike: same strategy, pooling and first stage
    for r in rnd:
        peer = [s for s in systems if s is not r and s.get('tags', {}).get('strategy') == r['tags'].get('strategy')
                and s['tags'].get('pooling') == r['tags'].get('pooling')
                and s['tags'].get('first_stage') == r['tags'].get('first_stage')
                and not str(s['tags'].get('backbone', '')).startswith('random:')]
        if peer:
            pairs.append((peer[0], r))
    if not pairs:
        return _missing('random', claim, f'no pre-trained system trained like {rnd[0]["name"]!r}')
    from scipy.stats import ttest_rel
    parts, ps, worse = [], [], []
    for coll in meta.get('collections', []):
        pq_file = folder / coll['name'] / 'perquery.csv'
        if not pq_file.exists():
            continue
        pq = pd.read_csv(pq_file, dtype={'qid': str})
        pq = pq[pq.measure == 'nDCG@10'].pivot_table(index='qid', columns='name', values='value')
        for p_sys, r in pairs:
            if r['name'] not in pq or p_sys['name'] not in pq:
                continue
            a, b = pq[p_sys['name']], pq[r['name']]
            p = float(ttest_rel(a, b).pvalue) if len(a) > 1 and not np.allclose(a, b) else 1.0
            ps.append(p)
            where = coll['name'] if len(pairs) == 1 else f'{coll["name"]} ({r["tags"].get("first_stage")})'
            parts.append(f'{where}: nDCG@10 pre-trained {a.mean():.3f} vs random-init {b.mean():.3f} (p={p:.3g})')
            worse.append(a.mean() > b.mean())
    if not parts:
        return _missing('random', claim, 'no per-query nDCG@10 for the two systems')
    p = float(np.nanmax(_holm(ps)))
    if all(worse):
        verdict = 'consistent' if p < ALPHA else 'direction only'
    else:
        verdict = 'partly consistent' if any(worse) else 'not consistent'
    compared = '; '.join(f'{a["name"]!r} vs {b["name"]!r}' for a, b in pairs)
    return _claim('random', claim, '; '.join(parts) + (f'; {probe}' if probe else ''), p, verdict,
                  f'{compared}: paired t-tests over queries (Holm over collections and pairs)')
