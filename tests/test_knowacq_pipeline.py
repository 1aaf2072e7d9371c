import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pyterrier_knowacq._util import KnowacqError

ROOT = Path(__file__).resolve().parents[1]


CONFIG = {
    'n': [2, 3],
    'probes': ['concat', 'interaction'],
    'max_length': 32,
    'probe': {'max_epochs': 30, 'l2_grid': [0.01]},
    'probe_data': {'dl19': {'dataset': 'msmarco-passage', 'split': 'dl19', 'negatives': 'judged', 'rel_min': 2,
                            'max_queries': 9, 'max_per_query': 3}},
    'train': {'dataset': 'msmarco-passage', 'split': 'dl20'},
    'groups': {'bert-mean': {'pooling': 'mean', 'backbone': 'tiny-bert',
                             'compare': {'fine-tuned': {'spec': {'backbone': 'tiny-bert', 'steps': 2, 'queries_per_batch': 2,
                                                                 'data': {'max_queries': 4, 'rel_threshold': 2}}},
                                         'random': 'random:tiny-bert'}},
               'llama-last': {'pooling': 'last', 'backbone': 'tiny-llama', 'layers': [0, -1]}},
    'ig': {'groups': ['bert-mean'], 'data': 'dl19', 'texts': 2, 'steps': 3},
}


def test_run_analysis_writes_tables_and_plots(cache, tmp_path):
    from pyterrier_knowacq.analysis.pipeline import run_analysis
    out = tmp_path / 'res'
    summary = run_analysis(CONFIG, out, seed=1, verbose=False)
    acc = pd.read_csv(out / 'tables' / 'probe_accuracy.csv')
    assert set(acc.model) == {'backbone', 'fine-tuned', 'random'}
    bert = acc[acc.group == 'bert-mean']
    assert len(bert) == 3 * 2 * 2 * 3          # models x N x probes x layers (tiny-bert: embeddings + 2 blocks)
    assert sorted(acc[acc.group == 'llama-last'].layer.unique()) == [0, 2]
    assert bert.accuracy.between(0, 1).all() and (bert.ci_low <= bert.accuracy).all() and (bert.accuracy <= bert.ci_high).all()
    assert bert[bert.model == 'backbone'].p_value.isna().all()
    assert bert[bert.model != 'backbone'].p_value.between(0, 1).all()
    assert (bert.p_holm.fillna(1) >= bert.p_value.fillna(1) - 1e-12).all()
    trend = pd.read_csv(out / 'tables' / 'probe_n_trend.csv')
    assert {'acc_n2', 'acc_n3', 'p_value'} <= set(trend.columns)
    ig = pd.read_csv(out / 'tables' / 'ig_layers.csv')
    assert set(ig.model) == {'backbone', 'fine-tuned', 'random'} and len(ig) == 3 * 4
    for stem in ('probe-bert-mean-dl19-concat', 'probe-llama-last-dl19-interaction', 'ig-bert-mean'):
        assert (out / 'plots' / f'{stem}.png').stat().st_size > 1000 and (out / 'plots' / f'{stem}.svg').exists()
    assert summary['probe_data']['dl19']['test_queries'] >= 1
    json.dumps(summary)   # goes into meta.json
    # same seed -> same numbers
    again = run_analysis(CONFIG, tmp_path / 'res2', seed=1, verbose=False)
    pd.testing.assert_frame_equal(acc, pd.read_csv(tmp_path / 'res2' / 'tables' / 'probe_accuracy.csv'))
    assert again['last_layer_accuracy'] == summary['last_layer_accuracy']
    _check_report(out)


def _check_report(out):
    """report_knowacq reads the tables (plus meta.json / perquery.csv for the retrieval part of the random control)."""
    from pyterrier_knowacq.reports.knowacq import claims
    systems = [{'name': 'FT', 'tags': {'backbone': 'tiny-bert', 'strategy': 'infonce', 'pooling': 'cls', 'first_stage': 'bm25'}},
               {'name': 'RND', 'tags': {'backbone': 'random:tiny-bert', 'strategy': 'infonce', 'pooling': 'cls', 'first_stage': 'bm25'}}]
    (out / 'meta.json').write_text(json.dumps({'study': 'knowacq', 'systems': systems, 'collections': [{'name': 'dl19'}]}))
    (out / 'dl19').mkdir()
    rows = [(n, str(q), 'nDCG@10', v) for q in range(10) for n, v in (('FT', 0.5 + q / 40), ('RND', 0.1 + q / 100))]
    pd.DataFrame(rows, columns=['name', 'qid', 'measure', 'value']).to_csv(out / 'dl19' / 'perquery.csv', index=False)
    result = claims(out)
    keys = {'study', 'id', 'claim', 'paper', 'ours', 'p_value', 'verdict', 'detail',
            'kind', 'diff', 'ci_low', 'ci_high', 'mde', 'margin', 'underpowered', 'test'}
    assert all(keys <= set(c) for c in result) and len(result) == 6
    by = {c['claim'].split(' ')[0]: c for c in result}
    rnd = [c for c in result if c['claim'].startswith('pre-training')][0]
    assert rnd['verdict'] == 'supported (higher)' and rnd['p_value'] < 0.001 and '0.613 vs random-init 0.145' in rnd['ours']
    assert rnd['ci_low'] <= rnd['diff'] <= rnd['ci_high'] and rnd['margin'] == 0.02
    measured = [c['verdict'] != 'not measured' for c in result]
    # the test config has a mean group with a fine-tuned model, but no cls group and no fine-tuned decoder
    assert measured == [False, True, True, False, True, True], by
    fall = [c for c in result if c['claim'].startswith('probe accuracy falls')][0]
    assert 0 <= fall['p_value'] <= 1


