"""Claims of the multi-stage fine-tuning study, computed from a result folder only (no model code imported).

Pezzuti, MacAvaney & Tonellotto, "Exploring the Effectiveness of Multi-stage Fine-tuning for Cross-encoder
Re-rankers", ECIR 2025. Strategies: C = contrastive (LCE), D = distillation (RankNet on RankGPT-3.5 orderings),
C->D and D->C = two stages. System names in the result folder follow ``<first stage> >> <strategy>`` (e.g.
``BM25 >> C``, ``TAS-B >> D-C``); the first stages alone are ``BM25`` and the strong one (``TAS-B`` / ``SPLADE++``).

Claims (each a paired t-test on the queries of all test collections pooled, e.g. DL19 + DL20 = 97 queries;
Holm correction over the claims' tests):

1. C re-ranking BM25 beats BM25 (the sanity check of the recipe).
2. C > D.
3. C->D ≈ C (no significant difference).
4. D->C ≈ C.
5. D re-ranking a strong first stage is below that first stage alone.

Example::

    from pyterrier_knowacq.report_multistage import claims, write_report
    rows = claims('results/multistage')
    write_report('results/multistage')   # report.json + report.md
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from ._util import KnowacqError, atomic_write_json, atomic_write_text

__all__ = ['claims', 'markdown', 'write_report', 'PAPER']

STUDY = 'multistage'
# nDCG@10 of ELECTRA-base cross-encoders from the authors' released evaluation notebook
# (github.com/fpezzuti/multistage-finetuning, ms-ft/indomain_evaluation.ipynb, commit 580342c), DL19 / DL20.
PAPER = {
    'BM25': (0.5121, 0.4769), 'ColBERTv2': (0.7369, 0.7328),
    'BM25 >> C': (0.7236, 0.6759), 'BM25 >> D': (0.6691, 0.6147),
    'BM25 >> C-D': (0.7234, 0.6775), 'BM25 >> D-C': (0.7304, 0.6822),
    'ColBERTv2 >> C': (0.7537, 0.7337), 'ColBERTv2 >> D': (0.6916, 0.6407),
    'ColBERTv2 >> C-D': (0.7550, 0.7334), 'ColBERTv2 >> D-C': (0.7632, 0.7585),
}
ALPHA = 0.05


def _fmt(pair):
    return f'{pair[0]:.3f} / {pair[1]:.3f}'


def _paper(a: str, b: str) -> str:
    """Paper figures (DL19 / DL20) for systems a and b."""
    return f'{a.replace("ColBERTv2", "ColBERTv2")} {_fmt(PAPER[a])} vs {b} {_fmt(PAPER[b])} (ELECTRA, nDCG@10 DL19/DL20)'


def _norm_strategy(s: str) -> str:
    s = s.strip().replace('→', '-').replace('->', '-').replace(' ', '')
    return s.upper()


STRATEGIES = ('C', 'D', 'C-D', 'D-C')


def _parse(name: str) -> Tuple[str, Optional[str]]:
    """``'BM25 >> ColBERT >> C'`` -> ``('BM25 >> ColBERT', 'C')``; a name whose last stage is no fine-tuning strategy
    (``'BM25'``, ``'BM25 >> ColBERT'``) is a first stage: ``(name, None)``. ``'BM25 >> C @100'`` -> ``'C@100'``."""
    parts = [p.strip() for p in str(name).split('>>')]
    last = _norm_strategy(parts[-1])
    if len(parts) == 1 or last.split('@')[0] not in STRATEGIES:
        return ' >> '.join(parts), None
    return ' >> '.join(parts[:-1]), last


def _load(folder: Path, measure: str) -> Tuple[pd.DataFrame, dict]:
    folder = Path(folder)
    meta_file = folder / 'meta.json'
    if not meta_file.exists():
        raise KnowacqError(f'{folder} is not a result folder (no meta.json); run `knowacq run experiments/multistage.yaml` first')
    meta = json.loads(meta_file.read_text())
    frames = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / 'perquery.csv').exists()):
        df = pd.read_csv(sub / 'perquery.csv', dtype={'qid': str})
        df = df[df['measure'].astype(str) == measure]
        frames.append(df.assign(collection=sub.name))
    if not frames:
        raise KnowacqError(f'{folder} holds no <collection>/perquery.csv; the experiment did not finish')
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        raise KnowacqError(f'no per-query values of {measure} in {folder}; add it to the experiment measures')
    df['key'] = df['collection'] + ':' + df['qid'].astype(str)
    return df, meta


def _paired(df: pd.DataFrame, a: str, b: str):
    """Mean of a, mean of b, p-value of the paired t-test over the queries both have, number of queries."""
    from scipy import stats
    pa = df[df['name'] == a].set_index('key')['value']
    pb = df[df['name'] == b].set_index('key')['value']
    keys = pa.index.intersection(pb.index)
    if len(keys) < 2:
        return None
    x, y = pa[keys].to_numpy(float), pb[keys].to_numpy(float)
    p = float(stats.ttest_rel(x, y).pvalue) if np.any(x != y) else 1.0
    return float(x.mean()), float(y.mean()), p, len(keys)


def _holm(pvals: List[float]) -> List[float]:
    order = np.argsort(pvals)
    m = len(pvals)
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvals[i]))
        out[i] = running
    return out


def claims(result_folder, measure: str = 'nDCG@10') -> List[dict]:
    """The study's claims with the paper's figure, ours (pooled means), the p-value (Holm-corrected) and a verdict."""
    df, meta = _load(Path(result_folder), measure)
    names = sorted(df['name'].unique())
    by = {}
    for n in names:
        fs, strat = _parse(n)
        by[(fs, strat)] = n
    first_stages = sorted({fs for fs, s in by if s is None})
    bm25 = next((f for f in first_stages if f.upper().startswith('BM25') and '>>' not in f), None)
    strong = [f for f in first_stages if f != bm25 and any((f, s) in by for s in ('C', 'D'))]
    n_coll = df['collection'].nunique()
    rows = []

    def add(claim, a, b, paper, kind):
        """kind: 'greater' (a > b), 'equal' (a ≈ b), 'less' (a < b)."""
        if a is None or b is None:
            rows.append({'study': STUDY, 'claim': claim, 'paper': paper, 'ours': 'n/a', 'p_value': None,
                         'verdict': 'n/a', 'detail': 'system missing from the result folder', '_kind': kind})
            return
        res = _paired(df, a, b)
        if res is None:
            rows.append({'study': STUDY, 'claim': claim, 'paper': paper, 'ours': 'n/a', 'p_value': None,
                         'verdict': 'n/a', 'detail': f'fewer than 2 shared queries for {a} and {b}', '_kind': kind})
            return
        ma, mb, p, n = res
        rows.append({'study': STUDY, 'claim': claim, 'paper': paper, 'ours': f'{a} {ma:.3f} vs {b} {mb:.3f}',
                     'p_value': p, 'verdict': None,
                     'detail': f'{measure}, paired t-test over {n} queries pooled from {n_coll} collection(s)',
                     '_kind': kind, '_diff': ma - mb})

    if bm25:
        deep = next((n for (fs, st), n in sorted(by.items(), key=lambda kv: kv[1])
                     if fs == bm25 and st and st.startswith('C@')), None)   # e.g. "BM25 >> C @100": the top-100 check
        add(f'C re-ranking {bm25} beats {bm25}', deep or by.get((bm25, 'C')), bm25, _paper('BM25 >> C', 'BM25'), 'greater')
    for fs in ([bm25] if bm25 else []) + strong:
        tag = 'BM25' if fs == bm25 else 'ColBERTv2'
        add(f'C > D ({fs} top-k)', by.get((fs, 'C')), by.get((fs, 'D')), _paper(f'{tag} >> C', f'{tag} >> D'), 'greater')
        add(f'C->D ≈ C ({fs} top-k)', by.get((fs, 'C-D')), by.get((fs, 'C')), _paper(f'{tag} >> C-D', f'{tag} >> C'), 'equal')
        add(f'D->C ≈ C ({fs} top-k)', by.get((fs, 'D-C')), by.get((fs, 'C')), _paper(f'{tag} >> D-C', f'{tag} >> C'), 'equal')
    for fs in strong:
        add(f'D re-ranking {fs} is below {fs} alone', by.get((fs, 'D')), fs,
            _paper('ColBERTv2 >> D', 'ColBERTv2') + f'; {fs} stands in for ColBERTv2', 'less')
    if not rows:
        raise KnowacqError(f'{result_folder} has none of the multistage systems (names like "BM25 >> C"); '
                           'is this the multistage experiment?')
    tested = [i for i, r in enumerate(rows) if r['p_value'] is not None]
    corrected = _holm([rows[i]['p_value'] for i in tested]) if tested else []
    for i, pc in zip(tested, corrected):
        r = rows[i]
        r['detail'] += f'; raw p={r["p_value"]:.4g}, Holm over {len(tested)} tests'
        r['p_value'] = pc
        diff, sig = r['_diff'], pc < ALPHA
        if r['_kind'] == 'greater':
            r['verdict'] = 'supported' if diff > 0 and sig else ('same direction, not significant' if diff > 0 else
                                                                 ('contradicted' if sig else 'not supported'))
        elif r['_kind'] == 'less':
            r['verdict'] = 'supported' if diff < 0 and sig else ('same direction, not significant' if diff < 0 else
                                                                 ('contradicted' if sig else 'not supported'))
        else:
            r['verdict'] = 'supported (no significant difference)' if not sig else \
                f'not supported (significantly {"higher" if diff > 0 else "lower"})'
    for r in rows:
        r.pop('_kind', None)
        r.pop('_diff', None)
    return rows


def markdown(rows: List[dict]) -> str:
    out = ['| claim | paper | ours | p (Holm) | verdict |', '|---|---|---|---|---|']
    for r in rows:
        p = 'n/a' if r['p_value'] is None else f'{r["p_value"]:.4f}'
        out.append(f'| {r["claim"]} | {r["paper"]} | {r["ours"]} | {p} | {r["verdict"]} |')
    return '\n'.join(out) + '\n'


def write_report(result_folder, measure: str = 'nDCG@10') -> List[dict]:
    """Write ``report.json`` and ``report.md`` into the result folder (atomically) and return the claims."""
    folder = Path(result_folder)
    rows = claims(folder, measure)
    atomic_write_json(folder / 'report.json', {'study': STUDY, 'measure': measure, 'claims': rows})
    title = '# Multi-stage fine-tuning (Pezzuti et al., ECIR 2025): claims\n\n'
    atomic_write_text(folder / 'report.md', title + markdown(rows))
    return rows
