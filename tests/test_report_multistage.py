"""Multistage claims from a small inline result folder (no models)."""
import json

import numpy as np
import pandas as pd
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.reports.multistage import claims, write_report


def folder(tmp_path, shift):
    rng = np.random.default_rng(0)
    (tmp_path / 'meta.json').write_text(json.dumps({'experiment': 'multistage'}))
    for coll, n in (('dl19', 43), ('dl20', 54)):
        rows = []
        base = rng.uniform(0.2, 0.6, n)
        for name, add in shift.items():
            for i in range(n):
                rows.append((name, f'q{i}', 'nDCG@10', float(np.clip(base[i] + add + rng.normal(0, 0.02), 0, 1))))
        (tmp_path / coll).mkdir()
        pd.DataFrame(rows, columns=['name', 'qid', 'measure', 'value']).to_csv(tmp_path / coll / 'perquery.csv', index=False)
    return tmp_path


def test_claims_verdicts(tmp_path):
    f = folder(tmp_path, {'BM25': 0.0, 'BM25 >> C @100': 0.12, 'BM25 >> C': 0.1, 'BM25 >> D': 0.03, 'BM25 >> C-D': 0.1, 'BM25 >> D-C': 0.1,
                          'TAS-B': 0.2, 'TAS-B >> C': 0.22, 'TAS-B >> D': 0.1, 'TAS-B >> C-D': 0.22, 'TAS-B >> D-C': 0.3})
    rows = write_report(f)
    v = {r['claim']: r['verdict'] for r in rows}
    assert v['C re-ranking BM25 beats BM25'] == 'supported (higher)'
    assert v['C > D (BM25 top-k)'] == 'supported (higher)'
    assert v['C->D ≈ C (BM25 top-k)'] == 'equivalent within ±0.02'
    assert v['D->C ≈ C (TAS-B top-k)'] == 'different'
    assert v['D re-ranking TAS-B is below TAS-B alone'] == 'supported (lower)'
    assert all('97 queries' in r['detail'] for r in rows)
    assert rows[0]['ours'].startswith('BM25 >> C @100')
    md = (f / 'report.md').read_text()
    assert '0.724' in rows[0]['paper'] and md.count('\n|') >= len(rows)
    assert all(0 <= r['p_value'] <= 1 for r in rows)
    # effect sizes, margins and power travel with every claim (report.json and report.md)
    saved = json.loads((f / 'report.json').read_text())['claims']
    for r in saved:
        assert {'diff', 'ci_low', 'ci_high', 'mde', 'margin', 'underpowered', 'test', 'kind'} <= set(r)
        assert r['ci_low'] <= r['diff'] <= r['ci_high'] and r['mde'] > 0 and r['margin'] == 0.02
        assert f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" in md
    first = rows[0]   # C re-ranking BM25: +0.12 on every query, the paper's effect (~0.21) far above the MDE
    assert abs(first['diff'] - 0.12) < 0.01 and first['underpowered'] is False and first['paper_diff'] > 0.2
    assert 'equivalent within ±0.02' in md and 'MDE' in md


def test_missing_systems_and_folder(tmp_path):
    f = folder(tmp_path, {'BM25': 0.0, 'BM25 >> C': 0.1})
    rows = claims(f)
    assert {r['verdict'] for r in rows[1:]} == {'not measured'}
    assert all(r['diff'] is None and r['margin'] == 0.02 for r in rows[1:])
    with pytest.raises(KnowacqError, match='no meta.json'):
        claims(tmp_path / 'nothing')


def test_system_names_split_into_first_stage_and_strategy():
    from pyterrier_knowacq.reports.multistage import _parse
    assert _parse('BM25') == ('BM25', None)
    assert _parse('BM25 >> C') == ('BM25', 'C')
    assert _parse('BM25 >> C @100') == ('BM25', 'C@100')
    assert _parse('TAS-B >> D→C') == ('TAS-B', 'D-C')
    # a ColBERT stage is part of the first stage, not a strategy, so "BM25 >> ColBERT >> C" never shadows "BM25 >> C"
    assert _parse('BM25 >> ColBERT') == ('BM25 >> ColBERT', None)
    assert _parse('BM25 >> ColBERT >> C-D') == ('BM25 >> ColBERT', 'C-D')


def test_margin_from_the_experiment_yaml(tmp_path):
    """`claims:` in the experiment config sets the margin per measure and per claim id; typos are one error."""
    f = folder(tmp_path, {'BM25': 0.0, 'BM25 >> C': 0.1, 'BM25 >> C-D': 0.1, 'BM25 >> D-C': 0.11})
    meta = {'experiment': 'multistage', 'config': {'claims': {'equivalence_margin': {'nDCG@10': 0.05},
                                                               'per_claim': {'dc_eq_c': 0.001}}}}
    (f / 'meta.json').write_text(json.dumps(meta))
    rows = {r['id']: r for r in claims(f)}
    assert rows['cd_eq_c']['margin'] == 0.05 and rows['cd_eq_c']['verdict'] == 'equivalent within ±0.05'
    assert rows['dc_eq_c']['margin'] == 0.001 and rows['dc_eq_c']['verdict'] == 'different'
    meta['config']['claims'] = {'equivalence_margins': 0.05}
    (f / 'meta.json').write_text(json.dumps(meta))
    with pytest.raises(KnowacqError, match='unknown keys'):
        claims(f)


def test_per_seed_values_are_averaged_per_query(tmp_path):
    """A `seed` column (several training seeds) keeps the query as the unit and says how many seeds were averaged."""
    f = folder(tmp_path, {'BM25': 0.0, 'BM25 >> C': 0.1})
    for coll in ('dl19', 'dl20'):
        df = pd.read_csv(f / coll / 'perquery.csv')
        seeds = [df.assign(seed=s, value=df['value'] + (0.01 * s) * (df['name'] != 'BM25')) for s in (1, 2, 3)]
        both = pd.concat(seeds)
        bm25 = (both['name'] == 'BM25') & (both['seed'] == 1)    # BM25 is deterministic: one seedless row per query
        both = pd.concat([both[both['name'] != 'BM25'], both[bm25].assign(seed=np.nan)])
        both.to_csv(f / coll / 'perquery.csv', index=False)
    row = claims(f)[0]
    assert row['seeds'] == 3 and row['n'] == 97 and 'averaged over 3 seeds' in row['detail']
    assert abs(row['diff'] - 0.12) < 0.01
