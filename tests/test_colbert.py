"""ColBERT model, checkpoint IO and re-ranker: scores against a from-scratch MaxSim reference on tiny-bert."""
import json
import string
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel

QUERIES = ['what is a cat?', 'how do dogs bark', 'a very long query ' + 'word ' * 40]
DOCS = ['The cat, a small animal, sat on the mat.', 'Dogs bark (loudly) at night!', 'x',
        'Cats and dogs: friends or foes? ' * 3, 'nothing relevant here']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp('colbert') / 'tiny-colbert'
    model = ColBERTModel.new('tiny-bert', dim=16, seed=3, doc_maxlen=24)
    model.save(folder)
    return folder


def _frame():
    rows = [(str(qi), q, f'd{di}', d) for qi, q in enumerate(QUERIES) for di, d in enumerate(DOCS)]
    return pd.DataFrame(rows, columns=['qid', 'query', 'docno', 'text'])


def reference_scores(folder, pairs):
    """MaxSim computed from the checkpoint files with plain transformers + numpy, ColBERTv2's recipe written out."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel
    meta = json.loads((folder / 'artifact.metadata').read_text())
    weights = load_file(str(folder / 'model.safetensors'))
    bert = BertModel(BertConfig.from_pretrained(str(folder)), add_pooling_layer=False).eval()
    bert.load_state_dict({k[5:]: torch.from_numpy(v) for k, v in weights.items() if k.startswith('bert.') and 'pooler' not in k},
                         strict=False)
    proj = weights['linear.weight'].astype(np.float64)
    tok = AutoTokenizer.from_pretrained(str(folder))
    cls, sep, msk = tok.cls_token_id, tok.sep_token_id, tok.mask_token_id
    q_marker, d_marker = tok.convert_tokens_to_ids('[unused0]'), tok.convert_tokens_to_ids('[unused1]')
    punct = {tok.encode(c, add_special_tokens=False)[0] for c in string.punctuation}

    def vectors(ids, attention):
        with torch.no_grad():
            h = bert(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention]))[0][0].double().numpy()
        v = h @ proj.T
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    out = []
    for q, d in pairs:
        qids = [cls, q_marker] + tok.encode(q, add_special_tokens=False)[:meta['query_maxlen'] - 3] + [sep]
        qatt = [1] * len(qids) + [0] * (meta['query_maxlen'] - len(qids))
        qids = qids + [msk] * (meta['query_maxlen'] - len(qids))
        dids = [cls, d_marker] + tok.encode(d, add_special_tokens=False)[:meta['doc_maxlen'] - 3] + [sep]
        Q, D = vectors(qids, qatt), vectors(dids, [1] * len(dids))
        D = D[[i for i, t in enumerate(dids) if t not in punct]]
        out.append((Q @ D.T).max(axis=1).sum())
    return np.array(out)


def test_scores_match_reference_maxsim(checkpoint):
    frame = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = ColBERT(checkpoint, batch_size=2)(frame)
    expected = reference_scores(checkpoint, list(zip(frame['query'], frame['text'])))
    got = res.set_index(['qid', 'docno']).loc[list(zip(frame['qid'], frame['docno'])), 'score'].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_checkpoint_round_trip_and_batching(checkpoint, tmp_path):
    model = ColBERTModel.from_pretrained(checkpoint)
    assert model.config['dim'] == 16 and model.config['doc_maxlen'] == 24 and model.config['query_maxlen'] == 32
    model.save(tmp_path / 'again')
    frame = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        a = ColBERT(checkpoint, batch_size=1)(frame)
        b = ColBERT(str(tmp_path / 'again'), batch_size=7)(frame)
    # packed (unpadded) batches sum in another order for other batch sizes: equal to float32 rounding, not bitwise
    np.testing.assert_allclose(a['score'].to_numpy(), b['score'].to_numpy(), rtol=0, atol=1e-5)
    assert set(a.columns) == {'qid', 'query', 'docno', 'text', 'score', 'rank'}
    top = a[a.qid == '0'].sort_values('rank').iloc[0]
    assert top['score'] == a[a.qid == '0']['score'].max()


def test_query_and_document_encoding_follow_colbertv2(checkpoint):
    model = ColBERTModel.from_pretrained(checkpoint)
    tok = model.tokenizer
    ids, mask = model.tokenize_queries(['cats'])
    assert ids.shape == (1, 32)
    assert ids[0, 0] == tok.cls_token_id and ids[0, 1] == tok.convert_tokens_to_ids('[unused0]')
    assert (ids[0, 4:] == tok.mask_token_id).all() and mask[0, :4].all() and not mask[0, 4:].any()
    ids, mask = model.tokenize_docs(['a cat, sat.'])
    assert ids[0, 1] == tok.convert_tokens_to_ids('[unused1]')
    D, keep = model.encode_docs(ids, mask)
    kept = [tok.convert_ids_to_tokens(int(t)) for t, k in zip(ids[0], keep[0]) if k]
    assert ',' not in kept and '.' not in kept and 'cat' in kept
    norms = D[0][keep[0]].norm(dim=1)
    np.testing.assert_allclose(norms.detach().numpy(), 1.0, atol=1e-5)


def test_long_documents_truncated_with_one_warning(checkpoint):
    model = ColBERTModel.from_pretrained(checkpoint, doc_maxlen=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        toks = model.doc_token_ids(['word ' * 50, 'word ' * 30])
        model.doc_token_ids(['word ' * 50])
    assert [len(t) for t in toks] == [10, 10] and toks[0][-1] == model.tokenizer.sep_token_id
    assert len([w for w in caught if 'doc_maxlen=10' in str(w.message)]) == 1


def test_empty_frame_and_bad_inputs(checkpoint, tmp_path):
    colbert = ColBERT(checkpoint)
    empty = colbert(pd.DataFrame(columns=['qid', 'query', 'docno', 'text']))
    assert list(empty.columns) == ['qid', 'query', 'docno', 'text', 'score', 'rank'] and len(empty) == 0
    with pytest.raises(Exception, match='text'):
        colbert(pd.DataFrame({'qid': ['1'], 'query': ['q'], 'docno': ['d']}))
    with pytest.raises(KnowacqError, match='text_loader'):
        colbert(pd.DataFrame({'qid': ['1'], 'query': ['q'], 'docno': ['d'], 'text': [None]}))
    from pyterrier_knowacq.models.backbones import resolve_model
    with pytest.raises(KnowacqError, match='linear.weight'):
        ColBERT(resolve_model('tiny-bert'))          # a plain BERT folder, no projection
    (tmp_path / 'empty').mkdir()
    with pytest.raises(KnowacqError, match='not a ColBERT checkpoint'):
        ColBERT(str(tmp_path / 'empty'))
    with pytest.raises(KnowacqError):
        ColBERT(str(tmp_path / 'missing' / 'folder'))
    with pytest.raises(KnowacqError, match='backend'):
        ColBERT(checkpoint, backend='plaid')
    with pytest.raises(KnowacqError, match='batch_size'):
        ColBERT(checkpoint, batch_size=0)
    with pytest.raises(KnowacqError, match='doc_maxlen'):
        ColBERT(checkpoint, doc_maxlen=100000)


def test_equality_and_hash(checkpoint):
    a, b, c = ColBERT(checkpoint), ColBERT(checkpoint), ColBERT(checkpoint, batch_size=3)
    assert a == b and hash(a) == hash(b) and a != c


@pytest.mark.parametrize('backend,module', [('pylate', 'pylate'), ('pyterrier_colbert', 'pyterrier_colbert.ranking')])
def test_optional_backends_absent(checkpoint, monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module.split('.')[0], None)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(KnowacqError, match=f"backend='{backend}' needs"):
        ColBERT(checkpoint, backend=backend)


def test_stages_registered(checkpoint):
    from pyterrier_knowacq.models import colbert
    from pyterrier_knowacq.datasets.core import get_dataset
    from pyterrier_knowacq.experiments.components import STAGES, StageContext
    assert {'colbert', 'colbert_retrieve'} <= set(STAGES)
    ctx = StageContext(dataset=get_dataset('msmarco-passage'), split='dl19', models={'C': str(checkpoint)})
    stage = STAGES['colbert'](ctx, model='C', batch_size=4)
    assert isinstance(stage, ColBERT) and stage == ColBERT(checkpoint, batch_size=4)
    dry = STAGES['colbert'](StageContext(dataset=ctx.dataset, dry_run=True), model='colbert-ir/colbertv2.0')
    assert dry.model.config['dim'] == 16


def test_training_on_shared_trainer_is_seeded(tmp_path, monkeypatch):
    from safetensors.numpy import load_file
    from pyterrier_knowacq.training.colbert import train_colbert
    spec = {'kind': 'colbert', 'backbone': 'tiny-bert', 'dim': 16, 'steps': 3, 'queries_per_batch': 2, 'negatives': 1,
            'train_doc_maxlen': 48, 'data': {'extra': [], 'max_queries': 6, 'depth': 20}}
    folders = []
    for run in ('a', 'b'):
        monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path / run))
        folders.append(train_colbert(spec, dataset='msmarco-passage', train_split='dl20', output_dir=tmp_path / f'out-{run}', seed=1))
    wa, wb = (load_file(str(f / 'model.safetensors')) for f in folders)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    fresh = ColBERTModel.new('tiny-bert', dim=16, seed=1)
    assert not np.allclose(wa['linear.weight'], fresh.linear.weight.detach().numpy())
    info = json.loads((tmp_path / 'out-a' / 'training.json').read_text())
    assert info['steps'] == 3 and info['groups'] == 6 and info['model'] == str(folders[0])
    assert ColBERTModel.from_pretrained(folders[0]).config['doc_maxlen'] == 180
    assert len(ColBERT(str(folders[0]))(_frame())) == len(_frame())
    with pytest.raises(KnowacqError, match='unknown ColBERT training settings'):
        train_colbert({'stepz': 3}, dataset='msmarco-passage', train_split='dl20')
    with pytest.raises(KnowacqError, match='data.teacher'):
        train_colbert({'loss': 'kl'}, dataset='msmarco-passage', train_split='dl20')


def test_kl_distillation_from_a_teacher_run(tmp_path, monkeypatch):
    from pyterrier_knowacq.training.colbert import train_colbert
    monkeypatch.setenv('KNOWACQ_CACHE', str(tmp_path))
    spec = {'backbone': 'tiny-bert', 'dim': 16, 'steps': 2, 'queries_per_batch': 2, 'negatives': 2, 'loss': 'kl',
            'train_doc_maxlen': 48, 'data': {'teacher': 'rankgpt-3.5', 'max_queries': 4, 'rel_threshold': 1}}
    folder = train_colbert(spec, dataset='msmarco-passage', train_split='dl20', seed=0)
    info = json.loads((folder / 'training.json').read_text())
    assert info['steps'] == 2 and np.isfinite([h['loss'] for h in info['history']]).all()


def test_pylate_backend_gives_the_native_scores(checkpoint):
    """Where pylate is importable (e.g. PYTHONPATH=<pylate pins, see ECOSYSTEM.md>), the same stage name backed by
    pylate reads our checkpoint and agrees with the native MaxSim."""
    pytest.importorskip('pylate')
    frame = _frame()
    native = ColBERT(checkpoint).transform(frame).sort_values(['qid', 'docno'])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        peer = ColBERT(checkpoint, backend='pylate').transform(frame).sort_values(['qid', 'docno'])
    np.testing.assert_allclose(peer['score'].to_numpy(), native['score'].to_numpy(), atol=1e-4)


def test_pyterrier_colbert_adapter_follows_its_api(checkpoint, monkeypatch):
    """pyterrier_colbert is GitHub-only, so this checks the adapter against its API (ColBERTModelOnlyFactory(checkpoint,
    gpu=, mask_punctuation=).text_scorer(doc_attr=) -> per-query ranked frame) with a stand-in module that scores with
    our model: arguments, grouping by query and the return to input order."""
    import types
    import pyterrier as pt
    calls = {}

    class Factory:
        def __init__(self, colbert_model, gpu=True, mask_punctuation=False, dim=128):
            calls.update(checkpoint=colbert_model, gpu=gpu, mask_punctuation=mask_punctuation)
            self.native = ColBERT(colbert_model)

        def text_scorer(self, query_encoded=False, doc_attr='text', verbose=False):
            def score(df):
                calls.setdefault('groups', []).append(df.groupby('qid').ngroups)
                res = self.native(df.rename(columns={doc_attr: 'text'}))
                return res.sort_values(['qid', 'score'], ascending=[True, False])[['qid', 'query', 'docno', 'score', 'rank']]
            return pt.apply.generic(score)

    ranking = types.ModuleType('pyterrier_colbert.ranking')
    ranking.ColBERTModelOnlyFactory = Factory
    monkeypatch.setitem(sys.modules, 'pyterrier_colbert', types.ModuleType('pyterrier_colbert'))
    monkeypatch.setitem(sys.modules, 'pyterrier_colbert.ranking', ranking)
    frame = _frame()
    got = ColBERT(checkpoint, backend='pyterrier_colbert', device='cpu')(frame)
    want = ColBERT(checkpoint)(frame)
    assert calls['gpu'] is False and calls['mask_punctuation'] is True and calls['checkpoint'] == str(checkpoint)
    assert calls['groups'] == [frame['query'].nunique()]
    np.testing.assert_allclose(got['score'].to_numpy(), want['score'].to_numpy(), atol=1e-6)
