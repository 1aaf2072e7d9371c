"""Multistage claims from a small inline result folder (no models)."""
import json

import numpy as np
import pandas as pd
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.report_multistage import claims, write_report


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
    assert v['C re-ranking BM25 beats BM25'] == 'supported'
    assert v['C > D (BM25 top-k)'] == 'supported'
    assert v['C->D ≈ C (BM25 top-k)'].startswith('supported')
    assert v['D->C ≈ C (TAS-B top-k)'] == 'not supported (significantly higher)'
    assert v['D re-ranking TAS-B is below TAS-B alone'] == 'supported'
    assert all('97 queries' in r['detail'] for r in rows)
    assert rows[0]['ours'].startswith('BM25 >> C @100')
    assert '0.724' in rows[0]['paper'] and (f / 'report.md').read_text().count('\n|') >= len(rows)
    assert all(0 <= r['p_value'] <= 1 for r in rows)


def test_missing_systems_and_folder(tmp_path):
    f = folder(tmp_path, {'BM25': 0.0, 'BM25 >> C': 0.1})
    rows = claims(f)
    assert {r['verdict'] for r in rows[1:]} == {'n/a'}
    with pytest.raises(KnowacqError, match='no meta.json'):
        claims(tmp_path / 'nothing')


def test_system_names_split_into_first_stage_and_strategy():
    from pyterrier_knowacq.report_multistage import _parse
    assert _parse('BM25') == ('BM25', None)
    assert _parse('BM25 >> C') == ('BM25', 'C')
    assert _parse('BM25 >> C @100') == ('BM25', 'C@100')
    assert _parse('TAS-B >> D→C') == ('TAS-B', 'D-C')
    # a ColBERT stage is part of the first stage, not a strategy, so "BM25 >> ColBERT >> C" never shadows "BM25 >> C"
    assert _parse('BM25 >> ColBERT') == ('BM25 >> ColBERT', None)
    assert _parse('BM25 >> ColBERT >> C-D') == ('BM25 >> ColBERT', 'C-D')
