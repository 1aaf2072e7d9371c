"""Claims of the multi-stage fine-tuning study, computed from a result folder only (no model code imported).

Pezzuti, MacAvaney & Tonellotto, "Exploring the Effectiveness of Multi-stage Fine-tuning for Cross-encoder
Re-rankers", ECIR 2025. Strategies: C = contrastive (LCE), D = distillation (RankNet on RankGPT-3.5 orderings),
C->D and D->C = two stages. System names in the result folder follow ``<first stage> >> <strategy>`` (e.g.
``BM25 >> C``, ``TAS-B >> D-C``); the first stages alone are ``BM25`` and the strong one (``TAS-B`` / ``SPLADE++``).

Claims (each on the queries of all test collections pooled, e.g. DL19 + DL20 = 97 queries: the mean paired
difference a - b with its 95% interval, a paired t-test Holm-corrected over the claims, TOST against the claim's
margin (YAML ``claims: {equivalence_margin: {nDCG@10: 0.02}}``, the default) Holm-corrected over the claims, and the
minimum detectable effect at 80% power; verdicts and rules: :mod:`pyterrier_knowacq.analysis.stats`):

1. ``c_beats_bm25``: C re-ranking BM25 beats BM25 (the sanity check of the recipe).
2. ``c_gt_d``: C > D.
3. ``cd_eq_c``: C->D ≈ C (equivalent within the margin).
4. ``dc_eq_c``: D->C ≈ C.
5. ``d_below_first_stage``: D re-ranking a strong first stage is below that first stage alone.

Per-seed values (a ``seed`` column in ``perquery.csv``) are averaged over seeds per query before the tests.

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
from .analysis import stats

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
ALPHA = stats.ALPHA
TEST = 'paired t-test and TOST paired t over queries, each Holm over the claims'


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


def _matrix(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Values of one system as ``[seeds, query keys]``: one row per seed when the rows carry a ``seed`` (several
    training seeds), else one row (a deterministic system such as BM25 pairs with every seed of the other)."""
    sub = df[df['name'] == name]
    if 'seed' in sub.columns and sub['seed'].notna().any():
        return sub.pivot_table(index='seed', columns='key', values='value', aggfunc='mean')
    return sub.groupby('key')['value'].mean().to_frame().T


def _paired(df: pd.DataFrame, a: str, b: str):
    """``(values of a, values of b, shared query keys)``, arrays ``[seeds, queries]`` (each system's own seeds; the
    tests average them per query); None below 2 shared queries."""
    pa, pb = _matrix(df, a), _matrix(df, b)
    keys = pa.columns.intersection(pb.columns)
    x, y = pa[keys].to_numpy(float), pb[keys].to_numpy(float)
    ok = ~(np.isnan(x).any(0) | np.isnan(y).any(0))
    if ok.sum() < 2:
        return None
    return x[:, ok], y[:, ok], [k for k, o in zip(keys, ok) if o]


def _paper_diff(a: str, b: str, keys) -> Optional[float]:
    """The paper's effect a - b: its DL19 and DL20 differences weighted by our queries of each (equal if neither)."""
    if a not in PAPER or b not in PAPER:
        return None
    w = np.array([sum(str(k).startswith('dl19:') for k in keys), sum(str(k).startswith('dl20:') for k in keys)], float)
    w = w / w.sum() if w.sum() else np.array([0.5, 0.5])
    return float(np.dot(w, np.subtract(PAPER[a], PAPER[b])))


