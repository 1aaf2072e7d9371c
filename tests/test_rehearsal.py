"""The scale rehearsal (experiments/rehearsal.yaml) at 20k passages and a few steps, end to end, plus the pieces it
is built from: the synthetic docstore dataset, the per-stage resource meter and the DDP launcher's spec key.

The full 1M-passage rehearsal is not part of the suite (``knowacq run experiments/rehearsal.yaml``, about 10 minutes;
the opt-in ``slow`` test below runs it at 100k)."""
import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REHEARSAL = REPO / 'experiments' / 'rehearsal.yaml'
#: packaged models the rehearsal uses, linked into each test's empty cache (built once in the user's cache)
MODELS = ('tiny-bert', 'tiny-llama', 'tiny-electra', 'tiny-roberta', 'tiny-dpr-ctx', 'tiny-dpr-question')


@pytest.fixture
def rehearsal_cache(tmp_path, monkeypatch):
    """An empty knowacq cache that sees the packaged tiny models (and the tokenizers they are built from)."""
    from pyterrier_knowacq.models.backbones import resolve_model
    folders = {name: resolve_model(name) for name in MODELS}
    models = tmp_path / 'cache' / 'models'
    models.mkdir(parents=True)
    for name, folder in folders.items():
        os.symlink(folder, models / name)
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


@pytest.fixture
def accept_processes(monkeypatch):
    """What the preflight does once it checks a dataset's ``generated_runs`` by name, without reading them (reading the
    synthetic teacher would build the whole collection); a no-op after that. (It already drops the runner's own
    ``processes`` key before a spec's validator.)"""
    from pyterrier_knowacq.experiments.preflight import checks as preflight
    run_ref = preflight._Pass.run_ref

    def checked_run_ref(self, name, dataset, *args, **kwargs):
        if name in getattr(dataset, 'generated_runs', ()):
            return None
        return run_ref(self, name, dataset, *args, **kwargs)
    monkeypatch.setattr(preflight._Pass, 'run_ref', checked_run_ref)


@pytest.fixture
def texts_guard(monkeypatch):
    """Counts every attempt to build a whole-corpus dict of a synthetic dataset (``_texts``); it still raises."""
    from pyterrier_knowacq.datasets.synthetic import SyntheticDataset
    attempts = []
    original = SyntheticDataset._texts

    def guarded(self):
        attempts.append(self.name)
        return original.fget(self)
    monkeypatch.setattr(SyntheticDataset, '_texts', property(guarded))
    return attempts


