"""Multi-stage training end to end with tiny-bert on the embedded MS MARCO slice (a few steps per stage)."""
import json

import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.training.stages import model_key, train_model, validate_spec

SPEC = {'backbone': 'tiny-bert', 'pooling': 'mean', 'max_length': 48, 'queries_per_batch': 2,
        'validation': {'queries': 3, 'run': 'bm25', 'depth': 5},
        'stages': [{'loss': 'lce', 'data': {'run': 'bm25', 'negatives': 3, 'depth': 20, 'rel_threshold': 2},
                    'lr': 1e-4, 'head_lr': 1e-3, 'steps': 4, 'eval_every': 2},
                   {'loss': 'ranknet', 'data': {'teacher': 'rankgpt-3.5', 'list_length': 5}, 'lr': 1e-4, 'steps': 3}]}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    import os
    from pyterrier_knowacq._util import cache_dir
    tiny = cache_dir('models')  # keep the real tiny-bert cache
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path))
    (tmp_path / 'models').mkdir(parents=True, exist_ok=True)
    if (tiny / 'tiny-bert').exists():
        os.symlink(tiny / 'tiny-bert', tmp_path / 'models' / 'tiny-bert')
    return tmp_path


def test_two_stage_training_and_cache(cache, tmp_path):
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    folder = train_model(SPEC, dataset='msmarco-passage', train_split='dl20', seed=1, output_dir=tmp_path, verbose=False)
    info = json.loads((folder / 'training.json').read_text())
    assert info['stage'] == 2 and info['steps'] == 3 and len(info['validation_qids']) == 3
    log = json.loads((tmp_path / 'training.json').read_text())
    assert [s['cached'] for s in log['stages']] == [False, False]
    first = [h for h in log['stages'][0]['history'] if 'val_nDCG@10' in h]
    assert [h['step'] for h in first] == [2, 4] and all(0 <= h['val_nDCG@10'] <= 1 for h in first)
    # the yardsticks a recipe is selected against: BM25 itself and the untrained start, on the same held-out queries
    yard = log['stages'][0]['validation']
    assert set(yard) == {'first_stage', 'start'} and 0 <= yard['first_stage']['nDCG@10'] <= 1
    assert info['validation']['start']['nDCG@10'] >= 0
    ce = CrossEncoder.from_pretrained(str(folder))
    scores = ce.score_pairs(['what is a cat'], ['a cat is an animal'])
    assert scores.shape == (1,)
    # the one-stage prefix is cached and shared: training C then C->D does not retrain C
    one = dict(SPEC, stages=SPEC['stages'][:1])
    again = train_model(one, dataset='msmarco-passage', train_split='dl20', seed=1, output_dir=tmp_path, verbose=False)
    assert again.name == model_key(SPEC, 1, 'msmarco-passage', 'dl20', 1)
    assert json.loads((tmp_path / 'training.json').read_text())['stages'][0]['cached'] is True


def test_spec_errors():
    with pytest.raises(KnowacqError, match='unknown model spec keys'):
        validate_spec(dict(SPEC, lr=1))
    with pytest.raises(KnowacqError, match='not one of'):
        validate_spec(dict(SPEC, stages=[{'loss': 'hinge', 'steps': 1}]))
    with pytest.raises(KnowacqError, match='steps'):
        validate_spec(dict(SPEC, stages=[{'loss': 'lce'}]))
    with pytest.raises(KnowacqError, match='unknown data keys'):
        validate_spec(dict(SPEC, stages=[{'loss': 'lce', 'steps': 1, 'data': {'runs': 'bm25'}}]))


def test_freeze_layers():
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    from pyterrier_knowacq.training.stages import _freeze
    ce = CrossEncoder.new('tiny-bert', pooling='mean')
    _freeze(ce.model, 1)
    base = ce.model.backbone
    assert not any(p.requires_grad for p in base.embeddings.parameters())
    assert not any(p.requires_grad for p in base.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in base.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in ce.model.head.parameters())


def test_teacher_scores_cached_run(cache):
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.training.teachers import score_run, teacher_scores
    ds = get_dataset('msmarco-passage')
    run = ds.get_run('bm25', 'dl19')
    small = run[run['qid'].isin(sorted(run['qid'].unique())[:2]) & (run['rank'] < 3)]
    from pyterrier_knowacq.models.crossencoder import CrossEncoder
    ce = CrossEncoder.new('tiny-bert', pooling='mean', max_length=32)
    out = score_run(ce, ds, small, 'dl19', depth=3, name='tiny-ce')
    assert len(out) == 6 and set(out.columns) >= {'qid', 'docno', 'score', 'rank'}
    files = list((cache / 'runs' / 'teachers').glob('*.trec.gz'))
    assert len(files) == 1
    again = score_run(None, ds, small, 'dl19', depth=3, name='tiny-ce')   # served from the cached run file
    assert again['score'].round(5).tolist() == out['score'].round(5).tolist()
    targets = teacher_scores('rankgpt-3.5', ds, 'dl19', 'bm25')
    assert len(targets) == 43 and all(len(v) == 100 for v in targets.values())
