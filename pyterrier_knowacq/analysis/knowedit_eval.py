"""Knowledge editing, part 3: retrievability of H and C, paired tests, claims and plots.

* :func:`retrievability`: end-to-end dense retrieval (the project's cached FlexIndex, :func:`~..dense_index.dense_retriever`)
  of the queries of H and C with one model; ``ranks`` holds every H and C passage's rank for its query (1-based,
  ``k + 1`` when it is not in the top ``k``), ``queries`` each query's ``nDCG@10`` (the split's graded qrels) and
  ``R_set@100`` (the share of that query's H or C passages in its top 100).
* :func:`comparisons`: paired tests of one arm against a reference arm on the same units: per passage, Wilcoxon
  signed-rank on ``log2 rank`` (and on ``PLL``, the edit-effect check); per query, paired t on ``R_set@100`` and
  ``nDCG@10``. Each row carries the mean difference with its 95% paired t interval, TOST against the measure's
  margin and the MDE (:func:`~.stats.paired_summary`). Holm across the arms: within each (stage, set, measure) family.
* :func:`claims`: report.json claims (``study, id, claim, paper, ours, p_value, verdict, detail`` + :func:`~.stats.claim_fields`)
  in the verdict vocabulary of :mod:`.stats`; several comparisons make one claim by intersection-union
  (:func:`~.stats.combine`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

# --- package imports (re-path here when modules move) -------------------------------------------------------------
from ..models.dense_index import dense_retriever
from . import stats
from .plots import save_figure
# ------------------------------------------------------------------------------------------------------------------

__all__ = ['retrievability', 'comparisons', 'claims', 'plot_ranks', 'plot_shifts', 'PAIRS', 'MARGINS', 'STUDY']

STUDY = 'knowedit'
#: equivalence margins of the measures here (overridden by the YAML's ``claims: {equivalence_margin: {...}}``)
MARGINS = {'log2_rank': 0.25, 'R_set@100': 0.05, 'nDCG@10': 0.02, 'PLL': 0.05}
#: (arm, reference) pairs compared, where both arms exist
PAIRS = [('suppress-H', 'unedited'), ('suppress-C', 'unedited'), ('suppress-random', 'unedited'),
         ('unlearn-H', 'unedited'), ('unlearn-C', 'unedited'),
         ('suppress-H', 'suppress-C'), ('suppress-H', 'suppress-random'), ('unlearn-H', 'unlearn-C')]
PAPER = ('not reported: neither Reichman & Heck (2024) nor Yao et al. (2025) edit the backbone; this is our test of '
         'their reading that fine-tuning re-routes what pre-training stored rather than adding it')


def retrievability(model: str, dataset, topics: pd.DataFrame, sets, qrels: pd.DataFrame, *, k: int = 1000,
                   max_length: int = 128, batch_size: int = 32) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(ranks, queries)`` of one model over ``dataset``'s corpus (see the module docstring)."""
    import ir_measures
    retriever = dense_retriever(dataset, str(model), k=int(k), max_length=int(max_length), batch_size=batch_size)
    topics = topics[topics['qid'].astype(str).isin(set(sets.q_h) | set(sets.q_c))][['qid', 'query']].astype({'qid': str})
    run = retriever(topics).astype({'qid': str, 'docno': str})
    run = run.assign(rank1=run.groupby('qid')['score'].rank(ascending=False, method='first').astype(int))
    pos = {(q, d): r for q, d, r in zip(run['qid'], run['docno'], run['rank1'])}
    table = sets.table()
    ranks = table.assign(rank=[pos.get((q, d), k + 1) for q, d in zip(table['qid'], table['docno'])])
    ranks = ranks.assign(found=ranks['rank'] <= k, log2_rank=np.log2(ranks['rank'].astype(float)))
    qrels = qrels.astype({'qid': str, 'docno': str})
    qrels = qrels[qrels['qid'].isin(set(topics['qid']))]
    ndcg = {m.query_id: m.value for m in ir_measures.iter_calc(
        [ir_measures.nDCG @ 10], qrels.rename(columns={'qid': 'query_id', 'docno': 'doc_id', 'label': 'relevance'}),
        run.rename(columns={'qid': 'query_id', 'docno': 'doc_id'})[['query_id', 'doc_id', 'score']])}
    top = ranks.assign(hit=ranks['rank'] <= 100).groupby(['set', 'qid']).agg(passages=('docno', 'size'),
                                                                               R_set_at_100=('hit', 'mean')).reset_index()
    queries = top.rename(columns={'R_set_at_100': 'R_set@100'}).assign(**{'nDCG@10': lambda f: f['qid'].map(ndcg).fillna(0.0)})
    return ranks.drop(columns=['length', 'bin']), queries


