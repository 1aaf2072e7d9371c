"""ColBERT token index: build, reload, end-to-end retrieval against exhaustive MaxSim, bad inputs."""
import itertools
import warnings

import numpy as np
import pandas as pd
import pytest

from pyterrier_knowacq._util import KnowacqError
from pyterrier_knowacq.models.colbert import ColBERT, ColBERTModel
from pyterrier_knowacq.models.colbert_index import ColBERTIndex


@pytest.fixture(scope='module')
def docs():
    from pyterrier_knowacq.datasets.core import get_dataset
    return list(itertools.islice(get_dataset('msmarco-passage').get_corpus_iter(), 300))


@pytest.fixture(scope='module')
def built(tmp_path_factory, docs):
    root = tmp_path_factory.mktemp('colbert-index')
    ColBERTModel.new('tiny-bert', dim=16, seed=5, doc_maxlen=64).save(root / 'ckpt')
    model = ColBERTModel.from_pretrained(root / 'ckpt')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        index = ColBERTIndex(root / 'index', model, chunk_docs=64, verbose=False).index(iter(docs))
    assert len([w for w in caught if 'doc_maxlen' in str(w.message)]) == 1
    return root, model, index


def _topics(docs):
    return pd.DataFrame({'qid': ['q1', 'q2', 'q3'], 'query': [docs[5]['text'][:60], docs[100]['text'][:50], 'manhattan project']})


def test_index_layout_and_reload(built, docs):
    root, model, index = built
    meta = index.meta()
    assert meta['num_docs'] == 300 and meta['dim'] == 16 and meta['faiss']['type'] == 'flat'
    tokens = np.memmap(root / 'index' / 'tokens.f16', dtype=np.float16, mode='r')
    assert tokens.size == meta['num_tokens'] * 16 and (root / 'index' / 'pt_meta.json').exists()
    reloaded = ColBERTIndex(root / 'index')           # model found from the checkpoint recorded in meta.json
    a = reloaded.retriever(num_results=5)(_topics(docs))
    b = index.retriever(model, num_results=5)(_topics(docs))
    pd.testing.assert_frame_equal(a, b)
    assert len(reloaded) == 300


def test_retrieval_matches_exhaustive_maxsim(built, docs):
    _, model, index = built
    topics = _topics(docs)
    res = index.retriever(model, num_results=10, ncandidates=100000)(topics)
    assert list(res.columns) == ['qid', 'query', 'docno', 'score', 'rank'] and len(res) == 30
    pairs = pd.DataFrame([(t.qid, t.query, d['docno'], d['text']) for t in topics.itertuples() for d in docs],
                         columns=['qid', 'query', 'docno', 'text'])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        exact = ColBERT(model)(pairs)
    exact = exact.set_index(['qid', 'docno'])['score']
    got = res.set_index(['qid', 'docno'])['score']
    np.testing.assert_allclose(got.to_numpy(), exact.loc[got.index].to_numpy(), atol=5e-3)   # fp16 storage
    for qid, group in res.groupby('qid'):
        assert group['score'].min() >= exact.loc[qid].nlargest(10).min() - 5e-3
    assert res[res.qid == 'q1'].iloc[0]['docno'] == docs[5]['docno']
    scored = index.scorer(model)(pairs.drop(columns='text'))
    np.testing.assert_allclose(scored.set_index(['qid', 'docno'])['score'].loc[exact.index].to_numpy(), exact.to_numpy(), atol=5e-3)


def test_ivfpq_index_and_candidates(tmp_path, built, docs):
    _, model, _ = built
    index = ColBERTIndex(tmp_path / 'ivf', model, faiss_index='ivfpq', verbose=False).index(iter(docs))
    assert index.meta()['faiss']['type'] == 'ivfpq'
    res = index.retriever(model, num_results=3, nprobe=64)(_topics(docs))
    assert res.groupby('qid').size().tolist() == [3, 3, 3]
    assert res[res.qid == 'q1'].iloc[0]['docno'] == docs[5]['docno']


def test_wrong_model_dimension_and_folder(tmp_path, built, docs):
    _, model, index = built
    other = ColBERTModel.new('tiny-bert', dim=16, seed=6)
    with pytest.raises(KnowacqError, match='another model'):
        index.retriever(other)
    with pytest.raises(KnowacqError, match='8-dim'):
        index.retriever(ColBERTModel.new('tiny-bert', dim=8))
    with pytest.raises(KnowacqError, match='not a ColBERT index'):
        ColBERTIndex(tmp_path).meta()
    with pytest.raises(KnowacqError, match='already exists'):
        ColBERTIndex(index.path, model).index(iter(docs[:3]))
    with pytest.raises(KnowacqError, match='not in the index'):
        index.scorer(model)(pd.DataFrame({'qid': ['1'], 'query': ['q'], 'docno': ['no-such-doc']}))
    with pytest.raises(KnowacqError, match='positive integer'):
        index.retriever(model, num_results=0)


def test_failed_build_leaves_nothing(tmp_path, built, docs):
    _, model, _ = built

    def corpus():
        yield from docs[:5]
        yield {'docno': 'bad', 'text': None}
    with pytest.raises(KnowacqError, match='string text'):
        ColBERTIndex(tmp_path / 'broken', model, verbose=False).index(corpus())
    assert not (tmp_path / 'broken').exists() and not list(tmp_path.glob('.broken*'))
    with pytest.raises(KnowacqError, match='no documents'):
        ColBERTIndex(tmp_path / 'empty', model, verbose=False).index(iter([]))


def test_empty_query_frame(built):
    _, model, index = built
    res = index.retriever(model)(pd.DataFrame(columns=['qid', 'query']))
    assert list(res.columns) == ['qid', 'query', 'docno', 'score', 'rank'] and len(res) == 0
