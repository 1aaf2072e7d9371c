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

Per-seed values (a ``seed`` column in ``perquery.csv``, written by an experiment with ``seeds:``) are averaged over
seeds per query before the tests (the query stays the unit); such claims also carry a query×seed bootstrap interval
(queries resampled in pairs, each system's seeds resampled on their own) in ``seed_ci`` and their detail, ``ours``
gives each seeded system's mean ± sd over seeds, and ``report.md`` gains a seed-variance table (:func:`seed_table`:
each seeded system's value per seed and mean ± sd, pooled and per collection).

Example::

    from pyterrier_knowacq.reports.multistage import claims, write_report
    rows = claims('results/multistage')
    write_report('results/multistage')   # report.json + report.md
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from .. import results
from .._util import KnowacqError, atomic_write_json, atomic_write_text
from ..analysis import stats

__all__ = ['claims', 'markdown', 'write_report', 'seed_table', 'seed_markdown', 'PAPER']

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
    if not results.meta_path(folder).exists():
        raise KnowacqError(f'{folder} is not a result folder (no meta.json); run `knowacq run experiments/multistage.yaml` first')
    meta = results.read_meta(folder)
    frames = []
    for sub in results.collection_dirs(folder, results.PERQUERY):
        df = results.read_perquery(folder, sub.name)
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


def _seed_sd(m: np.ndarray) -> str:
    """`` ± sd`` over seeds of a ``[seeds, queries]`` matrix (each seed's mean over the queries); empty for one seed."""
    return f' ± {m.mean(1).std(ddof=1):.3f}' if m.shape[0] > 1 else ''


def _seed_bootstrap(x: np.ndarray, y: np.ndarray, samples: int = 10000, seed: int = 0,
                    alpha: float = ALPHA) -> Tuple[float, float]:
    """95% percentile interval of the mean difference of ``x`` ``[seeds_a, queries]`` and ``y`` ``[seeds_b, queries]``
    resampling queries (paired: the same queries for both) and each system's seeds (on their own: seed k of two
    systems are separate trainings, not a pair), so both sources of variance widen it."""
    rng = np.random.default_rng(seed)
    n = x.shape[1]
    q = rng.integers(0, n, size=(samples, n))

    def means(m):   # [samples, queries]: the mean over resampled seeds at each query, then the resampled queries
        per_query = m[rng.integers(0, m.shape[0], size=(samples, m.shape[0]))].mean(1)
        return np.take_along_axis(per_query, q, axis=1).mean(1)
    d = means(x) - means(y)
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


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
        seeds, extra = '', {}
        if summ['seeds'] > 1:
            lo, hi = _seed_bootstrap(x, y)
            extra['seed_ci'] = [lo, hi]
            seeds = (f', values averaged over {summ["seeds"]} seeds per query (a: {x.shape[0]}, b: {y.shape[0]}); '
                     f'query×seed bootstrap 95% interval [{lo:+.3f}, {hi:+.3f}]')
        rows.append({**row, 'ours': f'{a} {x.mean():.3f}{_seed_sd(x)} vs {b} {y.mean():.3f}{_seed_sd(y)}',
                     'p_value': summ['p_diff'], 'verdict': None,
                     'detail': f'{measure}, {summ["n"]} queries pooled from {n_coll} collection(s){seeds}',
                     '_kind': kind, '_summary': summ, '_paper_diff': _paper_diff(*paper_pair, keys), **extra})

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


def seed_table(result_folder, measure: str = 'nDCG@10') -> List[dict]:
    """Seed variance of every system evaluated under several seeds (a ``seed`` column in ``perquery.csv``): one row
    per system on the pooled queries of all collections (``collection: 'all'``), then one per collection, each with its
    ``values`` per seed (the mean over the queries), ``mean`` and ``sd`` (sample sd over seeds; None for one seed) and
    ``queries``. Strategies C and D first (then C-D, D-C, other seeded systems). ``[]`` when nothing has seeds."""
    df, _ = _load(Path(result_folder), measure)
    if 'seed' not in df.columns or not df['seed'].notna().any():
        return []
    seeded = df[df['seed'].notna()]
    rank = {'C': 0, 'D': 1, 'C-D': 2, 'D-C': 3}

    def order(name):
        fs, strat = _parse(name)
        return (rank.get((strat or '').split('@')[0], 4), strat or '', fs)
    rows = []
    for name in sorted(seeded['name'].unique(), key=order):
        sub = seeded[seeded['name'] == name]
        groups = [('all', sub)] + ([(c, g) for c, g in sub.groupby('collection', sort=True)]
                                   if sub['collection'].nunique() > 1 else [])
        for coll, g in groups:
            per_seed = g.groupby('seed')['value'].mean()
            values = {int(k): float(v) for k, v in per_seed.items()}
            sd = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None
            rows.append({'system': name, 'collection': coll, 'queries': int(g['key'].nunique()), 'values': values,
                         'mean': float(per_seed.mean()), 'sd': sd})
    return rows


def seed_markdown(result_folder, measure: str = 'nDCG@10') -> str:
    """The seed-variance section of ``report.md`` (:func:`seed_table`); empty when the folder has no seeds."""
    rows = seed_table(result_folder, measure)
    if not rows:
        return ''
    seeds = sorted({s for r in rows for s in r['values']})
    lines = [f'## Seed variance ({measure})', '',
             f'Each system that loads a trained model was trained and evaluated under {len(seeds)} seeds; its {measure} '
             'per seed (the mean over the queries), then the mean ± sd over seeds (sample sd). Seed-independent systems '
             '(first stages alone) are left out. The claims above average each query over seeds before the paired '
             'tests (the query is the unit); each claim\'s query×seed bootstrap interval is `seed_ci` in report.json.', '',
             '| system | queries | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean ± sd |',
             '|' + '---|' * (len(seeds) + 3)]
    for r in rows:
        cells = [f'{r["values"][s]:.4f}' if s in r['values'] else 'n/a' for s in seeds]
        spread = f'{r["mean"]:.4f} ± {r["sd"]:.4f}' if r['sd'] is not None else f'{r["mean"]:.4f}'
        lines.append(f'| {r["system"]} | {r["collection"]} ({r["queries"]}) | ' + ' | '.join(cells) + f' | {spread} |')
    return '\n'.join(lines) + '\n'


def markdown(rows: List[dict], settings: Optional[stats.ClaimSettings] = None) -> str:
    """The claims table (the same columns as ``knowacq report``) and the paragraph on how they are judged."""
    from .dispatch import markdown as table
    return table(rows) + '\n' + stats.method_note(settings) + '\n'


def write_report(result_folder, measure: str = 'nDCG@10') -> List[dict]:
    """Write ``report.json`` and ``report.md`` into the result folder (atomically) and return the claims."""
    folder = Path(result_folder)
    rows = claims(folder, measure)
    settings = stats.claim_settings(results.read_meta(folder))
    variance = seed_table(folder, measure)
    atomic_write_json(folder / results.REPORT_JSON, {'study': STUDY, 'measure': measure, 'claims': rows,
                                               'method': stats.method_note(settings),
                                               **({'seed_variance': variance} if variance else {})})
    title = '# Multi-stage fine-tuning (Pezzuti et al., ECIR 2025): claims\n\n'
    seeds = seed_markdown(folder, measure) if variance else ''
    atomic_write_text(folder / results.REPORT_MD, title + markdown(rows, settings) + ('\n' + seeds if seeds else ''))
    return rows