def _wilcoxon(d: np.ndarray) -> float:
    from scipy.stats import wilcoxon
    d = d[np.isfinite(d)]
    if len(d) == 0 or np.all(d == 0):
        return 1.0 if len(d) else float('nan')
    return float(wilcoxon(d, zero_method='zsplit').pvalue)


def margin_of(measure: str, settings: Optional[stats.ClaimSettings] = None, claim_id: str = '') -> float:
    """The measure's equivalence margin: a per-claim or declared YAML margin, else :data:`MARGINS`."""
    if settings is not None:
        if claim_id and claim_id in settings.per_claim:
            return float(settings.per_claim[claim_id])
        if settings.declared and (measure in settings.margins or '*' in settings.margins):
            return settings.margin(measure)
    return float(MARGINS.get(measure, stats.DEFAULT_MARGIN))


def _pair_rows(values: pd.DataFrame, unit: str, measure: str, stage: str, arms: Sequence[str], settings,
               pairs=PAIRS) -> List[Dict]:
    """``values``: one row per (arm, set, unit id) with the measure; paired rows of each (arm, reference) pair."""
    rows = []
    key = 'docno' if unit == 'passage' else 'qid'
    margin = margin_of(measure, settings)
    for arm, ref in pairs:
        if arm not in arms or ref not in arms:
            continue
        for s in ('H', 'C'):
            a = values[(values['arm'] == arm) & (values['set'] == s)].set_index(key)[measure]
            b = values[(values['arm'] == ref) & (values['set'] == s)].set_index(key)[measure]
            common = a.index.intersection(b.index)
            d = (a[common] - b[common]).to_numpy(float)
            summ = stats.paired_summary(d, margin=margin)
            p = _wilcoxon(d) if unit == 'passage' else summ['p_diff']
            rows.append({'stage': stage, 'set': s, 'arm': arm, 'reference': ref, 'unit': unit, 'measure': measure,
                         'test': 'wilcoxon' if unit == 'passage' else 't', 'n': summ['n'],
                         'mean_arm': float(a[common].mean()) if len(common) else np.nan,
                         'mean_reference': float(b[common].mean()) if len(common) else np.nan,
                         'median_diff': float(np.median(d)) if len(d) else np.nan, 'diff': summ['diff'],
                         'ci_low': summ['ci_low'], 'ci_high': summ['ci_high'], 'sd': summ['sd'], 'mde': summ['mde'],
                         'margin': margin, 'p_value': p, 'p_t': summ['p_diff'], 'p_tost': summ['p_tost'],
                         'interval': summ['interval']})
    return rows


def comparisons(ranks: pd.DataFrame, queries: pd.DataFrame, pll: Optional[pd.DataFrame] = None,
                settings: Optional[stats.ClaimSettings] = None) -> pd.DataFrame:
    """Every paired comparison of :data:`PAIRS` (see the module docstring), with ``p_holm`` (Holm across the arms
    within each stage, set and measure). ``ranks``/``queries`` have ``stage`` and ``arm`` columns; ``pll`` has
    ``arm, set, docno, PLL``."""
    rows = []
    for stage in ranks['stage'].unique():
        r, q = ranks[ranks['stage'] == stage], queries[queries['stage'] == stage]
        arms = list(r['arm'].unique())
        rows += _pair_rows(r, 'passage', 'log2_rank', stage, arms, settings)
        rows += _pair_rows(q, 'query', 'R_set@100', stage, arms, settings)
        rows += _pair_rows(q, 'query', 'nDCG@10', stage, arms, settings)
    if pll is not None and len(pll):
        rows += _pair_rows(pll, 'passage', 'PLL', 'edited backbone', list(pll['arm'].unique()), settings)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table['p_holm'] = np.nan
    for _, idx in table.groupby(['stage', 'set', 'measure']).groups.items():
        table.loc[idx, 'p_holm'] = stats.holm(table.loc[idx, 'p_value'].to_numpy())[1]
    return table


def _part(table, stage, s, arm, ref, measure, flip=False) -> Optional[Dict]:
    """The comparison ``arm - ref`` (``ref - arm`` with ``flip``) as a claim part. The table holds each pair once, in
    whichever orientation :func:`comparisons` made it, so a pair stored as ``ref - arm`` is read negated; None only
    where the pair was not measured."""
    def rows(a, b):
        return table[(table['stage'] == stage) & (table['set'] == s) & (table['arm'] == a) & (table['reference'] == b)
                     & (table['measure'] == measure)]
    row, negate = rows(arm, ref), flip
    if row.empty:
        row, negate = rows(ref, arm), not flip
        if row.empty:
            return None
    r = row.iloc[0]
    sign = -1.0 if negate else 1.0
    lo, hi = (-r['ci_high'], -r['ci_low']) if negate else (r['ci_low'], r['ci_high'])
    label = f'{measure} {s}: {ref} - {arm}' if flip else f'{measure} {s}: {arm} - {ref}'
    summary = {'diff': sign * r['diff'], 'ci_low': lo, 'ci_high': hi, 'mde': r['mde'], 'margin': r['margin'],
               'n': int(r['n']), 'interval': r['interval'], 'p_tost': r['p_tost'], 'seeds': 1}
    return {'label': label, 'diff': sign * r['diff'], 'p_diff': r['p_holm'], 'p_tost': r['p_tost'], 'margin': r['margin'],
            'summary': summary, 'test': r['test']}


