"""CI runs the scaled-down copy of the multi-stage grid end to end: training, re-ranking, results and the report."""
import json
from pathlib import Path

import pandas as pd

from pyterrier_knowacq.experiments.runner import run_experiment
from pyterrier_knowacq.reports.dispatch import write_report

EXPERIMENTS = Path(__file__).resolve().parents[1] / 'experiments'


def test_multistage_ci_grid_runs_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / 'cache'))
    out = run_experiment(EXPERIMENTS / 'multistage-ci.yaml', output=tmp_path / 'multistage-ci')
    meta = json.loads((out / 'meta.json').read_text())
    assert [c['name'] for c in meta['collections']] == ['dl19', 'dl20']
    assert set(meta['models']['dl19']) == {'C', 'D', 'C-D', 'D-C', 'ColBERT'}
    assert meta['models']['dl19']['C'] != meta['models']['dl20']['C']  # one model per fold
    for coll in ('dl19', 'dl20'):
        agg = pd.read_csv(out / coll / 'aggregated.csv')
        assert len(agg) == 12 and agg['nDCG@10'].between(0, 1).all()
        assert agg.set_index('name').loc['BM25 >> D', 'nDCG@10 p-value'] >= 0  # paired test against C
    text = write_report([out])
    claims = json.loads((out / 'report.json').read_text())['claims']
    assert claims and all({'claim', 'paper', 'ours', 'p_value', 'verdict'} <= set(c) for c in claims)
    assert 'C' in text and (out / 'report.md').exists()