def claims(result_folder, measure: str = 'nDCG@10') -> List[dict]:
    """The study's claims: the paper's figure, ours (pooled means), the Holm-corrected p-value of the difference, the
    mean difference with its 95% interval, margin, MDE, underpowered flag and a verdict (the ``stats`` vocabulary)."""
    df, meta = _load(Path(result_folder), measure)
    settings = stats.claim_settings(meta)
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

    def add(cid, claim, a, b, paper, kind, paper_pair):
        """kind: 'greater' (a > b), 'equivalence' (a ≈ b), 'less' (a < b)."""
        margin = settings.margin(measure, cid, claim)
        row = {'study': STUDY, 'id': cid, 'claim': claim, 'paper': paper}
        res = None if a is None or b is None else _paired(df, a, b)
        if res is None:
            why = 'system missing from the result folder' if a is None or b is None else \
                f'fewer than 2 shared queries for {a} and {b}'
            rows.append({**row, 'ours': 'n/a', 'p_value': None, 'verdict': stats.NOT_MEASURED, 'detail': why,
                         **stats.missing_fields(kind, margin, TEST)})
            return
        x, y, keys = res
        summ = stats.paired_summary(x, y, margin=margin, interval=settings.interval)
        seeds = f', values averaged over {summ["seeds"]} seeds per query' if summ['seeds'] > 1 else ''
        rows.append({**row, 'ours': f'{a} {x.mean():.3f} vs {b} {y.mean():.3f}', 'p_value': summ['p_diff'],
                     'verdict': None, 'detail': f'{measure}, {summ["n"]} queries pooled from {n_coll} collection(s){seeds}',
                     '_kind': kind, '_summary': summ, '_paper_diff': _paper_diff(*paper_pair, keys)})

    if bm25:
        deep = next((n for (fs, st), n in sorted(by.items(), key=lambda kv: kv[1])
                     if fs == bm25 and st and st.startswith('C@')), None)   # e.g. "BM25 >> C @100": the top-100 check
        add('c_beats_bm25', f'C re-ranking {bm25} beats {bm25}', deep or by.get((bm25, 'C')), bm25,
            _paper('BM25 >> C', 'BM25'), 'greater', ('BM25 >> C', 'BM25'))
    for fs in ([bm25] if bm25 else []) + strong:
        tag = 'BM25' if fs == bm25 else 'ColBERTv2'
        add('c_gt_d', f'C > D ({fs} top-k)', by.get((fs, 'C')), by.get((fs, 'D')),
            _paper(f'{tag} >> C', f'{tag} >> D'), 'greater', (f'{tag} >> C', f'{tag} >> D'))
        add('cd_eq_c', f'C->D ≈ C ({fs} top-k)', by.get((fs, 'C-D')), by.get((fs, 'C')),
            _paper(f'{tag} >> C-D', f'{tag} >> C'), 'equivalence', (f'{tag} >> C-D', f'{tag} >> C'))
        add('dc_eq_c', f'D->C ≈ C ({fs} top-k)', by.get((fs, 'D-C')), by.get((fs, 'C')),
            _paper(f'{tag} >> D-C', f'{tag} >> C'), 'equivalence', (f'{tag} >> D-C', f'{tag} >> C'))
    for fs in strong:
        add('d_below_first_stage', f'D re-ranking {fs} is below {fs} alone', by.get((fs, 'D')), fs,
            _paper('ColBERTv2 >> D', 'ColBERTv2') + f'; {fs} stands in for ColBERTv2', 'less',
            ('ColBERTv2 >> D', 'ColBERTv2'))
    if not rows:
        raise KnowacqError(f'{result_folder} has none of the multistage systems (names like "BM25 >> C"); '
                           'is this the multistage experiment?')
    tested = [r for r in rows if '_summary' in r]
    _, p_diff = stats.holm([r['_summary']['p_diff'] for r in tested])
    _, p_tost = stats.holm([r['_summary']['p_tost'] for r in tested])
    for r, pdiff, ptost in zip(tested, p_diff, p_tost):
        summ, kind, paper_diff = r.pop('_summary'), r.pop('_kind'), r.pop('_paper_diff')
        r['p_value'] = None if np.isnan(pdiff) else float(pdiff)
        ptost = None if np.isnan(ptost) else float(ptost)
        r['verdict'] = stats.verdict(kind, summ['diff'], r['p_value'], ptost, summ['margin'])
        r.update(stats.claim_fields(summ, kind, r['verdict'], test=TEST, paper_diff=paper_diff, p_tost=ptost))
        r['detail'] += (f'; raw p={summ["p_diff"]:.4g}, raw TOST p={summ["p_tost"]:.4g} (±{summ["margin"]:g}), '
                        f'Holm over {len(tested)} claims; {summ["interval"]}')
    return rows


def markdown(rows: List[dict], settings: Optional[stats.ClaimSettings] = None) -> str:
    """The claims table (the same columns as ``knowacq report``) and the paragraph on how they are judged."""
    from .report import markdown as table
    return table(rows) + '\n' + stats.method_note(settings) + '\n'


def write_report(result_folder, measure: str = 'nDCG@10') -> List[dict]:
    """Write ``report.json`` and ``report.md`` into the result folder (atomically) and return the claims."""
    folder = Path(result_folder)
    rows = claims(folder, measure)
    settings = stats.claim_settings(json.loads((folder / 'meta.json').read_text()))
    atomic_write_json(folder / 'report.json', {'study': STUDY, 'measure': measure, 'claims': rows,
                                               'method': stats.method_note(settings)})
    title = '# Multi-stage fine-tuning (Pezzuti et al., ECIR 2025): claims\n\n'
    atomic_write_text(folder / 'report.md', title + markdown(rows, settings))
    return rows