def _claim(cid, claim, kind, parts, why_missing, ours_fn, test) -> Dict:
    parts = [p for p in parts if p is not None]
    if not parts:
        return {'study': STUDY, 'id': cid, 'claim': claim, 'paper': PAPER, 'ours': 'n/a', 'p_value': None,
                'verdict': stats.NOT_MEASURED, 'detail': why_missing, **stats.missing_fields(kind, np.nan, test)}
    decided = stats.combine(parts, kind)
    deciding = parts[decided['index']] if decided['index'] is not None else parts[0]
    fields = stats.claim_fields(deciding['summary'], kind, decided['verdict'], test=test, p_tost=decided['p_tost'])
    fields['deciding'] = deciding['label']
    fields['parts'] = [{'label': p['label'], 'diff': p['diff'], 'ci_low': p['summary']['ci_low'],
                        'ci_high': p['summary']['ci_high'], 'p_value': p['p_diff'], 'p_tost': p['p_tost'],
                        'test': p['test'], 'n': p['summary']['n'],
                        'verdict': stats.verdict(kind, p['diff'], p['p_diff'], p['p_tost'], p['margin'])} for p in parts]
    detail = '; '.join(f'{p["label"]}: {stats.fmt_interval(p["diff"], p["summary"]["ci_low"], p["summary"]["ci_high"])} '
                       f'({p["test"]}, Holm p={p["p_diff"]:.3g}, n={p["summary"]["n"]})' for p in parts)
    p = decided['p_diff']
    return {'study': STUDY, 'id': cid, 'claim': claim, 'paper': PAPER, 'ours': ours_fn(parts),
            'p_value': None if p is None or not np.isfinite(p) else float(p), 'verdict': decided['verdict'],
            'detail': f'{detail}; all parts must hold (intersection-union), deciding part: {fields["deciding"]}',
            **fields}


def _ours(parts) -> str:
    return '; '.join(f'{p["label"]} {p["diff"]:+.3f}' for p in parts)


RANK_TEST = ('Wilcoxon signed-rank per passage on log2 rank, paired t per query on R_set@100; Holm across the arms '
             '(per stage, set and measure); TOST paired t on the per-unit differences')


def _persist_parts(table, family: str, stage: str) -> List[Optional[Dict]]:
    arm = f'{family}-H'
    parts = [_part(table, stage, 'H', arm, 'unedited', 'log2_rank'),
             _part(table, stage, 'H', arm, 'unedited', 'R_set@100', flip=True),
             _part(table, stage, 'H', arm, f'{family}-C', 'log2_rank')]
    if family == 'suppress':
        parts.append(_part(table, stage, 'H', arm, 'suppress-random', 'log2_rank'))
    return parts


def _clean(obj):
    """JSON-safe: non-finite floats become ``None`` (recursively), numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def claims(table: pd.DataFrame, *, stages: Sequence[str] = ('fine-tuned',)) -> List[Dict]:
    """The study's claims from the comparison table (see the module docstring); JSON-safe (no NaN)."""
    out = []
    names = {'suppress': 'zeroing the FFN neurons integrated gradients attribute to H',
             'unlearn': 'gradient ascent on the masked-LM loss of H'}
    pll_test = 'Wilcoxon signed-rank per passage on PLL, Holm across the arms; TOST paired t'
    failed = {}     # family -> the edit check's verdict, where it did not show the edit removed H more than C
    for family, how in names.items():
        parts = [_part(table, 'edited backbone', 'H', f'{family}-H', f'{family}-C', 'PLL'),
                 _part(table, 'edited backbone', 'C', f'{family}-C', f'{family}-H', 'PLL')]
        out.append(_claim(f'{family}_effect', f'{how} lowers the pseudo-log-likelihood of H more than the matched edit '
                          'for C does (and the C edit lowers C more)', 'less', parts,
                          f'no PLL of the {family} arms', _ours, pll_test))
        if out[-1]['verdict'] != stats.SUPPORTED.format(direction='lower'):
            failed[family] = out[-1]['verdict']
    for stage in stages:
        tag = '' if stage == 'fine-tuned' else f'_{stage.replace(" ", "_")}'
        when = 'after fine-tuning' if stage == 'fine-tuned' else f'({stage})'
        all_parts = []
        for family, how in names.items():
            parts = _persist_parts(table, family, stage)
            all_parts += parts
            persists = _claim(f'{family}_persists{tag}', f'{when}, H passages stay less retrievable when the backbone was '
                              f'edited by {how} (than unedited, than the matched C edit'
                              f'{", than as many random neurons" if family == "suppress" else ""})', 'greater', parts,
                              f'no retrieval of the {family} arms at stage {stage!r}', _ours, RANK_TEST)
            out.append(_precondition(persists, {f: v for f, v in failed.items() if f == family}))
        removed = _claim(f'removed_stays_unretrievable{tag}', f'removed knowledge stays unretrievable {when} '
                         '(both edits, every control)', 'greater', all_parts, f'no retrieval at stage {stage!r}',
                         _ours, RANK_TEST)
        out.append(_precondition(removed, failed))
    return _clean(out)


