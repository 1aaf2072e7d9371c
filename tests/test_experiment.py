import json
import textwrap

import pandas as pd
import pytest

from pyterrier_knowacq import KnowacqError
from pyterrier_knowacq.experiments.runner import load_config, run_experiment
from pyterrier_knowacq.experiments.expressions import parse_pipeline

GOOD = """
name: tiny
dataset: msmarco-passage
topics: [dl19]
systems:
  BM25: run(name=bm25)
  BM25 >> tiny: run(name=bm25, k=5) >> text >> biencoder(model=tiny-bert, pooling=mean)
baseline: BM25
measures: [nDCG@10, RR(rel=2)@10]
"""


def _write(tmp_path, text, name='exp.yaml'):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_parse_pipeline_expressions():
    stages = parse_pipeline('run(name=bm25, k=100) >> text >> ce(model="my model", lr=2e-5) % 10')
    assert [s.name for s in stages] == ['run', 'text', 'ce']
    assert stages[0].params == {'name': 'bm25', 'k': 100}
    assert stages[2].params == {'model': 'my model', 'lr': 2e-5} and stages[2].cutoff == 10
    with pytest.raises(KnowacqError, match='key=value'):
        parse_pipeline('ce(minilm)')
    with pytest.raises(KnowacqError, match='unbalanced'):
        parse_pipeline('ce(model=x')


def test_experiment_writes_complete_results_folder(tmp_path):
    out = run_experiment(_write(tmp_path, GOOD), output=tmp_path / 'res', limit_topics=4)
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['format'] == 'pyterrier_knowacq.results/1' and meta['seed'] == 42
    assert set(meta['timings']['dl19']) == {'BM25', 'BM25 >> tiny'}
    assert meta['versions']['torch'] and meta['collections'][0]['num_queries'] == 4
    agg = pd.read_csv(out / 'dl19' / 'aggregated.csv')
    assert list(agg['name']) == ['BM25', 'BM25 >> tiny'] and 'nDCG@10 p-value' in agg.columns
    perq = pd.read_csv(out / 'dl19' / 'perquery.csv', dtype={'qid': str})
    assert set(perq.columns) == {'name', 'qid', 'measure', 'value'} and perq['qid'].nunique() == 4
    assert (out / 'dl19' / 'runs' / 'bm25-tiny.res.gz').exists() and (out / 'config.yaml').exists()
    assert not list(tmp_path.glob('.res*'))  # no temporary folder left behind


@pytest.mark.parametrize('text,match', [
    ('name: x\ndataset: msmarco-passage\nsystems: {a: run(name=bm25)}\ntopic: dl19\n', "unknown key 'topic'.*did you mean 'topics'"),
    ('name: x\ndataset: msmarco-passage\nsystems: {a: bm26}\n', "unknown stage 'bm26'.*did you mean 'bm25'"),
    ('name: x\ndataset: msmarco-passage\nsystems: {a: "run(nme=bm25)"}\n', "no parameter 'nme'"),
    ('name: x\ndataset: msmarco-passage\nsystems: {a: ce}\n', "needs the parameter 'model'"),
    ('name: x\ndataset: msmarco-passage\nsystems: {a: run}\nbaseline: b\n', 'baseline'),
    ('name: x\ndataset: msmarco-passage\nsystems: {a: run}\nmeasures: [nDCG@ten]\n', 'unknown measure'),
    ('name: x\ndataset: [unclosed\n', 'not valid YAML at line'),
    ('- just\n- a list\n', 'YAML mapping'),
    ('dataset: msmarco-passage\nsystems: {a: run}\n', "missing required key 'name'"),
])
def test_bad_config_gives_one_clear_error(tmp_path, text, match):
    with pytest.raises(KnowacqError, match=match):
        load_config(_write(tmp_path, text))


def test_failures_leave_no_partial_results(tmp_path):
    bad_model = GOOD.replace('tiny-bert', 'no-such-org/no-such-model')
    with pytest.raises(KnowacqError, match='hub'):
        run_experiment(_write(tmp_path, bad_model), output=tmp_path / 'res', limit_topics=2)
    assert not (tmp_path / 'res').exists() and not [p for p in tmp_path.iterdir() if p.name.startswith('.res')]
    wrong_topics = GOOD.replace('topics: [dl19]', 'topics: [nfcorpus]')
    with pytest.raises(KnowacqError, match='no run|no results|no qrels|no text'):
        run_experiment(_write(tmp_path, wrong_topics), output=tmp_path / 'res2', limit_topics=2)
    assert not (tmp_path / 'res2').exists()


def test_missing_file_and_existing_output(tmp_path):
    with pytest.raises(KnowacqError, match='does not exist'):
        load_config(tmp_path / 'nope.yaml')
    (tmp_path / 'res').mkdir()
    with pytest.raises(KnowacqError, match='already exists'):
        run_experiment(_write(tmp_path, GOOD), output=tmp_path / 'res')


def test_cli_list_and_error_exit_code(tmp_path, capsys):
    from pyterrier_knowacq.cli import main
    assert main(['list']) == 0
    assert 'bm25' in capsys.readouterr().out
    assert main(['run', str(tmp_path / 'missing.yaml')]) == 2
    assert 'not found' in capsys.readouterr().err


