"""Claims of the knowledge-acquisition study, computed from a result folder's tables only (no model code imported).

Yao, Wang & Zuccon, "Does fine-tuning a dense retriever acquire retrieval knowledge?" (SIGIR 2025, reproducing
Reichman & Heck, EMNLP Findings 2024). Their reading: fine-tuning mostly re-routes what pre-training stored.

Claims (probe figures at the last probed layer of each curve, on the first probe data set of a group). A claim is
made of parts (the N values, layers, curves or collections) that must all hold; each part is a paired comparison:
the probe tables' McNemar test on the same test examples (Holm over the parts of the claim) for the difference, and
TOST (paired t on the per-example outcomes, margin ±0.05 accuracy by default) for equivalence; the interval and MDE
come from the per-example outcomes too. Verdicts, rules and vocabulary: :mod:`pyterrier_knowacq.analysis.stats`.

1. ``cls_eq``: fine-tuned CLS ≈ backbone at the last layer (concatenation probe; equivalent at every N);
2. ``mean_eq``: mean-pooled curves nearly equal (equivalent within the margin at every layer and N);
3. ``n_falls``: probe accuracy falls as N grows (backbones, N_min vs N_max, every curve);
4. ``decoder_gains``: the decoder gains from fine-tuning (last-token pooling, fine-tuned > backbone at the last layer);
5. ``random_init``: the random-init control (ours; the study has none): pre-training matters — the random-init model
   fine-tuned with the same recipe retrieves worse than the pre-trained one (paired t-test on nDCG@10 per query, per
   collection and pair) and probes worse (shown, not tested);
6. ``interaction_gt_concat``: the interaction probe (ours) sees more than the concatenation probe at the last layer
   (paired t over the (group, data, N) cells of the backbones: the cells share queries, so this is descriptive).

The tables keep accuracies and McNemar p-values, not per-example outcomes: the discordant counts (examples one
model gets right and the other wrong) are read from ``n_gain`` / ``n_loss`` columns when a table has them, else
recovered from the exact McNemar p (:func:`~pyterrier_knowacq.analysis.stats.discordant_from_mcnemar`); where the p
does not name them (p = 1) the widest interval the accuracies allow is used.

Example::

    from pyterrier_knowacq.reports.knowacq import claims
    for c in claims('results/knowacq'):
        print(c['claim'], c['ours'], c['p_value'], c['verdict'])
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from .. import results
from .._util import KnowacqError
from ..analysis import stats

__all__ = ['claims', 'STUDY', 'ALPHA', 'NEAR']

STUDY = 'knowacq'
ALPHA = stats.ALPHA
NEAR = stats.DEFAULT_MARGINS['probe_accuracy']   # default margin of "nearly equal": 5 points of accuracy
PROBE = 'probe_accuracy'
PAPER = {
    'cls': 'BERT-base vs DPR (CLS): probe accuracy nearly identical at the last layer (Reichman & Heck; Yao et al.)',
    'mean': 'BERT-base vs Contriever (mean): curves nearly overlap across layers',
    'n': 'accuracy decreases as the number of passages N grows from 2 to 5',
    'decoder': 'Llama-2 vs RepLLaMA (last token): fine-tuning raises probe accuracy (Yao et al.)',
    'random': 'not reported (no random-init control in the study)',
    'interaction': 'not reported (the study only uses the concatenation probe)',
}


def _claim(key, cid, claim, ours, verdict, detail, fields, p=None):
    return {'study': STUDY, 'id': cid, 'claim': claim, 'paper': PAPER[key], 'ours': ours,
            'p_value': None if p is None or (isinstance(p, float) and np.isnan(p)) else float(p),
            'verdict': verdict, 'detail': detail, **fields}


def _missing(key, cid, claim, why, kind, margin, test):
    return _claim(key, cid, claim, 'n/a', stats.NOT_MEASURED, why, stats.missing_fields(kind, margin, test))


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


class _Probe:
    """Paired comparisons of probe accuracies on the same test examples (the analysis's test, e.g. McNemar)."""

    def __init__(self, meta: Dict, settings: stats.ClaimSettings):
        analysis = ((meta or {}).get('config') or {}).get('analysis') or {}
        self.test_name = str(analysis.get('test', 'mcnemar'))
        self.settings = settings
        self.test = ('McNemar exact' if self.test_name == 'mcnemar' else f'paired {self.test_name}') + \
            ' over test examples (Holm over the parts); TOST paired t on the per-example outcomes'

    def part(self, label: str, n: int, acc_a: float, acc_b: float, p_raw: float, margin: float,
             gains=None, losses=None) -> Dict:
        """One comparison a - b of two accuracies over the same ``n`` test examples."""
        exact = True
        if gains is None or losses is None or not (np.isfinite(gains) and np.isfinite(losses)):
            gains, losses, exact = stats.discordant_from_mcnemar(
                n, round(acc_a * n), round(acc_b * n), p_raw if self.test_name == 'mcnemar' else None)
        summ = stats.summary_from_counts(int(n), int(gains), int(losses), margin=margin, interval=self.settings.interval)
        return {'label': label, 'diff': acc_a - acc_b, 'p_raw': p_raw, 'p_tost': summ['p_tost'], 'margin': margin,
                'summary': {**summ, 'diff': acc_a - acc_b}, 'exact': exact}


def _decide(parts: List[Dict], kind: str, p_key: str = 'p_raw') -> Dict:
    """Holm over the parts' difference p-values, then :func:`stats.combine`."""
    _, adj = stats.holm([np.nan if pt[p_key] is None else pt[p_key] for pt in parts])
    for pt, a in zip(parts, adj):
        pt['p_diff'] = None if np.isnan(a) else float(a)
    return stats.combine(parts, kind)


def _fields(parts: List[Dict], decided: Dict, kind: str, test: str, paper_diff=None) -> Dict:
    if decided['index'] is None:
        return stats.missing_fields(kind, parts[0]['margin'] if parts else None, test)
    summ = parts[decided['index']]['summary']
    out = stats.claim_fields(summ, kind, decided['verdict'], test=test, paper_diff=paper_diff, p_tost=decided['p_tost'])
    out['deciding'] = parts[decided['index']]['label']
    out['parts'] = [{'label': pt['label'], 'diff': pt['summary']['diff'], 'ci_low': pt['summary']['ci_low'],
                     'ci_high': pt['summary']['ci_high'], 'mde': pt['summary']['mde'], 'p_value': pt.get('p_diff'),
                     'p_tost': pt['p_tost'], 'n': pt['summary']['n'],
                     'verdict': stats.verdict(kind, pt['diff'], pt.get('p_diff'), pt['p_tost'], pt['margin'])}
                    for pt in parts]
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def _parts_text(parts: List[Dict]) -> str:
    text = '; '.join(f'{pt["label"]}: {stats.fmt_interval(pt["summary"]["diff"], pt["summary"]["ci_low"], pt["summary"]["ci_high"])}'
                     f' (MDE {pt["summary"]["mde"]:.3f})' for pt in parts)
    loose = [pt['label'] for pt in parts if not pt.get('exact', True)]
    if loose:
        text += f'; discordant counts not named by the p-value for {", ".join(loose)}: widest interval used'
    return text


def _probe_claim(acc, probe_stats, key, cid, claim, pooling, models, kind, settings):
    """Claims 1 and 4: a fine-tuned model vs its backbone at the last layer, one part per N."""
    margin = settings.margin(PROBE, cid, claim)
    comp = _last_layer_comparison(acc, pooling, 'concat', models)
    if not comp:
        return None, margin
    group, data, model, rows = comp[0]
    parts = [probe_stats.part(f'N={int(r.n)}', int(r.n_test), float(r.accuracy), float(r.base), float(r.p_value), margin,
                              getattr(r, 'n_gain', None), getattr(r, 'n_loss', None)) for r in rows.itertuples()]
    decided = _decide(parts, kind)
    return (group, data, model, rows, parts, decided), margin


def claims(folder) -> List[Dict]:
    """The study's claims with our figures, p-values, differences with intervals, MDEs and verdicts."""
    folder = Path(folder)
    table = folder / results.TABLES / 'probe_accuracy.csv'
    if not table.exists():
        raise KnowacqError(f'{folder} has no tables/probe_accuracy.csv; run an experiment with an `analysis:` section '
                           '(e.g. experiments/knowacq.yaml)')
    meta = results.read_meta(folder, required=False)
    settings = stats.claim_settings(meta)
    probe_stats = _Probe(meta, settings)
    acc = pd.read_csv(table)
    trend_file = folder / results.TABLES / 'probe_n_trend.csv'
    trend = pd.read_csv(trend_file) if trend_file.exists() else pd.DataFrame()
    out = []

    # 1. fine-tuned CLS ≈ backbone at the last layer
    claim = 'fine-tuned CLS ≈ backbone at the last layer (concatenation probe)'
    res, margin = _probe_claim(acc, probe_stats, 'cls', 'cls_eq', claim, 'cls', ('fine-tuned', 'dpr-paired'),
                               'equivalence', settings)
    if res:
        group, data, model, rows, parts, decided = res
        out.append(_claim('cls', 'cls_eq', claim, f'{group}/{data}, {model}: {_fmt_rows(rows)}', decided['verdict'],
                          f'fine-tuned - backbone per N: {_parts_text(parts)}; smallest Holm-adjusted p over N '
                          f'{decided["p_diff"]:.3g}, largest TOST p {decided["p_tost"]:.3g} (±{margin:g}); '
                          f'{int(rows.n_test.iloc[0])} test examples',
                          _fields(parts, decided, 'equivalence', probe_stats.test), decided['p_diff']))
    else:
        out.append(_missing('cls', 'cls_eq', 'fine-tuned CLS ≈ backbone at the last layer',
                            'no cls group with a fine-tuned model', 'equivalence', margin, probe_stats.test))

    # 2. mean-pooled curves nearly equal
    claim = 'mean-pooled curves of backbone and fine-tuned model nearly equal (concatenation probe)'
    margin = settings.margin(PROBE, 'mean_eq', claim)
    groups = [g for g in acc[acc['pooling'] == 'mean']['group'].unique() if (acc[(acc.group == g)]['model'] != 'backbone').any()]
    if groups:
        g = groups[0]
        data = _first_data(acc, g)
        sel = acc[(acc.group == g) & (acc.data == data) & (acc.probe == 'concat')]
        sub = sel[sel.model != 'backbone']
        model = 'fine-tuned' if (sub.model == 'fine-tuned').any() else sub.model.iloc[0]
        sub = sub[sub.model == model].sort_values(['n', 'layer'])
        base = sel[sel.model == 'backbone'].set_index(['n', 'layer'])['accuracy']
        parts = [probe_stats.part(f'N={int(r.n)} layer {int(r.layer)}', int(r.n_test), float(r.accuracy),
                                  float(base.get((r.n, r.layer), np.nan)), float(r.p_value), margin,
                                  getattr(r, 'n_gain', None), getattr(r, 'n_loss', None))
                 for r in sub.itertuples() if (r.n, r.layer) in base.index]
        decided = _decide(parts, 'equivalence')
        max_diff = float(sub['diff_vs_backbone'].abs().max())
        n_eq = sum(pt['p_tost'] < ALPHA for pt in parts)
        fields = _fields(parts, decided, 'equivalence', probe_stats.test)
        worst = fields.get('deciding')
        out.append(_claim('mean', 'mean_eq', claim,
                          f'{g}/{data}, {model}: max |Δ| {max_diff:.3f} over {sub.layer.nunique()} layers x N={sorted(int(n) for n in sub.n.unique())}; '
                          f'{sum((pt["p_diff"] or 1) < ALPHA for pt in parts)} of {len(parts)} layer tests significant, '
                          f'{n_eq} of {len(parts)} equivalent within ±{margin:g}', decided['verdict'],
                          f'smallest Holm-adjusted p (over all {len(parts)} layers x N) {decided["p_diff"]:.3g}; largest '
                          f'TOST p {decided["p_tost"]:.3g} at {worst}, whose difference and interval are shown',
                          fields, decided['p_diff']))
    else:
        out.append(_missing('mean', 'mean_eq', 'mean-pooled curves nearly equal', 'no mean-pooled group with a compared model',
                            'equivalence', margin, probe_stats.test))

    # 3. accuracy falls with N
    claim = 'probe accuracy falls as N grows'
    margin = settings.margin(PROBE, 'n_falls', claim)
    rows = trend[(trend.model == 'backbone') & (trend.probe == 'concat')] if not trend.empty else trend
    if not trend.empty and rows.empty:
        rows = trend[trend.model == 'backbone']
    if not rows.empty:
        lo, hi = int(rows.n_low.iloc[0]), int(rows.n_high.iloc[0])
        claim = f'probe accuracy falls as N grows ({lo} -> {hi})'
        parts = []
        for r in rows.itertuples():
            n_test = acc[(acc.group == r.group) & (acc.data == r.data) & (acc.model == r.model) & (acc.probe == r.probe)
                         & (acc.layer == r.layer)]['n_test']
            if n_test.empty:
                continue
            parts.append(probe_stats.part(f'{r.group}/{r.data}', int(n_test.iloc[0]), float(getattr(r, f'acc_n{hi}')),
                                          float(getattr(r, f'acc_n{lo}')), float(r.p_value), margin,
                                          getattr(r, 'n_gain', None), getattr(r, 'n_loss', None)))
        decided = _decide(parts, 'less') if parts else {'verdict': stats.NOT_MEASURED, 'index': None, 'p_diff': None}
        above = ((rows[f'acc_n{lo}'] - 1 / lo) > (rows[f'acc_n{hi}'] - 1 / hi))
        n_sup = sum(stats.verdict('less', pt['diff'], pt['p_diff'], pt['p_tost'], margin).startswith('supported') for pt in parts)
        out.append(_claim('n', 'n_falls', claim,
                          '; '.join(f'{r.group}/{r.data}: {getattr(r, f"acc_n{lo}"):.3f} -> {getattr(r, f"acc_n{hi}"):.3f}'
                                    for r in rows.itertuples()), decided['verdict'],
                          f'backbones, concatenation probe, last layer; accuracy at N={hi} - at N={lo}: {_parts_text(parts)}; '
                          f'falls significantly in {n_sup} of {len(parts)} curves (Holm over curves; the claim takes the '
                          f'largest p, {decided["p_diff"] if decided["p_diff"] is not None else float("nan"):.3g}). '
                          f'Above chance (1/N) it falls in {int(above.sum())} of {len(rows)} curves, so part of the drop is '
                          'the lower chance level', _fields(parts, decided, 'less', probe_stats.test), decided['p_diff']))
    else:
        out.append(_missing('n', 'n_falls', claim, 'no tables/probe_n_trend.csv', 'less', margin, probe_stats.test))

    # 4. decoder gains from fine-tuning
    claim = 'the decoder gains probe accuracy from fine-tuning (last token)'
    res, margin = _probe_claim(acc, probe_stats, 'decoder', 'decoder_gains', claim, 'last', ('fine-tuned', 'repllama'),
                               'greater', settings)
    if res:
        group, data, model, rows, parts, decided = res
        gain = rows['accuracy'] - rows['base']
        inter = _last_layer_comparison(acc, 'last', 'interaction', (model,))
        extra = f'; interaction probe: {_fmt_rows(inter[0][3])}' if inter else ''
        out.append(_claim('decoder', 'decoder_gains', claim, f'{group}/{data}, {model}: {_fmt_rows(rows)}', decided['verdict'],
                          f'mean gain {gain.mean():+.3f}; fine-tuned - backbone per N: {_parts_text(parts)}; largest '
                          f'Holm-adjusted p over N {decided["p_diff"]:.3g}{extra}',
                          _fields(parts, decided, 'greater', probe_stats.test), decided['p_diff']))
    else:
        out.append(_missing('decoder', 'decoder_gains', 'the decoder gains from fine-tuning',
                            'no last-token group with a fine-tuned model', 'greater', margin, probe_stats.test))

    # 5. random-init control
    out.append(_random_claim(folder, acc, settings))

    # 6. interaction vs concatenation probe
    claim = 'the interaction probe (q ⊙ p_i) sees more than the concatenation probe (backbones, last layer)'
    margin = settings.margin(PROBE, 'interaction_gt_concat', claim)
    test = 'paired t over (group, data, N) cells (cells share queries: descriptive)'
    last = _last(acc)
    b = last[last.model == 'backbone'].pivot_table(index=['group', 'data', 'n'], columns='probe', values='accuracy')
    if {'concat', 'interaction'} <= set(b.columns):
        d = (b['interaction'] - b['concat']).dropna()
        summ = stats.paired_summary(d.to_numpy(), margin=margin, interval=settings.interval)
        v = stats.verdict('greater', summ['diff'], summ['p_diff'], summ['p_tost'], margin)
        out.append(_claim('interaction', 'interaction_gt_concat', claim,
                          f'interaction - concat: mean {d.mean():+.3f}, positive in {int((d > 0).sum())} of {len(d)} (group, data, N)',
                          v, 'a linear map of [q; p1..pN] cannot compute a query-passage match; q ⊙ p_i can',
                          stats.claim_fields(summ, 'greater', v, test=test), summ['p_diff']))
    else:
        out.append(_missing('interaction', 'interaction_gt_concat', claim, 'no backbone with both probes', 'greater',
                            margin, test))
    return out


def _random_claim(folder: Path, acc: pd.DataFrame, settings: Optional[stats.ClaimSettings] = None) -> Dict:
    claim = 'pre-training matters: the random-init control fine-tuned with the same recipe retrieves and probes worse'
    settings = settings or stats.claim_settings(None)
    margin = settings.margin('nDCG@10', 'random_init', claim)
    test = 'paired t-test over queries, per collection and pair (Holm over them); TOST paired t'

    def missing(why):
        return _missing('random', 'random_init', claim, why, 'greater', margin, test)
    meta_file = results.meta_path(folder)
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
        return missing('no meta.json')
    meta = results.read_meta(folder)
    systems = meta.get('systems', [])
    rnd = [s for s in systems if str(s.get('tags', {}).get('backbone', '')).startswith('random:')
           and s['tags'].get('strategy') not in (None, 'zero-shot', 'none')]
    if not rnd:
        return missing('no fine-tuned random-init system in the experiment' + (f'; {probe}' if probe else ''))
    pairs = []   # (pre-trained, random-init) trained alike: same strategy, pooling and first stage
    for r in rnd:
        peer = [s for s in systems if s is not r and s.get('tags', {}).get('strategy') == r['tags'].get('strategy')
                and s['tags'].get('pooling') == r['tags'].get('pooling')
                and s['tags'].get('first_stage') == r['tags'].get('first_stage')
                and not str(s['tags'].get('backbone', '')).startswith('random:')]
        if peer:
            pairs.append((peer[0], r))
    if not pairs:
        return missing(f'no pre-trained system trained like {rnd[0]["name"]!r}')
    parts, texts = [], []
    for coll in meta.get('collections', []):
        pq_file = results.perquery_path(folder, coll['name'])
        if not pq_file.exists():
            continue
        pq = results.read_perquery(folder, coll['name'])
        pq = pq[pq.measure == 'nDCG@10'].pivot_table(index='qid', columns='name', values='value')
        for p_sys, r in pairs:
            if r['name'] not in pq or p_sys['name'] not in pq:
                continue
            both = pq[[p_sys['name'], r['name']]].dropna()
            a, b = both[p_sys['name']].to_numpy(float), both[r['name']].to_numpy(float)
            summ = stats.paired_summary(a, b, margin=margin, interval=settings.interval)
            where = coll['name'] if len(pairs) == 1 else f'{coll["name"]} ({r["tags"].get("first_stage")})'
            parts.append({'label': where, 'diff': summ['diff'], 'p_raw': summ['p_diff'], 'p_tost': summ['p_tost'],
                          'margin': margin, 'summary': summ})
            texts.append(f'{where}: nDCG@10 pre-trained {a.mean():.3f} vs random-init {b.mean():.3f} '
                         f'(p={summ["p_diff"]:.3g})')
    if not parts:
        return missing('no per-query nDCG@10 for the two systems')
    decided = _decide(parts, 'greater')
    compared = '; '.join(f'{a["name"]!r} vs {b["name"]!r}' for a, b in pairs)
    return _claim('random', 'random_init', claim, '; '.join(texts) + (f'; {probe}' if probe else ''), decided['verdict'],
                  f'{compared}: pre-trained - random-init nDCG@10 per query: {_parts_text(parts)} (Holm over collections '
                  'and pairs; the probe figures are shown, not tested)',
                  _fields(parts, decided, 'greater', test), decided['p_diff'])