def _precondition(claim: Dict, failed: Dict[str, str]) -> Dict:
    """A retrievability claim presupposes an edit that removed H more than C. ``failed``: the edit families the claim
    rests on whose edit check did not show that (family -> its verdict). If any, the claim keeps its verdict on the
    measured ranks but says, in ``precondition`` and first in ``detail``, that it tests a non-specific edit, so a
    reader cannot take it as evidence about *removed* knowledge."""
    if not failed:
        return claim
    why = '; '.join(f'the {f} edit check is "{v}"' for f, v in failed.items())
    note = (f'precondition not met: {why}, so the check did not show that the edit removed H more than C, and this '
            'claim measures retrievability after an edit that was not shown to be specific to H, not of removed '
            'knowledge')
    return {**claim, 'precondition': note, 'detail': f'{note}. {claim["detail"]}'}


# ------------------------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_ranks(ranks: pd.DataFrame, folder, stem: str, title: str, cap: int) -> List[str]:
    """Per arm, the distribution (ECDF) of the H and C passages' ranks for their queries (log scale)."""
    plt = _plt()
    arms = list(dict.fromkeys(ranks['arm']))
    cols = min(3, len(arms))
    rows = int(np.ceil(len(arms) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, arm in zip(axes.flat, arms):
        for s, style in (('H', '-'), ('C', '--')):
            r = np.sort(ranks[(ranks['arm'] == arm) & (ranks['set'] == s)]['rank'].to_numpy(float))
            if len(r):
                ax.step(r, np.arange(1, len(r) + 1) / len(r), style, where='post', lw=1.6,
                        label=f'{s} (median {np.median(r):.0f}, top-100 {np.mean(r <= 100):.0%})')
        ax.axvline(cap, color='grey', ls=':', lw=1)
        ax.set_xscale('log')
        ax.set_title(arm, fontsize=10)
        ax.legend(fontsize=8, loc='upper left')
        ax.tick_params(labelsize=8)
    for ax in axes.flat[len(arms):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel('rank of the passage for its query (log)', fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel('share of passages', fontsize=9)
    fig.suptitle(f'{title}   (dotted: not in the top {cap - 1}, counted as {cap})', fontsize=10)
    fig.tight_layout()
    return save_figure(fig, folder, stem)


def plot_shifts(values: pd.DataFrame, measure: str, folder, stem: str, title: str, ylabel: str) -> List[str]:
    """Per edited arm, box plots of each passage's change against the unedited arm, H and C side by side."""
    plt = _plt()
    base = values[values['arm'] == 'unedited'].set_index(['set', 'docno'])[measure]
    arms = [a for a in dict.fromkeys(values['arm']) if a != 'unedited']
    if base.empty or not arms:
        return []
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(arms), 3.6))
    data, pos, colours = [], [], []
    for i, arm in enumerate(arms):
        for j, s in enumerate(('H', 'C')):
            v = values[(values['arm'] == arm) & (values['set'] == s)].set_index(['set', 'docno'])[measure]
            d = (v - base.reindex(v.index)).dropna().to_numpy(float)
            data.append(d if len(d) else np.array([np.nan]))
            pos.append(i * 3 + j)
            colours.append('#d62728' if s == 'H' else '#1f77b4')
    bp = ax.boxplot(data, positions=pos, widths=0.8, patch_artist=True, showfliers=False)
    for patch, c in zip(bp['boxes'], colours):
        patch.set_facecolor(c)
        patch.set_alpha(0.5)
    ax.axhline(0, color='grey', lw=1)
    ax.set_xticks([i * 3 + 0.5 for i in range(len(arms))])
    ax.set_xticklabels(arms, fontsize=9, rotation=15)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color='#d62728', alpha=0.5, label='H'), Patch(color='#1f77b4', alpha=0.5, label='C')],
              fontsize=8, loc='best')
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, folder, stem)