@pytest.fixture
def one_thread():
    """One torch thread in this process (the DDP ranks get cores / 2 each): on a busy 2-core machine two threads that
    spin against other processes make the tiny models ten times slower."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small_rehearsal(tmp_path: Path, steps: int = 2) -> Path:
    """experiments/rehearsal.yaml with fewer queries and steps (the passages come from KNOWACQ_REHEARSAL_PASSAGES)."""
    config = yaml.safe_load(REHEARSAL.read_text())
    synthetic = config['dataset']['synthetic']
    assert synthetic['passages'] == 1_000_000 and synthetic['passages_env'] == 'KNOWACQ_REHEARSAL_PASSAGES'
    synthetic.update(queries=300, dev=10, test=12)
    for name, spec in config['models'].items():
        for stage in spec.get('stages') or []:
            stage['steps'] = steps
        if 'steps' in spec:
            spec['steps'] = steps
        if spec.get('validation'):
            spec['validation'] = {**spec['validation'], 'queries': 4, 'depth': 10}
    path = tmp_path / 'rehearsal-small.yaml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_rehearsal_small(tmp_path, monkeypatch, rehearsal_cache, accept_processes, texts_guard, one_thread):
    from pyterrier_knowacq.experiments import runner as experiment
    from pyterrier_knowacq.datasets.core import get_dataset
    monkeypatch.setenv('KNOWACQ_REHEARSAL_PASSAGES', '20k')
    monkeypatch.setattr(experiment, 'QUERY_BATCH', 5)       # 12 test queries run in 3 batches of queries
    path = _small_rehearsal(tmp_path)
    started = time.time()
    out = experiment.run_experiment(path, output=str(tmp_path / 'results'))
    wall = time.time() - started
    meta = json.loads((out / 'meta.json').read_text())
    assert not meta.get('incomplete'), meta.get('failed')

    # the dataset: 20k passages from the environment variable, looked up in batches, never as a whole-corpus dict
    coll = meta['collections'][0]
    assert coll['dataset'] == 'synthetic-20k-300q-s0' and coll['num_queries'] == 12
    assert texts_guard == []
    ds = get_dataset(yaml.safe_load(path.read_text())['dataset'])
    assert ds.params['passages'] == 20_000 and coll['dataset_fingerprint'] == ds.fingerprint()

    # resources: every stage metered, with wall time and peak RSS (process + children)
    res = meta['resources']
    names = list(res)
    assert names[:5] == ['preflight', 'data: synthetic corpus (20,000 passages)', f'index: PISA {ds.name}',
                         'teacher: BM25 top-20 of 139 train queries, RankGPT-format records',
                         'teacher: convert_rankgpt (one streaming pass over the corpus)'], names
    models = ('ELECTRA-C', 'RoBERTa-D', 'ELECTRA-C-D', 'DPR', 'RepLLaMA-LoRA', 'ColBERT')
    for model in models:
        assert f'train: train/{model}' in res
    systems = yaml.safe_load(path.read_text())['systems']
    for system in systems:
        assert f'system: test/{system}' in res
    for name, rec in res.items():
        assert rec['wall_s'] >= 0 and rec['peak_rss_mb'] > 0 and rec['peak_rss_mb'] >= rec['start_rss_mb'], name
    ddp = res['train: train/ELECTRA-C']
    assert ddp['processes'] == 2
    assert ddp['peak_rss_mb'] > ddp['start_rss_mb']           # the two ranks count in the peak

    # DDP: both ranks trained (their own shards), rank 0 wrote the model the systems use
    info = meta['training']['train']['ELECTRA-C']
    assert info['processes'] == 2 and [r['rank'] for r in info['ranks']] == [0, 1]
    for r in info['ranks']:
        assert r['world_size'] == 2 and r['folder'] == info['folder']
        assert len(r['runs']) == 1 and r['runs'][0]['steps'] == 2 and r['runs'][0]['first_loss'] is not None
    first = [set(r['runs'][0]['first_batch']) for r in info['ranks']]
    assert first[0] and not first[0] & first[1]
    folder = Path(info['folder'])
    assert (folder / 'knowacq.json').exists() and meta['models']['test']['ELECTRA-C'] == str(folder)
    assert json.loads((folder / 'training.json').read_text())['steps'] == 2

    # the teacher: RankGPT-format records converted over the corpus, covering half the train queries
    report = ds.teacher_report()
    assert report['records'] == report['queries_written'] == 139 and report['passages_unmapped'] == 0
    assert report['train_queries'] == 278 and report['coverage_of_train'] == pytest.approx(0.5, abs=0.01)
    for model in ('RoBERTa-D', 'ELECTRA-C-D'):
        (cov,) = meta['training']['train'][model]['teacher_coverage']
        assert cov['covered'] == 139 and cov['total'] == 278 and cov['coverage'] == pytest.approx(0.5, abs=0.01)

    # every system ran on the test queries (ColBERT over up to 1000 BM25 candidates each)
    agg = pd.read_csv(out / 'test' / 'aggregated.csv')
    assert list(agg['name']) == list(systems)
    colbert = pd.read_csv(out / 'test' / 'runs' / 'bm25-colbert.res.gz', sep=' ', header=None)
    assert colbert[0].nunique() == 12 and colbert.groupby(0).size().max() > 100
    print(f'rehearsal at 20k passages: {wall:.0f} s')


def test_rehearsal_preflight_builds_nothing(rehearsal_cache, accept_processes):
    """The 1M-passage file checks in seconds: the collection, its index and its teacher are built by the run."""
    from pyterrier_knowacq.experiments.preflight import check_experiment
    started = time.time()
    report = check_experiment(REHEARSAL, echo=False)
    assert not report.errors and not report.warnings
    assert time.time() - started < 30
    assert sorted(p.name for p in rehearsal_cache.iterdir()) == ['models']


# -- the pieces ------------------------------------------------------------------------------------------------------

def test_synthetic_docstore(tmp_path, monkeypatch):
    from pyterrier_knowacq._util import KnowacqError
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.datasets.synthetic import SyntheticDataset
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / 'cache'))
    spec = {'synthetic': {'passages': 3000, 'queries': 60, 'seed': 7}}
    ds = get_dataset(spec)
    assert isinstance(ds, SyntheticDataset) and get_dataset(spec) is ds and ds.id == 'synthetic-3k-60q-s7'
    assert ds.splits == ('train', 'dev', 'test') and [len(ds.get_topics(s)) for s in ds.splits] == [48, 6, 6]
    assert set(ds.get_qrels('test')['label']) == {1, 2} and len(ds.get_qrels('test')) == 12
    docs = list(ds.get_corpus_iter())
    assert len(docs) == 3000 and docs[5]['docno'] == '5'
    assert ds.get_texts(['2999', '0', '5', '0']) == [docs[2999]['text'], docs[0]['text'], docs[5]['text'], docs[0]['text']]
    assert ds.find_texts(['3000', '05', 'x']) == [None, None, None]
    with pytest.raises(KnowacqError, match='no text'):
        ds.get_texts(['3000'])
    with pytest.raises(KnowacqError, match='whole corpus'):
        ds._texts
    assert ds.known_docnos() is None
    # each query's relevant passage holds its rare words (so BM25 finds it)
    q = ds.get_topics('test').iloc[0]
    rel = ds.get_qrels('test').query('qid == @q.qid and label == 2').docno.iloc[0]
    assert len(set(q.query.split()) & set(ds.get_texts([rel])[0].split())) >= 2
    # deterministic, and keyed by the parameters (not a corpus pass)
    folder, fp = ds.folder, ds.fingerprint()
    (folder / 'meta.json').unlink()     # regenerate into the same place: the same bytes
    again = SyntheticDataset(spec['synthetic'])
    assert again.fingerprint() == fp and again.get_texts(['17']) == [docs[17]['text']]
    assert SyntheticDataset({**spec['synthetic'], 'seed': 8}).corpus_fingerprint() != ds.corpus_fingerprint()
    assert SyntheticDataset({**spec['synthetic'], 'test': 10}).corpus_fingerprint() == ds.corpus_fingerprint()
    assert SyntheticDataset({**spec['synthetic'], 'test': 10}).fingerprint() != fp
    monkeypatch.setenv('KNOWACQ_TEST_PASSAGES', '1.5k')
    assert SyntheticDataset({**spec['synthetic'], 'passages_env': 'KNOWACQ_TEST_PASSAGES'}).params['passages'] == 1500
    for bad, match in (({'passages': 150, 'queries': 80}, 'at least 160 passages'), ({'passages': 'lots', 'queries': 40},
                       'whole number'), ({'passages': 1000, 'queries': 40, 'sed': 1}, "did you mean 'seed'"),
                       ({'passages': 1000, 'queries': 40, 'dev': 20, 'test': 20}, 'no train')):
        with pytest.raises(KnowacqError, match=match):
            get_dataset({'synthetic': bad})


def test_resource_log_meters_stages_and_children():
    import subprocess
    import sys
    from pyterrier_knowacq._resources import ResourceLog, current, stage
    log = ResourceLog()
    with stage('not recorded'):     # no active log: runs unmetered
        pass
    with log.active():
        assert current() is log
        with stage('allocate'):
            block = bytearray(200 * 1024 * 1024)
            block[::4096] = b'x' * len(block[::4096])
            del block
        with stage('child', processes=1):
            subprocess.run([sys.executable, '-c', 'import time; b = bytearray(150 * 2**20); b[::4096] = b"x" * len(b[::4096]); '
                            'time.sleep(1.0)'], check=True)
        with pytest.raises(ValueError):
            with stage('allocate'):
                raise ValueError('boom')
    assert current() is None
    recs = log.as_dict()
    assert list(recs) == ['allocate', 'child', 'allocate #2']
    assert recs['allocate']['peak_rss_mb'] >= recs['allocate']['start_rss_mb'] + 150
    assert recs['child']['peak_rss_mb'] >= recs['child']['start_rss_mb'] + 100 and recs['child']['processes'] == 1
    assert recs['allocate #2']['failed'] is True
    table = log.table()
    assert 'allocate #2' in table and '(failed)' in table and 'peak RSS MB' in table


def test_processes_key():
    from pyterrier_knowacq._util import KnowacqError
    from pyterrier_knowacq.training.launch import pop_processes
    assert pop_processes({'backbone': 'x', 'processes': 2}) == ({'backbone': 'x'}, 2)
    assert pop_processes({'backbone': 'x'}) == ({'backbone': 'x'}, 1)
    for bad in (0, 1.5, 'two', True):
        with pytest.raises(KnowacqError, match='processes'):
            pop_processes({'processes': bad})


@pytest.mark.slow
def test_rehearsal_100k(tmp_path, monkeypatch, rehearsal_cache, accept_processes, one_thread):
    """The rehearsal file itself at 100k passages (its full number of steps and queries); about 5 minutes."""
    from pyterrier_knowacq.experiments.runner import run_experiment
    monkeypatch.setenv('KNOWACQ_REHEARSAL_PASSAGES', '100k')
    out = run_experiment(REHEARSAL, output=str(tmp_path / 'results'))
    meta = json.loads((out / 'meta.json').read_text())
    assert not meta.get('incomplete') and meta['collections'][0]['dataset'] == 'synthetic-100k-2kq-s0'
    assert meta['training']['train']['ELECTRA-C']['processes'] == 2
    assert all(rec['peak_rss_mb'] < 8000 for rec in meta['resources'].values())