def test_shipped_experiment_files_are_valid():
    from pathlib import Path
    import yaml
    from pyterrier_knowacq.training.stages import validate_spec
    for path in sorted((Path(__file__).parents[1] / 'experiments').glob('*.yaml')):
        raw = yaml.safe_load(path.read_text())
        if 'systems' not in raw:  # a `knowacq train` file (models only)
            assert raw['dataset'] and (raw.get('folds') or raw.get('train_split')), path
            for spec in raw['models'].values():
                validate_spec(spec)
            continue
        load_config(path)


@pytest.mark.slow
def test_quickstart_minilm_beats_bm25(tmp_path):
    from pathlib import Path
    out = run_experiment(Path(__file__).parents[1] / 'experiments' / 'quickstart.yaml', output=tmp_path / 'qs')
    agg = pd.read_csv(out / 'dl19' / 'aggregated.csv').set_index('name')
    assert agg.loc['BM25', 'nDCG@10'] == pytest.approx(0.5058, abs=1e-4)
    assert agg.loc['BM25 >> MiniLM bi-encoder', 'nDCG@10'] > 0.6
    assert agg.loc['BM25 >> MiniLM bi-encoder', 'nDCG@10 p-value'] < 0.05


def test_killed_run_leaves_nothing_and_stale_partials_are_swept(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pyterrier_knowacq._util import atomic_directory
    stale = tmp_path / '.res.999999999.abc.partial'
    stale.mkdir()
    with atomic_directory(tmp_path / 'res') as tmp:
        (tmp / 'x').write_text('1')
    assert not stale.exists() and (tmp_path / 'res' / 'x').exists()
    # two topic sets at k=100: several seconds of neural work remain after the first neural stage starts, so the
    # signal lands mid-run even on a fast machine (the previous 0.5 s sleep let a fast CI machine finish first)
    slow = _write(tmp_path, GOOD.replace('k=5', 'k=100').replace('topics: [dl19]', 'topics: [dl19, dl20]'))
    proc = subprocess.Popen([sys.executable, '-m', 'pyterrier_knowacq.cli', 'run', str(slow), '-o', str(tmp_path / 'killed')],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = False
    for line in proc.stdout:
        if 'dl19: BM25 >> tiny' in line:
            seen = True
            break
    assert seen, 'the run ended before reaching the neural stage'
    assert proc.poll() is None and list(tmp_path.glob('.killed*'))  # mid-run: only the partial folder exists
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, rest[-2000:]
    assert not (tmp_path / 'killed').exists()
    assert not list(tmp_path.glob('.killed*'))


FOLDS = """
name: ood
dataset: msmarco-passage
folds:
  - {train: dl20, test: dl19}
  - {train: dl20, test: test, test_dataset: scifact, measures: [nDCG@10, RR@10]}
models:
  tiny-ft: {kind: bi-encoder, backbone: tiny-bert, pooling: mean, steps: 2, queries_per_batch: 2, negatives: 1,
            data: {max_queries: 4, rel_threshold: 2}}
systems:
  BM25: bm25(k=5)
  BM25 >> tiny-ft: bm25(k=5) >> text >> biencoder(model=tiny-ft, max_length=32)
  Dense tiny-ft:
    pipeline: dense(model=tiny-ft, k=10, max_length=32)
    collections: [scifact-test]
    tags: {first_stage: dense}
baseline: BM25
measures: [nDCG@10, RR(rel=2)@10]
"""


def test_out_of_domain_fold_reuses_the_trained_models(tmp_path, monkeypatch):
    """A fold may test on another dataset (SciFact); models trained once on DL20 serve both folds; a system may be
    restricted to some collections; the leaderboard and the report read the result folder."""
    from pyterrier_knowacq.training import dense
    calls = []
    real = dense.train_biencoder

    def counting(spec, **kwargs):
        calls.append(kwargs['train_split'])
        return real(spec, **kwargs)
    monkeypatch.setattr(dense, 'train_biencoder', counting)
    out = run_experiment(_write(tmp_path, FOLDS), output=tmp_path / 'res', limit_topics=3)
    assert calls == ['dl20']                                          # trained once, reused by the SciFact fold
    meta = json.loads((out / 'meta.json').read_text())
    assert [c['name'] for c in meta['collections']] == ['dl19', 'scifact-test']
    sci = meta['collections'][1]
    assert (sci['dataset'], sci['topics'], sci['train'], sci['train_dataset']) == ('scifact', 'test', 'dl20', 'msmarco-passage')
    assert meta['models']['dl19'] == meta['models']['scifact-test']
    assert meta['systems'][2]['collections'] == ['scifact-test']
    assert set(meta['timings']['dl19']) == {'BM25', 'BM25 >> tiny-ft'}
    agg = pd.read_csv(out / 'scifact-test' / 'aggregated.csv')
    assert list(agg['name']) == ['BM25', 'BM25 >> tiny-ft', 'Dense tiny-ft'] and 'nDCG@10 p-value' in agg.columns
    assert 'RR@10' in agg.columns and 'RR(rel=2)@10' not in agg.columns    # SciFact's own measures (binary qrels)
    assert sci['measures'] == ['nDCG@10', 'RR@10'] and meta['collections'][0]['measures'] == ['nDCG@10', 'RR(rel=2)@10']
    run = pd.read_csv(out / 'scifact-test' / 'runs' / 'dense-tiny-ft.res.gz', sep=r'\s+', header=None, dtype=str)
    corpus = {d['docno'] for d in __import__('pyterrier_knowacq').get_dataset('scifact').get_corpus_iter()}
    assert set(run[2]) <= corpus                                      # retrieved from the SciFact corpus
    assert list(pd.read_csv(out / 'dl19' / 'aggregated.csv')['name']) == ['BM25', 'BM25 >> tiny-ft']
    from pyterrier_knowacq.leaderboard.build import build_site
    from pyterrier_knowacq.leaderboard.data import read_experiment
    exp = read_experiment(out, 'x', str(out))
    assert [c.name for c in exp.collections] == ['dl19', 'scifact-test'] and not exp.problems
    assert exp.collections[1].measures == ['nDCG@10', 'RR@10']
    build_site([out], tmp_path / 'site')
    assert 'scifact-test' in (tmp_path / 'site' / 'index.html').read_text()


TRAIN_ELSEWHERE = """
name: train-elsewhere
dataset: msmarco-passage
folds:
  - {train: scifact, test: dl19}
  - {train: dl19, test: dl20}
models:
  tiny-ft: {kind: bi-encoder, backbone: tiny-bert, pooling: mean, steps: 2, queries_per_batch: 2, negatives: 1,
            data: {max_queries: 4}}
systems:
  BM25: run(name=bm25)
baseline: BM25
measures: [nDCG@10]
"""


def test_meta_records_the_dataset_trained_on(tmp_path, monkeypatch):
    """``train:`` may name another dataset than the experiment's: meta.json's ``train_dataset`` is the dataset the
    models were really trained on (SciFact here), not the experiment's (MS MARCO)."""
    from pyterrier_knowacq.training import dense
    trained_on = []

    def fake(spec, **kwargs):   # records what it is given; the systems do not load the model
        trained_on.append((kwargs['dataset'].id, kwargs['train_split']))
        folder = tmp_path / 'model' / str(len(trained_on))
        folder.mkdir(parents=True)
        return str(folder)
    monkeypatch.setattr(dense, 'train_biencoder', fake)
    out = run_experiment(_write(tmp_path, TRAIN_ELSEWHERE), output=tmp_path / 'res', limit_topics=2)
    assert trained_on == [('scifact', None), ('msmarco-passage', 'dl19')]
    meta = json.loads((out / 'meta.json').read_text())
    recorded = {c['name']: (c['dataset'], c['train'], c['train_dataset']) for c in meta['collections']}
    assert recorded == {'dl19': ('msmarco-passage', 'scifact', 'scifact'),
                        'dl20': ('msmarco-passage', 'dl19', 'msmarco-passage')}


@pytest.mark.parametrize('change,match', [
    (('test_dataset: scifact', 'test_datset: scifact'), "fold 2: unknown key 'test_datset'.*did you mean 'test_dataset'"),
    (('collections: [scifact-test]', 'colections: [scifact-test]'), "unknown key 'colections'.*did you mean 'collections'"),
    (('collections: [scifact-test]', 'collections: [scifact]'), "'scifact'.*did you mean 'scifact-test'"),
    (('collections: [scifact-test]', 'collections: scifact-test'), 'non-empty list'),
    (('BM25: bm25(k=5)', 'BM25: {pipeline: bm25(k=5), collections: [dl19]}'), "baseline 'BM25' does not run on.*scifact-test"),
    (('test: test, test_dataset: scifact', 'test: dl19'), "same collection folder 'dl19'"),
    (('{train: dl20, test: dl19}', '{train: dl20}'), 'fold 1 needs `test:`'),
    (('measures: [nDCG@10, RR@10]}', 'measures: [nDCG@ten]}'), 'unknown measure'),
    (('measures: [nDCG@10, RR@10]}', 'measures: nDCG@10}'), 'fold 2 measures must be a non-empty list'),
])
def test_bad_folds_and_systems(tmp_path, change, match):
    with pytest.raises(KnowacqError, match=match):
        load_config(_write(tmp_path, FOLDS.replace(*change)))


def test_a_measure_no_judged_passage_can_satisfy_is_refused_before_any_work(tmp_path):
    # scifact's qrels are binary (label 1): RR(rel=2)@10 would be 0 for every query, a silent wrong number
    path = _write(tmp_path, """
        name: binary
        dataset: scifact
        topics: [test]
        systems:
          BM25: bm25(k=10)
        measures: [nDCG@10, RR(rel=2)@10]
        """)
    with pytest.raises(KnowacqError, match=r'scifact-test|test: RR\(rel=2\)@10 count\(s\) only passages judged >= rel.*highest label in these qrels is 1'):
        run_experiment(path, output=tmp_path / 'res')
    assert not (tmp_path / 'res').exists()