def test_bad_analysis_sections(cache, tmp_path):
    from pyterrier_knowacq.analysis.pipeline import _check, run_analysis
    with pytest.raises(KnowacqError, match='unknown keys'):
        run_analysis({**CONFIG, 'probez': 1}, tmp_path, seed=1)
    with pytest.raises(KnowacqError, match='not defined'):
        run_analysis({**CONFIG, 'groups': {'g': {'backbone': 'tiny-bert', 'data': ['nope']}}}, tmp_path, seed=1)
    bad_layers = {**CONFIG, 'ig': None, 'groups': {'g': {'backbone': 'tiny-bert', 'pooling': 'cls', 'layers': [7]}}}
    with pytest.raises(KnowacqError, match='out of range'):
        run_analysis(bad_layers, tmp_path / 'x', seed=1, verbose=False)
    with pytest.raises(KnowacqError, match='causal'):
        run_analysis({**CONFIG, 'ig': None, 'groups': {'g': {'backbone': 'tiny-llama', 'pooling': 'cls'}}}, tmp_path / 'y', seed=1,
                     verbose=False)
    for ig, match in [({'step': 20}, "unknown keys.*did you mean 'steps'"), ({'steps': 1}, 'steps must be an integer >= 2'),
                      ({'groups': ['nope']}, "group 'nope' is not defined"), ({'data': 'nope'}, 'not defined under probe_data'),
                      ({'texts': 0}, 'texts must be'), ({'threshold': 10}, r'threshold must be a number in \(0, 1\)'),
                      ([1], 'must be a mapping')]:
        with pytest.raises(KnowacqError, match=match):     # found before any probe is trained
            _check({**CONFIG, 'ig': ig})
    too_many = {**CONFIG, 'n': [2, 400]}
    with pytest.raises(KnowacqError, match='too few negatives'):
        run_analysis(too_many, tmp_path / 'z', seed=1, verbose=False)


@pytest.mark.parametrize('name', ['knowacq.yaml', 'knowacq-full.yaml', 'knowacq-ci.yaml'])
def test_shipped_experiments_parse(name):
    from pyterrier_knowacq.analysis.pipeline import _check
    config = yaml.safe_load((ROOT / 'experiments' / name).read_text())
    _check(config['analysis'])
    for spec in (config.get('models') or {}).values():
        from pyterrier_knowacq.training.dense import validate_dense_spec
        if spec.get('kind') == 'bi-encoder':
            validate_dense_spec(dict(spec))


@pytest.mark.slow
def test_full_grid_dry_run(cache, tmp_path):
    """knowacq-full.yaml (hub models, GPU grid) runs on CPU with tiny random models and a few examples."""
    from pyterrier_knowacq.analysis.pipeline import run_analysis
    config = yaml.safe_load((ROOT / 'experiments' / 'knowacq-full.yaml').read_text())
    summary = run_analysis(config['analysis'], tmp_path / 'dry', seed=0, dry_run=True, verbose=False)
    assert summary['dry_run'] and (tmp_path / 'dry' / 'tables' / 'probe_accuracy.csv').exists()
    acc = pd.read_csv(tmp_path / 'dry' / 'tables' / 'probe_accuracy.csv')
    assert not acc.doc_model.str.contains('facebook|bert-base|Llama-2|repllama', case=False).any()


def test_random_control_claim_pools_every_pair_and_collection(tmp_path):
    """Each random-init system is compared with its pre-trained twin (same strategy, pooling, first stage) on every
    collection that has both; a significant difference the other way gives 'different, opposite direction'."""
    from pyterrier_knowacq.reports.knowacq import _random_claim

    def tags(backbone, first_stage):
        return {'backbone': backbone, 'strategy': 'infonce', 'pooling': 'cls', 'first_stage': first_stage}
    systems = [{'name': 'BM25 >> FT', 'tags': tags('minilm-l6', 'bm25')},
               {'name': 'BM25 >> RND', 'tags': tags('random:minilm-l6', 'bm25')},
               {'name': 'Dense FT', 'tags': tags('minilm-l6', 'dense')},
               {'name': 'Dense RND', 'tags': tags('random:minilm-l6', 'dense')}]
    (tmp_path / 'meta.json').write_text(json.dumps({'study': 'knowacq', 'systems': systems,
                                                    'collections': [{'name': 'dl19'}, {'name': 'scifact-test'}]}))
    for coll, values in (('dl19', {'BM25 >> FT': 0.6, 'BM25 >> RND': 0.2}), ('scifact-test', {'Dense FT': 0.3, 'Dense RND': 0.35})):
        (tmp_path / coll).mkdir()
        rows = [(n, str(q), 'nDCG@10', v + q / 100) for q in range(8) for n, v in values.items()]
        pd.DataFrame(rows, columns=['name', 'qid', 'measure', 'value']).to_csv(tmp_path / coll / 'perquery.csv', index=False)
    acc = pd.DataFrame(columns=['group', 'data', 'model', 'n', 'probe', 'layer', 'accuracy'])
    claim = _random_claim(tmp_path, acc)
    assert claim['verdict'] == 'different, opposite direction'
    assert [p['label'] for p in claim['parts']] == ['dl19 (bm25)', 'scifact-test (dense)']
    assert 'dl19 (bm25): nDCG@10 pre-trained 0.635 vs random-init 0.235' in claim['ours']
    assert 'scifact-test (dense)' in claim['ours'] and "'Dense FT' vs 'Dense RND'" in claim['detail']
