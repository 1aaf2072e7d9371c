import json
import os

import numpy as np
import pytest
import torch

from pyterrier_knowacq._util import KnowacqError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty knowacq cache that still sees the tiny test models."""
    from pyterrier_knowacq.models.backbones import resolve_model
    models = tmp_path / 'models'
    models.mkdir()
    for name in ('tiny-bert', 'tiny-llama'):
        os.symlink(resolve_model(name), models / name)
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path))
    return tmp_path


def test_infonce_task_learns_and_saves(cache, tmp_path):
    from pyterrier_knowacq.models.biencoder import BiEncoder
    from pyterrier_knowacq.training.dense import BiEncoderTask, build_biencoder
    from pyterrier_knowacq.training.examples import Group
    from pyterrier_knowacq.training.trainer import TrainConfig, Trainer
    texts = {f'p{i}': f'passage about topic {w} and more {w}' for i, w in enumerate(['cats', 'dogs', 'cars', 'rivers', 'music', 'stars'])}
    texts.update({f'n{i}': f'unrelated filler text number {i}' for i in range(12)})
    groups = [Group(f'q{i}', f'what about {w}', [f'p{i}'], [f'n{j}' for j in range(12) if j % 6 != i])
              for i, w in enumerate(['cats', 'dogs', 'cars', 'rivers', 'music', 'stars'])]
    bienc = build_biencoder({'backbone': 'tiny-bert', 'pooling': 'mean', 'steps': 1}, seed=0)
    task = BiEncoderTask(bienc, groups, texts.__getitem__, negatives=2, queries_per_batch=3, temperature=0.1, seed=0)
    fixed = task.batches(0)[0]
    with torch.no_grad():
        before = float(task.loss(task.model.eval(), fixed)[0])
    Trainer(task, TrainConfig(lr=3e-3, max_steps=30, warmup=0, progress=False, checkpoint_every=0), tmp_path / 'run').train()
    with torch.no_grad():
        after = float(task.loss(task.model.eval(), fixed)[0])
    assert after < before * 0.7
    loaded = BiEncoder.from_pretrained(str(tmp_path / 'run' / 'final'))
    assert loaded.pooling_name == 'mean'
    with torch.no_grad():
        q = task._encode(task.model, ['what about cats'], 'query').numpy()
    np.testing.assert_allclose(loaded.encode_queries(['what about cats']), q, atol=1e-5)


def test_train_biencoder_cached_and_separate_encoders(cache, tmp_path):
    from pyterrier_knowacq.models.biencoder import BiEncoder
    from pyterrier_knowacq.training.dense import train_biencoder
    spec = {'kind': 'bi-encoder', 'backbone': 'tiny-bert', 'shared': False, 'pooling': 'cls', 'steps': 2,
            'queries_per_batch': 2, 'negatives': 1, 'data': {'max_queries': 6, 'rel_threshold': 2}}
    folder = train_biencoder(spec, dataset='msmarco-passage', train_split='dl20', output_dir=tmp_path / 'out', seed=3)
    meta = json.loads((folder / 'knowacq.json').read_text())
    assert meta['kind'] == 'bi-encoder' and meta['query_model'] == 'query' and meta['pooling'] == 'cls'
    assert (tmp_path / 'out' / 'training.json').exists()
    stamp = (folder / 'model.safetensors').stat().st_mtime_ns
    assert train_biencoder(spec, dataset='msmarco-passage', train_split='dl20', seed=3) == folder
    assert (folder / 'model.safetensors').stat().st_mtime_ns == stamp   # cache hit, not retrained
    b = BiEncoder.from_pretrained(str(folder))
    assert b.query_model is not None
    assert not np.allclose(b.encode_queries(['a question']), b.encode_docs(['a question']))


def test_decoder_with_lora_dry_run(cache):
    pytest.importorskip('peft')
    from pyterrier_knowacq.models.biencoder import BiEncoder
    from pyterrier_knowacq.training.dense import train_biencoder
    spec = {'backbone': 'tiny-llama', 'pooling': 'last', 'steps': 2, 'queries_per_batch': 2, 'negatives': 1,
            'data': {'max_queries': 4, 'rel_threshold': 2}, 'lora': {'r': 2, 'alpha': 4}}
    folder = train_biencoder(spec, dataset='msmarco-passage', train_split='dl20', seed=0)
    b = BiEncoder.from_pretrained(str(folder))
    assert b.append_eos and b.encode_docs(['x y']).shape == (1, 32)
    # dry run swaps any backbone for a tiny model
    dry = train_biencoder({**spec, 'backbone': 'smollm2-135m'}, dataset='msmarco-passage', train_split='dl20', seed=0, dry_run=True)
    assert json.loads((dry / 'training.json').read_text())['spec']['backbone'] == 'tiny-llama'


def test_bad_specs(cache):
    from pyterrier_knowacq.training.dense import train_biencoder
    with pytest.raises(KnowacqError, match='unknown bi-encoder spec keys'):
        train_biencoder({'backbone': 'tiny-bert', 'steps': 1, 'temp': 1}, dataset='msmarco-passage', train_split='dl20')
    with pytest.raises(KnowacqError, match='steps'):
        train_biencoder({'backbone': 'tiny-bert'}, dataset='msmarco-passage', train_split='dl20')
    with pytest.raises(KnowacqError, match='cls'):
        train_biencoder({'backbone': 'tiny-llama', 'pooling': 'cls', 'steps': 1}, dataset='msmarco-passage', train_split='dl20')


def test_validation_keeps_best_checkpoint(cache):
    """`validation:` holds queries of the training split out of training, re-ranks their BM25 top-depth every
    eval_every steps and keeps the best checkpoint; training.json records it all."""
    from pyterrier_knowacq.models.biencoder import BiEncoder
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.training.dense import PairScorer, _groups, _validation, train_biencoder
    ds = get_dataset('msmarco-passage')
    spec = {'backbone': 'tiny-bert', 'pooling': 'mean', 'steps': 4, 'eval_every': 2, 'lr': 1e-3, 'queries_per_batch': 2,
            'negatives': 1, 'data': {'max_queries': 6, 'rel_threshold': 2},
            'validation': {'queries': 3, 'run': 'bm25', 'depth': 5}}
    train_qids, val_qids, validator = _validation(spec, ds, 'dl20', 7)
    assert len(val_qids) == 3 and set(val_qids) <= set(ds.get_qrels('dl20')['qid'])   # carved from the training fold
    assert not set(val_qids) & set(ds.get_qrels('dl19')['qid'])                        # never from the test fold
    assert not {g.qid for g in _groups(spec, ds, 'dl20', 7, qids=train_qids)} & set(val_qids)
    folder = train_biencoder(spec, dataset='msmarco-passage', train_split='dl20', seed=7)
    info = json.loads((folder / 'training.json').read_text())
    assert info['validation_qids'] == val_qids and info['selected'] == 'best' and info['eval_every'] == 2
    vals = [h['val_nDCG@10'] for h in info['history'] if 'val_nDCG@10' in h]
    assert [h['step'] for h in info['history'] if 'val_nDCG@10' in h] == [2, 4]
    assert info['best_metric'] == pytest.approx(max(vals))
    assert set(info['validation']['start']) == {'nDCG@10', 'RR(rel=2)@10'}    # the untrained model, same queries
    kept = validator(PairScorer(BiEncoder.from_pretrained(str(folder), device='cpu')))   # the kept model is the best one
    assert kept['nDCG@10'] == pytest.approx(info['best_metric'], abs=1e-5)


@pytest.mark.parametrize('extra,match', [
    ({'validation': {'querys': 3}}, "unknown bi-encoder validation keys.*did you mean 'queries'"),
    ({'validation': {'queries': 0}}, 'whole number >= 1'),
    ({'validation': {'queries': 3, 'depth': 'x'}}, 'validation depth'),
    ({'validation': 10}, 'must be a mapping'),
    ({'eval_every': 5}, 'needs `validation'),
])
def test_bad_validation_specs(cache, extra, match):
    from pyterrier_knowacq.training.dense import validate_dense_spec
    with pytest.raises(KnowacqError, match=match):
        validate_dense_spec({'backbone': 'tiny-bert', 'steps': 1, **extra})
